"""Diffusion: schedules (pure functions), samplers and training objectives.

    sampler = build_sampler("iddpm", 100)          # or "dpm-solver", "ddim", "rflow"
    x0 = sampler.sample(model_fn, z, generator=g)  # model_fn(x [B, C, ...], t [B]) -> prediction

    objective = build_objective("iddpm")           # or "rflow"
    t = objective.sample_timesteps(B, generator, device)
    loss = objective.training_losses(model_fn, x0, t)["loss"]  # [B]
"""

from __future__ import annotations

from sorakit.diffusion.guidance import CFGModel, cfg_model_fn, guide
from sorakit.diffusion.iddpm import DDIM, IDDPM
from sorakit.diffusion.schedules import (
    cosine_betas,
    gaussian_coefficients,
    linear_betas,
    named_betas,
    respace_betas,
    space_timesteps,
)

__all__ = [
    "DDIM",
    "IDDPM",
    "CFGModel",
    "cfg_model_fn",
    "cosine_betas",
    "gaussian_coefficients",
    "guide",
    "linear_betas",
    "named_betas",
    "respace_betas",
    "space_timesteps",
]
