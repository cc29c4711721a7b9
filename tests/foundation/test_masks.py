"""The mask-strategy syntax (upstream `loop,ref_idx,ref_start,target_start,length,edit_ratio`), its resolution
onto a video, per-segment prompts, and the training-mask patterns drawn with the configured ratios."""

from __future__ import annotations

import math

import pytest
import torch

from sorakit.errors import ConfigError, UserError
from sorakit.masks import (
    MaskEntry,
    MaskGenerator,
    MaskStrategyError,
    apply_placements,
    check_strategy,
    default_strategy,
    format_mask_strategy,
    normalise_ratios,
    parse_mask_strategy,
    pattern_mask,
    resolve,
    split_loop_prompt,
)

# strategies from Open-Sora 1.2's configs and docs (assets/texts, docs/config.md)
UPSTREAM = {
    "0": [MaskEntry()],
    "0,0,-8,0,8": [MaskEntry(0, 0, -8, 0, 8, 0.0)],
    "0,0,0,0,15,0.8": [MaskEntry(0, 0, 0, 0, 15, 0.8)],
    "0;0,1,0,-1,1": [MaskEntry(), MaskEntry(0, 1, 0, -1, 1, 0.0)],
    "0,0,0,-8,8": [MaskEntry(0, 0, 0, -8, 8, 0.0)],
    "0,0,0,0,32,0.4": [MaskEntry(0, 0, 0, 0, 32, 0.4)],
    "1,1,-4,0,4,0.1": [MaskEntry(1, 1, -4, 0, 4, 0.1)],
}


@pytest.mark.parametrize("text", list(UPSTREAM))
def test_parse_upstream_examples_and_round_trip(text):
    entries = parse_mask_strategy(text)
    assert entries == UPSTREAM[text]
    canonical = format_mask_strategy(entries)
    assert len(canonical.split(";")[0].split(",")) == 6
    assert parse_mask_strategy(canonical) == entries
    assert format_mask_strategy(parse_mask_strategy(canonical)) == canonical


def test_defaults_and_whitespace():
    assert parse_mask_strategy(None) == [] and parse_mask_strategy("  ") == []
    assert parse_mask_strategy(" 0 , 1 ; 2,0,3") == [MaskEntry(0, 1), MaskEntry(2, 0, 3)]
    assert format_mask_strategy([MaskEntry(0, 1)]) == "0,1,0,0,1,0"


@pytest.mark.parametrize(
    "text,message",
    [
        ("0,0,0,0,1,0,7", "expected 1 to 6"),
        ("0;;1", "expected 1 to 6"),
        ("0,", "expected 1 to 6"),
        ("a", "loop must be an integer"),
        ("0,0,0.5", "ref_start must be an integer"),
        ("0,0,0,0,1,x", "edit_ratio must be a number"),
        ("0,0,0,0,1,1.5", r"edit_ratio must be in \[0, 1\]"),
        ("0,0,0,0,1,-0.1", r"edit_ratio must be in \[0, 1\]"),
        ("0,0,0,0,1,nan", r"edit_ratio must be in \[0, 1\]"),
        ("0,0,0,0,0", "length must be >= 1"),
        ("-1", "loop must be >= 0"),
    ],
)
def test_parse_rejects(text, message):
    with pytest.raises(MaskStrategyError, match=message):
        parse_mask_strategy(text)
    assert issubclass(MaskStrategyError, UserError)  # -> one line, exit 2 in the CLI


def test_resolve_negative_indices_and_clipping():
    # a 10-frame reference video, a 1-frame image; a 16-frame output
    entries = parse_mask_strategy("0,0,-4,0,8;0,1,0,-1,5;1,0,0,0,2")
    placed = resolve(entries, [10, 1], 16, loop=0)
    assert [(p.ref_idx, p.ref_start, p.target_start, p.length) for p in placed] == [
        (0, 6, 0, 4),
        (1, 0, 15, 1),
    ]
    assert [(p.ref_start, p.length) for p in resolve(entries, [10, 1], 16, loop=1)] == [(0, 2)]


@pytest.mark.parametrize(
    "text,refs,frames,message",
    [
        ("0,1", [1], 16, r"reference 1 does not exist \(1 reference\(s\)\)"),
        ("0", [], 16, r"reference 0 does not exist \(no reference\)"),
        ("0,0,0,16", [1], 16, "target_start 16 is outside the video"),
        ("0,0,0,-17", [1], 16, "target_start -17 is outside the video"),
        ("0,0,3", [2], 16, "ref_start 3 is outside reference 0"),
        ("1", [1], 16, "loop 1 but only 1 segment"),
    ],
)
def test_check_rejects_out_of_range(text, refs, frames, message):
    with pytest.raises(MaskStrategyError, match=message):
        check_strategy(parse_mask_strategy(text), refs, frames, loops=1)


def test_apply_placements_builds_latents_and_ratios():
    refs = [torch.arange(1.0, 4.0).reshape(1, 3, 1, 1), torch.full((1, 1, 1, 1), 9.0)]
    placed = resolve(parse_mask_strategy("0,0,1,0,2;0,1,0,-1,1,0.25"), [3, 1], 5)
    lat, ratio = apply_placements(placed, refs, torch.empty(1, 5, 1, 1))
    assert lat.flatten().tolist() == [2.0, 3.0, 0.0, 0.0, 9.0]
    assert ratio.tolist() == [0.0, 0.0, 1.0, 1.0, 0.25]


