"""`sorakit data scenes` and `sorakit data info` on real H.264 videos with known cuts."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sorakit.cli.main import main
from sorakit.tools.scenes import SceneOptions, detect_scenes, limit_lengths


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_scenes_cli_finds_every_cut(media, tmp_path, capsys):
    out = tmp_path / "clips.csv"
    assert main(["data", "scenes", str(media["dir"]), "-o", str(out)]) == 0
    rows = read(out)
    for key in ("a", "b"):
        path, cuts, n, fps = media[key]
        mine = [r for r in rows if Path(r["path"]) == path.resolve()]
        found = [int(r["start_frame"]) for r in mine][1:]
        # one clip per shot: no false cuts, and each true cut found within +-1 frame
        assert len(found) == len(cuts), (key, found, cuts)
        for got, want in zip(found, cuts):
            assert abs(got - want) <= 1, (key, found, cuts)
        # clips tile the whole video, end exclusive
        assert int(mine[0]["start_frame"]) == 0 and int(mine[-1]["end_frame"]) == n
        for prev, nxt in zip(mine, mine[1:]):
            assert prev["end_frame"] == nxt["start_frame"]
        for r in mine:
            s, e = int(r["start_frame"]), int(r["end_frame"])
            assert int(r["num_frames"]) == e - s
            assert float(r["fps"]) == fps
            assert (int(r["height"]), int(r["width"])) == (48, 64)
            assert float(r["start"]) == pytest.approx(s / fps, abs=1e-3)
            assert float(r["end"]) == pytest.approx(e / fps, abs=1e-3)
    # the truncated and the non-video file are reported, not in the output, and did not stop the run
    failures = read(tmp_path / "clips.failures.csv")
    assert sorted(Path(r["path"]).name for r in failures) == ["cutoff.mkv", "notes.mp4", "trunc.mp4"]
    assert all(r["error"] for r in failures)
    assert {Path(r["path"]).name for r in rows} == {"a.mp4", "b.mp4"}
    assert "3 failed" in capsys.readouterr().err


def test_adaptive_detector_and_threshold(media):
    path, cuts, n, _ = media["a"]
    vs = detect_scenes(path, SceneOptions(detector="adaptive"))
    found = [s for s, _ in vs.scenes[1:]]
    assert len(found) == len(cuts) and all(abs(a - b) <= 1 for a, b in zip(found, cuts))
    # a threshold nothing can reach: the whole video is one scene
    vs = detect_scenes(path, SceneOptions(threshold=254.0))
    assert vs.scenes == [(0, n)]


def test_limit_lengths():
    # 24 fps; max 1 s = 24 frames: a 60-frame scene splits into 3 equal parts of 20
    assert limit_lengths([(0, 60)], 24, max_seconds=1.0) == [(0, 20), (20, 40), (40, 60)]
    assert limit_lengths([(0, 50)], 24, max_seconds=1.0) == [(0, 16), (16, 33), (33, 50)]
    assert limit_lengths([(0, 60), (60, 70)], 24, max_seconds=1.0, long="drop") == [(60, 70)]
    # min 0.5 s = 12 frames: the 10-frame scene goes, the 12-frame one stays
    assert limit_lengths([(0, 10), (10, 22), (22, 50)], 24, min_seconds=0.5) == [(10, 22), (22, 50)]
    for s, e in limit_lengths([(0, 1000)], 30, min_seconds=1, max_seconds=2.5):
        assert 30 <= e - s <= 75


def test_scenes_csv_input_keeps_columns_and_limits(media, tmp_path):
    path, cuts, n, fps = media["a"]
    src = tmp_path / "in.csv"
    rel = Path("media") / "a.mp4"  # relative to the CSV's folder
    src.write_text(f"path,text,label\n{rel},a caption,3\n")
    out = tmp_path / "clips.csv"
    # min 0.8 s at 24 fps = 19.2 frames: the 18- and 16-frame shots go
    assert main(["data", "scenes", str(src), "-o", str(out), "--min-seconds", "0.8"]) == 0
    rows = read(out)
    assert len(rows) == 2
    assert all(r["text"] == "a caption" and r["label"] == "3" for r in rows)
    assert all(Path(r["path"]) == path.resolve() for r in rows)
    assert all(int(r["num_frames"]) >= 19.2 for r in rows)


def test_scenes_bad_args(media, tmp_path, capsys):
    out = str(tmp_path / "x.csv")
    assert (
        main(["data", "scenes", str(media["dir"]), "-o", out, "--min-seconds", "3", "--max-seconds", "1"])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("sorakit: error:") and len(err.strip().splitlines()) == 1
    assert main(["data", "scenes", str(tmp_path / "missing"), "-o", out]) == 2
    bad_csv = tmp_path / "noheader.csv"
    bad_csv.write_text("/x/a.mp4,caption\n")
    assert main(["data", "scenes", str(bad_csv), "-o", out]) == 2
    assert "header" in capsys.readouterr().err


def test_info_matches_what_was_written(media, tmp_path):
    import numpy as np

    from sorakit.data.video import write_image

    write_image(media["dir"] / "still.png", np.full((20, 30, 3), 128, np.uint8))
    out = tmp_path / "info.csv"
    assert main(["data", "info", str(media["dir"]), "-o", str(out), "--workers", "2"]) == 0
    rows = {Path(r["path"]).name: r for r in read(out)}
    assert set(rows) == {"a.mp4", "b.mp4", "still.png"}
    for key in ("a", "b"):
        path, _, n, fps = media[key]
        r = rows[path.name]
        assert int(r["num_frames"]) == n
        assert float(r["fps"]) == fps
        assert (int(r["height"]), int(r["width"])) == (48, 64)
        assert float(r["aspect_ratio"]) == pytest.approx(48 / 64)
        assert float(r["duration"]) == pytest.approx(n / fps, abs=1e-3)
    img = rows["still.png"]
    assert (img["num_frames"], img["height"], img["width"]) == ("1", "20", "30")
    failures = read(tmp_path / "info.failures.csv")
    assert sorted(Path(r["path"]).name for r in failures) == ["cutoff.mkv", "notes.mp4", "trunc.mp4"]
    assert all(r["error"] for r in failures)


def test_info_fast_reads_headers(media, tmp_path):
    out = tmp_path / "fast.csv"
    assert main(["data", "info", str(media["dir"]), "-o", str(out), "--fast"]) == 0
    rows = {Path(r["path"]).name: r for r in read(out)}
    for key in ("a", "b"):
        path, _, n, fps = media[key]
        assert (int(rows[path.name]["num_frames"]), float(rows[path.name]["fps"])) == (n, fps)
    failures = read(tmp_path / "fast.failures.csv")
    assert {"notes.mp4", "trunc.mp4"} <= {Path(r["path"]).name for r in failures}
