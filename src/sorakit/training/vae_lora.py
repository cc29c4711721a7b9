"""A LoRA on an autoencoder's decoder: teach a VAE to draw what it never saw (a new colour), encoder frozen.

A transformer LoRA learns new concepts in the latent space of the base model's VAE; if that VAE's decoder never
saw a colour it draws the nearest one it knows (the built-in VAE turns orange circles red:
``docs/training.md``, "Why orange stays red"). Adapting the decoder alone keeps the encoder, and so every latent
the transformer and its LoRA learned, exactly as it was; only how latents are drawn changes.

The adapter is a peft folder like the transformer's (``sorakit.lora``: its base, the autoencoder, named by a
fingerprint). Placed in an adapter folder as the subfolder ``vae/`` it travels with the transformer's adapter:
``sorakit generate --lora DIR`` and ``TextToVideoPipeline.load_lora(DIR)`` apply both, ``sorakit export RUN OUT
--merge-lora --vae-lora DIR`` merges both. Made by ``sorakit train-vae --decoder-lora BASE``.

Training: random single frames of the CSV's videos, latents sampled from the frozen encoder's posterior,
``train-vae``'s loss (foreground-weighted L1 + L2 and edges), AdamW at a constant rate, LoRA rank 4 on the
decoder's convolutions. On the built-in VAE and the LoRA recipe's clips, 400 steps at 2e-3 make orange come back
orange and diamonds diamonds where the base draws them red and round (``benchmarks/vae_new_colour.py``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sorakit.encoders.vae import load_autoencoder
from sorakit.errors import UserError
from sorakit.logging import get_logger
from sorakit.lora import AdapterSpec, base_fingerprint, inject, is_adapter_key, save_adapter
from sorakit.modeldir import BUILTIN_MODEL_DIR, is_model_dir
from sorakit.runtime import DTYPES
from sorakit.training.vae import VAETrainConfig, load_frames, reconstruction_loss, to_tensor

logger = get_logger(__name__)

# the decoder's 3x3 convolutions (resnet conv1 / conv2, the upsamplers' conv, conv_in, conv_out); the 1x1
# shortcuts, norms and the mid-block attention keep their weights
DECODER_CONVS = ("conv1", "conv2", "conv", "conv_in", "conv_out")


@dataclass
class DecoderLoRAConfig:
    """Settings of :func:`train_decoder_lora`."""

    rank: int = 4
    alpha: float | None = None  # None = rank
    steps: int = 400
    batch_size: int = 16
    lr: float = 2e-3
    seed: int = 0
    max_videos: int = 2000
    log_every: int = 25
    dtype: str = "fp32"  # the stored adapter's weights: "fp32", "bf16" or "fp16" (half the file)


def decoder_targets(autoencoder: nn.Module) -> list[str]:
    """Full names of the decoder convolutions that get adapters (peft matches a full name exactly)."""
    names = [n for n, m in autoencoder.named_modules()
             if n.startswith("decoder.") and isinstance(m, nn.Conv2d) and n.rsplit(".", 1)[-1] in DECODER_CONVS]  # fmt: skip
    if not names:
        raise UserError(
            "the autoencoder has no decoder convolutions to adapt (not a diffusers AutoencoderKL?)"
        )
    return names


def resolve_vae_dir(base: str | os.PathLike) -> Path:
    """`base` -> the autoencoder folder: ``builtin`` (the built-in model's VAE), a sorakit model directory
    (its ``vae/``) or a diffusers AutoencoderKL folder."""
    path = BUILTIN_MODEL_DIR if str(base) == "builtin" else Path(base)
    if is_model_dir(path):
        path = path / "vae"
    if not (path / "config.json").is_file():
        raise UserError(f"--decoder-lora {base}: not a VAE folder or a model directory with a vae/ folder")
    return path


def decoder_loss(
    autoencoder: nn.Module, x: torch.Tensor, edge_weight: float = VAETrainConfig.edge_weight
) -> torch.Tensor:
    """`train-vae`'s reconstruction loss (foreground-weighted L1 + L2, edges) of a batch of frames
    ``[B, 3, H, W]`` in [-1, 1] after encoding (frozen, sampled) and decoding."""
    with torch.no_grad():
        z = autoencoder.encode(x).latent_dist.sample()
    return reconstruction_loss(autoencoder.decode(z).sample, x, edge_weight)[0]


def train_decoder_lora(
    csv_path: str | os.PathLike, output: str | os.PathLike, base: str | os.PathLike, cfg: DecoderLoRAConfig
) -> Path:
    """Train a LoRA on the decoder of `base`'s autoencoder on the frames of `csv_path`'s videos; write it as a
    peft adapter folder `output` (written when training ends, atomically per file). Returns `output`."""
    vae_dir = resolve_vae_dir(base)
    frames = load_frames(csv_path, cfg.max_videos)
    torch.manual_seed(cfg.seed)
    ae = load_autoencoder(vae_dir).eval().requires_grad_(False)
    spec = AdapterSpec(rank=cfg.rank, alpha=float(cfg.alpha or cfg.rank), dropout=0.0,
                       target_modules=decoder_targets(ae), base_name=f"{base} (VAE)",
                       base_fingerprint=base_fingerprint(ae))  # fmt: skip
    inject(ae, spec)
    params = [p for n, p in ae.named_parameters() if is_adapter_key(n)]
    logger.info("train-vae --decoder-lora: %d frames of %s, %d adapted convolutions, %d parameters",
                len(frames), csv_path, len(spec.target_modules), sum(p.numel() for p in params))  # fmt: skip
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        x = to_tensor(frames[gen.integers(0, len(frames), cfg.batch_size)])
        loss = decoder_loss(ae, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            logger.info("train-vae --decoder-lora step %d/%d loss %.5f (%.2f steps/s)", step, cfg.steps,
                        loss.item(), step / (time.perf_counter() - t0))  # fmt: skip
    tensors = {n: p for n, p in ae.named_parameters() if is_adapter_key(n)}
    out = save_adapter(output, spec, tensors, dtype=None if cfg.dtype == "fp32" else DTYPES[cfg.dtype])
    logger.info("train-vae --decoder-lora: adapter written to %s", out)
    return out
