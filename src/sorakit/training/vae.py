"""Training a small image autoencoder (diffusers ``AutoencoderKL``) on video frames.

Used for the built-in model: sorakit's synthetic "shapes" videos are far from natural images, so a tiny
autoencoder trained on their frames decodes sharper shapes than the Stable Diffusion VAE, at a fraction
of its cost. The result is saved with ``save_pretrained`` and loads through the same per-frame VAE path
(:class:`sorakit.encoders.vae.VideoVAE`) as the SD VAE.

Loss per frame (pixels in [-1, 1]): foreground-weighted L1 + L2 (objects cover ~10% of the frame, so
their pixels count :data:`FG_WEIGHT` times more), L1 of the horizontal / vertical finite differences
(edges), and a small KL term. The latent ``scaling_factor`` is set at the end to ``1 / std`` of the
latents of the training frames, so diffusion sees unit-variance latents.

Training is resumable: ``OUTPUT/train_state/`` holds the weights, optimiser state and step, written
atomically every ``ckpt_every`` steps.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from sorakit.data.video import read_video, write_image
from sorakit.errors import UserError
from sorakit.fileutil import follow_umask, open_new, save_safetensors, write_text_atomic
from sorakit.logging import get_logger
from sorakit.safeload import load_safetensors, load_torch

logger = get_logger(__name__)

FG_WEIGHT = 10.0


@dataclass
class VAETrainConfig:
    """Hyperparameters of :func:`train_vae`."""

    block_out_channels: list[int] = field(
        default_factory=lambda: [32, 64, 64]
    )  # len-1 = number of 2x downsamplings
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 16
    steps: int = 1500
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 50
    kl_weight: float = 1e-6
    edge_weight: float = 0.5
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 250
    max_videos: int = 2000  # videos of the CSV loaded into memory


def build_autoencoder(cfg: VAETrainConfig, sample_size: int = 64):
    """A fresh ``AutoencoderKL`` with ``len(block_out_channels) - 1`` 2x downsamplings."""
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    if n < 1:
        raise UserError("block_out_channels must name at least one block")
    for c in cfg.block_out_channels:
        if c % cfg.norm_num_groups:
            raise UserError(
                f"block_out_channels {c} is not divisible by norm_num_groups {cfg.norm_num_groups}"
            )
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=sample_size,
    )


def load_frames(csv_path: str | os.PathLike, max_videos: int) -> np.ndarray:
    """All frames of the first `max_videos` videos of a CSV (path column): uint8 ``[N, H, W, 3]``."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"no such CSV: {csv_path}")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0]:
        raise UserError(f"{csv_path}: expected a header row with a 'path' column and at least one row")
    frames = []
    for row in rows[:max_videos]:
        p = Path(row["path"])
        if not p.is_absolute():
            p = csv_path.parent / p
        frames.append(read_video(p))
    shapes = {f.shape[1:] for f in frames}
    if len(shapes) != 1:
        raise UserError(f"{csv_path}: videos of different sizes {sorted(shapes)}; train-vae needs one size")
    return np.concatenate(frames)


def reconstruction_loss(y: torch.Tensor, x: torch.Tensor, edge_weight: float) -> tuple[torch.Tensor, ...]:
    """(l1 + l2 + edge_weight * edge, l1, edge) of decoded frames `y` against `x` (``[B, 3, H, W]`` in [-1, 1]):
    foreground-weighted L1 and L2, L1 of the finite differences."""
    fg = (x.amax(dim=1, keepdim=True) > -0.8).float()  # any channel brighter than ~10%
    w = 1.0 + (FG_WEIGHT - 1.0) * fg
    l1 = (w * (y - x).abs()).mean()
    l2 = (w * (y - x) ** 2).mean()
    edge = ((y[..., 1:, :] - y[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])).abs().mean() + (
        (y[..., :, 1:] - y[..., :, :-1]) - (x[..., :, 1:] - x[..., :, :-1])
    ).abs().mean()
    return l1 + l2 + edge_weight * edge, l1, edge


