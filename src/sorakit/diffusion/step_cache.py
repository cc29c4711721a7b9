"""Step caching: skip a sampling step's transformer blocks when their input barely changed (TeaCache).

TeaCache (Liu et al. 2024, "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model") observes
that a diffusion transformer's block stack changes its input by a residual (output - input) that drifts slowly
between consecutive sampling steps, and that how much it drifts is foretold by how much the *modulated input
of the first block* changed: the patch-embedded latent, normalised and shifted/scaled by the timestep
embedding, which costs one LayerNorm to compute. So at every model call:

1. the model computes that signal (``[B, N, D]``) and hands it, with its block-stack input ``x`` and a
   function running the blocks, to a :class:`StepCache`;
2. the cache adds the relative L1 change of the signal since the previous call,
   ``mean|s - s_prev| / mean|s_prev|`` (optionally rescaled by a polynomial fitted to how the model's
   output changes) to an accumulator;
3. while the accumulator stays below ``threshold`` the blocks are skipped and ``x + residual`` (the residual
   of the last call that ran them) is returned; otherwise the blocks run, their residual is kept and the
   accumulator goes back to 0.

The first ``warmup`` calls and the last call (when the run's length is known) always run the blocks, as does
any call whose input shape differs from the cached one (e.g. the switch between the guided pair and the
conditional rows alone under a guidance interval). A threshold of 0 never skips, and a call that runs the
blocks returns exactly what the blocks return, so the output is bit-identical to no cache.

The pipeline calls the model once per sampler step with the conditional and null-caption rows in one batch,
so one cache covers both halves of classifier-free guidance (they share the latent and the timestep, hence
the signal; each row keeps its own residual). A new :class:`StepCache` (or :meth:`StepCache.reset`) starts
every sampling run. Works with any sampler: it only counts calls.

Specs as users write them (``--cache``, ``sampler.cache``): ``teacache`` (the default threshold) or
``teacache:THRESHOLD``; ``none`` / ``off`` = no cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

METHODS = ("teacache",)
# The default threshold: the fastest that kept the built-in model's `eval shapes` accuracy with its default
# sampler (rflow, 20 steps: blocks run at 8 of 20 steps, 0.41x the sampling time; docs/benchmarks.md
# "Step caching"). The change is unscaled by default: no polynomial was fitted for the built-in model.
DEFAULT_THRESHOLD = 0.2
OFF = ("none", "off")


@dataclass(frozen=True)
class CacheSpec:
    """A parsed cache setting: the method and its threshold (accumulated relative L1 change)."""

    method: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.method}:{self.threshold:g}"


def parse_cache(spec: str | None) -> CacheSpec | None:
    """``'teacache'`` / ``'teacache:0.1'`` -> CacheSpec; None, ``'none'``, ``'off'`` -> None.

    Raises ValueError (one line naming the valid forms) for an unknown method or a threshold that is not a
    finite number >= 0."""
    if spec is None or str(spec).strip().lower() in OFF:
        return None
    method, _, value = str(spec).strip().partition(":")
    method = method.strip().lower()
    usage = f"must be {' or '.join(m + '[:THRESHOLD]' for m in METHODS)} (THRESHOLD >= 0) or none"
    if method not in METHODS:
        raise ValueError(f"{usage}; unknown method {method[:40]!r}")
    if not value.strip():
        return CacheSpec(method, DEFAULT_THRESHOLD)
    try:
        threshold = float(value)
    except ValueError as exc:
        raise ValueError(f"{usage}; got threshold {value[:40]!r}") from exc
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"{usage}; got threshold {value.strip()[:40]}")
    return CacheSpec(method, threshold)


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """``mean|current - previous| / mean|previous|`` over every element (float32 arithmetic)."""
    current, previous = current.float(), previous.float()
    return float((current - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12))


def rescale(change: float, coefficients: Sequence[float] | None) -> float:
    """The polynomial ``c[0] * change**k + ... + c[k]`` (highest power first, numpy.poly1d's order) mapping a
    signal change to the output change it predicts; None = the change itself."""
    if coefficients is None:
        return change
    out = 0.0
    for c in coefficients:
        out = out * change + float(c)
    return out


def decide(accumulated: float, change: float, threshold: float) -> tuple[bool, float]:
    """(skip the blocks?, the accumulator after this call): skip while ``accumulated + change < threshold``;
    computing resets the accumulator to 0. A NaN change never skips."""
    total = accumulated + change
    if total < threshold:
        return True, total
    return False, 0.0


class StepCache:
    """The TeaCache state of one sampling run (see the module docstring).

    Args:
        threshold: skip the blocks while the accumulated (rescaled) relative L1 change stays below it; 0 = never.
        coefficients: polynomial rescaling the signal's change (highest power first); None = unscaled.
        total_calls: model calls in the run (the sampler's steps), so that the last one always computes;
            None = unknown (only the warm-up calls are forced).
        warmup: leading calls that always compute (at least 1: there is nothing to reuse before).

    After a run, ``computed`` and ``calls`` say how many calls ran the blocks out of how many.
    """

    def __init__(
        self,
        threshold: float,
        coefficients: Sequence[float] | None = None,
        total_calls: int | None = None,
        warmup: int = 1,
    ) -> None:
        if not threshold >= 0:  # also refuses NaN
            raise ValueError(f"the cache threshold must be >= 0, got {threshold}")
        self.threshold = float(threshold)
        self.coefficients = None if coefficients is None else tuple(float(c) for c in coefficients)
        self.warmup = max(1, int(warmup))
        self.reset(total_calls)

    def reset(self, total_calls: int | None = None) -> None:
        """Forget everything: a new sampling run of `total_calls` model calls starts."""
        self.total_calls = total_calls
        self.calls = 0
        self.computed = 0
        self.accumulated = 0.0
        self.previous_signal: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None

    def _forced(self, x: torch.Tensor, signal: torch.Tensor) -> bool:
        """Calls that must run the blocks: warm-up, the last call, nothing (of this shape) cached."""
        last = self.total_calls is not None and self.calls >= self.total_calls - 1
        return (
            self.calls < self.warmup
            or last
            or self.residual is None
            or self.residual.shape != x.shape
            or self.previous_signal is None
            or self.previous_signal.shape != signal.shape
        )

    # Under torch.compile the decision (a host-side float comparison) runs eagerly: one clean graph break
    # instead of dynamo tracing into .item() and warning at every step; the blocks still compile.
    @torch.compiler.disable
    def _skip(self, x: torch.Tensor, signal: torch.Tensor) -> bool:
        """Whether this call reuses the residual; updates the accumulator, the signal and the call count."""
        if self._forced(x, signal):
            skip, self.accumulated = False, 0.0
        else:
            change = rescale(relative_l1(signal, self.previous_signal), self.coefficients)
            skip, self.accumulated = decide(self.accumulated, change, self.threshold)
        self.previous_signal = signal
        self.calls += 1
        return skip

    def __call__(
        self, x: torch.Tensor, signal: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """The block stack's output for input `x` ``[B, N, D]``: ``run(x)``, or ``x + residual`` when skipped.

        `signal`: the first block's modulated input ``[B, N, D]`` (what the change is measured on)."""
        if self._skip(x, signal):
            return x + self.residual.to(x.dtype)
        out = run(x)
        self.computed += 1
        # a threshold of 0 never reuses it: don't pay for the subtraction
        self.residual = (out - x) if self.threshold > 0 else None
        return out

    @property
    def skipped(self) -> int:
        """Calls that reused the cached residual."""
        return self.calls - self.computed


def build_step_cache(spec: CacheSpec | str | None, total_calls: int | None = None) -> StepCache | None:
    """The StepCache a spec asks for (None for no cache), for a run of `total_calls` model calls."""
    spec = parse_cache(spec) if not isinstance(spec, CacheSpec) else spec
    if spec is None:
        return None
    return StepCache(spec.threshold, total_calls=total_calls)
