"""Sequence parallelism for STDiT, applied from outside the model with forward hooks.

The tokens of a video ``[B, T*S, D]`` (T frames of S patches) are split along time over the ranks of a
sequence-parallel group: each rank holds ``T/sp`` frames. In every block

- spatial self-attention works inside one frame: local, no communication;
- temporal self-attention needs every frame of a spatial position: an all-to-all switches the layout
  from time-split ``[(B S), T/sp, D]`` to space-split ``[(B S)/sp, T, D]``, the unchanged attention
  module runs, and a second all-to-all switches back;
- cross-attention (queries are tokens) and the MLP are per token: local.

The split happens when block 0 is entered (its temporal position embedding is cut to the local frames)
and the tokens are gathered when the last block returns, so the embeddings and the final layer run
unchanged on every rank. Nothing in ``sorakit/models`` knows about this: the hooks rewrite block
arguments (``num_frames``, ``tpe``, and the per-frame mask ``x_mask`` of reference frames, which is cut to
the local frames like the tokens) and wrap ``attn_temp``. Parameter names do not change.

Gradients: the gather's backward keeps the local slice scaled by ``sp`` and the split's backward
gathers and scales by ``1/sp``, so that averaging gradients over all ranks of the world (what DDP and
FSDP do) gives the single-process gradient. Every rank of a group must see the same batch, timesteps,
noise and dropout decisions (the trainer seeds by data-parallel rank).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn


def _world(group: Any) -> tuple[int, int]:
    return dist.get_world_size(group), dist.get_rank(group)


def all_to_all(x: torch.Tensor, group: Any, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Split `x` along `scatter_dim` into `world` chunks, send chunk r to rank r, concatenate the received
    chunks (in rank order) along `gather_dim`. No autograd (see :class:`_AllToAll`)."""
    world, _ = _world(group)
    chunks = [c.contiguous() for c in torch.chunk(x, world, dim=scatter_dim)]
    inp = torch.stack(chunks)  # [world, ...chunk]
    out = torch.empty_like(inp)
    dist.all_to_all_single(out, inp, group=group)
    return torch.cat(list(out.unbind(0)), dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any, scatter_dim: int, gather_dim: int) -> torch.Tensor:
        ctx.group, ctx.scatter_dim, ctx.gather_dim = group, scatter_dim, gather_dim
        return all_to_all(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        return all_to_all(grad, ctx.group, ctx.gather_dim, ctx.scatter_dim), None, None, None


def _gather(x: torch.Tensor, group: Any, dim: int) -> torch.Tensor:
    world, _ = _world(group)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


class _SplitForwardGatherBackward(torch.autograd.Function):
    """Forward: keep this rank's chunk along `dim`. Backward: gather the chunks' gradients, times `scale`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any, dim: int, scale: float) -> torch.Tensor:
        ctx.group, ctx.dim, ctx.scale = group, dim, scale
        world, rank = _world(group)
        return torch.chunk(x, world, dim=dim)[rank].contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        return _gather(grad, ctx.group, ctx.dim) * ctx.scale, None, None, None


class _GatherForwardSplitBackward(torch.autograd.Function):
    """Forward: concatenate every rank's chunk along `dim`. Backward: this rank's slice, times `scale`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any, dim: int, scale: float) -> torch.Tensor:
        ctx.group, ctx.dim, ctx.scale = group, dim, scale
        return _gather(x, group, dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        world, rank = _world(ctx.group)
        return torch.chunk(grad, world, dim=ctx.dim)[rank].contiguous() * ctx.scale, None, None, None


def split_sequence(x: torch.Tensor, group: Any, dim: int = 1) -> torch.Tensor:
    world, _ = _world(group)
    return _SplitForwardGatherBackward.apply(x, group, dim, 1.0 / world)


def gather_sequence(x: torch.Tensor, group: Any, dim: int = 1) -> torch.Tensor:
    world, _ = _world(group)
    return _GatherForwardSplitBackward.apply(x, group, dim, float(world))


@dataclass
class SequenceParallel:
    """Handle of an applied sequence parallelism; ``remove()`` restores the single-device model."""

    group: Any
    size: int
    handles: list[Any] = field(default_factory=list)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


_BLOCK_ARGS = ("x", "y", "t0", "y_mask", "tpe", "num_frames")


def apply_sequence_parallel(model: nn.Module, group: Any = None) -> SequenceParallel:
    """Make an STDiT-like model (``model.blocks[i]`` called as ``block(x, y, t0, y_mask, tpe, num_frames)``
    with an ``attn_temp`` submodule) run sequence-parallel over `group` (default: the whole world).

    Requirements at run time: the latent frame count T' is divisible by the group size, and so is
    ``B * S`` (batch times spatial patches per frame). Forward and backward then equal the single-device
    computation (up to float summation order).
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("sequence parallelism needs torch.distributed to be initialised")
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) == 0 or not all(hasattr(b, "attn_temp") for b in blocks):
        raise TypeError(f"{type(model).__name__}: sequence parallelism needs STDiT blocks with `attn_temp`")
    params = tuple(inspect.signature(blocks[0].forward).parameters)
    if params[: len(_BLOCK_ARGS)] != _BLOCK_ARGS:
        raise TypeError(f"unexpected STDiT block signature {params}; expected {list(_BLOCK_ARGS)}")
    size, rank = _world(group)
    sp = SequenceParallel(group=group, size=size)
    if size == 1:
        return sp
    last = len(blocks) - 1

    def block_pre_hook(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            bound = dict(zip(params, args))
            bound.update(kwargs)
            nt = int(bound["num_frames"])
            if nt % size:
                raise ValueError(f"sequence parallelism: {nt} latent frames do not split over {size} ranks")
            if index == 0:
                bound["x"] = split_sequence(bound["x"], group, dim=1)
                tpe = bound.get("tpe")
                if tpe is not None:
                    bound["tpe"] = torch.chunk(tpe, size, dim=1)[rank]
            if (
                bound.get("x_mask") is not None
            ):  # [B, T'] -> this rank's frames (every block gets the full mask)
                bound["x_mask"] = torch.chunk(bound["x_mask"], size, dim=1)[rank]
            bound["num_frames"] = nt // size
            return (), bound

        return hook

    def last_hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        return gather_sequence(output, group, dim=1)

    def temporal_pre_hook(module: nn.Module, args: tuple) -> tuple:
        (x_t, *rest) = args  # [(B S), T/sp, D] -> [(B S)/sp, T, D]
        if x_t.shape[0] % size:
            raise ValueError(
                f"sequence parallelism: batch x spatial tokens = {x_t.shape[0]} does not split over {size} ranks"
            )
        return (_AllToAll.apply(x_t, group, 0, 1), *rest)

    def temporal_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return _AllToAll.apply(output, group, 1, 0)

    for i, block in enumerate(blocks):
        sp.handles.append(block.register_forward_pre_hook(block_pre_hook(i), with_kwargs=True))
        sp.handles.append(block.attn_temp.register_forward_pre_hook(temporal_pre_hook))
        sp.handles.append(block.attn_temp.register_forward_hook(temporal_hook))
        if i == last:
            sp.handles.append(block.register_forward_hook(last_hook, with_kwargs=True))
    return sp
