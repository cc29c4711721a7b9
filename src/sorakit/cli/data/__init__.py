"""`sorakit data ...`: data preparation commands, one module each in this package."""

from __future__ import annotations

import argparse
import importlib


def register(sub: argparse._SubParsersAction) -> None:
    from sorakit.cli.main import subcommand_modules

    parser = sub.add_parser(
        "data", help="data tools: synth, scenes, cut, info, csv, caption, convert, encode"
    )
    data_sub = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    for name in subcommand_modules("sorakit.cli.data"):
        module = importlib.import_module(name)
        module.register(data_sub)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
