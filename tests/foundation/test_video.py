from __future__ import annotations

import numpy as np
import pytest

from sorakit.data.video import probe_video, read_video, write_image, write_video
from sorakit.errors import UserError


def _frames(t: int = 12, h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth moving gradients: compress well, so the decoded frames stay close to the originals."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        out[i, ..., 0] = (xx * 4 + i * 8) % 256
        out[i, ..., 1] = (yy * 4) % 256
        out[i, ..., 2] = 40 * (i % 5)
    return out


def test_write_read_probe_round_trip(tmp_path):
    frames = _frames()
    path = write_video(tmp_path / "v.mp4", frames, fps=8)
    info = probe_video(path)
    assert info["num_frames"] == 12 and info["height"] == 48 and info["width"] == 64
    assert info["fps"] == pytest.approx(8.0) and info["duration"] == pytest.approx(1.5)
    back = read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 6
    assert read_video(path, start_frame=2, end_frame=11, step=3).shape[0] == 3
    picked = read_video(path, indices=[0, 5, 11])
    assert np.array_equal(picked[1], back[5])
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temporary file left behind


def test_odd_sizes_are_padded_to_even(tmp_path):
    path = write_video(tmp_path / "odd.mp4", _frames(3, 33, 45), fps=8)
    info = probe_video(path)
    assert (info["height"], info["width"]) == (34, 46)


def test_image_and_gif(tmp_path):
    frames = _frames(4)
    png = write_image(tmp_path / "a.png", frames[0])
    assert np.array_equal(read_video(png)[0], frames[0])  # PNG is lossless
    assert probe_video(png)["num_frames"] == 1
    gif = write_video(tmp_path / "a.gif", frames, fps=8)
    assert probe_video(gif)["num_frames"] == 4


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_video(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError):
        read_video(junk)
    with pytest.raises(ValueError):
        probe_video(junk)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32))


def test_outputs_get_the_usual_permissions(tmp_path):
    """Atomic writes go through mkstemp (owner-only files); outputs must end up like any new file (0o666 & ~umask)."""
    import os

    from sorakit.tools._io import write_csv

    old = os.umask(0o022)
    try:
        frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
        paths = [write_video(tmp_path / "a.mp4", frames), write_image(tmp_path / "a.png", frames[0]),
                 write_csv(tmp_path / "a.csv", [{"path": "a.mp4", "text": "x"}])]  # fmt: skip
    finally:
        os.umask(old)
    for p in paths:
        assert (os.stat(p).st_mode & 0o777) == 0o644, p
