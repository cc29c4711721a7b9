"""How much memory a generation request needs, estimated from config files before any weights load.

A request far beyond the machine (``--resolution 4096x4096`` with the built-in model) used to start, grow
and sit for minutes without finishing a step. `check_memory` estimates the peak -- the transformer's
weights, its activations at the request's token count, and the VAE decoding every frame at full size --
and refuses with one line naming the estimate and the memory available, unless forced (``--force`` or
``SORAKIT_FORCE_MEMORY=1``). The estimate is deliberately rough (within a factor of ~2): it exists to catch
requests that are off by orders of magnitude, not to pack a GPU.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sorakit.config import Config
from sorakit.encoders.vae import BUILTIN_VAE, BUILTIN_VAE_DIR
from sorakit.errors import UserError
from sorakit.modeldir import read_model_dir
from sorakit.models import MODELS, read_model_config

FORCE_ENV = "SORAKIT_FORCE_MEMORY"
_SD_VAE_CHANNELS = [128, 256, 512, 512]  # the Stable Diffusion VAE's block_out_channels
_GIB = 2**30


@dataclass
class Estimate:
    """Bytes of the parts of a request's peak memory."""

    weights: int
    transformer: int  # activations of one block at the request's token count (no grad at inference)
    vae_decode: int  # the decoder's largest activations, for the frames decoded at once

    @property
    def peak(self) -> int:
        return self.weights + max(self.transformer, self.vae_decode)

    def describe(self) -> str:
        return (f"about {self.peak / _GIB:.1f} GiB (transformer activations {self.transformer / _GIB:.1f} GiB, "
                f"VAE decode {self.vae_decode / _GIB:.1f} GiB, weights {self.weights / _GIB:.1f} GiB)")  # fmt: skip


def _transformer_config(cfg: Config, model_dir: Path | None) -> dict[str, Any]:
    if model_dir is not None:
        transformer_dir, _ = read_model_dir(model_dir)
        return dict(read_model_config(transformer_dir)["config"])
    return {**MODELS.get(cfg.model.type, (None, {}))[1], **cfg.model.arch}


def _vae_channels(path: str | None) -> list[int]:
    """block_out_channels of the VAE at `path` (config.json only); the SD VAE's when not on disk yet."""
    folder = BUILTIN_VAE_DIR if path == BUILTIN_VAE else path
    for cand in (Path(folder or "") / "config.json", Path(folder or "") / "vae" / "config.json"):
        if folder and cand.is_file():
            try:
                return [int(c) for c in json.loads(cand.read_text())["block_out_channels"]]
            except (KeyError, ValueError, TypeError):
                break  # a broken config is reported where the VAE is loaded
    return list(_SD_VAE_CHANNELS)


def estimate(
    cfg: Config, model_dir: Path | None, settings: Any, factor: int, patch: tuple[int, ...]
) -> Estimate:
    """The memory `settings` (a pipelines.validate.Settings) need with the model `cfg` / `model_dir`
    describes; `factor`, `patch`: the VAE's downsampling and the transformer's patch size."""
    arch = _transformer_config(cfg, model_dir)
    hidden, depth = int(arch.get("hidden_size", 1152)), int(arch.get("depth", 28))
    heads, mlp = int(arch.get("num_heads", 16)), float(arch.get("mlp_ratio", 4.0))
    text_len = int(arch.get("model_max_length", cfg.text_encoder.model_max_length))
    width = 2 if settings.dtype in ("bf16", "fp16") else 4
    rows = settings.batch_size * 2  # classifier-free guidance runs the conditional and unconditional rows
    tokens = (
        max(settings.num_frames // patch[0], 1)
        * (settings.height // (factor * patch[1]))
        * (settings.width // (factor * patch[2]))
    )
    # inside a block: the residual stream, q/k/v, the attention output and the MLP's hidden layer; plus the
    # cross-attention scores, which a masked attention materialises ([rows, heads, tokens, text_len])
    transformer = rows * tokens * (hidden * (6 + mlp) + heads * text_len) * width
    weights = depth * (12 + 2 * mlp) * hidden * hidden * width
    # the decoder's last up-block works at full size with the first block_out_channels; ~6 such tensors live
    # (upsampled input, conv outputs, normalisation temporaries; measured: the built-in model at 512x512,
    # 4 frames peaks 0.9 GB above its 128x128 run, this gives 0.8); the VAE decodes in float32 (force_upcast)
    frames = cfg.vae.micro_batch_size or settings.batch_size * settings.num_frames
    channels = _vae_channels(cfg.vae.path)[0]
    vae_decode = frames * 6 * channels * settings.height * settings.width * 4
    return Estimate(weights=weights, transformer=transformer, vae_decode=vae_decode)


def available_bytes(device: str) -> tuple[int, str] | None:
    """(bytes free, what they are) on `device`; None where it cannot be told (MPS)."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free), f"free on {device}"
    if device != "cpu":
        return None
    free = _meminfo_available()
    limit = _cgroup_free()
    if limit is not None and (free is None or limit < free):
        return limit, "left under this container's memory limit"
    return (free, "available (CPU memory)") if free is not None else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_free() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def check_memory(cfg: Config, model_dir: Path | None, settings: Any, factor: int, patch: tuple[int, ...],
                 force: bool = False) -> Estimate:  # fmt: skip
    """Refuse (one UserError line) a request whose estimated peak exceeds the memory free on its device,
    unless `force` or ``$SORAKIT_FORCE_MEMORY`` is set. Returns the estimate."""
    est = estimate(cfg, model_dir, settings, factor, patch)
    avail = available_bytes(settings.device)
    if force or os.environ.get(FORCE_ENV, "") not in ("", "0") or avail is None or est.peak <= avail[0]:
        return est
    raise UserError(
        f"{settings.num_frames} frames at {settings.height}x{settings.width} (batch {settings.batch_size}) need "
        f"{est.describe()}, but only {avail[0] / _GIB:.1f} GiB is {avail[1]}: use a smaller resolution, fewer frames "
        f"or a smaller batch, set vae.micro_batch_size, or pass --force ({FORCE_ENV}=1) to try anyway"
    )
