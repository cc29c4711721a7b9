"""`sorakit data encode CSV --output DIR`: precompute VAE latents and text embeddings into a latent cache
that `sorakit train --data DIR` reads directly (no VAE / text encoder at training time)."""

from __future__ import annotations

import argparse

from sorakit.tools.executor import add_executor_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "encode",
        help="precompute VAE latents + text embeddings (a latent cache for fast training)",
        description=(
            "Encode every row of CSV (path,text[,num_frames,...]) with the VAE and text encoder of --config into "
            "safetensors shards in DIR. One clip per row (num_frames every frame_interval from data settings; with "
            "data.buckets, each clip at its bucket's shape). "
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
    parser.add_argument(
        "--data-root",
        help="folder that relative paths in the CSV resolve against; paths leading outside it are refused",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="clips encoded at once")
    parser.add_argument("--shard-size", type=int, default=1024, help="samples per shard file")
    parser.add_argument("--text-dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                        help="storage dtype of the text embeddings (latents are float32)")  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of clip starts and VAE posterior samples")
    add_executor_args(parser, default="local:1", shards=False)
    from sorakit.cli._components import add_component_args

    add_component_args(parser)
    parser.set_defaults(func=run, overrides_anywhere=True)  # key=value also after the options


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    from pathlib import Path

    import torch

    from sorakit.cli._checks import check_can_create
    from sorakit.errors import UserError
    from sorakit.logging import get_logger
    from sorakit.tools.encode import EncodeInputs
    from sorakit.tools.executor import executor_from_args, open_pool

    log = get_logger("sorakit.cli.encode")
    spec = executor_from_args(args, default="local:1", workers_flag=False)
    from sorakit.cli._components import component_overrides, fetch_components

    # --vae / --text-encoder travel as overrides: worker processes rebuild the config from them
    overrides = (*args.overrides, *component_overrides(args))
    inputs = EncodeInputs(args.config, overrides, args.csv, args.data_root, args.seed, args.device)
    cfg = inputs.config_obj()
    if args.batch_size < 1 or args.shard_size < 1:
        raise UserError("--batch-size and --shard-size must be >= 1")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} exists and is not a directory")
    if not Path(args.csv).is_file():
        raise UserError(f"no such CSV: {args.csv}")
    check_can_create(out)  # a read-only place fails now, not after the first shard's work
    # hub-named VAE / text encoder: fetched now, or (offline) one line saying what to download
    fetch_components(cfg)

    from sorakit.data.cache import cache_settings, check_cache_settings, encode_to_cache

    label = cfg.text_encoder.type == "classes"
    in_process = spec.kind == "local" and spec.workers == 1
    meta = {
        "vae": dataclasses.asdict(cfg.vae),
        "text_encoder": dataclasses.asdict(cfg.text_encoder),
        "num_frames": cfg.data.num_frames,
        "frame_interval": cfg.data.frame_interval,
        "image_size": list(cfg.data.image_size),
        "csv": str(Path(args.csv).resolve()),
        "seed": args.seed,
    }
    from sorakit.data.bucket_cache import bucket_groups
    from sorakit.data.buckets import build_table

    table = build_table(cfg.data)  # data.buckets: each clip at its bucket's shape
    if table is not None:
        from sorakit.encoders.vae import peek_downsample_factor

        meta.update(buckets_config=cfg.data.buckets, downsample=peek_downsample_factor(cfg.vae.path))
    # a resume with other settings is refused before any model loads
    check_cache_settings(out, cache_settings(meta, args.shard_size, getattr(torch, args.text_dtype), label))
    # in this process the models load now (errors before any work); workers load their own copies
    dataset, vae, text = inputs() if in_process else (inputs.dataset(cfg), None, None)
    groups, unfit = bucket_groups(dataset.rows, table) if table is not None else (None, [])
    with open_pool(spec) as pool:
        result = encode_to_cache(
            dataset, out, vae, text, meta, shard_size=args.shard_size, batch_size=args.batch_size,
            text_dtype=getattr(torch, args.text_dtype), device=inputs.resolved_device(), seed=args.seed,
            label=label, pool=pool, builder=inputs, retries=args.retries, groups=groups,
        )  # fmt: skip
    result["failures"] = unfit + result.get("failures", [])
    failures = result.get("failures", [])
    for f in failures:
        log.warning("skipped row %s (%s): %s", f["row"], f["path"], f["error"])
    if failures:
        from sorakit.fileutil import write_text_atomic

        write_text_atomic(out / "failures.json", json.dumps(failures, indent=2, allow_nan=False))
    print(
        f"{out}: {result['num_samples']} samples in {len(result['shards'])} shard(s), {len(failures)} row(s) skipped"
    )
    return 0
