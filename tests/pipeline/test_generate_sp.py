"""`sorakit generate --sequence-parallel` under torchrun: 2 CPU processes (gloo) split every video's frames
and rank 0 alone writes the same videos a single process makes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sorakit.cli.main import main
from sorakit.data.video import read_video


@pytest.mark.distributed
def test_torchrun_sequence_parallel_matches_single_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\nwaves at sunset\n")
    # 4 frames -> 4 latent frames (patch 1 in time): 2 per rank
    common = ["--prompt-file", str(prompts), "--model", str(tiny_model_dir), "--steps", "3", "--num-frames", "4",
              "--batch-size", "2", "--seed", "11", "--no-progress", "--device", "cpu", "--dtype", "fp32"]  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    sp_dir = tmp_path / "sp"
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--log-dir", str(logs), "--redirects", "1", "-m", "sorakit.cli.main", "generate", *common,
           "--output-dir", str(sp_dir), "--sequence-parallel"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sequence parallel over 2 processes" in proc.stderr, proc.stderr[-3000:]

    single_dir = tmp_path / "single"
    assert main(["generate", *common, "--output-dir", str(single_dir)]) == 0

    names = ["0000-a-red-circle", "0001-a-blue-square", "0002-waves-at-sunset"]
    # one set of files: one video + one sidecar per prompt, nothing else
    assert sorted(p.name for p in sp_dir.iterdir()) == sorted(
        [f"{n}.mp4" for n in names] + [f"{n}.json" for n in names]
    )
    for name in names:
        a, b = read_video(sp_dir / f"{name}.mp4"), read_video(single_dir / f"{name}.mp4")
        assert a.shape == b.shape == (4, 16, 16, 3)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2, name
        meta = json.loads((sp_dir / f"{name}.json").read_text())
        assert meta["seed"] == 11 + 2 * (int(name[:4]) // 2) and meta["prompt"] in prompts.read_text()
    # the videos differ from each other (the comparison above is not trivially true)
    assert not np.array_equal(read_video(sp_dir / f"{names[0]}.mp4"), read_video(sp_dir / f"{names[1]}.mp4"))
    # only rank 0 wrote (and printed) files
    by_rank = {}
    for log in logs.rglob("stdout.log"):
        by_rank[log.parent.name] = sorted(Path(x).stem for x in log.read_text().split() if x.endswith(".mp4"))
    assert by_rank == {"0": names, "1": []}, by_rank


def test_sequence_parallel_needs_torchrun(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(["generate", "a dog", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "o"),
                 "--sequence-parallel", "--device", "cpu"])  # fmt: skip
    assert code == 2
    assert "torchrun" in capsys.readouterr().err
    assert not list((tmp_path / "o").glob("*.mp4"))


def test_sequence_parallel_frames_must_split(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")  # checked before any process group is started
    code = main(["generate", "a dog", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "o"),
                 "--sequence-parallel", "--device", "cpu", "--num-frames", "3"])  # fmt: skip
    assert code == 2
    assert "3 latent frames" in capsys.readouterr().err
