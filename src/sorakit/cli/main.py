"""Entry point of the `sorakit` command.

`COMMANDS` lists the subcommands, one module each (`sorakit data ...` has its own table in
`sorakit.cli.data`); each module defines `register(subparsers)`. Heavy imports (torch, transformers)
happen inside the subcommands' `run` functions so that `sorakit --help` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import re
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


_WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)
_OVERRIDE = re.compile(r"^[A-Za-z_][\w.\-]*=")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that a command taking ``key=value`` overrides (its parser sets
    ``overrides_anywhere``) accepts them anywhere on the line: argparse fills a ``nargs="*"`` positional
    once, so overrides after an option were 'unrecognized arguments'."""
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "overrides_anywhere", False):
        args.overrides = [*args.overrides, *(e for e in extra if _OVERRIDE.match(e))]
        extra = [e for e in extra if not _OVERRIDE.match(e)]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        code = func(args)
    except UserError as exc:
        # one line, whatever the message quotes (a file name or value with a newline in it)
        print(f"sorakit: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a file system that refuses mid-run (read-only, full, permissions changed): one line, no traceback
        if exc.errno not in _WRITE_ERRNOS:
            raise
        print(f"sorakit: error: {exc.filename or 'a file'}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sorakit: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
