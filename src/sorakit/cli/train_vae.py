"""`sorakit train-vae --csv CSV --output DIR`: train a small per-frame AutoencoderKL on video frames (or, with
`--decoder-lora BASE`, a LoRA on the decoder of an existing one)."""

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
    p.add_argument(
        "--decoder-lora",
        metavar="BASE",
        help="instead of a new autoencoder, train a LoRA on the decoder of BASE's VAE ('builtin', a model "
        "directory or a VAE folder), encoder frozen; DIR becomes a peft adapter folder (put it in an adapter "
        "folder as vae/ to load it with `generate --lora`)",
    )
    p.add_argument("--rank", type=int, default=4, help="with --decoder-lora: the LoRA rank (default 4)")
    p.add_argument(
        "--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
        help="with --decoder-lora: the stored adapter's weight dtype (default fp32; fp16 halves the file)",
    )  # fmt: skip
    p.add_argument(
        "--steps", type=int, default=None, help="optimizer steps (default 1500; 400 with --decoder-lora)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="frames per step (default 16)")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak AdamW learning rate (cosine decay; default 1e-3; constant 2e-3 with --decoder-lora)",
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

    if args.steps is None:
        args.steps = 400 if args.decoder_lora else 1500
    for name in ("steps", "batch_size", "latent_channels", "layers_per_block", "max_videos", "rank"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.lr is None:
        args.lr = 2e-3 if args.decoder_lora else 1e-3
    if args.lr <= 0 or args.kl_weight < 0:
        raise UserError("--lr must be > 0 and --kl-weight >= 0")
    import torch

    from sorakit.training.vae import VAETrainConfig, train_vae

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.decoder_lora:
        from sorakit.training.vae_lora import DecoderLoRAConfig, train_decoder_lora

        lora_cfg = DecoderLoRAConfig(rank=args.rank, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                     seed=args.seed, max_videos=args.max_videos, dtype=args.dtype)  # fmt: skip
        out = train_decoder_lora(args.csv, args.output, args.decoder_lora, lora_cfg)
        print(f"saved the VAE decoder adapter to {out}")
        return 0
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
