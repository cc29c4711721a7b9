"""`sorakit train`: train or fine-tune a diffusion transformer (one process, or many under torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train or fine-tune a model on a CSV of videos / images or a latent cache",
        description=(
            "Train with CONFIG (a preset name such as opensora/train/16x256x256 or tiny, or a .toml / Open-Sora "
            ".py file) and key.sub=value overrides. Checkpoints go to RUN_DIR/checkpoints/step-NNNNNNNN/. "
            "Several processes: torchrun --nproc-per-node N -m sorakit.cli.main train ... "
            "(multi-node: add --nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT)."
        ),
    )
    parser.add_argument("config", help="preset name or config file")
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    parser.add_argument(
        "--data", help="CSV (path,text[,num_frames,...]) or a latent cache directory (sorakit data encode)"
    )
    parser.add_argument(
        "--data-root",
        help="folder that relative paths in the CSV resolve against; paths leading outside it are refused",
    )
    parser.add_argument(
        "--output", "-o", required=True, help="run directory (logs, TensorBoard, checkpoints)"
    )
    parser.add_argument(
        "--init", help="initial weights: PixArt-alpha checkpoint, a previous stage's export, or 'builtin'"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument(
        "--max-steps", type=int, help="stop after this many optimizer steps (train.max_steps)"
    )
    parser.add_argument("--ckpt-every", type=int, help="checkpoint every N steps (train.ckpt_every)")
    parser.add_argument("--batch-size", type=int, help="samples per process per step (train.batch_size)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the transformer (train.compile; the first steps compile: slow)")  # fmt: skip
    parser.add_argument("--threads", type=int,
                        help="CPU threads for torch per process (default: torch's choice, one per core; use fewer "
                             "when other programs keep the cores busy, or each step waits on descheduled threads)")  # fmt: skip
    from sorakit.cli._components import add_component_args

    add_component_args(parser)
    parser.set_defaults(func=run, overrides_anywhere=True)  # key=value also after the options


def _fit_cooldown(cfg, args: argparse.Namespace) -> None:  # noqa: ANN001 - sorakit.config.Config
    """--max-steps shorter than the preset's cooldown (train.decay_steps): keep the cooldown's share of
    the run instead of refusing, and say so. A decay_steps set on the command line is left to validation."""
    t = cfg.train
    if args.max_steps is None or t.decay_steps <= t.max_steps:
        return
    if any(o.startswith("train.decay_steps=") for o in args.overrides):
        return
    from sorakit.config import load_config
    from sorakit.logging import get_logger

    preset_steps = load_config(args.config, list(args.overrides)).train.max_steps
    share = t.decay_steps / max(preset_steps, t.decay_steps)
    new = int(round(share * t.max_steps))
    get_logger("sorakit.train").info(
        "--max-steps %d is shorter than the cooldown (train.decay_steps=%d of %d steps): cooldown shortened to "
        "the last %d steps (pass train.decay_steps=N to choose)", t.max_steps, t.decay_steps, preset_steps, new,
    )  # fmt: skip
    t.decay_steps = new


def _check_inputs(cfg, output: Path) -> None:  # noqa: ANN001 - sorakit.config.Config
    """Data, initial weights, the VAE / text encoder a CSV needs and the output folder, before any work.
    Hub-named components and known upstream checkpoints are fetched now, or (offline) fail in one line."""
    from sorakit.cli._checks import check_can_create
    from sorakit.cli._components import fetch_components
    from sorakit.data.cache import is_cache_dir
    from sorakit.errors import UserError
    from sorakit.hub import _HUB_FILE, KNOWN_CHECKPOINTS, download_hint, resolve_file

    if not (cfg.data.csv or cfg.data.cache_dir):
        raise UserError("no training data: pass --data CSV or a latent cache directory")
    data = Path(cfg.data.cache_dir or cfg.data.csv)
    if not data.exists():
        raise UserError(f"--data: no such file or directory: {data}")
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} exists and is not a directory")
    check_can_create(output)  # a read-only place fails now, not at the first checkpoint
    if not is_cache_dir(data):  # a latent cache already holds what the VAE and text encoder would give
        fetch_components(cfg)
    init = cfg.train.init_from
    if init and not Path(init).exists():
        if Path(init).name in KNOWN_CHECKPOINTS or _HUB_FILE.match(init):
            cfg.train.init_from = str(resolve_file(init, what="--init checkpoint", flag="--init"))
        else:
            raise UserError(f"--init: no such file or directory: {init}{download_hint(init)}")


def run(args: argparse.Namespace) -> int:
    from sorakit.config import load_config
    from sorakit.errors import UserError

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be positive, got {args.threads}")
    overrides = list(args.overrides)
    for flag, key in (
        ("max_steps", "train.max_steps"),
        ("ckpt_every", "train.ckpt_every"),
        ("batch_size", "train.batch_size"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.compile:
        overrides.append("train.compile=true")
    cfg = load_config(args.config, overrides)
    _fit_cooldown(cfg, args)
    from sorakit.cli._components import apply_component_args

    apply_component_args(cfg, args)
    if args.data:
        cfg.data.csv = args.data
        cfg.data.cache_dir = None
    if args.data_root:
        cfg.data.data_root = args.data_root
    if args.init:
        cfg.train.init_from = args.init
        if args.init == "builtin":  # the built-in model, e.g. the base of a LoRA (lora.rank=8)
            from sorakit.modeldir import builtin_model_dir

            cfg.train.init_from = str(builtin_model_dir())
    from sorakit.training.export import absolute_component_paths

    absolute_component_paths(cfg)  # the run's config.toml (and its exports) work from any folder
    _check_inputs(cfg, Path(args.output))

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from sorakit.training.trainer import train

    result = train(cfg, Path(args.output), resume=args.resume)
    if result.checkpoint is not None:
        print(result.checkpoint)
    return 0
