"""`sorakit data encode CSV --output DIR`: precompute VAE latents and text embeddings into a latent cache
that `sorakit train --data DIR` reads directly (no VAE / text encoder at training time)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "encode",
        help="precompute VAE latents + text embeddings (a latent cache for fast training)",
        description=(
            "Encode every row of CSV (path,text[,num_frames,...]) with the VAE and text encoder of --config into "
            "safetensors shards in DIR. One clip per row (num_frames every frame_interval from data settings). "
            "Unreadable rows are skipped and listed. Re-running resumes: finished shards are kept."
        ),
    )
    parser.add_argument("csv", help="CSV with a header row: path,text (or path,label for class models)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides (e.g. vae.path=DIR)")
    parser.add_argument("--output", "-o", required=True, help="cache directory to write")
    parser.add_argument(
        "--config",
        default="tiny",
        help="preset or config file giving vae, text_encoder, data (default: tiny)",
    )
    parser.add_argument("--data-root", help="folder that relative paths in the CSV resolve against")
    parser.add_argument("--batch-size", type=int, default=8, help="clips encoded at once")
    parser.add_argument("--shard-size", type=int, default=1024, help="samples per shard file")
    parser.add_argument("--text-dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                        help="storage dtype of the text embeddings (latents are float32)")  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of clip starts and VAE posterior samples")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    from pathlib import Path

    import torch

    from sorakit.config import load_config
    from sorakit.errors import UserError
    from sorakit.logging import get_logger

    log = get_logger("sorakit.cli.encode")
    cfg = load_config(args.config, list(args.overrides))
    if args.batch_size < 1 or args.shard_size < 1:
        raise UserError("--batch-size and --shard-size must be >= 1")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} exists and is not a directory")

    from sorakit.data.cache import encode_to_cache
    from sorakit.data.dataset import VideoTextDataset

    label = cfg.text_encoder.type == "classes"
    dataset = VideoTextDataset(
        args.csv, cfg.data.num_frames, cfg.data.frame_interval, cfg.data.image_size,
        data_root=args.data_root or cfg.data.data_root, seed=args.seed, flip=False, label_column=label,
    )  # fmt: skip
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)

    from sorakit.encoders import build_text_encoder, build_vae

    vae = build_vae(cfg.vae, device=device)
    text = build_text_encoder(cfg.text_encoder, device=device)
    meta = {
        "vae": dataclasses.asdict(cfg.vae),
        "text_encoder": dataclasses.asdict(cfg.text_encoder),
        "num_frames": cfg.data.num_frames,
        "frame_interval": cfg.data.frame_interval,
        "image_size": list(cfg.data.image_size),
        "csv": str(Path(args.csv).resolve()),
        "seed": args.seed,
    }
    result = encode_to_cache(
        dataset, out, vae, text, meta, shard_size=args.shard_size, batch_size=args.batch_size,
        text_dtype=getattr(torch, args.text_dtype), device=device, seed=args.seed, label=label,
    )  # fmt: skip
    failures = result.get("failures", [])
    for f in failures:
        log.warning("skipped row %s (%s): %s", f["row"], f["path"], f["error"])
    if failures:
        (out / "failures.json").write_text(json.dumps(failures, indent=2))
    print(
        f"{out}: {result['num_samples']} samples in {len(result['shards'])} shard(s), {len(failures)} row(s) skipped"
    )
    return 0
