"""`sorakit generate` at any shape the model allows: --resolution, --resolution-name + --aspect-ratio,
--num-frames, --seconds; an impossible shape is a one-line error naming the nearest allowed one."""

from __future__ import annotations

from pathlib import Path

import pytest

from sorakit.cli.main import main
from sorakit.data.video import probe_video


def _gen(*args: str) -> int:
    return main(["generate", "a red circle moving to the right", *args, "--steps", "1", "--no-progress",
                 "--threads", "1"])  # fmt: skip


def test_builtin_model_writes_other_resolutions_and_lengths(tmp_path: Path) -> None:
    # the built-in model was trained on 16 x 64x64 only; it runs at any grid its patch (4, 2, 2) divides
    for name, args, want in [
        ("wide.mp4", ["--resolution", "64x96", "--num-frames", "32"], (32, 64, 96)),
        ("tall.mp4", ["--resolution", "96x64", "--num-frames", "8"], (8, 96, 64)),
        # 9:16 portrait at 64x64's pixel count, 1 s at the model's 8 fps
        ("named.mp4", ["--aspect-ratio", "9:16", "--resolution-name", "4096", "--seconds", "1"], (8, 88, 48)),
    ]:
        out = tmp_path / name
        assert _gen("--output", str(out), *args) == 0
        info = probe_video(out)
        assert (info["num_frames"], info["height"], info["width"]) == want, name


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--resolution", "60x96"], "nearest allowed: --num-frames 16 --resolution 64x96"),
        (["--num-frames", "30"], "nearest allowed: --num-frames 32 --resolution 64x64"),
        (["--num-frames", "8", "--seconds", "2"], "not both"),
        (["--resolution", "64x64", "--aspect-ratio", "16:9"], "not both"),
        (["--aspect-ratio", "wide"], "expected W:H"),
        (["--resolution-name", "77p"], "unknown resolution '77p'"),
        (["--seconds", "0"], "--seconds must be positive"),
    ],
)
def test_impossible_shapes_are_one_line_errors(tmp_path: Path, capsys, extra: list[str], needle: str) -> None:
    code = _gen("--output", str(tmp_path / "x.mp4"), *extra)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("sorakit: error:") and needle in err[0], err
    assert not (tmp_path / "x.mp4").exists()
