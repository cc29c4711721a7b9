"""Rectified flow: Open-Sora 1.2's training objective and Euler sampler.

Conventions (Open-Sora 1.2, opensora/schedulers/rf): time `t` lives on [0, T] with T = 1000 and
t = T is pure noise:

    x_t = (1 - t/T) * x_0 + (t/T) * noise,      target velocity v = x_0 - noise,

so the model's velocity points from noise to data and sampling integrates
`z <- z + v * (t_i - t_{i+1}) / T` from t_0 = T down to 0 (the last step goes all the way to 0).

Training timesteps are drawn logit-normal (t/T = sigmoid(N(loc, scale))) and, optionally, shifted
towards the noisy end for large inputs: with `ratio = sqrt(H*W / base_resolution) *
sqrt(frames / base_frames) * scale`, t' = ratio t / (1 + (ratio - 1) t) (on t/T). The same shift
applies to the sampling timesteps.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sorakit.diffusion import condition as cnd
from sorakit.diffusion.common import (
    CallCounter,
    ModelFn,
    channel_weighted,
    compute_dtype,
    expand_to,
    masked_mean_flat,
    progress_iter,
    randn,
    randn_like,
    split_prediction,
)
from sorakit.diffusion.schedules import linear_betas
from sorakit.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------


def time_shift(t: torch.Tensor, ratio: float | torch.Tensor, num_timesteps: float = 1000.0) -> torch.Tensor:
    """Resolution-aware time shift: s' = ratio s / (1 + (ratio - 1) s) with s = t / T; returns t' = s' T.

    ratio > 1 moves every t towards the noisy end (t = T stays T, t = 0 stays 0).
    """
    s = t / num_timesteps
    return ratio * s / (1 + (ratio - 1) * s) * num_timesteps


def shift_ratio(
    height: float,
    width: float,
    num_frames: float = 1,
    base_resolution: float = 512 * 512,
    base_num_frames: float = 1,
    scale: float = 1.0,
) -> float:
    """The time-shift ratio for a (height, width) in pixels and `num_frames` (latent) frames.

    Open-Sora 1.2 passes its VAE's latent frame count (17 frames -> 5 latents); sorakit's
    per-frame VAE keeps every frame, so callers pass the number of frames they actually denoise.
    """
    if height <= 0 or width <= 0 or num_frames < 1:
        raise ConfigError(
            f"time shift needs positive height/width and >= 1 frame, got {height}x{width}x{num_frames}"
        )
    return math.sqrt(height * width / base_resolution) * math.sqrt(num_frames / base_num_frames) * scale


def logit_normal(
    batch_size: int,
    loc: float = 0.0,
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """sigmoid(N(loc, scale^2)) in (0, 1): float32 [batch_size]."""
    return torch.sigmoid(loc + scale * randn((batch_size,), generator, device=device, dtype=torch.float32))


def rf_interpolate(
    x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, num_timesteps: float = 1000.0
):
    """x_t = (1 - t/T) x_0 + (t/T) noise for t [B]."""
    s = expand_to((t / num_timesteps).to(x_start.dtype), x_start)
    return (1 - s) * x_start + s * noise


def euler_step(
    z: torch.Tensor, v: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, num_timesteps: float = 1000.0
):
    """z + v * (t - t_next) / T (t, t_next [B] or scalars)."""
    dt = (t - t_next) / num_timesteps
    if isinstance(dt, torch.Tensor) and dt.dim() > 0:
        dt = expand_to(dt, z)
    return z + v * dt


def sampling_timesteps(
    num_steps: int,
    num_timesteps: float = 1000.0,
    shift: float | None = None,
    use_discrete_timesteps: bool = False,
) -> list[float]:
    """Open-Sora 1.2's sampling times t_i = (1 - i/N) T, i = 0..N-1 (optionally rounded, then shifted)."""
    ts = [(1.0 - i / num_steps) * num_timesteps for i in range(num_steps)]
    if use_discrete_timesteps:
        ts = [float(int(round(t))) for t in ts]
    if shift is not None and shift != 1.0:
        ts = [float(time_shift(torch.tensor(t, dtype=torch.float64), shift, num_timesteps)) for t in ts]
    return ts


def rflow_options(
    sampler_cfg: Any, height: int | None = None, width: int | None = None, num_frames: int | None = None
) -> dict[str, Any]:
    """`RectifiedFlow` keyword arguments from a config's ``[sampler]`` section: the fixed `shift`, or
    with ``timestep_transform`` the resolution-aware shift with (height, width, num_frames) in pixels and
    frames as the default geometry (a batch or a call can give its own)."""
    opts: dict[str, Any] = {"shift": sampler_cfg.shift}
    if sampler_cfg.timestep_transform:
        bh, bw, bf = (int(v) for v in sampler_cfg.transform_base)
        opts.update(
            use_timestep_transform=True, transform_scale=float(sampler_cfg.transform_scale),
            base_resolution=bh * bw, base_num_frames=bf, height=height, width=width, num_frames=num_frames or 1,
        )  # fmt: skip
    return opts


