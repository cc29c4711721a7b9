"""Small building blocks shared unchanged by the four architectures: MLP, stochastic depth, modulation,
final layers. Names follow Open-Sora 1.0 (timm's `Mlp` keys `fc1`/`fc2`, `scale_shift_table`,
`adaLN_modulation.1`, `norm_final`, `linear`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sorakit.models.layers.linear import Linear, linear, mm

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_K = 0.044715
_GELU_CHUNK = 128 * 1536  # float32 elements per chunk (768 KB): its temporaries stay in the core's cache


def _low_precision_cpu(h: torch.Tensor) -> bool:
    """The chunked float32 forward below serves this tensor: a 16-bit float on CPU, outside a compiled graph (there
    the compiler fuses aten's GELU itself). float32 keeps aten's GELU, the one the parity tests pin."""
    return (
        h.device.type == "cpu"
        and h.dtype in (torch.bfloat16, torch.float16)
        and not torch.compiler.is_compiling()
    )


def _chunk_rows(width: int) -> int:
    """Rows of a `width`-wide chunk: ~`_GELU_CHUNK` elements."""
    return max(1, _GELU_CHUNK // max(width, 1))


def _row_chunks(*tensors: torch.Tensor):
    """Row chunks `[n, D]` of same-shaped contiguous tensors (the leading dims flattened), `_chunk_rows(D)` each."""
    flat = [t.view(-1, t.shape[-1]) for t in tensors]
    rows = _chunk_rows(flat[0].shape[1])
    for i in range(0, flat[0].shape[0], rows):
        yield [f[i : i + rows] for f in flat]


def _scratch(n: int, like: torch.Tensor) -> list[torch.Tensor]:
    """`n` float32 buffers of one row chunk of `like`, reused by every chunk (no allocation inside the loop)."""
    D = like.shape[-1]
    rows = min(_chunk_rows(D), max(1, like.numel() // max(D, 1)))
    return [torch.empty(rows, D, dtype=torch.float32, device=like.device) for _ in range(n)]


def _gelu_gate_(s: torch.Tensor, x: torch.Tensor, two_c: torch.Tensor) -> torch.Tensor:
    """`s <- 0.5 (1 + tanh u)` of float32 x as `sigmoid(2u)`, u = sqrt(2/pi) (x + 0.044715 x^3), in place: the
    tanh-GELU's gate without tanh, which is several times slower than sigmoid on CPU. `two_c`: 2 sqrt(2/pi) as a
    0-dim tensor (addcmul's first operand)."""
    torch.addcmul(two_c, x, x, value=2 * _GELU_C * _GELU_K, out=s)
    return s.mul_(x).sigmoid_()


def _gelu_tanh_forward(h: torch.Tensor) -> torch.Tensor:
    """`h * sigmoid(2u)` in float32 chunks, rounded once to h's dtype."""
    h = h.contiguous()
    out = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    x, s = _scratch(2, h)
    two_c = torch.tensor(2 * _GELU_C, device=h.device)
    for h_c, out_c in _row_chunks(h, out):
        n = h_c.shape[0]
        x_c, s_c = x[:n].copy_(h_c), s[:n]
        out_c.copy_(_gelu_gate_(s_c, x_c, two_c).mul_(x_c))
    return out


class _GeluTanh(torch.autograd.Function):
    """`_gelu_tanh_forward` with its gradient (the chunked kernel below), for the paths that need one."""

    @staticmethod
    def forward(ctx, h):
        ctx.save_for_backward(h)
        return _gelu_tanh_forward(h)

    @staticmethod
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        return gelu_tanh_backward(grad.to(h.dtype, memory_format=torch.contiguous_format, copy=True), h)[1]


def gelu_tanh(h: torch.Tensor) -> torch.Tensor:
    """The tanh-approximate GELU. On CPU in bfloat16/float16, computed as `h * sigmoid(2u)` (the same function:
    0.5 (1 + tanh u) = sigmoid(2u)) in float32 chunks and rounded once: 1.6-1.8x faster than aten's kernel, whose
    tanh is the slow part, and the same values but for one rounding in ~1e-4 of the elements. The training
    backward recomputes it with the same operations, bit for bit. float32 and other devices: aten's GELU."""
    if not _low_precision_cpu(h):
        return F.gelu(h, approximate="tanh")
    if torch.is_grad_enabled() and h.requires_grad:
        return _GeluTanh.apply(h)
    return _gelu_tanh_forward(h)


class GELUTanh(nn.Module):
    """`nn.GELU(approximate="tanh")` through `gelu_tanh`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu_tanh(x)


def gelu_tanh_backward(grad: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(gelu(h), grad * gelu'(h))` of the tanh-GELU in one chunked float32 pass over h, both in h's dtype: the
    recomputed activation (for the next layer's weight gradient) and the input gradient share the sigmoid. About
    twice as fast on CPU as aten's `gelu` + `gelu_backward` in bfloat16, whose every pass goes to memory; equal to
    them up to float32 rounding, and the activation equal to `gelu_tanh`'s bit for bit. The input gradient is
    written over `grad` (a temporary of the caller's, same shape and dtype as h): one fresh buffer fewer.
    gelu' = s + q s (1 - s), s = sigmoid(2u), q = 2 x u' = 2 sqrt(2/pi) x (1 + 3 * 0.044715 x^2)."""
    if grad.dtype != h.dtype or not grad.is_contiguous():
        grad = grad.to(h.dtype, memory_format=torch.contiguous_format, copy=True)
    a = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    x, s, d = _scratch(3, h)
    two_c = torch.tensor(2 * _GELU_C, device=h.device)
    for h_c, g_c, a_c in _row_chunks(h.contiguous(), grad, a):
        n = h_c.shape[0]
        x_c = x[:n].copy_(h_c)
        s_c, d_c = _gelu_gate_(s[:n], x_c, two_c), d[:n]
        torch.addcmul(two_c, x_c, x_c, value=6 * _GELU_C * _GELU_K, out=d_c).mul_(x_c)  # q
        a_c.copy_(x_c.mul_(s_c))
        d_c.mul_(s_c)  # q s
        d_c.addcmul_(d_c, s_c, value=-1).add_(s_c)  # q s - q s^2 + s
        g_c.copy_(d_c.mul_(g_c))
    return a, grad


class _GeluLinear(torch.autograd.Function):
    """`linear(gelu(h), weight, bias)` (tanh-GELU) as one autograd node that keeps only `h` for the backward and
    recomputes the GELU there: autograd on the separate ops keeps both `h` and `gelu(h)`, the two largest
    activations of a transformer block (4x its width each). On CPU the backward's GELU and its gradient are the
    chunked float32 kernel above (`gelu_tanh_backward`; the recomputed activation is the forward's bit for bit in
    16-bit floats, within float32 rounding of aten's in float32); elsewhere the aten ones."""

    @staticmethod
    def forward(ctx, h, weight, bias):
        # Mlp.act's GELU, so that the forward is the plain modules' bit for bit (with or without a gradient)
        out = linear(gelu_tanh(h), weight, bias)  # under autocast: weight cast as usual
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        h, weight = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])
        g_a = mm(g2, weight.to(grad.dtype)).view(*grad.shape[:-1], -1).to(h.dtype)
        if h.device.type == "cpu" and not torch.compiler.is_compiling():  # compiled: aten's, fused
            a, g_h = gelu_tanh_backward(g_a, h)
        else:
            a = F.gelu(h, approximate="tanh")
            g_h = torch.ops.aten.gelu_backward(g_a, h, approximate="tanh")
        # in the compute dtype (autocast's), then cast to the parameters', as autograd does through the cast
        g_w = mm(g2.t(), a.reshape(-1, a.shape[-1]).to(g2.dtype)).to(weight.dtype)
        g_b = g2.sum(0).to(weight.dtype) if ctx.has_bias else None
        return g_h, g_w, g_b


