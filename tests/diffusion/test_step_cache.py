"""sorakit.diffusion.step_cache: the TeaCache rule on its own (no model): parsing, the skip decision, and what
a StepCache runs, reuses and forces."""

from __future__ import annotations

import math

import pytest
import torch

from sorakit.diffusion.step_cache import (
    DEFAULT_THRESHOLD,
    CacheSpec,
    StepCache,
    build_step_cache,
    decide,
    parse_cache,
    relative_l1,
    rescale,
)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("teacache", CacheSpec("teacache", DEFAULT_THRESHOLD)),
        ("teacache:0.25", CacheSpec("teacache", 0.25)),
        (" TeaCache:0 ", CacheSpec("teacache", 0.0)),
        ("teacache:", CacheSpec("teacache", DEFAULT_THRESHOLD)),
        ("none", None),
        ("off", None),
        (None, None),
    ],
)
def test_parse_cache(text, want) -> None:
    assert parse_cache(text) == want


@pytest.mark.parametrize("text", ["pab", "fastercache:0.1", "teacache:-0.1", "teacache:nan", "teacache:inf",
                                  "teacache:abc", ""])  # fmt: skip
def test_parse_cache_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"must be teacache\[:THRESHOLD\]") as info:
        parse_cache(text)
    assert "\n" not in str(info.value)


def test_spec_round_trips_through_its_text() -> None:
    spec = CacheSpec("teacache", 0.15)
    assert parse_cache(str(spec)) == spec


def test_relative_l1_and_rescale() -> None:
    prev = torch.tensor([1.0, -2.0, 3.0, -4.0])
    cur = prev + torch.tensor([0.5, 0.5, -0.5, -0.5])
    assert relative_l1(cur, prev) == pytest.approx(0.5 / 2.5)
    assert relative_l1(prev, prev) == 0.0
    assert rescale(0.3, None) == 0.3
    assert rescale(0.5, [2.0, -1.0, 3.0]) == pytest.approx(2 * 0.25 - 0.5 + 3)  # highest power first


def test_decide_accumulates_until_the_threshold_then_resets() -> None:
    acc, skips = 0.0, []
    for change in [0.04, 0.04, 0.04, 0.01, 0.2, 0.05]:
        skip, acc = decide(acc, change, 0.1)
        skips.append(skip)
    assert skips == [True, True, False, True, False, True]
    assert acc == pytest.approx(0.05)
    assert decide(0.0, math.nan, 0.1) == (False, 0.0)  # a NaN change computes
    assert decide(0.0, 0.0, 0.0) == (False, 0.0)  # threshold 0 never skips, even without change


class Blocks:
    """A fake block stack: adds `step` to x and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * 1.5 + self.calls


def _signals(changes: list[float]) -> list[torch.Tensor]:
    """Signals whose consecutive relative L1 changes are `changes` (all-positive constant tensors)."""
    out = [torch.ones(2, 3, 4)]
    for c in changes:
        out.append(out[-1] * (1 + c))
    return out


def test_step_cache_skips_reuses_and_forces_first_and_last() -> None:
    changes = [0.04, 0.04, 0.04, 0.01, 0.2, 0.05, 0.01]
    signals = _signals(changes)  # 8 calls
    cache, blocks = StepCache(0.1, total_calls=len(signals)), Blocks()
    x = torch.randn(2, 3, 4)
    ran = []
    for s in signals:
        before = blocks.calls
        out = cache(x, s, blocks)
        ran.append(blocks.calls > before)
        if not ran[-1]:  # reused: x + the residual of the last computed call
            torch.testing.assert_close(out, x + (x * 1.5 + blocks.calls - x))
    # call 0 forced; 1, 2 skip (0.04, 0.08); 3 computes (0.12); 4 skips (0.01); 5 computes (0.21);
    # 6 skips (0.05); 7 is the last call: forced although 0.06 < 0.1
    assert ran == [True, False, False, True, False, True, False, True]
    assert (cache.computed, cache.calls, cache.skipped) == (4, 8, 4)


def test_threshold_zero_returns_the_blocks_output_itself() -> None:
    cache, blocks = StepCache(0.0, total_calls=None), Blocks()
    x = torch.randn(2, 3, 4)
    for s in _signals([0.0, 0.0, 0.0]):
        assert torch.equal(cache(x, s, lambda h: blocks(h)), x * 1.5 + blocks.calls)
    assert cache.computed == cache.calls == blocks.calls == 4
    assert cache.residual is None  # nothing kept that would never be used


def test_a_new_shape_computes_and_reset_forgets() -> None:
    cache, blocks = StepCache(1e9), Blocks()  # unknown length: only the first call is forced
    x2, x1 = torch.randn(4, 3, 4), torch.randn(2, 3, 4)
    cache(x2, torch.ones(4, 3, 4), blocks)
    cache(x2, torch.ones(4, 3, 4), blocks)
    assert blocks.calls == 1  # reused
    cache(x1, torch.ones(2, 3, 4), blocks)  # e.g. the conditional rows alone under a guidance interval
    assert blocks.calls == 2
    cache.reset(total_calls=3)
    assert (cache.calls, cache.computed, cache.residual, cache.previous_signal) == (0, 0, None, None)
    cache(x1, torch.ones(2, 3, 4), blocks)
    assert blocks.calls == 3  # the first call of a run always computes


def test_build_step_cache() -> None:
    assert build_step_cache(None) is None and build_step_cache("none") is None
    cache = build_step_cache("teacache:0.3", total_calls=7)
    assert cache.threshold == 0.3 and cache.total_calls == 7
    with pytest.raises(ValueError, match=">= 0"):
        StepCache(-1.0)
