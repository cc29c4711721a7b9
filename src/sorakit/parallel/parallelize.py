"""Apply activation checkpointing, sequence parallelism and DDP / FSDP2 to a single-device model.

Order (as torchtitan): activation checkpointing -> sequence parallelism -> torch.compile -> data
parallelism. The model object keeps its parameter names in every case (FSDP2 shards in place; DDP wraps,
and the trainer keeps a reference to the inner module), so state dicts stay loadable by the single-device
model.

Strategies (``parallel.strategy``):
  none       one process
  ddp        gradients all-reduced (every rank holds full weights and optimizer state)
  fsdp       FSDP2 ``fully_shard`` with ``reshard_after_forward=False``: gradients and optimizer state
             sharded, parameters gathered once per step (ZeRO-2-like; Open-Sora 1.0 used ZeRO-2)
  fsdp-full  FSDP2 with ``reshard_after_forward=True``: parameters sharded too (ZeRO-3-like)

``compile=True`` (``train.compile``) compiles in place (``nn.Module.compile``), so parameter names keep no
``_orig_mod.`` prefix and checkpoints load into an eager model and back: the whole model before the DDP
wrapper (PyTorch's advice: compile the inner module, DDP's hooks stay outside the graph), each transformer
block before ``fully_shard`` under FSDP2 (torchtitan's order; FSDP's gather/free hooks run between blocks).
"""

from __future__ import annotations

import os
import shutil

import torch
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel as DDP

from sorakit.errors import ConfigError, UserError
from sorakit.parallel.mesh import ParallelState
from sorakit.parallel.sequence import apply_sequence_parallel

STRATEGIES = ("none", "ddp", "fsdp", "fsdp-full")
# torch.compile's backend for training; tests set "aot_eager" (graph capture + AOTAutograd, no C compiler)
COMPILE_BACKEND_ENV = "SORAKIT_COMPILE_BACKEND"


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute transformer blocks in the backward pass (the model's own switch, no wrapper modules)."""
    if hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing(True)
    else:
        raise TypeError(f"{type(model).__name__} has no gradient checkpointing switch")


def compile_backend(device: torch.device) -> str:
    """The torch.compile backend: ``inductor``, or ``$SORAKIT_COMPILE_BACKEND``; checked before any work."""
    name = os.environ.get(COMPILE_BACKEND_ENV, "") or "inductor"
    known = torch.compiler.list_backends(exclude_tags=())
    if name not in known:
        raise UserError(
            f"{COMPILE_BACKEND_ENV}={name}: unknown torch.compile backend (e.g. inductor, aot_eager)"
        )
    compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if name == "inductor" and device.type == "cpu" and not any(c and shutil.which(c) for c in compilers):
        raise UserError(
            "train.compile on a CPU needs a C++ compiler (g++ / clang++ / $CXX) for inductor's kernels"
        )
    return name


def apply_compile(model: nn.Module, per_block: bool, backend: str) -> None:
    """``torch.compile`` in place: the whole model, or (``per_block``, for FSDP2) each of ``model.blocks``."""
    for module in list(getattr(model, "blocks", [])) if per_block else [model]:
        module.compile(backend=backend)


def parallelize(
    model: nn.Module,
    state: ParallelState,
    strategy: str,
    grad_checkpoint: bool = False,
    compile: bool = False,
) -> nn.Module:
    """Returns the module to call in training (``model`` itself, or a DDP wrapper around it); with
    `compile` the model (or its blocks, under FSDP2) is torch.compile'd in place first."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"parallel.strategy: unknown '{strategy}' (valid: {', '.join(STRATEGIES)})")
    backend = compile_backend(state.device) if compile else None
    if grad_checkpoint:
        apply_activation_checkpointing(model)
    if state.sp_size > 1:
        apply_sequence_parallel(model, state.sp_group)
    model.to(state.device)
    if backend is not None:
        fsdp = state.distributed and strategy.startswith("fsdp")
        apply_compile(model, per_block=fsdp, backend=backend)
    if not state.distributed:
        return model
    if strategy in ("none", "ddp"):
        ids = [state.device.index] if state.device.type == "cuda" else None
        # buffers (position embeddings, the null caption) are identical everywhere: no broadcast per step
        return DDP(model, device_ids=ids, broadcast_buffers=False)
    from torch.distributed.fsdp import fully_shard  # loads sympy (~1 s): FSDP runs only

    mesh = init_device_mesh(state.device.type, (state.world_size,))
    reshard = strategy == "fsdp-full"
    for block in getattr(model, "blocks", []):
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    return model
