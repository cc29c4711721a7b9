"""Exponential moving average of the weights (what gets exported), kept in float32.

Open-Sora 1.0 / DiT: ``ema = decay * ema + (1 - decay) * param`` after every optimizer step, over the
trainable parameters, starting from a copy of the model. Works on FSDP2-sharded parameters (DTensors):
each rank averages its own shard.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain CPU tensor (gathering a DTensor shard first; a collective under FSDP)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().cpu()


class EMA:
    """Float32 shadow copies of ``model``'s parameters, updated with :meth:`update`."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, trainable_only: bool = False) -> None:
        """`trainable_only`: average (and save) only the parameters that train, e.g. a LoRA adapter's, and no
        buffers -- the frozen rest is not copied."""
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.trainable_only = trainable_only
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone().float()
            for name, p in model.named_parameters()
            if p.requires_grad or not trainable_only
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if p.requires_grad and name in self.shadow:
                self.shadow[name].mul_(self.decay).add_(p.detach().float(), alpha=1.0 - self.decay)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Full EMA weights + the model's persistent buffers: a state dict the single-device model loads
        with ``strict=True``. Call on every rank under FSDP (gathers shards)."""
        out = {name: _full(t) for name, t in self.shadow.items()}
        for name, buf in [] if self.trainable_only else _persistent_buffers(model):
            out[name] = _full(buf).clone()
        return out

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {missing[:3]}")
        for name, t in self.shadow.items():
            src = state[name]
            if hasattr(t, "device_mesh"):
                from torch.distributed.tensor import distribute_tensor  # loads sympy (~1 s): FSDP runs only

                src = distribute_tensor(src.to(t.device_mesh.device_type), t.device_mesh, t.placements)
                t.copy_(src)
            else:
                t.copy_(src.to(t.device))


def _persistent_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    keys = set(model.state_dict().keys())
    return [(n, b) for n, b in model.named_buffers() if n in keys]
