"""AdamW over the trainable parameters and a linear-warmup-then-constant learning rate (Open-Sora 1.0
trains at a constant 2e-5; 1e-4 was found too large)."""

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


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate ``lr * min(1, (step + 1) / warmup_steps)``: linear warmup, then constant."""
    warmup = max(0, int(warmup_steps))

    def factor(step: int) -> float:
        return 1.0 if warmup == 0 else min(1.0, (step + 1) / warmup)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
