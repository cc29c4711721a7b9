"""The synthetic shapes world: geometry, captions, held-out combinations, determinism, CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from sorakit.cli.main import main
from sorakit.data.video import read_video
from sorakit.eval.shapes import parse_prompt
from sorakit.tools import synth


def _specs(n: int, seed: int = 0, holdout: str = "default", size: int = 64):
    triples = synth.combos(holdout)
    return [synth.sample_spec(synth.video_rng(seed, i), triples, size=size) for i in range(n)]


def test_fill_ratios_of_rendered_shapes():
    side = 40.0
    expected = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}
    for shape, ratio in expected.items():
        cov = synth.shape_coverage(shape, 64, 64, 10.3, 7.6, side)
        assert cov.sum() / side**2 == pytest.approx(ratio, abs=0.02), shape
    tri = synth.shape_coverage("triangle", 64, 64, 10.0, 10.0, side) > 0.5
    rows = np.nonzero(tri.any(axis=1))[0]
    top, bottom = tri[rows[2]].sum(), tri[rows[-3]].sum()
    assert top < bottom / 3  # pointing up


@pytest.mark.parametrize("size", [64, 128])
def test_sizes_speeds_and_always_inside(size):
    scale = size / 64
    for spec in _specs(60, seed=3, size=size):
        assert 14 * scale <= spec.side <= 22 * scale
        assert 1.5 * scale <= spec.speed <= 2.5 * scale
        frames = synth.render(spec, size=size)
        assert frames.shape == (16, size, size, 3) and frames.dtype == np.uint8
        # the object is never cut off by the frame: its area is the same in every frame
        areas = (frames.max(axis=-1).astype(np.float64) / 255).sum(axis=(1, 2))
        assert areas.max() / areas.min() < 1.05, "object was clipped by the frame"
        # the object moves the right way by speed * 15 px
        mass = frames.max(axis=-1).astype(np.float64)
        ys, xs = np.mgrid[0:size, 0:size]
        cx = (mass * xs).sum(axis=(1, 2)) / mass.sum(axis=(1, 2))
        cy = (mass * ys).sum(axis=(1, 2)) / mass.sum(axis=(1, 2))
        dx, dy = synth.MOTION_VECTORS[spec.motion]
        assert cx[-1] - cx[0] == pytest.approx(dx * spec.speed * 15, abs=0.3)
        assert cy[-1] - cy[0] == pytest.approx(dy * spec.speed * 15, abs=0.3)


def test_colours_are_the_palette():
    for spec in _specs(12, seed=5):
        frames = synth.render(spec)
        bright = frames.reshape(-1, 3)[frames.reshape(-1, 3).max(axis=1) == 255]
        assert (bright == np.array(synth.COLORS[spec.color])).all()


def test_captions_name_all_three_attributes_in_many_phrasings():
    assert len(synth.TRAIN_TEMPLATES) >= 10
    specs = _specs(600, seed=1)
    captions = set()
    for spec in specs:
        assert parse_prompt(spec.caption) == (spec.color, spec.shape, spec.motion), spec.caption
        captions.add(spec.caption)
    assert len(captions) > 300
    joined = " ".join(captions)
    for word in ("moving", "moves", "going", "travels", "slides", "to the left", "leftward", "upward"):
        assert word in joined
    assert any(not c.startswith("a ") for c in captions) and any(c.startswith("a ") for c in captions)


def test_holdout_combinations_never_in_training():
    assert len(synth.HELDOUT) >= 6
    held = set(synth.HELDOUT)
    seen = {(s.color, s.shape, s.motion) for s in _specs(2000, seed=2)}
    assert not seen & held
    assert len(seen) == 6 * 3 * 4 - len(held)  # every other combination does occur
    # every colour, shape and motion of the held-out triples is still seen in training
    for c, s, m in held:
        assert any(x[0] == c for x in seen) and any(x[1] == s for x in seen) and any(x[2] == m for x in seen)
    all_seen = {(s.color, s.shape, s.motion) for s in _specs(2000, seed=2, holdout="none")}
    assert held <= all_seen


def test_deterministic_per_seed():
    a, b, c = _specs(20, seed=7), _specs(20, seed=7), _specs(20, seed=8)
    assert a == b and a != c
    assert np.array_equal(synth.render(a[0]), synth.render(b[0]))


def test_cli_writes_videos_and_csv(tmp_path):
    out1, out2 = tmp_path / "one", tmp_path / "two"
    assert main(["data", "synth", "-o", str(out1), "-n", "6", "--seed", "4"]) == 0
    assert main(["data", "synth", "-o", str(out2), "-n", "6", "--seed", "4", "--workers", "2"]) == 0
    rows1 = list(csv.DictReader(open(out1 / "train.csv")))
    rows2 = list(csv.DictReader(open(out2 / "train.csv")))
    assert len(rows1) == 6
    assert list(rows1[0]) == list(synth.CSV_COLUMNS)
    assert rows1 == rows2  # paths are relative to the CSV's folder: the same in both
    for r in rows1:
        assert r["path"].startswith("videos/")
        frames = read_video(out1 / r["path"])
        assert frames.shape == (16, 64, 64, 3)
        assert (r["num_frames"], r["fps"], r["height"], r["width"]) == ("16", "8", "64", "64")
        assert parse_prompt(r["text"]) == (r["color"], r["shape"], r["motion"])


def test_cli_rejects_bad_input(tmp_path, capsys):
    assert main(["data", "synth", "-o", str(tmp_path), "-n", "0"]) == 2
    assert "num-videos" in capsys.readouterr().err
    assert main(["data", "synth", "-o", str(tmp_path), "-n", "2", "--size", "15"]) == 2


def test_moved_dataset_trains_and_all_missing_is_one_line(tmp_path, capsys):
    """synth's CSV survives a move (relative paths); a CSV whose files are all gone is a one-line error
    before training, not 'RuntimeError: 21 files in a row could not be read' (issue #14 item 5)."""
    import shutil

    from sorakit.data.dataset import VideoTextDataset

    assert main(["data", "synth", "-o", str(tmp_path / "a"), "-n", "3", "--frames", "4", "--size", "16"]) == 0
    shutil.move(tmp_path / "a", tmp_path / "b")
    ds = VideoTextDataset(tmp_path / "b" / "train.csv", 4, 1, (16, 16))
    assert ds[0]["skipped"] == [] and ds[0]["video"].shape == (3, 4, 16, 16)
    shutil.rmtree(tmp_path / "b" / "videos")
    code = main(["train", "tiny", "--data", str(tmp_path / "b" / "train.csv"), "--output", str(tmp_path / "run"),
                 "--max-steps", "1", "vae.type=builtin", "vae.path=" + str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "none of its 3 files exists" in err and "--data-root" in err


def _centroids(frames: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroids ``[T, 2]`` (x, y) of uint8 ``[T, H, W, 3]`` frames."""
    mass = frames.max(axis=-1).astype(np.float64)
    ys, xs = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]]
    total = mass.sum(axis=(1, 2))
    return np.stack([(mass * xs).sum(axis=(1, 2)) / total, (mass * ys).sum(axis=(1, 2)) / total], axis=1)


@pytest.mark.parametrize(
    "size, frames", [((64, 96), 16), ((96, 64), 16), ((64, 64), 32), ((64, 64), 8), ((96, 64), 32)]
)
def test_non_square_and_long_clips_keep_constant_speed_inside(size, frames):
    """Every size and length: the object stays whole in every frame, and moves the prompted way by the same
    step every frame (constant speed: extension has a ground truth); a continuation rendered from frame
    `frames` goes on along the same path."""
    h, w = size
    for i in range(10):
        spec = synth.sample_spec(synth.video_rng(11, i), synth.combos(), size=size, frames=frames)
        assert 14 <= spec.side <= 22 and spec.speed <= 2.5
        video = synth.render(spec, size, frames)
        assert video.shape == (frames, h, w, 3)
        areas = (video.max(axis=-1).astype(np.float64) / 255).sum(axis=(1, 2))
        assert areas.max() / areas.min() < 1.05, "object was clipped by the frame"
        c = _centroids(video)  # [T, 2]
        t = np.arange(frames)
        dx, dy = synth.MOTION_VECTORS[spec.motion]
        for axis, d in ((0, dx), (1, dy)):
            slope, icpt = np.polyfit(t, c[:, axis], 1)
            # the step of the drawn speed, every frame (pixel rounding aside)
            assert slope == pytest.approx(d * spec.speed, abs=0.03)
            assert np.abs(c[:, axis] - (slope * t + icpt)).max() < 0.3
        longer = synth.render(spec, size, frames + 4)  # the same path, 4 frames further
        assert np.array_equal(longer[:frames], video)
        assert np.array_equal(synth.render(spec, size, 4, start=frames), longer[frames:])


def test_default_clips_unchanged_by_the_size_options():
    """A square 16-frame run draws exactly what it drew before sizes and lengths existed: the size/length
    choice has its own stream and is skipped when there is one choice."""
    triples = synth.combos()
    assert synth.video_shape(0, 5, [(64, 64)], [16]) == ((64, 64), 16)
    a = synth.sample_spec(synth.video_rng(0, 5), triples, size=64, frames=16)
    b = synth.sample_spec(synth.video_rng(0, 5), triples, size=(64, 64), frames=16)
    assert a == b
    # video 0 of seed 0, as drawn before the size options (values printed by the previous version)
    spec = synth.sample_spec(synth.video_rng(0, 0), triples)
    assert (spec.color, spec.shape, spec.motion) == ("magenta", "circle", "right")
    assert (spec.side, spec.speed, spec.x0, spec.y0) == pytest.approx(
        (16.15829371, 1.54097352, 0.40868055, 38.90823592)
    )
    assert spec.caption == "magenta colored circle travelling towards the right"
    assert np.array_equal(synth.render(spec), synth.render(spec, (64, 64), 16))


def test_mixed_sizes_and_lengths_cli_rows_carry_each_clip_shape(tmp_path, capsys):
    out = tmp_path / "mixed"
    argv = [
        "data",
        "synth",
        "-o",
        str(out),
        "-n",
        "12",
        "--seed",
        "2",
        "--size",
        "64x64,64x96,96x64",
        "--frames",
        "8,16,32",
    ]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(out / "train.csv")))
    shapes = set()
    for r in rows:
        frames = read_video(out / r["path"])
        want = (int(r["num_frames"]), int(r["height"]), int(r["width"]))
        assert frames.shape == (*want, 3)
        shapes.add(want)
        assert parse_prompt(r["text"]) == (r["color"], r["shape"], r["motion"])
    assert {s[0] for s in shapes} == {8, 16, 32} and {s[1:] for s in shapes} == {(64, 64), (64, 96), (96, 64)}
    # the rows' sizes and lengths are what the bucket tools read: every clip lands in v3's table
    capsys.readouterr()
    assert main(["data", "csv", "buckets", str(out / "train.csv"), "--config", "builtin/stdit-v3"]) == 0
    assert "kept 12 of 12 clips" in capsys.readouterr().out
    # a video of a mixed run is the video of that size and length alone
    i = 3
    size, frames = synth.video_shape(2, i, [(64, 64), (64, 96), (96, 64)], [8, 16, 32])
    alone = synth.sample_spec(synth.video_rng(2, i), synth.combos(), size=size, frames=frames)
    assert alone.caption == rows[i]["text"]
    # the extended world keeps working with sizes
    ext = tmp_path / "ext"
    assert main(["data", "synth", "-o", str(ext), "-n", "6", "--concepts", "extended", "--new-fraction", "1",
                 "--size", "64x96", "--frames", "8-10"]) == 0  # fmt: skip
    rows = list(csv.DictReader(open(ext / "train.csv")))
    assert all(r["color"] == "orange" or r["shape"] == "diamond" for r in rows)
    assert all((r["height"], r["width"]) == ("64", "96") and 8 <= int(r["num_frames"]) <= 10 for r in rows)


def test_bad_sizes_and_lengths_are_one_line(tmp_path, capsys):
    assert main(["data", "synth", "-o", str(tmp_path), "-n", "2", "--size", "64x9x"]) == 2
    assert "--size" in capsys.readouterr().err
    assert main(["data", "synth", "-o", str(tmp_path), "-n", "2", "--size", "64x15"]) == 2
    assert main(["data", "synth", "-o", str(tmp_path), "-n", "2", "--frames", "32-8"]) == 2
    assert "--frames" in capsys.readouterr().err
    assert main(["data", "synth", "-o", str(tmp_path), "-n", "2", "--frames", "8,1"]) == 2
    capsys.readouterr()
    for flag in ("--long-paths", "--path-windows"):
        assert main(["data", "synth", "-o", str(tmp_path), "-n", "2", flag, "1.5"]) == 2
        err = capsys.readouterr().err
        assert f"{flag} must be in [0, 1]" in err and len(err.strip().splitlines()) == 1
    assert main(["data", "synth", "-o", str(tmp_path), "-n", "2", "--path-slack", "0.8"]) == 2
    err = capsys.readouterr().err
    assert "--path-slack must be in [0, 0.5]" in err and len(err.strip().splitlines()) == 1