# ---------------------------------------------------------------------------------------------
# Objective and sampler
# ---------------------------------------------------------------------------------------------


class RectifiedFlow:
    """Rectified-flow training objective and Euler sampler (Open-Sora 1.2 semantics).

    Args:
        num_sampling_steps: Euler steps N (Open-Sora 1.2: 30).
        num_timesteps: the time scale T the model sees (1000).
        sample_method: training time distribution, "logit-normal" (default) or "uniform".
        loc, scale: parameters of the logit-normal.
        use_discrete_timesteps: round sampling times to integers (Open-Sora option).
        use_timestep_transform: apply the resolution-aware shift (needs height/width).
        transform_scale: extra factor on the shift ratio.
        base_resolution, base_num_frames: where the ratio is 1.
        shift: a fixed time-shift ratio (used when ``use_timestep_transform`` is off; 1 = none). Values > 1
            move training times and sampling steps towards the noisy end, where highly redundant data (many
            frames of one small object) decides its layout and motion.
        height, width, num_frames: default sample geometry for the shift (pixels, frames); can
            also be given per call.
    """

    name = "rflow"

    def __init__(
        self,
        num_sampling_steps: int = 30,
        num_timesteps: int = 1000,
        sample_method: str = "logit-normal",
        loc: float = 0.0,
        scale: float = 1.0,
        use_discrete_timesteps: bool = False,
        use_timestep_transform: bool = False,
        transform_scale: float = 1.0,
        base_resolution: int = 512 * 512,
        base_num_frames: int = 1,
        height: int | None = None,
        width: int | None = None,
        num_frames: int = 1,
        shift: float = 1.0,
    ) -> None:
        if not (isinstance(shift, (int, float)) and shift > 0):
            raise ConfigError(f"rflow shift must be a positive number, got {shift!r}")
        if sample_method not in ("logit-normal", "uniform"):
            raise ConfigError(
                f"unknown rflow sample_method {sample_method!r} (choose logit-normal or uniform)"
            )
        if num_sampling_steps is not None and num_sampling_steps < 1:
            raise ConfigError(f"num_sampling_steps must be >= 1, got {num_sampling_steps}")
        self.num_steps = num_sampling_steps
        self.num_timesteps = num_timesteps
        self.sample_method = sample_method
        self.loc, self.scale = loc, scale
        self.use_discrete_timesteps = use_discrete_timesteps
        self.use_timestep_transform = use_timestep_transform
        self.transform_scale = transform_scale
        self.base_resolution, self.base_num_frames = base_resolution, base_num_frames
        self.height, self.width, self.num_frames = height, width, num_frames
        self.shift = float(shift)
        self.num_model_calls = 0

    def _ratio(self, height=None, width=None, num_frames=None) -> float | None:
        if not self.use_timestep_transform:
            return self.shift if self.shift != 1.0 else None
        height, width = height or self.height, width or self.width
        if height is None or width is None:
            raise ConfigError("rflow with use_timestep_transform needs the sample height and width")
        return shift_ratio(
            height,
            width,
            num_frames or self.num_frames,
            self.base_resolution,
            self.base_num_frames,
            self.transform_scale,
        )

    # -- training -----------------------------------------------------------------------------
    def sample_timesteps(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
    ) -> torch.Tensor:
        """Training times t in (0, T): float32 [batch_size] (logit-normal or uniform, then shifted)."""
        if self.sample_method == "logit-normal":
            s = logit_normal(batch_size, self.loc, self.scale, generator, device)
        else:
            draw = generator.device if generator is not None else device
            s = torch.rand((batch_size,), generator=generator, device=draw).to(device)
        t = s * self.num_timesteps
        ratio = self._ratio(height, width, num_frames)
        if ratio is not None:
            t = time_shift(t, ratio, self.num_timesteps)
        return t

    def training_losses(
        self,
        model_fn: ModelFn,
        x_start: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        x_mask: torch.Tensor | None = None,
        channel_weights: torch.Tensor | None = None,
        **model_kwargs,
    ) -> dict[str, torch.Tensor]:
        """Per-sample MSE between the predicted velocity and x_0 - noise.

        Args:
            model_fn: `model_fn(x_t, t, **model_kwargs)`; a 2C-channel output uses its first C.
            x_start: clean latents [B, C, ...]; t: times [B] on [0, T] (drawn if None).
            x_mask: optional [B, T] bool over frames (dim 2), True = generate: condition frames (False) stay
                clean (t = 0 for them), the model gets `x_mask=`, and the loss averages generated frames only.
            channel_weights: optional [C] weights of the latent channels in the MSE (rescaled to a mean of 1).
        Returns:
            dict with loss [B] and x_t.
        """
        if t is None:
            t = self.sample_timesteps(x_start.shape[0], generator, x_start.device)
        if noise is None:
            noise = randn_like(x_start, generator)
        x_t = rf_interpolate(x_start, noise, t, self.num_timesteps)
        if x_mask is not None:
            x_t = cnd.select_frames(x_mask, x_t, x_start)
            model_kwargs["x_mask"] = x_mask
        v, _ = split_prediction(model_fn(x_t, t, **model_kwargs), x_start.shape[1])
        loss = masked_mean_flat(channel_weighted((v - (x_start - noise)) ** 2, channel_weights), x_mask)
        return {"loss": loss, "x_t": x_t}

    # -- sampling -----------------------------------------------------------------------------
    def timesteps_for(self, height=None, width=None, num_frames=None) -> list[float]:
        """The N sampling times (float, 0..T scale) for this geometry."""
        if self.num_steps is None:
            raise ConfigError("rflow sampling needs num_sampling_steps")
        return sampling_timesteps(
            self.num_steps,
            self.num_timesteps,
            self._ratio(height, width, num_frames),
            self.use_discrete_timesteps,
        )

    @property
    def timesteps(self) -> list[float]:
        """Sampling times for the default geometry."""
        return self.timesteps_for()

    def sample(
        self,
        model_fn: ModelFn,
        z: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: bool = False,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        condition: cnd.Condition | None = None,
    ) -> torch.Tensor:
        """Euler-integrate the velocity from noise `z` [B, C, ...] (t = T) to data (t = 0).

        `model_fn(x, t)` gets t as a [B] tensor in x's compute dtype (and `x_mask=` [B, T] with a
        `condition`: reference frames, see `sorakit.diffusion.condition`; level = t / T). Deterministic;
        `generator` is accepted for interface uniformity.
        """
        ts = self.timesteps_for(height, width, num_frames)
        counter = CallCounter(model_fn)
        self.num_model_calls = 0
        x = z.to(compute_dtype(z.dtype))
        noise, cond, prev, kw = x, None, 1.0, {}
        if condition is not None:
            cond = condition.to(x)
            x = cnd.start(noise, cond)
        with torch.no_grad():
            for i in progress_iter(range(len(ts)), progress, len(ts), "rflow"):
                t = torch.full((x.shape[0],), ts[i], dtype=x.dtype, device=x.device)
                if cond is not None:
                    level = ts[i] / self.num_timesteps
                    x, kw["x_mask"] = cnd.enter(
                        x,
                        noise,
                        cond,
                        level,
                        prev,
                        lambda r, n, t=t: rf_interpolate(r, n, t, self.num_timesteps),
                    )
                    prev = level
                v, _ = split_prediction(counter(x, t, **kw), x.shape[1])
                t_next = ts[i + 1] if i + 1 < len(ts) else 0.0
                x = euler_step(x, v, ts[i], t_next, self.num_timesteps)
                if cond is not None:
                    x = cnd.hold(x, cond, kw["x_mask"])
                self.num_model_calls = counter.calls
        return x.to(z.dtype)

    def __repr__(self) -> str:
        return (
            f"RectifiedFlow(num_steps={self.num_steps}, shift={self.shift}, "
            f"use_timestep_transform={self.use_timestep_transform})"
        )


