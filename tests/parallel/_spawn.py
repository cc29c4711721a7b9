"""Run a function in N gloo processes (torch.multiprocessing spawn) and collect what each returns."""

from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path
from typing import Any, Callable

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable[..., Any], world: int, port: int, out_dir: str, args: tuple) -> None:
    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank), OMP_NUM_THREADS="1",
    )  # fmt: skip
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    except BaseException:
        (Path(out_dir) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def run_distributed(fn: Callable[..., Any], world: int, tmp_path: Path, *args: Any) -> list[Any]:
    """`fn(rank, world, *args)` in `world` processes with an initialised gloo group; returns their results."""
    import torch.multiprocessing as mp

    out = tmp_path / f"dist-{fn.__name__}"
    out.mkdir(parents=True, exist_ok=True)
    try:
        mp.spawn(_entry, args=(fn, world, free_port(), str(out), args), nprocs=world, join=True)
    except Exception as exc:
        errs = "\n".join(p.read_text() for p in sorted(out.glob("*.err")))
        raise AssertionError(f"distributed run failed: {exc}\n{errs}") from None
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]
