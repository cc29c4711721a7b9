"""Issue #24 items 3 and 4: decompression bombs and absurd frame ranges.

A few MB of H.264 can declare 8192x8192 frames (200 MB of RGB each); a CSV row can ask for frames
0..1,000,000,000 of a 24-frame video. Every reader goes through the media guard
(`sorakit.data.video.open_video`): the declared size is checked before any frame is decoded, the frames
one read keeps are bounded, and both limits are configurable (SORAKIT_MAX_PIXELS, SORAKIT_MAX_FRAMES).

The bomb is made here: one 8192x8192 frame encoded once (ultrafast, all black), its keyframe packet muxed
four times, so the file declares four 8192x8192 frames.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from sorakit.data.video import MediaLimits, MediaTooLarge, probe_video, read_video, reduced_size, write_video
from sorakit.errors import UserError
from sorakit.tools._io import read_csv

SIZE = 8192


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import av

    path = tmp_path_factory.mktemp("bomb") / "bomb.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(8))
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "51"}
        frame = av.VideoFrame(SIZE, SIZE, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        packets = [*stream.encode(frame), *stream.encode()]
        for i in range(4):
            for p in packets:
                copy = av.Packet(bytes(p))
                copy.stream, copy.pts, copy.dts, copy.time_base = p.stream, i, i, p.time_base
                copy.is_keyframe = True
                container.mux(copy)
    return path


@pytest.fixture
def small(tmp_path: Path) -> Path:
    frames = np.random.default_rng(0).integers(0, 255, (24, 64, 96, 3), dtype=np.uint8)
    return write_video(tmp_path / "good.mp4", frames, fps=8)


def _refused(exc: BaseException | str, path: Path) -> bool:
    text = str(exc)
    return str(path) in text and f"{SIZE}x{SIZE}" in text and "SORAKIT_MAX_PIXELS" in text


def test_readers_refuse_the_declared_size(bomb: Path) -> None:
    from sorakit.tools.info import probe
    from sorakit.tools.scenes import detect_scenes

    for read in (
        lambda: read_video(bomb),
        lambda: read_video(bomb, indices=[0]),
        lambda: probe_video(bomb),
        lambda: probe(bomb),
        lambda: probe(bomb, fast=True),
        lambda: detect_scenes(bomb),
    ):
        with pytest.raises(MediaTooLarge) as info:
            read()
        assert _refused(info.value, bomb), info.value


def test_training_and_caption_skip_the_bomb(bomb: Path, tmp_path: Path) -> None:
    from sorakit.data.dataset import VideoTextDataset
    from sorakit.tools.caption import CaptionError, load_frames

    csv = tmp_path / "d.csv"
    csv.write_text(f"path,text\n{bomb},a bomb\n")
    ds = VideoTextDataset(csv, num_frames=2, frame_interval=1, image_size=(64, 64))
    with pytest.raises(MediaTooLarge):
        ds.load(0, np.random.default_rng(0))
    with pytest.raises(CaptionError) as info:
        load_frames({"path": str(bomb)}, bomb)
    assert _refused(info.value, bomb)


def test_training_on_videos_skips_the_bomb(bomb: Path, tmp_path: Path) -> None:
    """`sorakit train` on a video CSV holding the bomb (8 GB in seconds before): the file is skipped and
    listed with the reason, the run goes on."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from _train_helpers import HashTextEncoder, tiny_config, tiny_vae, write_clips, write_csv

    from sorakit.training.trainer import Components, train

    paths = write_clips(tmp_path / "v", 4, frames=4, size=16)
    csv = write_csv(tmp_path / "d.csv", [{"path": str(p), "text": "a clip"} for p in [*paths, bomb]])
    cfg = tiny_config(
        f"data.csv={csv}", "train.max_steps=1", "train.ckpt_every=1", "data.max_bad_fraction=0.5"
    )
    result = train(
        cfg, tmp_path / "run", components=Components(vae=tiny_vae(), text_encoder=HashTextEncoder(16, 8))
    )
    assert result.step == 1 and set(result.skipped) == {str(bomb)}
    assert _refused((tmp_path / "run" / "skipped_files.txt").read_text(), bomb)


