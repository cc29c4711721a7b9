"""The shapes evaluator: ground truth scores 100%, wrong prompts and broken videos score wrong."""

from __future__ import annotations

import numpy as np
import pytest

from sorakit.data.video import read_video, write_video
from sorakit.errors import UserError
from sorakit.eval import shapes as ev
from sorakit.tools import synth


def _videos(n: int, seed: int = 0, holdout: str = "none"):
    triples = synth.combos(holdout)
    specs = [synth.sample_spec(synth.video_rng(seed, i), triples) for i in range(n)]
    return specs, [synth.render(s) for s in specs]


def test_ground_truth_scores_100_percent():
    specs, videos = _videos(72, seed=11)
    scores = [ev.score_video(v, s.caption) for s, v in zip(specs, videos)]
    summary = ev.summarize(scores)["custom"]
    assert summary.pop("fidelity") >= 0.9  # mean IoU with the prompted shape (rendered, before H.264)
    assert summary == {
        "n": 72.0,
        "color": 100.0,
        "shape": 100.0,
        "direction": 100.0,
        "all": 100.0,
        "consistent": 100.0,
    }


def test_ground_truth_through_h264_scores_100_percent(tmp_path):
    specs, videos = _videos(12, seed=12)
    for i, (s, v) in enumerate(zip(specs, videos)):
        path = write_video(tmp_path / f"{i}.mp4", v, fps=8)
        score = ev.score_video(read_video(path), s.caption)
        assert score.all_ok and score.analysis.consistent, score.row()


def test_each_shape_is_recognised_at_every_size_and_fill_ratio_matches():
    fills = {"circle": [], "square": [], "triangle": []}
    for shape in synth.SHAPES:
        for side in (14.0, 17.5, 22.0):
            spec = synth.ShapeSpec("cyan", shape, "down", side, 2.0, 20.3, 3.7, "")
            a = ev.analyze_video(synth.render(spec))
            assert a.shape == shape and a.direction == "down" and a.color == "cyan"
            fills[shape].append(a.mean_fill)
    assert np.mean(fills["square"]) > 0.9
    assert 0.7 < np.mean(fills["circle"]) < 0.86
    assert 0.4 < np.mean(fills["triangle"]) < 0.62


def _swap(value: str, options) -> str:
    return [o for o in options if o != value][0]


def test_wrong_prompts_score_wrong():
    specs, videos = _videos(24, seed=13)
    for s, v in zip(specs, videos):
        wrong_colour = f"a {_swap(s.color, synth.COLORS)} {s.shape} moving {s.motion}"
        wrong_shape = f"a {s.color} {_swap(s.shape, synth.SHAPES)} moving {s.motion}"
        opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}[s.motion]
        wrong_dir = f"a {s.color} {s.shape} moving {opposite}"
        a = ev.score_video(v, wrong_colour)
        assert not a.color_ok and a.shape_ok and a.direction_ok and not a.all_ok
        b = ev.score_video(v, wrong_shape)
        assert b.color_ok and not b.shape_ok and b.direction_ok and not b.all_ok
        c = ev.score_video(v, wrong_dir)
        assert c.color_ok and c.shape_ok and not c.direction_ok and not c.all_ok
    scores = [
        ev.score_video(v, f"a {_swap(s.color, synth.COLORS)} {s.shape} moving {s.motion}")
        for s, v in zip(specs, videos)
    ]
    assert ev.summarize(scores)["custom"]["all"] == 0.0


def test_broken_videos_are_inconsistent_or_static():
    spec = synth.ShapeSpec("red", "circle", "right", 18.0, 2.0, 4.0, 20.0, "")
    good = synth.render(spec)
    assert ev.analyze_video(good).consistent
    missing = good.copy()
    missing[5] = 0
    assert not ev.analyze_video(missing).consistent
    two = good.copy()
    two[:, 50:60, 50:60] = (255, 0, 0)
    a = ev.analyze_video(two)
    assert not a.consistent and "more than one object" in "; ".join(a.notes)
    growing = np.stack(
        [
            synth.render(synth.ShapeSpec("red", "circle", "right", 10 + 2 * t, 0.0, 5.0, 5.0, ""), frames=1)[
                0
            ]
            for t in range(16)
        ]
    )
    assert not ev.analyze_video(growing).consistent
    grey = np.full_like(good, 128)
    assert not ev.analyze_video(grey).consistent and ev.analyze_video(grey).color is None
    static = np.repeat(good[:1], 16, axis=0)
    assert ev.analyze_video(static).direction == "static"
    assert ev.analyze_video(np.zeros_like(good)).shape is None


def test_blurred_video_still_recognised():
    """Generated videos are soft: a box blur must not change colour, shape or direction."""
    spec = synth.ShapeSpec("magenta", "triangle", "left", 22.0, 2.2, 38.0, 20.0, "")
    v = synth.render(spec).astype(np.float32)
    k = np.ones(3) / 3
    for axis in (1, 2):
        v = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), axis, v)
    a = ev.analyze_video((0.85 * v).astype(np.uint8))
    assert (a.color, a.shape, a.direction) == ("magenta", "triangle", "left")


def test_parse_prompt():
    assert ev.parse_prompt("A Red circle moving to the right.") == ("red", "circle", "right")
    assert ev.parse_prompt("the ball is purple and falls") == ("magenta", "circle", "down")
    assert ev.parse_prompt("yellow box heading towards the top") == ("yellow", "square", "up")
    with pytest.raises(UserError):
        ev.parse_prompt("a red circle")
    with pytest.raises(UserError):
        ev.parse_prompt("a dog moving left")


def test_prompt_sets():
    held = set(synth.HELDOUT)
    ev.check_novel_templates()
    train_caps = {
        s.caption for s in [synth.sample_spec(synth.video_rng(0, i), synth.combos()) for i in range(300)]
    }
    for name in ev.PROMPT_SETS:
        prompts = ev.prompt_set(name, 24, seed=0)
        assert len(prompts) == 24 and prompts == ev.prompt_set(name, 24, seed=0)
        for text, target in prompts:
            assert ev.parse_prompt(text) == target
            assert (target in held) == (name == "heldout")
        if name == "novel":
            assert not {t for t, _ in prompts} & train_caps
    assert {t for _, t in ev.prompt_set("heldout", len(held))} == held


def test_table_format():
    specs, videos = _videos(4, seed=1)
    scores = [ev.score_video(v, s.caption, group="train") for s, v in zip(specs, videos)]
    scores += [ev.score_video(videos[0], "a blue square moving up", group="novel")]
    summary = ev.summarize(scores)
    assert set(summary) == {"train", "novel", "overall"}
    assert summary["overall"]["n"] == 5
    table = ev.format_table(summary)
    assert table.count("\n") == 4 and "| train | 4 | 100.0 |" in table


def test_numpy_labelling_matches_scipy():
    rng = np.random.default_rng(0)
    mask = rng.random((40, 50)) > 0.6
    labels, n = ev._label_numpy(mask)
    assert labels.max() == n and (labels > 0).sum() == mask.sum()
    ndimage = pytest.importorskip("scipy.ndimage")
    ref, m = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    assert n == m
    # same partition up to renumbering
    pairs = {(a, b) for a, b in zip(labels[mask], ref[mask])}
    assert len(pairs) == n
