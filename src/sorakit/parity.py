"""Parity profiles: reproduce an original implementation's samples number for number.

    sorakit generate --preset opensora/16x256x256 --ckpt OpenSora-v1-HQ-16x256x256.pth --parity opensora-1.0 ...
    # or in a config: [inference] parity = "opensora-1.0"

sorakit's defaults differ from Open-Sora 1.0 where the original did something by accident (guiding 3 of
4 latent channels) or in a way that ties results to batch layout and device (one global RNG stream). The
``opensora-1.0`` profile switches every such default back, so that a given seed gives the sample the
original ``scripts/inference.py`` gives with the same weights (docs/differences.md lists each difference):

- guidance: IDDPM guides channels 0-2 only (upstream's ``forward_with_cfg``), DPM-Solver all channels;
- noise: the global torch RNG, seeded once (mmengine's ``set_random_seed``) *before* the models are built
  (their initialisation consumes it on the CPU), ``z`` drawn on the device, IDDPM's step noise drawn for
  both classifier-free-guidance halves (``[2n, ...]``, of which the first n rows are used), batches
  continuing the same stream instead of reseeding;
- precision on CUDA: STDiT and the VAE in fp16, T5 in fp32, TF32 matmuls allowed;
- uint8 frames: ``x * 255 + 0.5`` truncated, computed in the decoder's dtype, as ``save_sample`` does;
- prompt files keep their empty lines (each is a prompt); videos are written at libx264's CRF 23.

Caption cleaning for T5 is not part of the profile: it is sorakit's default too (see
:mod:`sorakit.encoders.caption_clean`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from sorakit.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used: `sorakit generate` validates before importing it
    import torch


@dataclass(frozen=True)
class ParityProfile:
    """What one original implementation did differently from sorakit's defaults."""

    name: str
    guided_channels: dict[str, int] = field(default_factory=dict)
    """sampler -> number of leading channels guided; samplers not listed guide all of them."""
    cuda_dtype: str = "fp16"
    """transformer and VAE precision on CUDA (the text encoder stays fp32)."""
    crf: int = 23
    """H.264 quality the original's writer used (libx264's default)."""
    keep_empty_prompts: bool = True
    """prompt files: empty lines are prompts too."""


PROFILES: dict[str, ParityProfile] = {
    "opensora-1.0": ParityProfile(
        "opensora-1.0", guided_channels={"iddpm": 3}
    ),  # its DPM-Solver guided all channels; it had no DDIM or rflow sampler
}


def get_profile(name: str | None) -> ParityProfile | None:
    """The profile called ``name`` (None/'' -> None); an unknown name is a UserError."""
    if not name:
        return None
    key = str(name).lower()
    if key not in PROFILES:
        raise UserError(f"unknown parity profile '{name}' (valid: {', '.join(PROFILES)})")
    return PROFILES[key]


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (every device) with ``seed``, as mmengine's
    ``set_random_seed`` does in upstream ``scripts/inference.py``. Call it before building the models."""

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def initial_noise(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``z ~ N(0, 1)`` float32 drawn from the global generator of ``device`` (upstream: ``torch.randn(n,
    *z_size, device=device)``), so on CUDA it comes from the CUDA generator, not the CPU one."""
    return torch.randn(shape, device=device)


class UpstreamStepNoise:
    """IDDPM's per-step noise as upstream draws it: ``randn_like(x)`` on the doubled CFG batch ``[2n, ...]``
    at every step (the last one included), from the global generator of the latents' device; the sampler
    gets the first n rows, which are the rows upstream keeps.

    Pass an instance as ``noise=`` to :meth:`sorakit.diffusion.iddpm.IDDPM.sample`.
    """

    def __init__(self, like: torch.Tensor, doubled: bool = True) -> None:
        self.shape = ((2 if doubled else 1) * like.shape[0], *like.shape[1:])
        self.n = like.shape[0]
        self.device, self.dtype = like.device, like.dtype

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield torch.randn(self.shape, device=self.device, dtype=self.dtype)[: self.n]


def sampler_kwargs(sampler: str, z: torch.Tensor) -> dict:
    """Extra keyword arguments for ``sampler.sample`` under parity: IDDPM's step noise (over the doubled
    batch: upstream always runs the guidance batch); samplers that draw no noise get none."""
    if sampler == "iddpm":
        return {"noise": UpstreamStepNoise(z.float())}
    return {}


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """``[B, 3, T, H, W]`` in ``[-1, 1]`` -> uint8 ``[B, T, H, W, 3]`` with upstream ``save_sample``'s
    arithmetic: clamp, ``(x + 1) / 2``, ``* 255 + 0.5``, clamp, truncate, each step in the video's dtype
    (fp16 on a GPU run), which can differ by one level from rounding in float32."""
    x = video.clamp(-1, 1).sub(-1).div(2.0).mul(255).add(0.5).clamp(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous()


def runtime_dtype(profile: ParityProfile, device: torch.device) -> str:
    """The transformer/VAE dtype name a run under ``profile`` uses on ``device`` (fp32 off CUDA)."""
    return profile.cuda_dtype if device.type == "cuda" else "fp32"


def apply_runtime(profile: ParityProfile) -> None:
    """Global switches upstream's script set: TF32 matmuls and convolutions on CUDA (it affects fp32 T5)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