def test_cut_and_info_list_the_bomb_as_a_failure(bomb: Path, small: Path, tmp_path: Path) -> None:
    from sorakit.cli.main import main

    clips = tmp_path / "clips.csv"
    clips.write_text(f"path,start_frame,end_frame\n{bomb},0,4\n{small},0,8\n")
    assert main(["data", "cut", str(clips), "--output-dir", str(tmp_path / "out"), "--workers", "1"]) == 0
    _, rows = read_csv(tmp_path / "out" / "clips.csv")
    _, fails = read_csv(tmp_path / "out" / "clips.failures.csv")
    assert [r["source_path"] for r in rows] == [str(small)]
    assert len(fails) == 1 and _refused(fails[0]["error"], bomb)
    assert main(["data", "info", str(clips), "-o", str(tmp_path / "info.csv"), "--workers", "1"]) == 0
    _, fails = read_csv(tmp_path / "info.failures.csv")
    assert len(fails) == 1 and _refused(fails[0]["error"], bomb)


def test_limits_come_from_the_environment(small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert MediaLimits.from_env() == MediaLimits()
    monkeypatch.setenv("SORAKIT_MAX_PIXELS", str(64 * 96 - 1))
    with pytest.raises(MediaTooLarge, match="96x64 frames"):
        read_video(small)
    monkeypatch.setenv("SORAKIT_MAX_PIXELS", str(64 * 96))
    monkeypatch.setenv("SORAKIT_MAX_FRAMES", "5")
    with pytest.raises(MediaTooLarge, match="a clip of 24 frames is over the limit of 5 frames"):
        read_video(small)  # the whole video: refused from its declared length, before decoding
    with pytest.raises(MediaTooLarge, match="a clip of 6 frames"):
        read_video(small, start_frame=2, end_frame=8)
    assert read_video(small, indices=[0, 10, 20]).shape == (3, 64, 96, 3)
    assert read_video(small, start_frame=0, end_frame=10, step=2).shape == (5, 64, 96, 3)
    for bad in ("-3", "many", "0"):
        monkeypatch.setenv("SORAKIT_MAX_FRAMES", bad)
        with pytest.raises(UserError, match="SORAKIT_MAX_FRAMES must be a positive integer"):
            MediaLimits.from_env()


def test_large_sources_decode_at_a_reduced_size(small: Path) -> None:
    """A caller that will shrink the frames gets them decoded at twice its size, not at the source's."""
    assert reduced_size(2160, 3840, (64, 64)) == (128, 228)
    assert reduced_size(64, 96, (64, 64)) is None  # not much larger: decoded as it is
    assert read_video(small, end_frame=2, size_hint=(16, 16)).shape == (2, 32, 48, 3)
    full = read_video(small, end_frame=2)
    assert read_video(small, end_frame=2, size_hint=(40, 40)).shape == full.shape


def test_cut_absurd_end_frame_costs_nothing(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 4: `good.mp4,0,1000000000` on a 24-frame video exhausted memory; now the row fails at once."""
    from sorakit.tools.cut import CutOptions, run_cut

    rows = [
        {"path": str(small), "start_frame": "0", "end_frame": "1000000000"},
        {"path": str(small), "start_frame": "500", "end_frame": "600"},
        {"path": str(small), "start_frame": "0", "end_frame": "8"},
    ]
    res = run_cut(rows, [small] * 3, CutOptions(tmp_path / "out"), progress=False)
    assert [r["source_end_frame"] for r in res.rows] == ["8"]
    errors = [f["error"] for f in res.failures]
    assert "a clip of 1,000,000,000 frames is over the limit of 10,000 frames" in errors[0]
    assert errors[1] == f"{small} has 24 frames; clip starts at frame 500"
    # an open-ended clip is bounded by the same limit while it is collected
    monkeypatch.setenv("SORAKIT_MAX_FRAMES", "10")
    res = run_cut(
        [{"path": str(small), "start_frame": "2"}], [small], CutOptions(tmp_path / "o2"), progress=False
    )
    assert not res.rows and "over the limit of 10 frames" in res.failures[0]["error"]


def test_media_is_opened_only_through_the_guard() -> None:
    """One media reading layer: `av.open` appears only in data/video.py (open_video, and the writers), and
    PySceneDetect's own opener only in tools/scenes.py, after open_video has checked the file."""
    import ast

    src = Path(__file__).resolve().parents[2] / "src" / "sorakit"
    opened = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "open"
                and getattr(node.value, "id", "") == "av"
            ):
                opened.append(str(path.relative_to(src)))
            if isinstance(node, ast.Name) and node.id == "VideoStreamAv":
                opened.append(str(path.relative_to(src)))
    # serve/media.py reads only the header of an upload held in memory (its own, stricter limits) before
    # storing it; the worker then decodes the stored file through read_video
    assert set(opened) <= {"data/video.py", "tools/scenes.py", "serve/media.py"}, opened
    scenes = (src / "tools" / "scenes.py").read_text()
    assert scenes.index("open_video(path, limits)") < scenes.index("video = _counted_stream(")