class Mlp(nn.Module):
    """Linear -> tanh-approximate GELU -> Linear (timm `Mlp` with the same parameter names)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None) -> None:
        super().__init__()
        out_features = out_features or in_features
        self.fc1 = Linear(in_features, hidden_features)
        self.act = GELUTanh()
        self.fc2 = Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self._fused_backward(h):  # training: the GELU output is recomputed in the backward, not kept
            return _GeluLinear.apply(h, self.fc2.weight, self.fc2.bias)
        return self.fc2(self.act(h))

    def _fused_backward(self, h: torch.Tensor) -> bool:
        """A gradient is needed and fc2 / act are the plain modules (not wrapped, e.g. by LoRA, nor hooked)."""
        fc2, act = self.fc2, self.act
        return (
            torch.is_grad_enabled()
            and (h.requires_grad or fc2.weight.requires_grad)
            and type(fc2) in (nn.Linear, Linear)
            and not (fc2._forward_hooks or fc2._forward_pre_hooks)
            and type(act) is GELUTanh
        )


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability `p` (rescaled)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


def t2i_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN-single modulation (PixArt/STDiT): `x * (1 + scale) + shift`, shift/scale broadcast `[B, 1, D]`."""
    return x * (1 + scale) + shift


class _ModulatedLayerNorm(torch.autograd.Function):
    """LayerNorm (no affine) then `* (1 + scale) + shift`, as one autograd node that keeps only the normalised
    tokens and 1/std for the backward: autograd on the separate ops would also keep the LayerNorm's input."""

    @staticmethod
    def forward(ctx, x, shift, scale, eps):
        xn, _, rstd = torch.native_layer_norm(x, (x.shape[-1],), None, None, eps)
        ctx.save_for_backward(xn, rstd, scale)
        ctx.shapes = (shift.shape, scale.shape)
        return torch.mul(xn, 1 + scale).add_(shift)  # the rounding of `t2i_modulate(layer_norm(x), ...)`

    @staticmethod
    def backward(ctx, grad):
        xn, rstd, scale = ctx.saved_tensors
        shift_shape, scale_shape = ctx.shapes
        g_shift = grad.sum_to_size(shift_shape) if ctx.needs_input_grad[1] else None
        g_scale = (grad * xn).sum_to_size(scale_shape) if ctx.needs_input_grad[2] else None
        g_x = None
        if ctx.needs_input_grad[0]:
            # The LayerNorm backward in terms of its output xn: normalising xn itself (mean 0, std 1) has the
            # same Jacobian up to the factor 1/std of the input.
            zero, one = torch.zeros_like(rstd), torch.ones_like(rstd)
            g_xn = (grad * (1 + scale)).to(xn.dtype)  # as autograd casts a gradient to its input's dtype
            g_x = torch.ops.aten.native_layer_norm_backward(
                g_xn, xn, (xn.shape[-1],), zero, one, None, None, [True, False, False]
            )[0].mul_(rstd)
        return g_x, g_shift, g_scale, None


