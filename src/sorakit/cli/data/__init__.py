"""`sorakit data ...`: data preparation commands, one module each in this package (table: `COMMANDS`)."""

from __future__ import annotations

import argparse

from sorakit.cli.data import caption, convert, csvtools, cut, encode, info, scenes, synth

# in `sorakit data --help` order
COMMANDS = (caption, convert, csvtools, cut, encode, info, scenes, synth)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "data", help="data tools: synth, scenes, cut, info, csv, caption, convert, encode"
    )
    data_sub = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    for module in COMMANDS:
        module.register(data_sub)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
