"""`sorakit generate` under torchrun: 2 CPU processes (gloo) split the prompts and make exactly the
videos a single process makes."""

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
def test_torchrun_two_processes_split_prompts(tiny_model_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\nwaves at sunset\n")
    common = ["--prompt-file", str(prompts), "--model", str(tiny_model_dir), "--steps", "2", "--num-frames", "2",
              "--batch-size", "1", "--seed", "5", "--no-progress", "--device", "cpu"]  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    dist_dir = tmp_path / "dist"
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--log-dir", str(logs), "--redirects", "1", "-m", "sorakit.cli.main", "generate", *common, "--output-dir", str(dist_dir)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    single_dir = tmp_path / "single"
    assert main(["generate", *common, "--output-dir", str(single_dir)]) == 0

    names = ["0000-a-red-circle", "0001-a-blue-square", "0002-waves-at-sunset"]
    assert sorted(p.stem for p in dist_dir.glob("*.mp4")) == names
    for name in names:
        np.testing.assert_array_equal(
            read_video(dist_dir / f"{name}.mp4"), read_video(single_dir / f"{name}.mp4")
        )
        assert json.loads((dist_dir / f"{name}.json").read_text())["seed"] == 5 + int(name[:4])
    # each rank printed the files it wrote: batches 0 and 2 on rank 0, batch 1 on rank 1
    by_rank = {}
    for log in logs.rglob("stdout.log"):
        by_rank[log.parent.name] = sorted(Path(x).stem for x in log.read_text().split() if x.endswith(".mp4"))
    assert by_rank == {"0": [names[0], names[2]], "1": [names[1]]}, by_rank
