"""Analytic FLOPs of one forward pass per sample (2 FLOPs per multiply-add; matmuls and attention only).

Used by the trainer for MFU: a training step costs about 3x the forward (`training=True`), plus one more
forward per block with gradient checkpointing (not counted: MFU counts useful work).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from sorakit.models.dit import DiT
from sorakit.models.latte import Latte
from sorakit.models.pixart import PixArt
from sorakit.models.stdit import STDiT


def _attn(n_tokens: int, seq_len: int, d: int) -> int:
    """qkv + proj projections of n_tokens, plus scores and weighted sum over sequences of seq_len."""
    return 2 * n_tokens * d * 3 * d + 2 * n_tokens * d * d + 4 * n_tokens * seq_len * d


def _cross(n_tokens: int, text_len: int, d: int) -> int:
    return (
        2 * n_tokens * d * d + 2 * text_len * d * 2 * d + 2 * n_tokens * d * d + 4 * n_tokens * text_len * d
    )


def flops_per_sample(
    model: nn.Module,
    input_size: Sequence[int] | None = None,
    text_len: int | None = None,
    training: bool = False,
) -> int:
    """FLOPs of one sample's forward (x3 with `training=True`) through an STDiT / PixArt / DiT / Latte.

    `input_size`: latent `(T, H, W)` (default: the model's `input_size`); `text_len`: caption tokens
    (default: `model_max_length`; ignored by DiT/Latte, whose caption is one pooled token).
    """

    size = tuple(input_size) if input_size is not None else tuple(model.input_size)
    nt, nh, nw = (s // p for s, p in zip(size, model.patch_size))
    S = nh * nw
    N = nt * S
    D = model.hidden_size
    M = int(D * model.mlp_ratio)
    P = model.patch_size[0] * model.patch_size[1] * model.patch_size[2]
    mlp = 4 * N * D * M

    total = 2 * N * D * model.in_channels * P  # patch embedding
    total += 2 * (256 * D + D * D)  # timestep MLP
    total += 2 * N * D * P * model.out_channels  # final linear
    if isinstance(model, (STDiT, PixArt)):
        L = int(text_len if text_len is not None else model.model_max_length)
        total += 2 * D * 6 * D  # t_block
        total += 2 * L * (model.caption_channels * D + D * D)  # caption MLP
        per_block = _cross(N, L, D) + mlp
        if isinstance(model, STDiT):
            per_block += _attn(N, S, D) + _attn(N, nt, D)
        else:
            per_block += _attn(N, N, D)
        total += model.depth * per_block
    elif isinstance(model, DiT):
        if model.use_text_encoder:
            total += 2 * (model.caption_channels * D + D * D)
        total += 2 * D * 2 * D  # final adaLN
        ada = 2 * D * 6 * D  # adaLN of one conditioning row
        if isinstance(model, Latte):
            # upstream repeats the conditioning per frame (spatial blocks) / per position (temporal blocks)
            n_spatial = (model.depth + 1) // 2
            n_temporal = model.depth - n_spatial
            total += n_spatial * (_attn(N, S, D) + mlp + nt * ada) + n_temporal * (
                _attn(N, nt, D) + mlp + S * ada
            )
        else:
            total += model.depth * (_attn(N, N, D) + mlp + ada)
    else:
        raise TypeError(f"no FLOPs formula for {type(model).__name__}")
    return int(total * (3 if training else 1))