# ---------------------------------------------------------------------------------------------
# A velocity model driven by the DDPM-family samplers
# ---------------------------------------------------------------------------------------------


def velocity_as_eps(model_fn: ModelFn, num_timesteps: int = 1000, betas=None, sampler=None) -> ModelFn:
    """Wrap a rectified-flow model (velocity ``v = x0 - noise`` at ``x = (1 - s) x0 + s noise``) so that
    IDDPM, DDIM and DPM-Solver, which expect a noise prediction on the variance-preserving path
    ``x = sqrt(ab) x0 + sqrt(1 - ab) eps`` (linear betas by default), can drive it.

    Both paths carry the same points up to scale: the VP point at ``ab`` is ``(a + b)`` times the
    rectified-flow point at ``s = b / (a + b)`` (``a = sqrt(ab)``, ``b = sqrt(1 - ab)``), and there
    ``eps = x_rf - (1 - s) v``. The sampler's timestep (an integer, or DPM-Solver's fractional one) is mapped
    to ``ab`` by interpolating ``log ab`` linearly between the discrete steps, or by the sampler's own
    ``alpha_bar_at(t)`` when it has one (DPM-Solver, whose clipped schedule shifts its model times).
    """
    betas = linear_betas(num_timesteps) if betas is None else betas
    log_ab = torch.log(torch.cumprod(1 - torch.as_tensor(betas, dtype=torch.float64), 0))
    last = len(log_ab) - 1

    own = getattr(sampler, "alpha_bar_at", None)

    def fn(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        tf = t.detach().to("cpu", torch.float64).reshape(-1)
        if own is not None:
            la = torch.log(own(tf))
        else:
            tf = tf.clamp(0, last)
            lo = tf.floor().long()
            hi = (lo + 1).clamp(max=last)
            la = torch.lerp(log_ab[lo], log_ab[hi], tf - lo)
        a, b = (0.5 * la).exp(), (-torch.expm1(la)).sqrt()
        s = (b / (a + b)).to(x.device)
        x_rf = x / expand_to((a + b).to(x.device, x.dtype), x)
        v, _ = split_prediction(model_fn(x_rf, (s * num_timesteps).to(x.dtype), **kwargs), x.shape[1])
        return x_rf - expand_to((1 - s).to(x.dtype), x) * v

    return fn