def test_default_strategy():
    # an image -> frame 0; a video -> its last K frames on the first K; a second image -> the last frame
    assert format_mask_strategy(default_strategy([1], 4)) == "0,0,0,0,1,0"
    assert format_mask_strategy(default_strategy([12], 4)) == "0,0,-4,0,4,0"
    assert format_mask_strategy(default_strategy([1, 1], 4)) == "0,0,0,0,1,0;0,1,0,-1,1,0"


def test_split_loop_prompt():
    assert split_loop_prompt("a cat", 3) == ["a cat"] * 3
    assert split_loop_prompt("|0|a cat|2|a dog", 4) == ["a cat", "a cat", "a dog", "a dog"]
    with pytest.raises(UserError, match="must increase"):
        split_loop_prompt("|0|a|0|b", 2)
    with pytest.raises(UserError, match="not an integer"):
        split_loop_prompt("|0|a|x|b", 2)


# --- training masks ---------------------------------------------------------------------------------------


def test_ratio_names_aliases_and_identity_rest():
    r = normalise_ratios({"intepolate": 0.1, "image_head": 0.2})
    assert r == {"identity": pytest.approx(0.7), "image_head": 0.2, "interpolate": 0.1}
    assert normalise_ratios({"interpolate": 1.0}) == {"interpolate": 1.0, "identity": 0.0}
    assert normalise_ratios({"mask_no": 0.5, "mask_quarter_random": 0.5}) == {
        "identity": 0.5,
        "quarter_random": 0.5,
    }
    with pytest.raises(ConfigError, match="unknown pattern 'quater_head'"):
        normalise_ratios({"quater_head": 0.1})
    with pytest.raises(ConfigError, match="must sum to 1"):
        normalise_ratios({"identity": 0.5, "random": 0.2})
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        normalise_ratios({"random": 1.5})
    with pytest.raises(ConfigError, match="given twice"):
        normalise_ratios({"interpolate": 0.1, "intepolate": 0.1})


def _rows(name, n=16, draws=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [pattern_mask(name, n, g) for _ in range(draws)]


def test_pattern_shapes():
    n, q = 16, 4
    for m in _rows("identity"):
        assert m.all()
    for m in _rows("image_head"):
        assert m.tolist() == [False] + [True] * (n - 1)
    for m in _rows("image_tail"):
        assert m.tolist() == [True] * (n - 1) + [False]
    for m in _rows("image_head_tail"):
        assert m.tolist() == [False] + [True] * (n - 2) + [False]
    sizes = set()
    for m in _rows("quarter_head"):
        k = int((~m).sum())
        sizes.add(k)
        assert 1 <= k <= q and not m[:k].any() and m[k:].all()
    assert sizes == {1, 2, 3, 4}  # every size occurs
    for m in _rows("quarter_head_tail"):
        k = int((~m[: n // 2]).sum())
        assert not m[:k].any() and not m[n - k :].any() and m[k : n - k].all()
    for m in _rows("quarter_random"):
        idx = (~m).nonzero().flatten()
        assert 1 <= len(idx) <= q and (idx.diff() == 1).all()  # one contiguous run
    for m in _rows("image_random"):
        assert int((~m).sum()) == 1
    starts = set()
    for m in _rows("interpolate"):
        start = int((~m).nonzero()[0])
        starts.add(start)
        assert (~m).tolist() == [(i - start) % 2 == 0 and i >= start for i in range(n)]
    assert starts == {0, 1}
    fractions = [float((~m).float().mean()) for m in _rows("random", draws=400)]
    assert all(m.any() for m in _rows("random"))
    assert 0.4 < sum(fractions) / len(fractions) < 0.6  # E = 0.5 (condition probability ~ U(0.1, 0.9))


def test_short_videos_never_lose_every_generated_frame():
    g = torch.Generator().manual_seed(0)
    for name in ("quarter_head_tail", "image_head_tail", "interpolate", "quarter_head", "random"):
        for n in (1, 2, 3):
            for _ in range(20):
                assert pattern_mask(name, n, g).any()
    assert pattern_mask("image_head", 1, g).tolist() == [True]  # an image is always generated


def test_patterns_are_drawn_with_the_configured_ratios():
    """Chi-square goodness of fit, 4000 draws, fixed seed; the same seed gives the same masks."""
    ratios = {"identity": 0.4, "quarter_random": 0.1, "image_head": 0.2, "intepolate": 0.05, "random": 0.25}
    gen = MaskGenerator(ratios)
    masks, names = gen.get_masks(4000, 8, torch.Generator().manual_seed(123))
    assert masks.shape == (4000, 8) and masks.dtype == torch.bool
    expected = {
        "identity": 0.4,
        "quarter_random": 0.1,
        "image_head": 0.2,
        "interpolate": 0.05,
        "random": 0.25,
    }
    chi2 = sum((names.count(k) - 4000 * p) ** 2 / (4000 * p) for k, p in expected.items())
    assert chi2 < 18.47  # the 0.999 quantile of chi-square with 4 degrees of freedom
    for k, p in expected.items():
        assert math.isclose(names.count(k) / 4000, p, abs_tol=4 * math.sqrt(p * (1 - p) / 4000)), k
    again, names2 = gen.get_masks(4000, 8, torch.Generator().manual_seed(123))
    assert torch.equal(masks, again) and names == names2
    # an image_head row is the image_head mask, an identity row is all True
    for m, name in zip(masks[:200], names[:200]):
        if name == "identity":
            assert m.all()
        if name == "image_head":
            assert m.tolist() == [False] + [True] * 7
