"""Entry point of the `sorakit` command.

Subcommands are the modules of this package (and of `sorakit.cli.data` for `sorakit data ...`);
each defines `register(subparsers)`. Heavy imports (torch, transformers) happen inside the
subcommands' `run` functions so that `sorakit --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys

from sorakit import __version__
from sorakit.errors import UserError


def subcommand_modules(package: str) -> list[str]:
    """Names of the modules of `package` that define a subcommand, sorted."""
    pkg = importlib.import_module(package)
    names = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_") or info.name == "main":
            continue
        names.append(f"{package}.{info.name}")
    return sorted(names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sorakit",
        description="sorakit: open, fast, dependable text-to-video diffusion (Open-Sora 1.0 system).",
    )
    parser.add_argument("--version", action="version", version=f"sorakit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in subcommand_modules("sorakit.cli"):
        module = importlib.import_module(name)
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


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
        print(f"sorakit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sorakit: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
