"""Training with buckets as a user runs it (`sorakit train tiny-buckets`, offline): several shapes, one per
micro-batch, logged as `batch_shape`; kill -9 + --resume is bit-exact; 2 processes train the same
micro-batches as 1 process, two at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import write_csv
from safetensors.torch import load_file

from sorakit.training.checkpoint import list_checkpoints

# (frames, height, width) of the mixed CSV -> the tiny-buckets bucket each lands in
MIXED = [(10, 64, 96), (9, 64, 96), (6, 96, 64), (5, 96, 64), (8, 64, 64), (9, 64, 64), (5, 64, 64),
         (4, 64, 64), (8, 32, 32)]  # fmt: skip
SHAPES = {(2, 3, 8, 64, 96), (2, 3, 4, 96, 64), (2, 3, 8, 64, 64), (4, 3, 4, 64, 64)}  # [B, C, T, H, W]


def write_mixed(folder: Path) -> Path:
    """Small MP4s of the MIXED sizes (a square moving over a gradient) and their CSV with sizes."""
    from sorakit.data.video import write_video

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (t, h, w) in enumerate(MIXED):
        video = np.zeros((t, h, w, 3), np.uint8)
        video[..., 0] = (np.arange(w) * 255 // w).astype(np.uint8)
        for k in range(t):
            video[k, 8:20, 4 + 3 * k : 16 + 3 * k, 1 + i % 2] = 220
        write_video(folder / f"c{i}.mp4", video, fps=8)
        rows.append(
            {"path": f"c{i}.mp4", "text": f"a square number {i}", "num_frames": t, "height": h, "width": w}
        )
    return write_csv(folder / "mixed.csv", rows)


@pytest.fixture(scope="module")
def mixed_csv(tmp_path_factory) -> Path:
    return write_mixed(tmp_path_factory.mktemp("mixed"))


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _train_cmd(csv: Path, run: Path, *extra: str, overrides: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "sorakit.cli.main", "train", "tiny-buckets", "train.caption_dropout=0.3",
            *overrides, "--data", str(csv), "--output", str(run), *extra]  # fmt: skip


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tiny_buckets_trains_several_shapes_and_logs_them(mixed_csv, tmp_path):
    run = tmp_path / "run"
    out = subprocess.run(_train_cmd(mixed_csv, run, "--max-steps", "8"), env=ENV, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 9))
    shapes = [tuple(r["batch_shape"]) for r in rows]
    # 4 micro-batches per epoch (the 32x32 clip is dropped), each shape once per epoch
    assert set(shapes[:4]) == set(shapes[4:]) == SHAPES
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_kill9_resume_with_buckets_is_bit_exact(mixed_csv, tmp_path):
    steps = "10"
    run = tmp_path / "killed"
    cmd = _train_cmd(mixed_csv, run, "--max-steps", steps, "--ckpt-every", "1")
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = list_checkpoints(run)
        if done and done[-1][0] >= 5:  # past the first epoch (4 steps)
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = list_checkpoints(run)[-1][0]
    assert 5 <= killed_at < 10, f"the run was not interrupted mid-way (last checkpoint {killed_at})"
    out = subprocess.run([*cmd, "--resume"], env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "resumed from" in out.stderr, out.stderr[-3000:]
    ref = tmp_path / "ref"
    out = subprocess.run(_train_cmd(mixed_csv, ref, "--max-steps", steps, "--ckpt-every", steps), env=ENV,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    a_dir, b_dir = list_checkpoints(run)[-1][1], list_checkpoints(ref)[-1][1]
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(a_dir / name)), load_file(str(b_dir / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert [r["batch_shape"] for r in _metrics(run)] == [r["batch_shape"] for r in _metrics(ref)]
    assert [r["loss"] for r in _metrics(run)] == [r["loss"] for r in _metrics(ref)]


@pytest.mark.distributed
def test_two_processes_train_the_micro_batches_of_one(mixed_csv, tmp_path):
    # lr 0: the weights stay put, so each logged loss is a pure function of the micro-batch and its draws
    frozen = ("train.lr=0", "train.grad_clip=0", "parallel.backend=gloo")
    one = tmp_path / "one"
    out = subprocess.run(_train_cmd(mixed_csv, one, "--max-steps", "4", overrides=frozen), env=ENV, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *_train_cmd(mixed_csv, two, "--max-steps", "2", overrides=frozen)[1:]]  # fmt: skip
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    l1 = [r["loss"] for r in _metrics(one)]
    l2 = [r["loss"] for r in _metrics(two)]
    # step k of 2 processes = micro-batches 2k, 2k+1 of 1 process, averaged
    assert l2 == pytest.approx([(l1[0] + l1[1]) / 2, (l1[2] + l1[3]) / 2], rel=1e-6)
    assert {tuple(r["batch_shape"]) for r in _metrics(one)} == SHAPES


def test_encode_stores_each_clip_at_its_bucket_and_trains_from_the_cache(mixed_csv, tmp_path):
    cache = tmp_path / "cache"
    enc = [sys.executable, "-m", "sorakit.cli.main", "data", "encode", str(mixed_csv), "--output", str(cache),
           "--config", "tiny-buckets", "--batch-size", "2"]  # fmt: skip
    out = subprocess.run(enc, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["buckets"] == {"8x64x96": 2, "4x96x64": 2, "8x64x64": 2, "4x64x64": 2}  # the 32x32 clip: none
    assert "smaller than every bucket" in json.loads((cache / "failures.json").read_text())[0]["error"]
    shard = load_file(str(cache / "bucket-8x64x96-00000.safetensors"))
    assert shard["latents"].shape == (2, 4, 8, 16, 24)  # the built-in VAE downsamples 4x
    run = tmp_path / "run"
    out = subprocess.run(_train_cmd(cache, run, "--max-steps", "4"), env=ENV, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    shapes = {tuple(r["latent_shape"]) for r in _metrics(run)}
    assert shapes == {(2, 4, 8, 16, 24), (2, 4, 4, 24, 16), (2, 4, 8, 16, 16), (4, 4, 4, 16, 16)}
    # a bucketed cache with a config that has no buckets: one line
    bad = subprocess.run([sys.executable, "-m", "sorakit.cli.main", "train", "tiny", "--data", str(cache),
                          "--output", str(tmp_path / "bad")], env=ENV, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert bad.returncode == 2 and "this latent cache is bucketed" in bad.stderr, bad.stderr[-2000:]
