"""Entry point of the `sorakit` command.

`COMMANDS` lists the subcommands, one module each (`sorakit data ...` has its own table in
`sorakit.cli.data`); each module defines `register(subparsers)`. Heavy imports (torch, transformers)
happen inside the subcommands' `run` functions so that `sorakit --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from sorakit import __version__
from sorakit.cli import checkpoints, config, convert, data, export, generate, info, serve, train, train_vae
from sorakit.cli import eval as eval_
from sorakit.errors import UserError

# in `sorakit --help` order
COMMANDS = (checkpoints, config, convert, data, eval_, export, generate, info, serve, train, train_vae)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sorakit",
        description="sorakit: open, fast, dependable text-to-video diffusion (Open-Sora 1.0 system).",
    )
    parser.add_argument("--version", action="version", version=f"sorakit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        code = func(args)
    except UserError as exc:
        print(f"sorakit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sorakit: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
