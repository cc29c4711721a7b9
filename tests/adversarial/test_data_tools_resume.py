"""Issue #24 items 5, 9 and 15: data tools that resume must not keep or mix stale results silently.

- `data encode` resumed with other settings (image size, frames, ...) is refused before any model loads,
  instead of mixing shards of two shapes in one cache;
- `data cut` removes the hidden partial clips a SIGKILLed run left, and `data info DIR` never lists them;
- `data cut` cuts a clip asked for by several identical rows once, and refuses to resume into a folder
  cut with another `--short-side` (or fps, crf) unless `--overwrite`;
- `data info` resumes: an interrupted run keeps its finished shards and the re-run probes only the rest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from sorakit.cli.main import main
from sorakit.data.video import write_video
from sorakit.tools._io import read_csv

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))


def test_encode_resume_with_other_settings_is_refused(tmp_path: Path, capsys) -> None:
    from _train_helpers import write_clips, write_csv

    from sorakit.pipelines.tiny import make_tiny_vae

    vae = make_tiny_vae(tmp_path / "vae")
    paths = write_clips(tmp_path / "v", 4, frames=4, size=16)
    csv = write_csv(
        tmp_path / "d.csv", [{"path": f"v/{p.name}", "label": i % 2} for i, p in enumerate(paths)]
    )
    cache = tmp_path / "cache"

    def encode(size: int) -> int:
        args = [str(csv), f"vae.path={vae}", "text_encoder.type=classes", "text_encoder.path=ucf101"]
        args += ["data.num_frames=2", f"data.image_size=[{size},{size}]"]
        return main(["data", "encode", *args, "--output", str(cache), "--shard-size", "2"])

    assert encode(16) == 0
    # an interrupted run: the last shard and meta.json never got written
    (cache / "shard-00001.safetensors").unlink()
    (cache / "meta.json").unlink()
    capsys.readouterr()
    assert encode(32) == 2
    err = capsys.readouterr().err
    assert "encoded with other settings (image_size: [16, 16] then, [32, 32] now)" in err
    assert not (cache / "shard-00001.safetensors").exists()
    assert encode(16) == 0  # the same settings resume
    assert json.loads((cache / "meta.json").read_text())["num_samples"] == 4


@pytest.fixture
def source(tmp_path: Path) -> Path:
    frames = np.random.default_rng(0).integers(0, 255, (24, 48, 64, 3), dtype=np.uint8)
    return write_video(tmp_path / "v12.mp4", frames, fps=8)


def _cut(tmp_path: Path, csv: Path, *extra: str) -> int:
    return main(["data", "cut", str(csv), "--output-dir", str(tmp_path / "clips"), "--workers", "1", *extra])


def test_cut_removes_partial_clips_of_a_killed_run(tmp_path: Path, source: Path) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text(f"path,start_frame,end_frame\n{source},0,8\n{source},8,16\n")
    assert _cut(tmp_path, csv) == 0
    clips = tmp_path / "clips"
    # what a SIGKILL during the second clip's encode leaves behind (write_video's mkstemp temporary)
    partial = clips / ".v12_000008-000016.k3x9q2ab.mp4"
    partial.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    unrelated = clips / ".notes.txt"
    unrelated.write_text("mine")
    assert _cut(tmp_path, csv) == 0
    assert not partial.exists() and unrelated.exists()
    partial.write_bytes(b"\x00\x00\x00\x18ftypmp42")  # and even where it is left, info does not list it
    assert main(["data", "info", str(clips), "-o", str(tmp_path / "i.csv"), "--workers", "1"]) == 0
    assert not (tmp_path / "i.failures.csv").exists()
    assert len(read_csv(tmp_path / "i.csv")[1]) == 2


def test_cut_encodes_a_repeated_row_once(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sorakit.tools.cut as cut

    written = []
    real = cut.write_video
    monkeypatch.setattr(cut, "write_video", lambda path, *a, **k: written.append(path) or real(path, *a, **k))
    csv = tmp_path / "c.csv"
    csv.write_text(f"path,start_frame,end_frame,text\n{source},0,8,a\n{source},0,8,b\n{source},8,16,c\n")
    assert _cut(tmp_path, csv) == 0
    assert len(written) == 2
    _, rows = read_csv(tmp_path / "clips" / "clips.csv")
    assert [r["text"] for r in rows] == ["a", "b", "c"] and rows[0]["path"] == rows[1]["path"]


def test_cut_refuses_to_keep_clips_of_another_short_side(tmp_path: Path, source: Path, capsys) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text(f"path,start_frame,end_frame\n{source},0,8\n")
    assert _cut(tmp_path, csv, "--short-side", "32") == 0
    capsys.readouterr()
    assert _cut(tmp_path, csv, "--short-side", "16") == 2
    assert "--short-side 32 then, 16 now" in capsys.readouterr().err
    assert _cut(tmp_path, csv, "--short-side", "16", "--overwrite") == 0
    _, rows = read_csv(tmp_path / "clips" / "clips.csv")
    assert (rows[0]["height"], rows[0]["width"]) == ("16", "22")
    assert _cut(tmp_path, csv, "--short-side", "16") == 0  # the same settings resume


def test_info_resumes_after_an_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sorakit.tools.info as info

    d = tmp_path / "media"
    for i in range(4):
        write_video(d / f"v{i}.mp4", np.full((3, 16, 16, 3), 40 * i, np.uint8))
    probed: list[str] = []
    real = info.probe

    def probe(path, fast=False):
        if len(probed) == 2 and not calls_may_finish[0]:
            raise KeyboardInterrupt  # the run is killed while probing its third file
        probed.append(Path(path).name)
        return real(path, fast)

    calls_may_finish = [False]
    monkeypatch.setattr(info, "probe", probe)
    args = ["data", "info", str(d), "-o", str(tmp_path / "i.csv"), "--workers", "1", "--shard-items", "1"]
    assert main(args) != 0  # "sorakit: interrupted"
    assert probed == ["v0.mp4", "v1.mp4"] and not (tmp_path / "i.csv").exists()
    calls_may_finish[0] = True
    assert main(args) == 0
    assert probed == ["v0.mp4", "v1.mp4", "v2.mp4", "v3.mp4"]  # the first two were not probed again
    assert [Path(r["path"]).name for r in read_csv(tmp_path / "i.csv")[1]] == [f"v{i}.mp4" for i in range(4)]


def test_shards_are_small_enough_to_resume_long_runs() -> None:
    """A shard is what an interrupted run keeps: a 100k-row `data info` on 2 workers used 256-video shards,
    and a run killed after 400 s had finished none; now a shard is at most 32 items."""
    from sorakit.tools.executor import shard_size

    assert shard_size(100_000, 2) == 32 and shard_size(100_000, 2, requested=500) == 500
    assert shard_size(8, 2) == 1


def test_cut_killed_mid_clip_then_rerun(tmp_path: Path) -> None:
    """The issue's sequence for real: SIGKILL `data cut` while a clip is being written (its hidden temporary
    is on disk), re-run it, and find every clip, no temporary, and no failure in `data info DIR`."""
    import os
    import signal
    import subprocess
    import time

    frames = np.random.default_rng(1).integers(0, 255, (96, 144, 192, 3), dtype=np.uint8)
    src = write_video(tmp_path / "v12.mp4", frames, fps=8, crf=0)
    csv = tmp_path / "c.csv"
    csv.write_text(
        "path,start_frame,end_frame\n" + "".join(f"{src},{s},{s + 16}\n" for s in range(0, 96, 16))
    )
    clips = tmp_path / "clips"
    cmd = [sys.executable, "-m", "sorakit.cli.main", "data", "cut", str(csv), "--output-dir", str(clips)]
    cmd += ["--workers", "1", "--crf", "0"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if clips.is_dir() and any(p.name.startswith(".v12_") for p in clips.iterdir()):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before a clip was caught mid-write"
    assert any(p.name.startswith(".v12_") for p in clips.iterdir())
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    assert sorted(p.name for p in clips.iterdir() if p.suffix == ".mp4") == [
        f"v12_{s:06d}-{s + 16:06d}.mp4" for s in range(0, 96, 16)
    ]
    assert not [p.name for p in clips.iterdir() if p.name.startswith(".v12_")]
    assert main(["data", "info", str(clips), "-o", str(tmp_path / "i.csv"), "--workers", "1"]) == 0
    assert not (tmp_path / "i.failures.csv").exists()
