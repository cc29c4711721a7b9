"""`sorakit data cut`: clip files with the right frames, resize and fps change, resume, failures."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from sorakit.cli.main import main
from sorakit.data.video import read_video
from sorakit.tools.cut import resample_indices, resized_size


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_cut_clips_frame_counts_and_content(media, tmp_path):
    path, _, n, fps = media["a"]
    ranges = [(0, 18), (18, 40), (45, 60), (60, n)]
    clips = write(
        tmp_path / "clips.csv",
        [
            {"path": str(path), "text": f"clip {i}", "start_frame": str(s), "end_frame": str(e)}
            for i, (s, e) in enumerate(ranges)
        ]
        + [
            {"path": str(path), "text": "too long", "start_frame": "70", "end_frame": str(n + 10)},
            {"path": str(tmp_path / "gone.mp4"), "text": "missing", "start_frame": "0", "end_frame": "5"},
            {"path": str(path), "text": "bad range", "start_frame": "9", "end_frame": "9"},
        ],
    )
    out_dir = tmp_path / "out"
    assert main(["data", "cut", str(clips), "--output-dir", str(out_dir), "--workers", "2"]) == 0
    rows = read(out_dir / "clips.csv")
    assert [r["text"] for r in rows] == [f"clip {i}" for i in range(4)]
    source = read_video(path)
    for r, (s, e) in zip(rows, ranges):
        frames = read_video(r["path"])
        assert frames.shape == (e - s, 48, 64, 3)
        assert int(r["num_frames"]) == e - s and float(r["fps"]) == fps
        assert (r["source_start_frame"], r["source_end_frame"]) == (str(s), str(e))
        assert "start_frame" not in r and Path(r["source_path"]) == path
        # re-encoded clip frames are the source frames (up to H.264 loss), not off by one
        err = np.abs(frames.astype(float) - source[s:e].astype(float)).mean(axis=(1, 2, 3))
        shifted = np.abs(frames[1:].astype(float) - source[s : e - 1].astype(float)).mean()
        assert err.max() < 6 and err.mean() < shifted
    failures = {r["text"]: r["error"] for r in read(out_dir / "clips.failures.csv")}
    assert set(failures) == {"too long", "missing", "bad range"}
    assert "decodable frames" in failures["too long"]


def test_cut_resize_fps_and_resume(media, tmp_path):
    path, _, n, fps = media["a"]  # 48x64 at 24 fps
    clips = write(
        tmp_path / "c.csv",
        [
            {"path": str(path), "start_frame": "18", "end_frame": "40"},
            {"path": str(path), "start_frame": "40", "end_frame": "61"},
        ],
    )
    out_dir = tmp_path / "o"
    args = ["data", "cut", str(clips), "--output-dir", str(out_dir), "--short-side", "32", "--fps", "12"]
    assert main(args) == 0
    rows = read(out_dir / "clips.csv")
    for r, length in zip(rows, (22, 21)):
        frames = read_video(r["path"])
        # half the frame rate keeps the duration: 22 -> 11 frames, 21 -> round(10.5) = 11
        assert frames.shape[0] == int(r["num_frames"]) == math.floor(length / 2 + 0.5)
        # shorter side 32, aspect kept (64 * 32 / 48 = 42.7 -> 42, even for yuv420p)
        assert frames.shape[1:3] == (32, 42) and (r["height"], r["width"]) == ("32", "42")
        assert float(r["fps"]) == 12
    mtimes = [Path(r["path"]).stat().st_mtime_ns for r in rows]
    assert main(args) == 0  # second run: files exist, nothing re-encoded, same CSV
    assert [Path(r["path"]).stat().st_mtime_ns for r in read(out_dir / "clips.csv")] == mtimes
    assert read(out_dir / "clips.csv") == rows


def test_resample_and_resize_helpers():
    assert resample_indices(6, 30, 15) == [0, 2, 4]
    up = resample_indices(4, 12, 24)
    assert len(up) == 8 and up[0] == 0 and up[-1] == 3 and all(b >= a for a, b in zip(up, up[1:]))
    assert resample_indices(5, 24, None) == list(range(5))
    assert resized_size(480, 640, 256) == (256, 342)
    assert resized_size(640, 480, 256) == (342, 256)
    assert resized_size(47, 63, None) == (48, 64)


def test_cut_rejects_non_csv(media, tmp_path, capsys):
    path = media["a"][0]
    assert main(["data", "cut", str(path), "--output-dir", str(tmp_path / "o")]) == 2
    assert main(["data", "cut", str(path) + ".csv", "--output-dir", str(tmp_path / "o"), "--fps", "0"]) == 2
    assert capsys.readouterr().err.count("sorakit: error:") == 2


def test_cut_does_not_upscale_unless_asked(media, tmp_path, capfd):
    """--short-side above the source's size keeps the size and says so; --upscale enlarges (item 11)."""
    path, _, n, fps = media["a"]  # 48x64
    clips = write(tmp_path / "c.csv", [{"path": str(path), "start_frame": "0", "end_frame": "10"}])
    base = ["data", "cut", str(clips), "--short-side", "96"]
    assert main([*base, "--output-dir", str(tmp_path / "keep")]) == 0
    assert (
        "64x48 is smaller than --short-side 96: kept at its size (--upscale enlarges it)"
        in capfd.readouterr().err
    )
    assert read_video(read(tmp_path / "keep" / "clips.csv")[0]["path"]).shape[1:3] == (48, 64)
    assert main([*base, "--output-dir", str(tmp_path / "up"), "--upscale"]) == 0
    assert "smaller than" not in capfd.readouterr().err
    assert read_video(read(tmp_path / "up" / "clips.csv")[0]["path"]).shape[1:3] == (96, 128)
    assert resized_size(48, 64, 96, upscale=False) == (48, 64) and resized_size(
        480, 640, 96, upscale=False
    ) == (96, 128)