def vae_loss(model, x: torch.Tensor, cfg: VAETrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of a batch of frames ``[B, 3, H, W]`` in [-1, 1]."""
    post = model.encode(x).latent_dist
    rec, l1, edge = reconstruction_loss(model.decode(post.sample()).sample, x, cfg.edge_weight)
    kl = post.kl().mean()
    loss = rec + cfg.kl_weight * kl
    return loss, {"loss": loss.item(), "l1": l1.item(), "edge": edge.item(), "kl": kl.item()}


def _lr_at(step: int, cfg: VAETrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def _save_state(state_dir: Path, model, opt, step: int, cfg: VAETrainConfig) -> None:
    tmp = state_dir.with_name(state_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    for name, obj in (("optimizer.pt", opt.state_dict()), ("rng.pt", {"torch_rng": torch.get_rng_state()})):
        with open_new(tmp / name) as fh:  # a fresh folder: every file in it is new
            torch.save(obj, fh)
    write_text_atomic(
        tmp / "state.json", json.dumps({"step": step, "config": asdict(cfg)}, indent=2, allow_nan=False)
    )
    if state_dir.exists():
        old = state_dir.with_name(state_dir.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(state_dir, old)
        os.replace(tmp, state_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, state_dir)


def _load_state(state_dir: Path, model, opt) -> int:
    model.load_state_dict(load_safetensors(state_dir / "model.safetensors"), strict=True)
    opt.load_state_dict(load_torch(state_dir / "optimizer.pt"))
    torch.set_rng_state(load_torch(state_dir / "rng.pt")["torch_rng"])
    return int(json.loads((state_dir / "state.json").read_text())["step"])


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> float ``[N, 3, H, W]`` in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float ``[N, 3, H, W]`` in [-1, 1] -> uint8 ``[N, H, W, 3]``."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def reconstruct(model, frames: np.ndarray, batch: int = 64) -> np.ndarray:
    """Encode (posterior mean) and decode uint8 frames ``[N, H, W, 3]``."""
    out = []
    for i in range(0, len(frames), batch):
        x = to_tensor(frames[i : i + batch])
        out.append(to_uint8(model.decode(model.encode(x).latent_dist.mode()).sample))
    return np.concatenate(out)


@torch.no_grad()
def latent_std(model, frames: np.ndarray, n: int = 512) -> float:
    """Standard deviation of the posterior-mean latents of up to `n` frames."""
    idx = np.linspace(0, len(frames) - 1, min(n, len(frames))).astype(int)
    zs = [model.encode(to_tensor(frames[idx[i : i + 64]])).latent_dist.mode() for i in range(0, len(idx), 64)]
    return float(torch.cat(zs).std())


def preview_grid(frames: np.ndarray, recon: np.ndarray, cols: int = 8) -> np.ndarray:
    """Originals over reconstructions, `cols` per row pair: uint8 ``[2R*H, cols*W, 3]``."""
    n = (len(frames) // cols) * cols
    h, w = frames.shape[1:3]
    rows = []
    for i in range(0, n, cols):
        rows.append(np.concatenate(list(frames[i : i + cols]), axis=1))
        rows.append(np.concatenate(list(recon[i : i + cols]), axis=1))
    grid = np.concatenate(rows, axis=0)
    assert grid.shape == (2 * (n // cols) * h, cols * w, 3)
    return grid


def train_vae(csv_path: str | os.PathLike, output: str | os.PathLike, cfg: VAETrainConfig) -> Path:
    """Train an autoencoder on the frames of the videos of `csv_path`; save it to `output` (diffusers
    format, with ``scaling_factor`` set) and ``output/recon.png`` (originals over reconstructions)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    frames = load_frames(csv_path, cfg.max_videos)
    size = frames.shape[1]
    factor = 2 ** (len(cfg.block_out_channels) - 1)
    if frames.shape[1] % factor or frames.shape[2] % factor:
        raise UserError(
            f"frame size {frames.shape[1:3]} is not divisible by the downsampling factor {factor}"
        )
    logger.info(
        "train-vae: %d frames of %dx%d from %s", len(frames), frames.shape[1], frames.shape[2], csv_path
    )

    torch.manual_seed(cfg.seed)
    model = build_autoencoder(cfg, sample_size=size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    state_dir = output / "train_state"
    step = 0
    if (state_dir / "state.json").is_file():
        step = _load_state(state_dir, model, opt)
        logger.info("train-vae: resumed at step %d", step)
    gen = np.random.default_rng([cfg.seed, step])
    model.train()
    t0 = time.perf_counter()
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        x = to_tensor(frames[gen.integers(0, len(frames), cfg.batch_size)])
        if gen.random() < 0.5:  # the world is left-right symmetric; flips add variety for free
            x = x.flip(-1)
        loss, parts = vae_loss(model, x, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            rate = step / (time.perf_counter() - t0)
            logger.info(
                "train-vae step %d/%d loss %.4f l1 %.4f edge %.4f kl %.1f (%.2f steps/s)",
                step,
                cfg.steps,
                parts["loss"],
                parts["l1"],
                parts["edge"],
                parts["kl"],
                rate,
            )
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            _save_state(state_dir, model, opt, step, cfg)
    model.eval()
    std = latent_std(model, frames)
    model.register_to_config(scaling_factor=1.0 / std)
    model.save_pretrained(str(output), safe_serialization=True)
    follow_umask(output)
    sample = frames[np.linspace(0, len(frames) - 1, 32).astype(int)]
    write_image(output / "recon.png", preview_grid(sample, reconstruct(model, sample)))
    logger.info("train-vae: saved %s (scaling_factor %.4f)", output, 1.0 / std)
    return output


@dataclass
class DecoderTuneConfig:
    """Hyperparameters of :func:`finetune_decoder`."""

    steps: int = 1600
    batch_size: int = 32  # frames per step
    lr: float = 5e-4  # linear warm-up over `warmup_steps`, constant, then linear to 0 over the second half
    warmup_steps: int = 50
    target_share: float = 0.6  # share of each batch from the (latent, target) pairs; the rest are anchors
    edge_weight: float = 0.5
    seed: int = 0
    log_every: int = 100


def _tune_lr(step: int, cfg: DecoderTuneConfig) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    return cfg.lr * warm * min(1.0, 2.0 * (1.0 - step / cfg.steps))


def _frames_of(latents: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Video pairs (latents ``[B, c, T, h, w]``, uint8 ``[B, T, H, W, 3]``) -> per-frame pairs."""
    b, c, t, h, w = latents.shape
    if frames.shape[:2] != (b, t):
        raise UserError(f"latents {list(latents.shape)} and frames {list(frames.shape)} do not pair up")
    return latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), frames.reshape(b * t, *frames.shape[2:])


def finetune_decoder(
    autoencoder,
    pairs: tuple[torch.Tensor, torch.Tensor],
    anchors: tuple[torch.Tensor, torch.Tensor],
    scaling_factor: float,
    cfg: DecoderTuneConfig,
):
    """Fine-tune an ``AutoencoderKL``'s decoder (and ``post_quant_conv``; the encoder, hence the latent space,
    stays as it is) to decode `pairs` -- scaled latents ``[B, c, T, h, w]`` and the uint8 frames ``[B, T, H, W,
    3]`` they should decode to -- while still reconstructing `anchors` (the same, from the encoder). Each step
    draws ``target_share`` of its frames from `pairs`; the loss is :func:`reconstruction_loss`. Returns the
    autoencoder, in eval mode."""
    zp, xp = _frames_of(*pairs)
    za, xa = _frames_of(*anchors)
    params = [*autoencoder.decoder.parameters(), *autoencoder.post_quant_conv.parameters()]
    autoencoder.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    n_pairs = max(1, min(cfg.batch_size, round(cfg.batch_size * cfg.target_share)))
    autoencoder.train()
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _tune_lr(step, cfg)
        ip = torch.randint(0, len(zp), (n_pairs,), generator=gen)
        ia = torch.randint(0, len(za), (cfg.batch_size - n_pairs,), generator=gen)
        z = torch.cat([zp[ip], za[ia]]).float() / scaling_factor
        x = to_tensor(torch.cat([xp[ip], xa[ia]]).numpy())
        loss, _, _ = reconstruction_loss(autoencoder.decode(z).sample, x, cfg.edge_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            rate = (step + 1) / (time.perf_counter() - t0)
            logger.info(
                "decoder tuning step %d/%d loss %.4f (%.2f steps/s)", step + 1, cfg.steps, loss.item(), rate
            )
    autoencoder.requires_grad_(False)
    return autoencoder.eval()