def modulated_layer_norm(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """`t2i_modulate(layer_norm(x), shift, scale)` (LayerNorm over the last dim, no affine parameters) with less
    memory kept for the backward. x `[..., D]`; shift/scale broadcast against it (`[B, 1, D]`, `[B, T', 1, D]`)."""
    return _ModulatedLayerNorm.apply(x, shift, scale, eps)


def per_frame(mod: torch.Tensor, mod_zero: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Per-frame adaLN parameter: `mod` `[B, 1, D]` on generated frames, `mod_zero` `[B, 1, D]` on condition
    frames (`frame_mask [B, T']` False). Returns `[B, T', 1, D]`."""
    return torch.where(frame_mask[:, :, None, None], mod[:, None], mod_zero[:, None])


def layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm over the last dim without affine parameters."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


def modulate_fp32_norm(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """adaLN modulation of DiT/Latte: the LayerNorm runs in float32 (upstream semantics), shift/scale `[B, D]`."""
    dtype = x.dtype
    x = layer_norm(x.to(torch.float32), eps).to(dtype)
    return x * (scale.unsqueeze(1) + 1) + shift.unsqueeze(1)


class T2IFinalLayer(nn.Module):
    """Final layer of PixArt/STDiT: modulated LayerNorm with a learned `scale_shift_table`, then Linear.

    `x` `[B, N, D]`, `t` `[B, D]` (timestep embedding, no SiLU) -> `[B, N, prod(patch) * C_out]`. With a
    per-frame mask `x_mask [B, T']` (True = generate) and `t_zero [B, D]` (the embedding of timestep 0), tokens
    of condition frames are modulated with `t_zero` (Open-Sora 1.2; upstream normalises the already modulated
    tokens a second time on that path, here both paths normalise the block output once).
    """

    def __init__(self, hidden_size: int, num_patch: int, out_channels: int) -> None:
        super().__init__()
        self.linear = Linear(hidden_size, num_patch * out_channels, bias=True)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)
        self.out_channels = out_channels

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        x_mask: torch.Tensor | None = None,
        t_zero: torch.Tensor | None = None,
    ) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        if x_mask is None:
            return self.linear(t2i_modulate(layer_norm(x), shift, scale))
        shift0, scale0 = (self.scale_shift_table[None] + t_zero[:, None]).chunk(2, dim=1)
        shift, scale = per_frame(shift, shift0, x_mask), per_frame(scale, scale0, x_mask)  # [B, T', 1, D]
        xf = layer_norm(x).reshape(x.shape[0], x_mask.shape[1], -1, x.shape[-1])  # [B, T', S, D]
        return self.linear(t2i_modulate(xf, shift, scale).reshape(x.shape))


class FinalLayer(nn.Module):
    """Final layer of DiT/Latte: adaLN (SiLU -> Linear -> shift, scale) with a float32 LayerNorm, then Linear.

    `x` `[B, N, D]`, `c` `[B, D]` -> `[B, N, prod(patch) * C_out]`.
    """

    def __init__(self, hidden_size: int, num_patch: int, out_channels: int) -> None:
        super().__init__()
        self.linear = Linear(hidden_size, num_patch * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate_fp32_norm(x, shift, scale))
