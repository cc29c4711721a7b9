"""Self- and cross-attention through `torch.nn.functional.scaled_dot_product_attention`.

SDPA picks flash / memory-efficient kernels on GPU by itself and a fused kernel on CPU. Upstream
Open-Sora 1.0 computes the self-attention softmax in float32 even for float64 models. Float64 is only
used for parity checks, so float64 self-attention follows upstream exactly (q scaled first, float32
softmax); every other dtype goes through SDPA. Without it float64 results differ from upstream by up to
~3e-7 (DiT/Latte) instead of ~1e-15.
Parameter names (`qkv`, `proj`, `q_linear`, `kv_linear`) are the upstream ones.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    """Multi-head self-attention over `[B, N, D]` sequences (scale head_dim^-0.5, no mask)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, N, hd]
        if q.dtype == torch.float64:
            logits = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            x = logits.to(torch.float32).softmax(dim=-1).to(q.dtype) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class MultiHeadCrossAttention(nn.Module):
    """Image tokens `[B, N, D]` attend to their own sample's caption tokens `[B, L, D]`.

    `key_mask` `[B, L]` (bool, True = valid caption token) restricts each sample to its own valid tokens,
    which is what upstream's packed block-diagonal xformers mask computes. A sample without any valid
    token gets a zero attention output instead of NaN.
    """

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"hidden size {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_linear = nn.Linear(d_model, d_model)
        self.kv_linear = nn.Linear(d_model, d_model * 2)
        self.proj = nn.Linear(d_model, d_model)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, N, C = x.shape
        L = cond.shape[1]
        q = self.q_linear(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv_linear(cond).view(B, L, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)  # [B, H, L, hd]
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


def caption_key_mask(mask: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """Turn an upstream caption mask into the bool key mask of `MultiHeadCrossAttention`.

    `mask` `[n, L]` (0/1, any dtype) or None. With fewer rows than the batch (classifier-free guidance:
    `[B, L]` mask for a `[2B, ...]` batch) it is tiled like upstream's `mask.repeat`, so the null-caption
    rows reuse the conditional rows' token counts. Returns `[batch, L]` bool, or None when every token is
    valid (no masking needed; lets SDPA use its fastest kernel).
    """
    if mask is None:
        return None
    if mask.ndim != 2:
        mask = mask.reshape(mask.shape[0], -1)
    if mask.shape[0] != batch:
        if batch % mask.shape[0] != 0:
            raise ValueError(
                f"caption mask has {mask.shape[0]} rows, which does not divide the batch {batch}"
            )
        mask = mask.repeat(batch // mask.shape[0], 1)
    valid = mask != 0
    counts = valid.sum(dim=1)
    # one host sync for both checks
    any_empty, all_full = torch.stack([(counts == 0).any(), (counts == valid.shape[1]).all()]).tolist()
    if any_empty:
        raise ValueError("a caption mask row has no valid token (every sample needs at least one)")
    return None if all_full else valid
