"""`--vae` / `--text-encoder` for every command that takes a config, as `generate` has them."""

from __future__ import annotations

import argparse
import os
from typing import Any


def add_component_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vae", metavar="DIR",
                        help="VAE directory or hub id (sets vae.path; 'builtin:vae' is the built-in model's)")  # fmt: skip
    parser.add_argument("--text-encoder", metavar="DIR",
                        help="text encoder directory or hub id (sets text_encoder.path)")  # fmt: skip


def apply_component_args(cfg: Any, args: argparse.Namespace) -> None:
    """Put --vae / --text-encoder into `cfg`; a local-looking path must exist (checked before any work)."""
    from sorakit.errors import UserError
    from sorakit.hub import _HUB_ID

    for flag, value, section in (
        ("--vae", args.vae, cfg.vae),
        ("--text-encoder", args.text_encoder, cfg.text_encoder),
    ):
        if not value:
            continue
        local = not (value.startswith("builtin:") or (_HUB_ID.match(value) and not os.path.exists(value)))
        if local and not os.path.isdir(os.path.expanduser(value)):
            raise UserError(f"{flag}: no such directory: {value}")
        section.path = os.path.expanduser(value)
