"""`sorakit convert CKPT OUT_DIR --model NAME [key=value ...]`: an upstream checkpoint -> sorakit model directory.

Builds the preset NAME (with constructor overrides such as `input_size=16,32,32 space_scale=0.5`), loads
the checkpoint through `sorakit.models.load_checkpoint` (printing what was copied, adapted, created and
ignored) and writes `model.safetensors` + `config.json` with `save_pretrained`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sorakit.cli._checks import check_can_create
from sorakit.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")


def parse_value(text: str) -> Any:
    """`16,32,32` -> [16, 32, 32]; JSON literals (`0.5`, `true`, `[1,2,2]`, `"x"`); True/False; else the string."""
    if text in ("True", "False"):
        return text == "True"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        return [parse_value(part.strip()) for part in text.split(",")]
    return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"expected key=value, got {item!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "convert",
        help="convert an upstream checkpoint (Open-Sora / PixArt / DiT / Latte) into a sorakit model directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint", help="upstream checkpoint: .pt/.pth (read with weights_only) or .safetensors"
    )
    parser.add_argument("out_dir", help="directory to write model.safetensors and config.json into")
    # NAME and the overrides share one option so that `--model NAME key=value ...` parses as written
    parser.add_argument("--model", required=True, nargs="+", metavar=("NAME", "key=value"),
                        help="preset name in sorakit.models.MODELS (e.g. STDiT-XL/2), then constructor overrides "
                             "such as input_size=16,32,32 space_scale=0.5")  # fmt: skip
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="more constructor overrides")
    parser.add_argument(
        "--wrapper",
        default=None,
        help="take the state dict from this checkpoint entry (default: ema, model, ...)",
    )
    parser.add_argument("--ignore", action="append", default=[], metavar="PREFIX",
                        help="checkpoint key prefix that may stay unused (repeatable; reported)")  # fmt: skip
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written weights")
    parser.set_defaults(func=run, overrides_anywhere=True)  # key=value also after the options


def run(args: argparse.Namespace) -> int:
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise UserError(f"checkpoint not found: {ckpt}")
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path exists and is not a directory: {out_dir}")
    if out_dir.resolve() == ckpt.resolve():
        raise UserError("output directory must differ from the checkpoint")
    check_can_create(out_dir)  # before the checkpoint is read, not after
    name = args.model[0]
    overrides = parse_overrides(args.model[1:] + args.overrides)

    from sorakit.models import model_kwargs

    model_kwargs(name, **overrides)  # validates names and sizes before any heavy work

    import torch

    from sorakit.models import build_model, load_checkpoint, save_pretrained

    model = build_model(name, **overrides)
    report = load_checkpoint(model, ckpt, wrapper_key=args.wrapper, ignore=args.ignore)
    print(report.summary())
    save_pretrained(model, out_dir, dtype=getattr(torch, args.dtype))
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out_dir} ({name}, {n / 1e6:.1f}M parameters, {args.dtype})")
    return 0
