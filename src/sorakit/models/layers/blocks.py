"""Small building blocks shared unchanged by the four architectures: MLP, stochastic depth, modulation,
final layers. Names follow Open-Sora 1.0 (timm's `Mlp` keys `fc1`/`fc2`, `scale_shift_table`,
`adaLN_modulation.1`, `norm_final`, `linear`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Mlp(nn.Module):
    """Linear -> tanh-approximate GELU -> Linear (timm `Mlp` with the same parameter names)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None) -> None:
        super().__init__()
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


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
        self.linear = nn.Linear(hidden_size, num_patch * out_channels, bias=True)
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
        self.linear = nn.Linear(hidden_size, num_patch * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate_fp32_norm(x, shift, scale))
