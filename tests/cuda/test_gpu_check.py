"""`make gpu-check` (benchmarks/gpu_check.py) works end to end before a GPU ever runs it: `--dry-run` runs every
stage -- the CUDA tests in their CPU mode, the generation, XL-training and compile benchmarks at tiny sizes --
and writes the one report; without a GPU the plain command says so in one line and exits 2."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
# loaded by path: benchmarks/ on sys.path would shadow names such as `data` or `models` for other tests
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: gpu-check would run")
def test_without_a_gpu_it_says_so_and_exits_2(tmp_path):
    out = _run("--output", str(tmp_path / "report.md"), timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU"), out.stderr
    assert not (tmp_path / "report.md").exists()


def test_dry_run_runs_every_stage_and_writes_the_report(tmp_path):
    report = tmp_path / "out" / "gpu-check.md"
    out = _run("--dry-run", "--output", str(report))
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    text = report.read_text()
    assert text.startswith("# sorakit gpu-check") and "## summary" in out.stdout  # written and printed
    for stage in ("tests", "generate", "train", "compile"):
        assert f"| {stage} | passed |" in text, stage
    assert "| all | passed |" in text
    rows = [line for line in text.splitlines() if line.startswith("| test_")]
    passed = [r for r in rows if "| passed |" in r]
    assert len(passed) >= 8 and not [r for r in rows if "FAILED" in r or "ERROR" in r], rows
    assert "test_nccl_data_parallel_training_on_every_gpu[ddp] | passed" in text  # gloo stands in on the CPU
    assert "| tiny | iddpm | 2 | 2 |" in text and "| tiny | dpm-solver | 2 | 2 |" in text  # generate.py rows
    assert "| Open-Sora 1.0, H800 (published) | 7.0 |" in text  # train.py --only-xl
    assert "| fp32 |" in text and "compiled / eager" in text  # train.py --compile


def test_a_stage_past_its_limit_is_reported_and_the_budget_caps_the_run(tmp_path):
    status, _, secs = gpu_check.run_stage([sys.executable, "-c", "import time; time.sleep(60)"], 1.0, {})
    assert status == "timed out after 1 s" and secs < 30
    status, out, _ = gpu_check.run_stage(
        [sys.executable, "-c", "import sys; print('x'); sys.exit(3)"], 60.0, {}
    )
    assert status == "failed (rc 3)" and out.startswith("x")
    report = tmp_path / "r.md"
    assert (
        gpu_check.main(["--dry-run", "--budget-s", "5", "--output", str(report)]) == 1
    )  # nothing fits in 5 s
    text = report.read_text()
    for stage in ("tests", "generate", "train", "compile"):
        assert f"| {stage} | not run: the 5 s budget is spent |" in text
    assert "| all | FAILED |" in text
