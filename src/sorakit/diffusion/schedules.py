"""Noise-schedule math as small pure functions over float64 numpy arrays.

Everything here is computed once, in float64, when a sampler or objective is built. The arrays are
turned into tensors and cast to the latents' dtype at use (see `iddpm.CoefficientTable`), never
rounded in between.

Conventions (Open-Sora 1.0 / guided-diffusion): a discrete diffusion has `T` steps indexed
`0 .. T-1`; `alphas_cumprod[t]` is the signal fraction after step `t`, so `t = 0` is the least noisy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sorakit.errors import ConfigError


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Linear beta schedule of Ho et al., rescaled so that any step count gives the same process.

    With the default 1000 steps this is `np.linspace(1e-4, 0.02, 1000)` (Open-Sora 1.0's schedule).

    Returns:
        float64 [num_timesteps].
    """
    scale = 1000 / num_timesteps
    return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int = 1000, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule ("squaredcos_cap_v2") of Nichol & Dhariwal. Returns float64 [num_timesteps]."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return np.asarray(betas, dtype=np.float64)


BETA_SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas, "squaredcos_cap_v2": cosine_betas}


def named_betas(name: str, num_timesteps: int = 1000) -> np.ndarray:
    """Betas for a schedule named in `BETA_SCHEDULES` (`linear`, `cosine`)."""
    if name not in BETA_SCHEDULES:
        raise ConfigError(f"unknown noise schedule {name!r} (choose from {', '.join(BETA_SCHEDULES)})")
    return BETA_SCHEDULES[name](num_timesteps)


def space_timesteps(num_timesteps: int, section_counts: int | str | Sequence[int]) -> list[int]:
    """Which of the original `num_timesteps` steps a respaced (shorter) process keeps, ascending.

    Same selection and rounding as guided-diffusion / Open-Sora 1.0: the process is cut into equal
    sections; in a section of `size` steps that keeps `count` of them, the k-th kept step is
    `round(k * (size - 1) / (count - 1))`, where the fractional stride is *accumulated* in floating
    point and `round` is Python's (half to even). E.g. 10 of 1000 -> [0, 111, 222, ..., 888, 999].
    `"ddimN"` picks the integer stride that gives exactly N steps (DDIM paper).

    Args:
        num_timesteps: length of the original process (1000).
        section_counts: steps kept per section: an int, a list, or a comma-separated string.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ConfigError(
                f"cannot make exactly {desired} steps of {num_timesteps} with an integer stride"
            )
        section_counts = [int(x) for x in section_counts.split(",")]
    elif isinstance(section_counts, int):
        section_counts = [section_counts]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start = 0
    kept: list[int] = []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if count < 1 or size < count:
            raise ConfigError(f"cannot take {count} steps from a section of {size} diffusion steps")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def respace_betas(alphas_cumprod: np.ndarray, use_timesteps: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Betas of the shorter process that visits only `use_timesteps` of the original one.

    The kept steps keep their `alphas_cumprod`: `beta_k = 1 - acp[t_k] / acp[t_{k-1}]` (with
    `acp[t_{-1}] = 1`). Note that keeping all steps gives betas that differ from the original ones by
    rounding (~1e-16), exactly as Open-Sora's training diffusion does.

    Returns:
        (betas float64 [K], timestep_map int64 [K]): `timestep_map[k]` is the original step the
        model must be called with at respaced index k.
    """
    keep = set(int(t) for t in use_timesteps)
    last = 1.0
    betas, timestep_map = [], []
    for i, acp in enumerate(alphas_cumprod):
        if i in keep:
            betas.append(1 - acp / last)
            last = acp
            timestep_map.append(i)
    return np.asarray(betas, dtype=np.float64), np.asarray(timestep_map, dtype=np.int64)


def gaussian_coefficients(betas: np.ndarray) -> dict[str, np.ndarray]:
    """All per-step coefficients of a discrete Gaussian diffusion with these betas (float64 [T] each).

    Keys: betas, log_betas, alphas_cumprod, alphas_cumprod_prev, alphas_cumprod_next,
    sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, log_one_minus_alphas_cumprod,
    sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod, posterior_variance,
    posterior_log_variance_clipped, posterior_mean_coef1, posterior_mean_coef2.

    `posterior_log_variance_clipped[0]` is `log(posterior_variance[1])`: the posterior variance is 0
    at t = 0, and its log would be -inf (a NaN source once multiplied by 0).
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
        raise ConfigError("betas must be a 1-D array with values in (0, 1]")
    alphas = 1.0 - betas
    acp = np.cumprod(alphas, axis=0)
    acp_prev = np.append(1.0, acp[:-1])
    acp_next = np.append(acp[1:], 0.0)
    posterior_variance = betas * (1.0 - acp_prev) / (1.0 - acp)
    if len(betas) > 1:
        posterior_log_variance_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    else:  # a one-step process: the only posterior is the data itself; use beta as a finite stand-in
        posterior_log_variance_clipped = np.log(betas.copy())
    return {
        "betas": betas,
        "log_betas": np.log(betas),
        "alphas_cumprod": acp,
        "alphas_cumprod_prev": acp_prev,
        "alphas_cumprod_next": acp_next,
        "sqrt_alphas_cumprod": np.sqrt(acp),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - acp),
        "log_one_minus_alphas_cumprod": np.log(1.0 - acp),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / acp),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / acp - 1),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_log_variance_clipped,
        "posterior_mean_coef1": betas * np.sqrt(acp_prev) / (1.0 - acp),
        "posterior_mean_coef2": (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp),
    }
