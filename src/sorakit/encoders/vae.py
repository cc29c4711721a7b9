"""The per-frame video VAE: a diffusers ``AutoencoderKL`` applied to every frame of ``[B, C, T, H, W]``.

Frames are folded into the batch and processed ``micro_batch_size`` at a time, so memory stays bounded
for long or large videos (Open-Sora 1.0 used 128 at 512x512). Latents are multiplied by the VAE's
``scaling_factor`` (read from its config: 0.18215 for the Stable Diffusion VAE ``sd-vae-ft-ema``), and
the spatial downsampling factor is derived from the architecture (``2 ** (len(block_out_channels) - 1)``,
8 for SD), so smaller autoencoders such as the built-in model's work unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from einops import rearrange
from torch import nn

from sorakit.errors import UserError
from sorakit.hub import resolve_dir

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

    from sorakit.config import VAEConfig


class VideoVAE(nn.Module):
    """Wraps an ``AutoencoderKL`` to encode/decode videos frame by frame.

    Args:
        autoencoder: the diffusers image autoencoder (frozen here).
        micro_batch_size: frames per encoder/decoder call; ``None`` = all frames of the batch at once.
        scaling_factor: latent scale; ``None`` = ``autoencoder.config.scaling_factor``.
    """

    def __init__(
        self,
        autoencoder: AutoencoderKL,
        micro_batch_size: int | None = None,
        scaling_factor: float | None = None,
    ):
        super().__init__()
        self.autoencoder = autoencoder
        self.autoencoder.eval().requires_grad_(False)
        if micro_batch_size is not None and micro_batch_size < 1:
            raise UserError(f"vae.micro_batch_size must be positive, got {micro_batch_size}")
        self.micro_batch_size = micro_batch_size
        config = autoencoder.config
        self.scaling_factor = float(scaling_factor if scaling_factor is not None else config.scaling_factor)
        self.latent_channels = int(config.latent_channels)
        self.in_channels = int(config.in_channels)
        self.downsample_factor = 2 ** (len(config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.autoencoder.parameters()).dtype

    def latent_size(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Latent ``(T, h, w)`` of a ``num_frames x height x width`` video; UserError if not divisible."""
        f = self.downsample_factor
        if height % f or width % f:
            raise UserError(
                f"resolution {height}x{width} is not divisible by the VAE's downsampling factor {f}"
            )
        return num_frames, height // f, width // f

    def _chunks(self, n: int, micro_batch_size: int | None = None) -> list[slice]:
        step = micro_batch_size or self.micro_batch_size or n
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Pixels ``[B, C, T, H, W]`` in ``[-1, 1]`` -> scaled latents ``[B, c, T, H/f, W/f]``.

        ``sample=True`` draws from the posterior (as Open-Sora's training does); ``False`` takes its mean.
        """
        b = x.shape[0]
        frames = rearrange(x, "b c t h w -> (b t) c h w").to(self.device, self.dtype)
        out = []
        for part in self._chunks(frames.shape[0]):
            dist = self.autoencoder.encode(frames[part]).latent_dist
            out.append(dist.sample(generator=generator) if sample else dist.mode())
        z = torch.cat(out) * self.scaling_factor
        return rearrange(z, "(b t) c h w -> b c t h w", b=b)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, micro_batch_size: int | None = None) -> torch.Tensor:
        """Scaled latents ``[B, c, T, h, w]`` -> pixels ``[B, C, T, h*f, w*f]``, roughly in ``[-1, 1]``
        (not clamped). `micro_batch_size`: frames per decoder call for this call (default: the VAE's)."""
        if micro_batch_size is not None and micro_batch_size < 1:
            raise UserError(f"the VAE batch must be positive, got {micro_batch_size}")
        b = z.shape[0]
        frames = rearrange(z, "b c t h w -> (b t) c h w").to(self.device, self.dtype) / self.scaling_factor
        chunks = self._chunks(frames.shape[0], micro_batch_size)
        out = [self.autoencoder.decode(frames[part]).sample for part in chunks]
        return rearrange(torch.cat(out), "(b t) c h w -> b c t h w", b=b)


# The built-in model's 0.95M-parameter AutoencoderKL (64x64 RGB -> 16x16x4), shipped with the package:
# the `tiny` preset uses it so that training from videos needs no download.
BUILTIN_VAE = "builtin:vae"
BUILTIN_VAE_DIR = Path(__file__).resolve().parents[1] / "builtin" / "model" / "vae"


def load_autoencoder(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """``AutoencoderKL.from_pretrained`` on a local directory; a full Stable Diffusion pipeline directory
    (with a ``vae/`` subfolder) works too."""
    from diffusers import AutoencoderKL
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    path = Path(path)
    if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
        path = path / "vae"
    if not (path / "config.json").is_file():
        raise UserError(f"VAE: {path} has no config.json (expected a diffusers AutoencoderKL directory)")
    try:
        return AutoencoderKL.from_pretrained(
            str(path), local_files_only=True, torch_dtype=dtype, low_cpu_mem_usage=False
        )
    except (OSError, ValueError) as exc:
        raise UserError(f"VAE: cannot load {path}: {str(exc).splitlines()[0]}") from exc


def peek_downsample_factor(path: str | os.PathLike | None) -> int:
    """The spatial downsampling factor of the VAE at `path`, from its config.json alone (no weights);
    8 (the Stable Diffusion VAE) when the folder is not on disk yet (a hub id fetched later)."""
    path = BUILTIN_VAE_DIR if path == BUILTIN_VAE else path
    if not path or not Path(path).is_dir():
        return 8
    for cand in (Path(path) / "config.json", Path(path) / "vae" / "config.json"):
        if cand.is_file():
            try:
                return 2 ** (len(json.loads(cand.read_text())["block_out_channels"]) - 1)
            except (KeyError, ValueError, TypeError) as exc:
                raise UserError(f"{cand}: not a diffusers AutoencoderKL config ({exc})") from exc
    return 8


def build_vae(
    cfg: VAEConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    root: Path | None = None,
) -> VideoVAE:
    """The VAE described by ``cfg`` (``type`` 'sd-vae' or 'builtin', ``path`` a directory or hub id,
    ``micro_batch_size``, ``scaling_factor``). Relative paths resolve against ``root`` when given
    (a model directory)."""
    if cfg.type not in ("sd-vae", "builtin"):
        raise UserError(f"unknown VAE type '{cfg.type}' (valid: sd-vae, builtin)")
    if not cfg.path:
        raise UserError("no VAE given: pass --vae DIR")
    path: Path
    if cfg.path == BUILTIN_VAE:
        path = BUILTIN_VAE_DIR
    elif root is not None and not Path(cfg.path).is_absolute() and (root / cfg.path).is_dir():
        path = root / cfg.path
    else:
        path = resolve_dir(cfg.path, what="VAE", flag="--vae")
    autoencoder = load_autoencoder(path, dtype=dtype)
    return VideoVAE(autoencoder, cfg.micro_batch_size, cfg.scaling_factor).to(device)
