"""Process groups: torchrun's environment -> a 2-D layout data-parallel x sequence-parallel.

Ranks are laid out row-major on a ``(dp, sp)`` grid: the ``sp`` ranks of one sequence-parallel group
are consecutive (on the same node when ``sp`` divides the GPUs per node). Gradients are averaged over
the whole world by DDP / FSDP (see ``sequence.py`` for why that is right with sequence parallelism);
data is sharded over ``dp``; every rank of a sequence-parallel group reads the same batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from sorakit.errors import ConfigError
from sorakit.runtime import resolve_device


@dataclass
class ParallelState:
    """Where this process sits. ``sp_group`` is None without sequence parallelism."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    dp_size: int = 1
    dp_rank: int = 0
    sp_size: int = 1
    sp_rank: int = 0
    device: torch.device = torch.device("cpu")
    sp_group: Any = None
    mesh: Any = None
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def pick_device() -> torch.device:
    """This process's training device: its local-rank GPU (made current), else the CPU."""
    device = resolve_device("auto", accelerators=("cuda",))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def init_distributed(
    sp_size: int = 1, backend: str | None = None, device: torch.device | str | None = None
) -> ParallelState:
    """Initialise torch.distributed from torchrun's environment (``WORLD_SIZE``, ``RANK``, ...) when more
    than one process runs (or reuse an existing process group), and build the dp x sp layout."""
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device) if device is not None else pick_device()
    if sp_size < 1 or world % sp_size:
        raise ConfigError(f"parallel.sp_size={sp_size} must divide the number of processes ({world})")
    if world == 1:
        return ParallelState(device=dev)
    here = False
    if not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
        here = True
    rank = dist.get_rank()
    dp = world // sp_size
    state = ParallelState(
        world_size=world, rank=rank, local_rank=local_rank, dp_size=dp, dp_rank=rank // sp_size,
        sp_size=sp_size, sp_rank=rank % sp_size, device=dev, initialized_here=here,
    )  # fmt: skip

    state.mesh = init_device_mesh(dev.type, (dp, sp_size), mesh_dim_names=("dp", "sp"))
    if sp_size > 1:
        state.sp_group = state.mesh.get_group("sp")
    return state


@contextmanager
def inference_processes(
    device: str | torch.device, sequence_parallel: bool = False
) -> Iterator[ParallelState]:
    """`sorakit generate` under torchrun: one process group over all processes, each on its local-rank GPU
    (when `device` is a GPU) or the CPU; with `sequence_parallel` every rank joins one sequence-parallel
    group (``state.sp_group``). One process: nothing is started. On exit the ranks meet, then the group
    is torn down."""
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device)
    if world > 1 and dev.type == "cuda":
        dev = pick_device()
    state = init_distributed(sp_size=world if sequence_parallel else 1, device=dev)
    try:
        yield state
    finally:
        if state.distributed and dist.is_initialized():
            dist.barrier()
        shutdown(state)


def shutdown(state: ParallelState) -> None:
    if state.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(values: list[float], state: ParallelState) -> list[float]:
    """Average plain numbers over all ranks (for logging)."""
    if not state.distributed:
        return values
    t = torch.tensor(
        values, dtype=torch.float64, device=state.device if state.device.type == "cuda" else "cpu"
    )
    dist.all_reduce(t)
    return (t / state.world_size).tolist()


def all_reduce_sum(values: list[float], state: ParallelState) -> list[float]:
    if not state.distributed:
        return values
    t = torch.tensor(
        values, dtype=torch.float64, device=state.device if state.device.type == "cuda" else "cpu"
    )
    dist.all_reduce(t)
    return t.tolist()
