"""`sorakit eval shapes` beyond text-to-video: shape fidelity, --task i2v / extend, --loop, --sizes / --frames.

Each measure scores the renderer's own (ideal) videos as right and deliberately broken ones -- a wrong shape
drawn, a jump at the seam, a flipped direction -- as wrong; each task runs end to end with the built-in model
at 2 steps and writes videos of the asked shape."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from sorakit.cli.main import main
from sorakit.data.video import probe_video, read_video, write_video
from sorakit.eval import shape_tasks as st
from sorakit.eval import shapes as ev
from sorakit.shapes_world import ShapeSpec, combos, render, sample_spec

TRIPLES = combos("none")


def _triple(i: int) -> tuple[str, str, str]:
    return TRIPLES[(i * 7) % len(TRIPLES)]


def _prompt(t: tuple[str, str, str]) -> str:
    return f"a {t[0]} {t[1]} moving {t[2]}"


def test_fidelity_of_rendered_videos_after_h264(tmp_path):
    """The renderer's videos, through H.264 as the training data is: mean IoU ~0.94 (>= 0.9), each shape
    at least 0.85 (the triangle's anti-aliased slopes cost the most)."""
    per: dict[str, list[float]] = {}
    for i in range(18):
        spec = sample_spec(np.random.default_rng([4, i]), [_triple(i)])
        write_video(tmp_path / "v.mp4", render(spec), fps=8)
        score = ev.score_video(read_video(tmp_path / "v.mp4"), spec.caption)
        per.setdefault(spec.shape, []).append(score.fidelity)
    mean = float(np.mean([f for v in per.values() for f in v]))
    assert 0.9 <= mean <= 0.97, per
    assert all(np.mean(v) >= 0.85 for v in per.values()), per


def _with_stem(video: np.ndarray, spec: ShapeSpec) -> np.ndarray:
    """A "mushroom": the circle with a stem below it (what a loose model draws)."""
    out = video.copy()
    for t in range(len(out)):
        x = int(spec.x0 + spec.speed * t * (spec.motion == "right")) + int(spec.side / 2)
        y = int(spec.y0 + spec.side)
        out[t, y : y + 6, x - 2 : x + 2] = out[t].reshape(-1, 3).max(axis=0)
    return out


def test_wrong_shapes_have_low_fidelity():
    spec = ShapeSpec("red", "circle", "right", 18.0, 2.0, 5.0, 10.0, "")
    clean = ev.score_video(render(spec), "a red circle moving right")
    mushroom = ev.score_video(_with_stem(render(spec), spec), "a red circle moving right")
    as_square = ev.score_video(render(spec), "a red square moving right")
    assert clean.fidelity >= 0.93
    assert mushroom.fidelity < 0.85 and as_square.fidelity < 0.85
    summary = ev.summarize([clean, mushroom])["custom"]
    assert summary["fidelity"] == pytest.approx((clean.fidelity + mushroom.fidelity) / 2)
    assert "shape fidelity" in ev.format_table({"custom": summary})


def test_i2v_ideal_passes_and_a_jump_or_wrong_first_frame_fails():
    task = st.TaskSpec("i2v")
    ok = []
    for i in range(12):
        ref, ideal = st.reference_for(task, _triple(i), seed=0, index=i)
        assert ref.shape == (1, 64, 64, 3) and ideal.shape == (16, 64, 64, 3)
        assert np.array_equal(ideal[0], ref[0])
        s = st.score_task(ideal, _prompt(_triple(i)), task, ref)
        ok.append(s.checks["frame0"] and s.checks["continues"] and s.all_ok)
    assert np.mean(ok) >= 0.9
    ref, ideal = st.reference_for(task, ("blue", "square", "right"), seed=0, index=3)
    jump = ideal.copy()
    jump[1:] = np.roll(ideal[1:], 12, axis=1)  # frame 1 on: 12 px lower
    moved = ideal.copy()
    moved[0] = np.roll(ideal[0], 10, axis=0)  # frame 0 not where the reference is
    prompt = "a blue square moving right"
    assert not st.score_task(jump, prompt, task, ref).checks["continues"]
    assert not st.score_task(moved, prompt, task, ref).checks["frame0"]


def test_extend_ideal_passes_and_seam_jump_or_flip_fails():
    task = st.TaskSpec("extend")
    ok = []
    for i in range(12):
        ref, ideal = st.reference_for(task, _triple(i), seed=1, index=i)
        assert ref.shape == (16, 64, 64, 3) and ideal.shape == (16, 64, 64, 3)
        assert np.array_equal(ideal[:4], ref[-4:])  # the condition frames are the reference's last 4
        s = st.score_task(ideal, _prompt(_triple(i)), task, ref)
        ok.append(s.checks["task"] and s.all_ok)
        assert s.details["seam_px"] < 1.0  # pixel rounding of the thresholded masks
    assert np.mean(ok) >= 0.9
    up = ShapeSpec("green", "circle", "up", 18.0, 1.5, 20.0, 44.0, "")
    ref, ideal = render(up, 64, 16), render(up, 64, 16, start=12)
    prompt = "a green circle moving up"
    assert st.score_task(ideal, prompt, task, ref).checks["task"]
    seam = ideal.copy()
    seam[4:] = np.roll(ideal[4:], 6, axis=2)  # the new frames start 6 px right of the extrapolation
    flipped = ideal.copy()  # from the seam on, it goes back down
    flipped[4:] = render(
        ShapeSpec("green", "circle", "down", 18.0, 1.5, 20.0, 44.0 - 1.5 * 15, ""), 64, 12, 1
    )
    slow = ShapeSpec("red", "square", "right", 12.0, 1.2, 2.0, 20.0, "")
    fast = ideal.copy()  # the new frames more than twice as fast as the reference
    fast[:4] = render(slow, 64, 4, start=12)
    fast[4:] = render(ShapeSpec("red", "square", "right", 12.0, 2.5, 2.0 + 1.2 * 15, 20.0, ""), 64, 12, 1)
    assert not st.score_task(seam, prompt, task, ref).checks["seam"]
    f = st.score_task(flipped, prompt, task, ref)
    assert not f.checks["task"] and not f.checks["speed"]
    g = st.score_task(fast, "a red square moving right", task, render(slow, 64, 16))
    assert g.checks["seam"] and not g.checks["speed"]


def test_loop_direction_every_segment():
    task = st.TaskSpec("t2v", loop=3)
    assert task.total_frames == 40
    spec = sample_spec(np.random.default_rng(3), [("cyan", "triangle", "left")], size=64, frames=40)
    video = render(spec, 64, 40)
    assert st.score_task(video, "a cyan triangle moving left", task).checks["loop_direction"]
    turned = video.copy()
    turned[24:] = video[24:][::-1]  # the third segment goes back
    s = st.score_task(turned, "a cyan triangle moving left", task)
    assert not s.checks["loop_direction"]


def test_bad_task_options_are_one_line(capsys, tmp_path):
    assert (
        main(["eval", "shapes", "--task", "extend", "--condition-frames", "16", "--model", str(tmp_path)])
        == 2
    )
    assert "--condition-frames" in capsys.readouterr().err
    assert main(["eval", "shapes", "--sizes", "64y96", "--model", str(tmp_path)]) == 2
    assert main(["eval", "shapes", "--loop", "0", "--model", str(tmp_path)]) == 2
    assert main(["eval", "shapes", "--videos", "x.csv", "--task", "i2v"]) == 2
    assert "--videos" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, shape",
    [
        (["--task", "i2v"], (16, 64, 64)),
        (["--task", "extend"], (16, 64, 64)),
        (["--sizes", "64x96", "--frames", "8"], (8, 64, 96)),
        (["--loop", "3"], (40, 64, 64)),
    ],
)
def test_each_task_runs_with_the_builtin_model(tmp_path, capsys, flags, shape):
    save, res, js = tmp_path / "videos", tmp_path / "res.csv", tmp_path / "sum.json"
    argv = ["eval", "shapes", "--sets", "train", "-n", "1", "--steps", "2", "--threads", "1", "--no-progress",
            "--save-videos", str(save), "--results", str(res), "--json", str(js), *flags]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "shape fidelity" in out
    info = probe_video(save / "0000.mp4")
    assert (info["num_frames"], info["height"], info["width"]) == shape
    row = next(csv.DictReader(open(res)))
    summary = json.loads(js.read_text())
    group = next(iter(summary))
    assert 0.0 <= summary[group]["fidelity"] <= 1.0
    if "i2v" in flags:
        assert {"frame0_ok", "continues_ok"} <= set(row) and (save / "0000-ref.png").is_file()
    if "extend" in flags:
        assert {"seam_ok", "speed_ok", "task_ok"} <= set(row)
        assert probe_video(save / "0000-ref.mp4")["num_frames"] == 16
    if "--loop" in flags:
        assert "loop_direction" in summary[group]
    if "--sizes" in flags:
        assert group == "train 8x64x96"
