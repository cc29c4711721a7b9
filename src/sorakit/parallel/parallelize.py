"""Apply activation checkpointing, sequence parallelism and DDP / FSDP2 to a single-device model.

Order (as torchtitan): activation checkpointing -> sequence parallelism -> data parallelism. The model
object keeps its parameter names in every case (FSDP2 shards in place; DDP wraps, and the trainer keeps
a reference to the inner module), so state dicts stay loadable by the single-device model.

Strategies (``parallel.strategy``):
  none       one process
  ddp        gradients all-reduced (every rank holds full weights and optimizer state)
  fsdp       FSDP2 ``fully_shard`` with ``reshard_after_forward=False``: gradients and optimizer state
             sharded, parameters gathered once per step (ZeRO-2-like; Open-Sora 1.0 used ZeRO-2)
  fsdp-full  FSDP2 with ``reshard_after_forward=True``: parameters sharded too (ZeRO-3-like)
"""

from __future__ import annotations

import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel as DDP

from sorakit.errors import ConfigError
from sorakit.parallel.mesh import ParallelState
from sorakit.parallel.sequence import apply_sequence_parallel

STRATEGIES = ("none", "ddp", "fsdp", "fsdp-full")


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute transformer blocks in the backward pass (the model's own switch, no wrapper modules)."""
    if hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing(True)
    else:
        raise TypeError(f"{type(model).__name__} has no gradient checkpointing switch")


def parallelize(
    model: nn.Module, state: ParallelState, strategy: str, grad_checkpoint: bool = False
) -> nn.Module:
    """Returns the module to call in training (``model`` itself, or a DDP wrapper around it)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"parallel.strategy: unknown '{strategy}' (valid: {', '.join(STRATEGIES)})")
    if grad_checkpoint:
        apply_activation_checkpointing(model)
    if state.sp_size > 1:
        apply_sequence_parallel(model, state.sp_group)
    model.to(state.device)
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
