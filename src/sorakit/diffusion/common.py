"""Small helpers shared by every sampler: model-call counting, seeded noise, dtypes, progress bars."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
from tqdm.auto import tqdm

ModelFn = Callable[..., torch.Tensor]
"""`model_fn(x [B, C, ...], t [B], **kwargs) -> prediction [B, C or 2C, ...]`."""

T = TypeVar("T")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a sampler does its arithmetic in: float64 stays, everything else is float32.

    Half-precision latents are lifted to float32 because the schedule coefficients span 5 orders
    of magnitude (sqrt(1/acp) reaches 157 at t = 999) and `x0 = a*x - b*eps` cancels badly in bf16.
    Run the model itself under autocast for half-precision speed.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like `x`, drawn from `generator` on the generator's device.

    Drawing on the generator's device (then moving) makes a CPU generator give the same numbers
    whether the latents live on CPU or GPU.
    """
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
    return noise.to(x.device)


def randn(shape, generator: torch.Generator | None = None, device=None, dtype=None) -> torch.Tensor:
    """`torch.randn` drawn on the generator's device and moved to `device`."""
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)


def masked_mean_flat(x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean of `x [B, C, T, ...]` over all non-batch dims, or only over frames where
    `frame_mask [B, T]` is True (Open-Sora 1.1's masked `mean_flat`). A sample with no such frame gives 0.
    Without a mask it is exactly `x.mean(dim=1..)`."""
    if frame_mask is None:
        return x.mean(dim=list(range(1, x.dim())))
    per_frame = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1).mean(dim=-1)  # [B, T]
    m = frame_mask.to(per_frame.dtype)
    return (per_frame * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


def channel_weighted(sq: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Squared errors `sq [B, C, ...]` times per-latent-channel `weights [C]` rescaled to a mean of 1, so the
    loss keeps its scale (``train.loss_channel_weights``); `weights` None returns `sq` itself."""
    if weights is None:
        return sq
    if weights.dim() != 1 or weights.shape[0] != sq.shape[1]:
        raise ValueError(f"channel weights: expected {sq.shape[1]} values, got shape {tuple(weights.shape)}")
    w = (weights / weights.mean()).to(sq.device, sq.dtype)
    return sq * w.view(1, -1, *([1] * (sq.dim() - 2)))


def expand_to(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, 1, ...] with as many dims as `like`."""
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim()))


class CallCounter:
    """Wraps a model callable and counts calls (one batched forward = one call)."""

    def __init__(self, fn: ModelFn) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        self.calls += 1
        return self.fn(*args, **kwargs)


def progress_iter(
    it: Iterable[T], enabled: bool, total: int | None = None, desc: str | None = None
) -> Iterator[T]:
    """`tqdm(it)` when enabled, else `it` unchanged."""
    if not enabled:
        return iter(it)

    return iter(tqdm(it, total=total, desc=desc, leave=False))


def split_prediction(out: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split a model output into (prediction [B, C, ...], variance values [B, C, ...] or None).

    A learned-sigma model returns 2C channels (prediction | variance interpolation values); a plain
    model returns C. Anything else is an error that names both numbers.
    """
    if out.shape[1] == channels:
        return out, None
    if out.shape[1] == 2 * channels:
        return out[:, :channels], out[:, channels:]
    raise ValueError(
        f"model output has {out.shape[1]} channels; expected {channels} or {2 * channels} for latents with {channels}"
    )
