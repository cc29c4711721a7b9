"""Checkpoint failures with 2 gloo processes: a write error on one rank stops every rank with one line and
leaves no partial folder; a damaged newest checkpoint makes every rank resume from the same older one."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest
from _spawn import run_distributed

pytestmark = pytest.mark.distributed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from _train_helpers import make_cache, tiny_config  # noqa: E402


def _cfg(cache: str, steps: int):
    return tiny_config(
        f"data.csv={cache}", "train.batch_size=2", f"train.max_steps={steps}", "train.ckpt_every=1",
        "train.keep_last=0", "parallel.strategy=ddp",
    )  # fmt: skip


def _worker(rank: int, world: int, cache: str, out: str):
    import torch.distributed as dist

    from sorakit.training import checkpoint as ckpt
    from sorakit.training.trainer import train

    run = Path(out) / "run"
    train(_cfg(cache, 2), run)
    real_write = ckpt._write_file

    def rank1_disk_full(path: Path, data: bytes) -> None:
        if rank == 1 and path.parent.parent.name == ".tmp-step-00000003":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, data)

    ckpt._write_file = rank1_disk_full
    try:
        train(_cfg(cache, 4), run, resume=True)
        error = None
    except ckpt.CheckpointWriteError as exc:
        error = str(exc)
    finally:
        ckpt._write_file = real_write
    dist.barrier()
    after_failure = sorted(p.name for p in (run / "checkpoints").iterdir())
    dist.barrier()
    if rank == 0:  # the newest checkpoint gets damaged: both ranks must fall back to step 1 together
        with open(ckpt.step_dir(run, 2) / "ema.safetensors", "r+b") as fh:
            fh.truncate(100)
    dist.barrier()
    result = train(_cfg(cache, 4), run, resume=True)
    return {"error": error, "after_failure": after_failure, "losses": len(result.losses), "step": result.step}


def test_write_error_on_one_rank_stops_all_and_fallback_is_shared(tmp_path):
    cache = make_cache(tmp_path / "cache", n=8)
    r0, r1 = run_distributed(_worker, 2, tmp_path, str(cache), str(tmp_path))
    assert r1["error"].startswith("checkpoint for step 3 not written: No space left on device: ")
    assert (
        str(tmp_path / "run" / "checkpoints" / ".tmp-step-00000003" / "rng" / "rank-00001.pt") in r1["error"]
    )
    assert r0["error"] == "checkpoint for step 3 not written: another rank failed (see its error)"
    assert r0["after_failure"] == r1["after_failure"] == ["step-00000001", "step-00000002"]
    # resumed from step 1 (step 2 damaged) on both ranks: 3 steps each, to step 4
    assert r0["losses"] == r1["losses"] == 3 and r0["step"] == r1["step"] == 4
