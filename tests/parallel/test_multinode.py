"""`sorakit train` launched as two "nodes" of one process each, with the command docs/training.md gives for
several nodes (one torchrun per node, --nnodes 2, c10d rendezvous): every process has LOCAL_RANK 0 but a
different RANK. The run must train like one process on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _spawn import free_port
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from _train_helpers import TINY_OVERRIDES, make_cache, tiny_config  # noqa: E402

pytestmark = pytest.mark.distributed

STEPS = 3


def test_two_nodes_train_like_one_process(tmp_path):
    cache = make_cache(tmp_path / "cache", n=12)
    run = tmp_path / "two-nodes"
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = []
    for _ in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes",
               "-m", "sorakit.cli.main", "train", "tiny", *TINY_OVERRIDES, "train.batch_size=2",
               "train.caption_dropout=0.3", "parallel.strategy=ddp", "parallel.backend=gloo",
               "--data", str(cache), "--output", str(run), "--max-steps", str(STEPS), "--ckpt-every", str(STEPS)]  # fmt: skip
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    # only global rank 0 logs at INFO (the rendezvous decides which launcher hosts it); it reports the global
    # batch of both nodes
    assert sorted("global batch 4" in err for _, err in outs) == [False, True]

    torch.set_num_threads(1)
    from sorakit.training.trainer import train

    ref = train(tiny_config(f"data.csv={cache}", "train.batch_size=4", "train.caption_dropout=0.3",
                            f"train.max_steps={STEPS}", f"train.ckpt_every={STEPS}"), tmp_path / "one")  # fmt: skip
    final = run / "checkpoints" / f"step-{STEPS:08d}"
    for name in ("model.safetensors", "ema.safetensors"):
        got, want = load_file(str(final / name)), load_file(str(ref.checkpoint / name))
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-5, msg=f"{name}: {k}")
