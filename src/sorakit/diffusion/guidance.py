"""Classifier-free guidance as a wrapper around a model callable (k-diffusion style).

`guidance_model_fn(model, y, y_null, scale)` returns a plain `model_fn(x, t)` that any sampler can call:
it runs the conditional and the null-caption rows in ONE batch and returns the guided prediction
for the n rows it was given. Samplers never see captions.

Which channels are guided:
- default (`guided_channels=None`): every prediction channel, i.e. all C channels of eps / v. For a
  learned-sigma model (2C output channels) the C variance channels are not a prediction to
  extrapolate; they are taken from the conditional rows unguided (as later Open-Sora versions do).
- `guided_channels=3`: **Open-Sora 1.0 parity option.** Its `forward_with_cfg` guided only
  channels 0..2 (a leftover from RGB-pixel GLIDE code) and left channel 3 of the 4 latent
  channels, and the variance channels, raw. Use it only to reproduce Open-Sora 1.0's published
  samples bit for bit; it is not better. (Open-Sora 1.0's DPM-Solver path guided all eps
  channels, so DPM-Solver parity uses the default.)

Guidance interval (`interval=(lo, hi)`, Kynkäänniemi et al. 2024, "Applying guidance in a limited
interval"): guidance is applied only at model timesteps `lo <= t <= hi` (the 0..num_timesteps scale every
sampler passes, 1000 = pure noise). Outside it the null-caption rows are not computed at all: the model
is called with the n conditional rows only, so those steps cost half. An interval covering every step
gives exactly the output of no interval.

Horizon guidance (`horizon_guided`, sorakit's own): a model with a horizon embedding (STDiT
``arch.horizon``) is told how many frames the motion of the clip it makes is planned for -- a loop's first
segment must pace the object for the whole loop, not for its own frames. The embedding alone moves the
prediction too little (the built-in model paced a 40-frame loop's first segment like a 16-frame clip), so the
prediction planned for the horizon is extrapolated away from the same call planned for the clip's own
length, ``out_h + w * (out_h - out_own)``, as classifier-free guidance does with the caption; both in one
batched model call, so a sampler (and a step cache) still sees one call per step. w = 0, or a horizon no
longer than the clip, is exactly the plain model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def guide(
    cond: torch.Tensor, uncond: torch.Tensor, scale: float, guided_channels: int | None = None
) -> torch.Tensor:
    """uncond + scale * (cond - uncond) on the first `guided_channels` channels; the rest from `cond`.

    Args:
        cond, uncond: [n, K, ...] predictions with and without the caption.
        scale: guidance scale (1 = conditional prediction).
        guided_channels: how many leading channels to guide (None = all K).
    """
    if guided_channels is None or guided_channels >= cond.shape[1]:
        return uncond + scale * (cond - uncond)
    k = guided_channels
    guided = uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k])
    return torch.cat([guided, cond[:, k:]], dim=1)


def _repeat_rows(v: torch.Tensor, n: int) -> torch.Tensor:
    """A per-sample tensor with n rows -> 2n rows (cond rows, then the same for the null rows)."""
    return torch.cat([v, v], dim=0) if v.shape[0] == n else v


class GuidedModel:
    """`model_fn(x [n, C, ...], t [n]) -> guided prediction [n, K, ...]` (see module docstring).

    The wrapped model is called once per step as
    `model(cat([x, x]), cat([t, t]), cat([y, y_null]), mask=mask2, **model_kwargs)` where `mask2`
    is the caption mask with its n rows doubled (the null rows use the conditional rows' token
    counts, exactly what Open-Sora's model did when it repeated an n-row mask itself).

    Args:
        model: `model(x, t, y, mask=..., **kw) -> [2n, K, ...]` (e.g. STDiT).
        y: conditional caption embeddings [n, ...]; y_null: null captions [n, ...].
        scale: guidance scale; 1.0 (or no y_null) skips the null rows and costs one n-row call.
        mask: caption mask [n, L] (or already [2n, L]) or None.
        guided_channels: None = all prediction channels; 3 = Open-Sora 1.0 parity.
        interval: (lo, hi) model timesteps where guidance applies (inclusive); None = every step.
            Rows whose t lies outside get the conditional prediction; a step where no row is inside calls
            the model with the n conditional rows only.
        model_kwargs: extra per-call keyword arguments, passed unchanged.
    """

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        y: torch.Tensor,
        y_null: torch.Tensor | None,
        scale: float,
        mask: torch.Tensor | None = None,
        guided_channels: int | None = None,
        interval: tuple[float, float] | None = None,
        **model_kwargs,
    ) -> None:
        self.model = model
        self.y = y
        self.y_null = y_null
        self.scale = float(scale)
        self.mask = mask
        self.guided_channels = guided_channels
        self.interval = None if interval is None else (float(interval[0]), float(interval[1]))
        self.model_kwargs = model_kwargs

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **step_kwargs: torch.Tensor) -> torch.Tensor:
        """`step_kwargs`: per-step model inputs a sampler adds (`x_mask [n, T]` of reference frames), given
        for the n rows; the null-caption rows get the same."""
        n = x.shape[0]
        inside = self._inside(t, n)
        if self.y_null is None or self.scale == 1.0 or not bool(inside.any()):
            return self.model(x, t, self.y, mask=self.mask, **self.model_kwargs, **step_kwargs)
        mask = None if self.mask is None else _repeat_rows(self.mask, n)
        doubled = {k: _repeat_rows(v, n) for k, v in step_kwargs.items()}
        out = self.model(
            torch.cat([x, x]),
            torch.cat([t, t]),
            torch.cat([self.y, self.y_null]),
            mask=mask,
            **self.model_kwargs,
            **doubled,
        )
        cond, uncond = out[:n], out[n:]
        channels = x.shape[1]
        k = self.guided_channels
        if out.shape[1] == 2 * channels:  # learned sigma: guide eps, keep the conditional variance values
            k = channels if k is None else min(k, channels)
        guided = guide(cond, uncond, self.scale, k)
        if bool(inside.all()):
            return guided
        # rows outside the interval (a sampler with per-row times): their conditional prediction
        return torch.where(inside.view(n, *[1] * (guided.dim() - 1)), guided, cond)

    def _inside(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """bool [n]: which rows' timestep `t` (a scalar or [n]) lies in the guidance interval."""
        t = torch.as_tensor(t).reshape(-1)
        t = t.expand(n) if t.numel() == 1 else t
        if self.interval is None:
            return torch.ones(n, dtype=torch.bool, device=t.device)
        lo, hi = self.interval
        return (t >= lo) & (t <= hi)


class HorizonGuided:
    """`model(x, t, y, mask=None, **kw)` whose prediction for a clip planned for `horizon` frames is pushed
    away from the prediction for its own length by `scale` (module docstring). Rows are doubled: the first
    half planned for `horizon`, the second for ``x.shape[2]`` (the clip's own frames)."""

    def __init__(self, model: Callable[..., torch.Tensor], horizon: float, scale: float) -> None:
        self.model = model
        self.horizon = float(horizon)
        self.scale = float(scale)

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, **kw
    ) -> torch.Tensor:
        own = float(x.shape[2])
        if self.scale == 0.0 or self.horizon <= own:
            return self.model(x, t, y, mask=mask, horizon=self.horizon, **kw)
        n = x.shape[0]
        planned = torch.cat([x.new_full((n,), self.horizon), x.new_full((n,), own)])
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(n)
        out = self.model(
            torch.cat([x, x]),
            torch.cat([t, t]),
            torch.cat([y, y]),
            mask=None if mask is None else _repeat_rows(mask, n),
            horizon=planned,
            **{k: _repeat_rows(v, n) if torch.is_tensor(v) else v for k, v in kw.items()},
        )
        far, near = out[:n], out[n:]
        return far + self.scale * (far - near)


def horizon_guided(model: Callable[..., torch.Tensor], horizon: float, scale: float) -> HorizonGuided:
    """The model with horizon guidance of `scale` for a clip planned for `horizon` frames (`HorizonGuided`)."""
    return HorizonGuided(model, horizon, scale)


def guidance_model_fn(
    model: Callable[..., torch.Tensor],
    y: torch.Tensor,
    y_null: torch.Tensor | None,
    scale: float,
    mask: torch.Tensor | None = None,
    guided_channels: int | None = None,
    interval: tuple[float, float] | None = None,
    **model_kwargs,
) -> GuidedModel:
    """Build the guided `model_fn(x, t)` for a sampler. See `GuidedModel`."""
    return GuidedModel(
        model, y, y_null, scale, mask=mask, guided_channels=guided_channels, interval=interval, **model_kwargs
    )
