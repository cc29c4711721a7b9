"""`sorakit config`: show presets and print a resolved configuration."""

from __future__ import annotations

import argparse

from sorakit.config import list_presets, load_config, preset_name


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "config",
        help="list presets or print a resolved config",
        description="Print the resolved config of PRESET (a preset name, a .toml file, or an Open-Sora 1.0 .py "
        "config) with key.sub=value overrides applied. Without PRESET, list the shipped presets.",
    )
    parser.add_argument("preset", nargs="?", help="preset name or config file")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    parser.add_argument("--format", choices=["toml", "json"], default="toml")
    parser.set_defaults(func=run, overrides_anywhere=True)  # key=value also after the options


def run(args: argparse.Namespace) -> int:
    if not args.preset:
        for name in list_presets():
            print(name)
        return 0
    # the short names `generate --preset` takes (opensora/16x256x256) name the same presets here
    cfg = load_config(preset_name(args.preset), args.overrides)
    print(cfg.dump(args.format))
    return 0
