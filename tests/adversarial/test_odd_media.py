"""Issue #24 item 16: odd entries in a media folder and a raw H.264 stream.

- a link loop, a dangling link or a folder named ``x.mp4`` under `data info DIR` gets a failures row
  with its reason (it used to vanish without a trace);
- a (truncated) raw H.264 file, which has no timestamps, reads as the same frames at the same rate in
  `data info` and `data scenes` (it read as 8 frames at 25 fps in one and 1 frame at 8 fps in the other).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from sorakit.cli.main import main
from sorakit.data.video import write_video
from sorakit.tools._io import read_csv


def test_odd_entries_get_failure_rows(tmp_path: Path) -> None:
    d = tmp_path / "media"
    good = write_video(d / "good.mp4", np.zeros((3, 16, 16, 3), np.uint8))
    (d / "folder.mp4").mkdir()
    (d / "loop.mp4").symlink_to(d / "loop.mp4")
    (d / "dangling.mp4").symlink_to(d / "gone.mp4")
    out = tmp_path / "info.csv"
    assert main(["data", "info", str(d), "-o", str(out), "--workers", "1"]) == 0
    _, rows = read_csv(out)
    _, fails = read_csv(tmp_path / "info.failures.csv")
    assert [r["path"] for r in rows] == [str(good)]
    why = {Path(r["path"]).name: r["error"] for r in fails}
    assert set(why) == {"folder.mp4", "loop.mp4", "dangling.mp4"}, why
    assert "a folder, not a media file" in why["folder.mp4"]
    assert "symbolic link loop" in why["loop.mp4"]
    assert "no such file" in why["dangling.mp4"]


def _raw_h264(path: Path, frames: int) -> None:
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=Fraction(8))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            for p in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(p)
        for p in stream.encode():
            container.mux(p)


def test_raw_h264_reads_the_same_in_info_and_scenes(tmp_path: Path) -> None:
    from sorakit.tools.info import probe
    from sorakit.tools.scenes import detect_scenes

    whole, cut = tmp_path / "whole.h264", tmp_path / "cut.h264"
    _raw_h264(whole, 24)
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    for path in (whole, cut):
        info = probe(path)
        scenes = detect_scenes(path)
        assert int(info["num_frames"]) == scenes.num_frames and float(info["fps"]) == scenes.fps, (
            info,
            scenes,
        )
        assert scenes.scenes[-1][1] == scenes.num_frames
    assert probe(whole)["num_frames"] == "24"
