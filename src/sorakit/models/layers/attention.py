"""Self- and cross-attention through `torch.nn.functional.scaled_dot_product_attention`, except in training
on CPU.

SDPA picks flash / memory-efficient kernels on GPU by itself and a fused kernel on CPU. Two exceptions go through
`explicit_attention` (two batched matmuls around a softmax, the probabilities recomputed in the backward):

- float64 (parity checks only): upstream Open-Sora 1.0 computes the self-attention softmax in float32 even for
  float64 models, so float64 self-attention follows it exactly (q scaled first, float32 softmax). Without it
  float64 results differ from upstream by up to ~3e-7 (DiT/Latte) instead of ~1e-15.
- training on CPU in bfloat16/float16 (a gradient is needed): there SDPA's fused CPU kernel takes 1.6-4x the
  time of two batched matmuls for forward+backward at STDiT's sequence lengths (64 tokens of a frame, 8-32
  frames, a caption), and made sorakit's bf16 training step 1.2-1.3x slower than Open-Sora 1.0's plain-matmul
  attention (benchmarks/models.py --upstream). In float32 the fused kernel is the faster one and stays.
  Inference keeps SDPA in every dtype, so sampling is unchanged bit for bit.

Parameter names (`qkv`, `proj`, `q_linear`, `kv_linear`) are the upstream ones.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sorakit.models.layers.linear import Linear


def _heads(x: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """`[B, N, H, hd]` (any strides) -> contiguous `[B*H, N, hd]`, times `scale` in the same pass."""
    B, N, H, hd = x.shape
    src = x.transpose(1, 2)
    if torch.compiler.is_compiling():  # no out=: a compiled graph may give it the strides of src
        return (src if scale is None else src * scale).reshape(B * H, N, hd)
    out = torch.empty(B, H, N, hd, dtype=x.dtype, device=x.device)
    if scale is None:
        out.copy_(src)
    else:
        torch.mul(src, scale, out=out)
    return out.view(B * H, N, hd)


def _probabilities(q, k, bias, heads: int, softmax_dtype: torch.dtype) -> torch.Tensor:
    """softmax(q k^T + bias) in `softmax_dtype`: q `[B*H, N, hd]` (scaled), k `[B*H, L, hd]`, bias `[B, L]` or None."""
    logits = torch.bmm(q, k.transpose(1, 2))
    if bias is not None:
        BH, N, L = logits.shape
        logits = logits.view(-1, heads, N, L).add_(bias[:, None, None, :]).view(BH, N, L)
    return logits.to(softmax_dtype).softmax(dim=-1)


class _ExplicitAttention(torch.autograd.Function):
    """Upstream Open-Sora's attention arithmetic (q * scale, @ k^T, softmax in `softmax_dtype`, cast back, @ v) as one
    autograd node that saves only q, k, v: the backward recomputes the probabilities (one more batched matmul)
    instead of keeping an `[N, L]` matrix per head, as a fused kernel would."""

    @staticmethod
    def forward(ctx, q, k, v, bias, softmax_dtype):
        B, N, H, hd = q.shape
        scale = hd**-0.5
        qs, kh, vh = _heads(q, scale), _heads(k), _heads(v)
        p = _probabilities(qs, kh, bias, H, softmax_dtype).to(q.dtype)
        out = torch.bmm(p, vh).view(B, H, N, hd).transpose(1, 2).contiguous()  # [B, N, H, hd]
        ctx.save_for_backward(qs, kh, vh, bias)
        ctx.scale, ctx.softmax_dtype, ctx.heads = scale, softmax_dtype, H
        return out

    @staticmethod
    def backward(ctx, grad):
        qs, kh, vh, bias = ctx.saved_tensors
        B, N, H, hd = grad.shape
        L = kh.shape[1]
        g = _heads(grad.to(qs.dtype))
        p32 = _probabilities(qs, kh, bias, H, ctx.softmax_dtype)
        p = p32.to(qs.dtype)
        dv = torch.bmm(p.transpose(1, 2), g)
        dp = torch.bmm(g, vh.transpose(1, 2))
        ds = torch._softmax_backward_data(dp.to(p32.dtype), p32, -1, p32.dtype).to(qs.dtype)
        del p32, p, dp
        dq = torch.bmm(ds, kh).mul_(ctx.scale)
        dk = torch.bmm(ds.transpose(1, 2), qs)

        def tokens(t: torch.Tensor, n: int) -> torch.Tensor:
            return t.view(B, H, n, hd).transpose(1, 2)

        return tokens(dq, N), tokens(dk, L), tokens(dv, L), None, None


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    softmax_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Attention with upstream's arithmetic: q `[B, N, H, hd]`, k/v `[B, L, H, hd]` (any strides), key_mask `[B, L]`
    bool (True = attend) or None -> `[B, N, H, hd]` contiguous. Scale hd^-0.5; the softmax runs in `softmax_dtype`."""
    bias = None
    if key_mask is not None:
        bias = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device).masked_fill_(
            ~key_mask, float("-inf")
        )
    return _ExplicitAttention.apply(q, k, v, bias, softmax_dtype)


