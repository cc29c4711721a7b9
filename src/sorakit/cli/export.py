"""`sorakit export RUN_DIR OUT_DIR`: a training run's EMA weights -> a sorakit model directory that
`sorakit generate --model OUT_DIR` reads (and that the next training stage takes as --init). A LoRA run's
adapter -> a peft adapter folder for `sorakit generate --lora OUT_DIR` (or, with --merge-lora, a model
directory with the adapter merged into its base)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="write a run's (EMA) weights as a sorakit model directory",
        description="Export the newest checkpoint of RUN_DIR (or --step N) to OUT_DIR in sorakit's model format.",
    )
    parser.add_argument("run_dir", help="training run directory (or one checkpoints/step-NNNNNNNN folder)")
    parser.add_argument("out_dir", help="model directory to write")
    parser.add_argument("--step", type=int, help="export this step's checkpoint instead of the newest")
    parser.add_argument(
        "--weights", choices=["ema", "model"], default="ema", help="EMA (default) or raw weights"
    )
    parser.add_argument(
        "--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="stored weight dtype"
    )
    parser.add_argument(
        "--bundle-vae",
        action="store_true",
        help="copy the run's local VAE into OUT_DIR (a self-contained model)",
    )
    parser.add_argument(
        "--merge-lora",
        action="store_true",
        help="a LoRA run: add the adapter into its base and write a plain model directory "
        "(default: the adapter alone, as a peft folder for `generate --lora`)",
    )
    parser.add_argument(
        "--vae-lora",
        metavar="DIR",
        help="with --merge-lora: also merge a VAE decoder adapter (DIR/vae/ of an adapter folder, or a VAE "
        "adapter folder from `sorakit train-vae --decoder-lora`) into the base's VAE, bundled in OUT_DIR",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sorakit.training.export import export_run

    out = export_run(
        Path(args.run_dir),
        Path(args.out_dir),
        step=args.step,
        weights=args.weights,
        dtype=args.dtype,
        bundle_vae=args.bundle_vae,
        merge_lora=args.merge_lora,
        vae_lora=Path(args.vae_lora) if args.vae_lora else None,
    )
    print(out)
    return 0
