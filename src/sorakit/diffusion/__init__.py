"""Diffusion: schedules (pure functions), samplers and training objectives.

Sampling (the pipeline)::

    sampler = build_sampler("iddpm", 100)          # or "dpm-solver", "ddim", "rflow"
    x0 = sampler.sample(model_fn, z, generator=g)  # model_fn(x [B, C, ...], t [B]) -> prediction
    sampler.num_model_calls                        # calls made by the last sample()

Training (the trainer)::

    objective = build_objective("iddpm")           # or "rflow"
    t = objective.sample_timesteps(B, generator, device)
    loss = objective.training_losses(model_fn, x0, t, generator=g)["loss"]  # [B]

Guidance is a model wrapper: `model_fn = guidance_model_fn(model, y, y_null, scale, mask=mask)`.

Timesteps the samplers pass to `model_fn`: IDDPM / DDIM the original integer timesteps
(0..999, int64); DPM-Solver continuous float timesteps on the same 0..999 scale; rectified flow
float times on Open-Sora 1.2's 0..1000 scale (1000 = noise).
"""

from __future__ import annotations

from typing import Protocol

import torch

from sorakit.diffusion.common import ModelFn
from sorakit.diffusion.dpm_solver import DPMSolver
from sorakit.diffusion.guidance import GuidedModel, guidance_model_fn, guide
from sorakit.diffusion.iddpm import DDIM, IDDPM
from sorakit.diffusion.rflow import RectifiedFlow, shift_ratio, time_shift
from sorakit.diffusion.schedules import (
    cosine_betas,
    gaussian_coefficients,
    linear_betas,
    named_betas,
    respace_betas,
    space_timesteps,
)
from sorakit.errors import ConfigError


class Sampler(Protocol):
    """What the pipeline relies on."""

    name: str
    num_steps: int
    num_model_calls: int

    def sample(
        self,
        model_fn: ModelFn,
        z: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor: ...


class Objective(Protocol):
    """What the trainer relies on."""

    def sample_timesteps(self, batch_size: int, generator=None, device=None) -> torch.Tensor: ...

    def training_losses(
        self, model_fn: ModelFn, x_start: torch.Tensor, t=None, noise=None, generator=None, **model_kwargs
    ) -> dict[str, torch.Tensor]: ...


SAMPLERS = {
    "iddpm": IDDPM,
    "ddim": DDIM,
    "dpm-solver": DPMSolver,
    "rflow": RectifiedFlow,
}
_ALIASES = {"dpm_solver": "dpm-solver", "dpmsolver": "dpm-solver", "dpm-solver++": "dpm-solver"}

OBJECTIVES = {"iddpm": IDDPM, "rflow": RectifiedFlow}


def sampler_name(name: str) -> str:
    """The canonical name of a sampler (`SAMPLERS` key; aliases such as "dpm_solver" accepted)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in SAMPLERS:
        raise ConfigError(f"unknown sampler '{name}' (valid: {', '.join(SAMPLERS)})")
    return key


def build_sampler(name: str, num_steps: int, **kwargs) -> Sampler:
    """A sampler by name (`SAMPLERS`, or an alias) with `num_steps` model evaluations; kwargs go to its class."""
    key = sampler_name(name)
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError(f"sampler steps must be a positive integer, got {num_steps!r}")
    try:
        return SAMPLERS[key](num_sampling_steps=num_steps, **kwargs)
    except TypeError as e:
        raise ConfigError(f"bad option for sampler {key!r}: {e}") from None


def build_objective(name: str, **kwargs) -> Objective:
    """A training objective by name: "iddpm" (all 1000 steps, MSE + VB) or "rflow"."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown training objective {name!r} (choose from {', '.join(OBJECTIVES)})")
    try:
        if name == "iddpm":
            kwargs.setdefault("num_sampling_steps", None)
        return OBJECTIVES[name](**kwargs)
    except TypeError as e:
        raise ConfigError(f"bad option for objective {name!r}: {e}") from None


__all__ = [
    "DDIM",
    "IDDPM",
    "OBJECTIVES",
    "SAMPLERS",
    "GuidedModel",
    "DPMSolver",
    "Objective",
    "RectifiedFlow",
    "Sampler",
    "build_objective",
    "build_sampler",
    "sampler_name",
    "guidance_model_fn",
    "cosine_betas",
    "gaussian_coefficients",
    "guide",
    "linear_betas",
    "named_betas",
    "respace_betas",
    "shift_ratio",
    "space_timesteps",
    "time_shift",
]