def _cpu_training(*tensors: torch.Tensor) -> bool:
    """A gradient will flow through these CPU tensors in a 16-bit float: SDPA's fused CPU kernel is the slow path."""
    t = tensors[0]
    return (
        t.device.type == "cpu"
        and t.dtype in (torch.bfloat16, torch.float16)
        and torch.is_grad_enabled()
        and any(x.requires_grad for x in tensors)
    )


class Attention(nn.Module):
    """Multi-head self-attention over `[B, N, D]` sequences (scale head_dim^-0.5, no mask)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(2)  # [B, N, H, hd]
        if q.dtype == torch.float64 or _cpu_training(q):
            x = explicit_attention(q, k, v, softmax_dtype=torch.float32)  # upstream: float32 softmax
        else:
            x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            x = x.transpose(1, 2)
        return self.proj(x.reshape(B, N, C))


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
        self.q_linear = Linear(d_model, d_model)
        self.kv_linear = Linear(d_model, d_model * 2)
        self.proj = Linear(d_model, d_model)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, N, C = x.shape
        L = cond.shape[1]
        q = self.q_linear(x).view(B, N, self.num_heads, self.head_dim)
        k, v = self.kv_linear(cond).view(B, L, 2, self.num_heads, self.head_dim).unbind(2)  # [B, L, H, hd]
        if _cpu_training(q, k):
            # no float32 cast upstream here (xformers): the softmax runs in at least float32
            x = explicit_attention(q, k, v, key_mask, torch.promote_types(q.dtype, torch.float32))
        else:
            attn_mask = None if key_mask is None else key_mask[:, None, None, :]
            x = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask
            )
            x = x.transpose(1, 2)
        return self.proj(x.reshape(B, N, C))


def caption_key_mask(mask: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """Turn an upstream caption mask into the bool key mask of `MultiHeadCrossAttention`.

    `mask` `[n, L]` (0/1, any dtype) or None. With fewer rows than the batch (classifier-free guidance:
    `[B, L]` mask for a `[2B, ...]` batch) it is tiled like upstream's `mask.repeat`, so the null-caption
    rows reuse the conditional rows' token counts. Returns `[batch, L]` bool, or None when every token is
    valid (no masking needed; lets SDPA use its fastest kernel).
    """
    return _caption_mask(mask, batch, trim=False)[0]


def trimmed_caption_mask(mask: torch.Tensor | None, batch: int) -> tuple[torch.Tensor | None, int | None]:
    """`caption_key_mask` without the trailing caption tokens that no sample attends to.

    Returns `(key_mask [batch, length] | None, length | None)`: captions and their mask cut to their first
    `length` tokens give the same attention (length None = keep all). Upstream packs only the valid tokens, so
    padding costs it nothing; T5 captions are padded to 120 tokens and most prompts use a fraction of them.
    """
    return _caption_mask(mask, batch, trim=True)


def _caption_mask(
    mask: torch.Tensor | None, batch: int, trim: bool
) -> tuple[torch.Tensor | None, int | None]:
    if mask is None:
        return None, None
    if mask.ndim != 2:
        mask = mask.reshape(mask.shape[0], -1)
    if mask.shape[0] != batch:
        if batch % mask.shape[0] != 0:
            raise ValueError(
                f"caption mask has {mask.shape[0]} rows, which does not divide the batch {batch}"
            )
        mask = mask.repeat(batch // mask.shape[0], 1)
    valid = mask != 0
    L = valid.shape[1]
    counts = valid.sum(dim=1)
    if trim:  # 1 + index of the last column any sample attends to
        used = (valid.any(dim=0) * torch.arange(1, L + 1, device=valid.device)).max()
    else:
        used = counts.new_tensor(L)
    # one host sync for every check
    any_empty, length, all_full = torch.stack([(counts == 0).any(), used, (counts == used).all()]).tolist()
    if any_empty:
        raise ValueError("a caption mask row has no valid token (every sample needs at least one)")
    return (None if all_full else valid[:, :length]), (length if length < L else None)
