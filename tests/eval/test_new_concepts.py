"""The extended shapes world (orange, diamond): rendered as specified, in every combination with the old
concepts, opt-in (the default world is unchanged), and scored by the evaluator -- ground truth right,
orange told from red and yellow, diamond from square and triangle, also after H.264."""

from __future__ import annotations

import csv
import json

import numpy as np

from sorakit.cli.main import main
from sorakit.data.video import read_video, write_video
from sorakit.eval import shapes as ev
from sorakit.shapes_world import ALL_COLORS, ALL_SHAPES, COLORS, SHAPES, combos, is_new
from sorakit.tools import synth


def _new_videos(n: int, seed: int):
    triples = [t for t in combos("none", "extended") if is_new(t)]
    specs = [synth.sample_spec(synth.video_rng(seed, i), triples) for i in range(n)]
    return specs, [synth.render(s) for s in specs]


def test_extended_world_adds_orange_and_diamond_in_every_combination():
    old, ext = combos("default"), combos("default", "extended")
    assert ext[: len(old)] == old  # the old triples, unchanged, then the new ones
    new = ext[len(old) :]
    assert all(is_new(t) for t in new) and not any(is_new(t) for t in old)
    assert {c for c, _, _ in new} == set(ALL_COLORS) and {s for _, s, _ in new} == set(ALL_SHAPES)
    assert len(new) == len(ALL_COLORS) * len(ALL_SHAPES) * 4 - len(COLORS) * len(SHAPES) * 4
    assert ALL_COLORS["orange"] == (255, 128, 0)


def test_diamond_is_a_square_turned_45_degrees_touching_its_box():
    side, x, y = 20.0, 10.0, 30.0
    cov = synth.shape_coverage("diamond", 64, 64, x, y, side, ss=8)
    assert (
        abs(cov.sum() - side * side / 2) < 4.0
    )  # a square of diagonal `side`: area side^2 / 2 (2% sampling)
    rows, cols = np.nonzero(cov > 0)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (
        30,
        50,
        10,
        30,
    )  # corners reach the box
    mid_r, mid_c = int(y + side / 2), int(x + side / 2)
    assert cov[mid_r, 10] > 0.2 and cov[mid_r, 29] > 0.2 and cov[30, mid_c] > 0.2 and cov[49, mid_c] > 0.2
    assert cov[30, 10] == 0 and cov[30, 29] == 0 and cov[49, 10] == 0 and cov[49, 29] == 0  # no box corners
    frame = synth.render(synth.ShapeSpec("orange", "diamond", "right", side, 2.0, x, y, ""), frames=2)[0]
    assert (frame[mid_r, mid_c] == (255, 128, 0)).all()


def test_new_concepts_ground_truth_scores_right_and_wrong_prompts_wrong(tmp_path):
    specs, videos = _new_videos(40, seed=21)
    assert {s.color for s in specs} >= {"orange", "red"} and {s.shape for s in specs} >= {"diamond", "square"}
    for i, (s, v) in enumerate(zip(specs, videos)):
        score = ev.score_video(v, s.caption)
        assert score.all_ok and score.analysis.consistent, score.row()
        lookalikes = {"orange": ("red", "yellow"), "diamond": ("square", "triangle")}
        for wrong in lookalikes.get(s.color, ()):
            assert not ev.score_video(v, f"a {wrong} {s.shape} moving {s.motion}").color_ok
        for wrong in lookalikes.get(s.shape, ()):
            bad = ev.score_video(v, f"a {s.color} {wrong} moving {s.motion}")
            assert bad.color_ok and not bad.shape_ok and not bad.all_ok
        if s.shape != "diamond":  # an old shape in orange is not taken for a diamond
            assert not ev.score_video(v, f"a {s.color} diamond moving {s.motion}").shape_ok
        if s.color != "orange":
            assert not ev.score_video(v, f"an orange {s.shape} moving {s.motion}").color_ok
        if i < 8:  # through the codec too
            again = read_video(write_video(tmp_path / f"{i}.mp4", v, fps=8))
            assert ev.score_video(again, s.caption).all_ok


def test_old_red_and_yellow_are_not_orange_and_new_prompt_set():
    for colour in ("red", "yellow"):
        for shape in SHAPES:
            v = synth.render(synth.ShapeSpec(colour, shape, "up", 18.0, 2.0, 20.0, 40.0, ""))
            a = ev.analyze_video(v)
            assert a.color == colour and a.shape == shape
    prompts = ev.prompt_set("new", 40, seed=0)
    assert all("orange" in text or "diamond" in text for text, _ in prompts)
    assert all(ev.parse_prompt(text) == target for text, target in prompts)
    assert ev.prompt_set("train", 5) == ev.prompt_set("train", 5)  # the old sets keep their seeds


def test_synth_concepts_cli_and_eval_of_the_videos(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["data", "synth", "--output", str(out), "--num-videos", "10", "--seed", "4", "--frames", "8",
                 "--concepts", "extended", "--new-fraction", "0.6", "--executor", "local:1"]) == 0  # fmt: skip
    rows = list(csv.DictReader(open(out / "train.csv")))
    assert sum(is_new((r["color"], r["shape"], r["motion"])) for r in rows) >= 4
    videos = tmp_path / "videos.csv"
    with open(videos, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "text"])
        w.writerows([[out / r["path"], r["text"]] for r in rows])
    res = tmp_path / "sum.json"
    assert main(["eval", "shapes", "--videos", str(videos), "--json", str(res), "--no-progress"]) == 0
    assert json.loads(res.read_text())["custom"]["all"] == 100.0
    capsys.readouterr()
    assert (
        main(["data", "synth", "--output", str(tmp_path / "x"), "--num-videos", "2", "--new-fraction", "0.5"])
        == 2
    )
    assert "needs --concepts extended" in capsys.readouterr().err
    # the default world is what it was: the same videos and captions as before the extension
    default = synth.synthesize(tmp_path / "d", 6, seed=5, frames=4)
    assert not any(is_new((r["color"], r["shape"], r["motion"])) for r in csv.DictReader(open(default)))
