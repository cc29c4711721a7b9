"""Reference-frame conditioning shared by every sampler (Open-Sora 1.1 / 1.2 masks), as small pure functions.

A `Condition` holds reference latents `[B, C, T, H, W]` and a per-frame edit ratio `[B, T]` in [0, 1]. Each
sampler step has a noise *level* in [0, 1] (rflow t / T, DDPM t / num_timesteps, DPM-Solver its continuous
t). At a step, frame f is *generated* when `ratio_f > 0 and ratio_f >= level`:

- ratio 1: generated at every step, from the initial noise (plain text-to-video);
- ratio 0: never generated: it holds the reference latent at every step (reset after every update) and the
  model sees it as a clean frame (`x_mask` False: timestep-0 modulation);
- 0 < ratio < 1 (SDEdit): held like a ratio-0 frame until the level falls to the ratio, then it *enters*: it
  is replaced by the reference noised to the current level with the frame's own initial noise (so the random
  stream is the one of plain sampling) and generated from there on.

The sampler passes `x_mask = generated` to the model at every step; guidance (`GuidedModel`) doubles it with
the batch. At the end, held frames are exactly their reference latents.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Condition:
    """Reference latents and per-frame edit ratios for a batch.

    Attributes:
        latents: `[B, C, T, H, W]` reference latents (values at ratio-1 frames are ignored).
        ratio: `[B, T]` float edit ratio: 1 = generate, 0 = hard condition, between = SDEdit strength.
    """

    latents: torch.Tensor
    ratio: torch.Tensor

    def __post_init__(self) -> None:
        if self.latents.dim() != 5 or tuple(self.ratio.shape) != (
            self.latents.shape[0],
            self.latents.shape[2],
        ):
            raise ValueError(
                f"condition: latents [B, C, T, H, W] and ratio [B, T] expected, got {list(self.latents.shape)} "
                f"and {list(self.ratio.shape)}"
            )
        if bool(((self.ratio < 0) | (self.ratio > 1)).any()):
            raise ValueError("condition: edit ratios must be in [0, 1]")

    def to(self, like: torch.Tensor) -> Condition:
        """On `like`'s device, latents in its dtype."""
        return Condition(self.latents.to(like), self.ratio.to(like.device, torch.float64))


def generated(ratio: torch.Tensor, level: float) -> torch.Tensor:
    """Frames generated at noise level `level` in [0, 1]: `[B, T]` bool."""
    return (ratio > 0) & (ratio >= level)


def select_frames(frame_mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a` on frames where `frame_mask [B, T]` is True, `b` elsewhere; a, b `[B, C, T, ...]`."""
    shape = (frame_mask.shape[0], 1, frame_mask.shape[1]) + (1,) * (a.dim() - 3)
    return torch.where(frame_mask.reshape(shape), a, b)


def start(z: torch.Tensor, cond: Condition) -> torch.Tensor:
    """The initial latents: noise `z` on frames generated from the start (ratio 1), the reference elsewhere."""
    return select_frames(generated(cond.ratio, 1.0), z, cond.latents)


def enter(
    x: torch.Tensor,
    z: torch.Tensor,
    cond: Condition,
    level: float,
    prev_level: float,
    noised: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Before the model call of a step: frames that start being generated at `level` (not at `prev_level`)
    become `noised(reference, z)`; returns (x, x_mask `[B, T]` bool = frames generated at this step)."""
    now = generated(cond.ratio, level)
    entering = now & ~generated(cond.ratio, prev_level)
    if bool(entering.any()):
        x = select_frames(entering, noised(cond.latents, z), x)
    return x, now


def hold(x: torch.Tensor, cond: Condition, x_mask: torch.Tensor) -> torch.Tensor:
    """After an update: frames not generated at this step go back to their reference latents."""
    return select_frames(x_mask, x, cond.latents)
