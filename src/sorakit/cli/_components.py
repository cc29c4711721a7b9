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


def component_overrides(args: argparse.Namespace) -> list[str]:
    """--vae / --text-encoder as ``vae.path=`` / ``text_encoder.path=`` overrides; a local-looking path must
    exist (checked before any work; a missing ``./t5-v1_1-xxl`` says what to download into it)."""
    from sorakit.errors import UserError
    from sorakit.hub import _HUB_ID, download_hint

    out = []
    for flag, value, key in (
        ("--vae", args.vae, "vae.path"),
        ("--text-encoder", args.text_encoder, "text_encoder.path"),
    ):
        if not value:
            continue
        local = not (value.startswith("builtin:") or (_HUB_ID.match(value) and not os.path.exists(value)))
        if local and not os.path.isdir(os.path.expanduser(value)):
            raise UserError(f"{flag}: no such directory: {value}{download_hint(value)}")
        out.append(f"{key}={os.path.expanduser(value)}")
    return out


def apply_component_args(cfg: Any, args: argparse.Namespace) -> None:
    """Put --vae / --text-encoder into `cfg` (see :func:`component_overrides`)."""
    from sorakit.config import apply_overrides

    apply_overrides(cfg, component_overrides(args))


def fetch_components(cfg: Any, vae: bool = True, text_encoder: bool = True) -> None:
    """Resolve hub-named VAE / text encoder now -- the hub cache, a download, or (offline) the one-line
    error saying what to download -- rather than after the data and model are built."""
    from sorakit.hub import resolve_dir

    if vae and cfg.vae.path and cfg.vae.path != "builtin:vae":
        resolve_dir(cfg.vae.path, what="VAE", flag="--vae")
    if text_encoder and cfg.text_encoder.type != "classes" and cfg.text_encoder.path:
        if not cfg.text_encoder.path.startswith("builtin:"):
            resolve_dir(
                cfg.text_encoder.path, what=f"{cfg.text_encoder.type} text encoder", flag="--text-encoder"
            )
