"""`sorakit train-vae --csv CSV --output DIR`: train a small per-frame AutoencoderKL on video frames."""

from __future__ import annotations

import argparse


def _channels(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-vae",
        help="train a small image autoencoder (diffusers AutoencoderKL) on the frames of a video CSV",
        description="Train a diffusers AutoencoderKL on the frames of the videos of CSV (path column), e.g. the "
        "'shapes' data of `sorakit data synth`, and save it to DIR with save_pretrained (scaling_factor = "
        "1/std of the latents) plus DIR/recon.png (originals over reconstructions). Resumes from "
        "DIR/train_state when it exists.",
    )
    p.add_argument("--csv", required=True, help="CSV with a path column (all videos the same size)")
    p.add_argument("-o", "--output", required=True, help="output directory (diffusers AutoencoderKL format)")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps (default 1500)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per step (default 16)")
    p.add_argument(
        "--lr", type=float, default=1e-3, help="peak AdamW learning rate (cosine decay; default 1e-3)"
    )
    p.add_argument(
        "--block-out-channels",
        type=_channels,
        default=[32, 64, 64],
        help="channels per resolution, e.g. 32,64,64 (len-1 = number of 2x downsamplings; default 32,64,64)",
    )
    p.add_argument("--latent-channels", type=int, default=4, help="latent channels (default 4)")
    p.add_argument("--layers-per-block", type=int, default=1, help="resnet layers per block (default 1)")
    p.add_argument("--kl-weight", type=float, default=1e-6, help="KL loss weight (default 1e-6)")
    p.add_argument("--max-videos", type=int, default=2000, help="videos loaded into memory (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sorakit.errors import UserError

    for name in ("steps", "batch_size", "latent_channels", "layers_per_block", "max_videos"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.lr <= 0 or args.kl_weight < 0:
        raise UserError("--lr must be > 0 and --kl-weight >= 0")
    import torch

    from sorakit.training.vae import VAETrainConfig, train_vae

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = VAETrainConfig(
        block_out_channels=args.block_out_channels,
        layers_per_block=args.layers_per_block,
        latent_channels=args.latent_channels,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        kl_weight=args.kl_weight,
        seed=args.seed,
        max_videos=args.max_videos,
        ckpt_every=max(1, min(250, args.steps)),
    )
    out = train_vae(args.csv, args.output, cfg)
    print(f"saved the autoencoder to {out} (preview: {out / 'recon.png'})")
    return 0
