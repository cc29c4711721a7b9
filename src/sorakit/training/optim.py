"""AdamW over the trainable parameters and a linear-warmup-then-constant learning rate (Open-Sora 1.0
trains at a constant 2e-5; 1e-4 was found too large), with an optional linear cooldown to zero over the
last steps (warmup-stable-decay)."""

from __future__ import annotations

import torch
import torch.nn as nn

from sorakit.errors import ConfigError


def freeze(model: nn.Module, mode: str | None) -> int:
    """Freeze parameters as upstream STDiT did: ``not_temporal`` trains only ``attn_temp`` layers,
    ``text`` freezes the cross-attention. Returns the number of trainable parameters left."""
    if mode not in (None, "", "none", "not_temporal", "text"):
        raise ConfigError(f"train.freeze: unknown '{mode}' (valid: not_temporal, text)")
    for name, p in model.named_parameters():
        if mode == "not_temporal" and "attn_temp" not in name:
            p.requires_grad_(False)
        elif mode == "text" and "cross_attn" in name:
            p.requires_grad_(False)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n == 0:
        raise ConfigError(f"train.freeze={mode!r} leaves no trainable parameters in {type(model).__name__}")
    return n


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8)


def lr_factor(step: int, warmup_steps: int = 0, decay_steps: int = 0, max_steps: int | None = None) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps: ``min(1, (step + 1) / warmup)``,
    times a linear ramp from 1 to 0 over the last ``decay_steps`` of ``max_steps`` (0 = constant)."""
    f = 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)
    if decay_steps > 0 and max_steps is not None:
        start = max_steps - decay_steps
        if step >= start:
            f *= max(0.0, (max_steps - step) / decay_steps)
    return f


def build_lr_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int = 0,
    decay_steps: int = 0,
    max_steps: int | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over :func:`lr_factor`. The factor is a pure function of the step, so a run resumed with a
    different ``max_steps`` / ``decay_steps`` follows the new schedule from where it stopped."""
    warmup, decay = max(0, int(warmup_steps)), max(0, int(decay_steps))
    if decay and max_steps is None:
        raise ConfigError("train.decay_steps needs train.max_steps")

    def factor(step: int) -> float:
        return lr_factor(step, warmup, decay, max_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
