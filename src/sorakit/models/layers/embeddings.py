"""Embeddings shared by STDiT, PixArt, DiT and Latte: patches, timesteps, captions, labels, sin-cos positions.

Parameter names follow Open-Sora 1.0 (`proj`, `mlp.0`, `y_proj.fc1`, `y_embedding`, `embedding_table`) so
upstream state dicts load unchanged.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn

from sorakit.models.layers.blocks import Mlp
from sorakit.models.layers.linear import Linear


class PatchEmbed3D(nn.Module):
    """Video -> tokens with a Conv3d whose kernel equals its stride.

    `[B, C, T, H, W]` -> `[B, N, D]` with N = T'*H'*W' tokens in (t, h, w) row-major order.
    """

    def __init__(self, patch_size: tuple[int, int, int], in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # [B, D, T', H', W']
        return x.flatten(2).transpose(1, 2)


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep features `[B] -> [B, dim]`, laid out `[cos | sin]`.

    Always computed in float32, as upstream does even for float64 models (the caller casts the result).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
    freqs = freqs.to(device=t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Timesteps `[B]` -> `[B, D]`: float32 sinusoidal features -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        t_freq = timestep_features(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(dtype))


class HorizonEmbedder(TimestepEmbedder):
    """The length a clip's motion is planned for -> `[B, D]`, added to the timestep embedding.

    A clip of T frames may open a longer video (a loop's first segment opens a 40-frame video): the model is
    told the ratio ``horizon / T >= 1`` so it can pace the motion for the whole length. A timestep embedder of
    ``100 x log2`` of the ratio (so ratios 1-8 span the low frequencies) whose output layer the model starts at
    zero, so a model that gains the embedder computes exactly what it computed before."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 64) -> None:
        super().__init__(hidden_size, frequency_embedding_size)

    def forward(self, ratio: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return super().forward(100.0 * torch.log2(ratio.float().clamp(min=1.0)), dtype)


class CaptionEmbedder(nn.Module):
    """Caption embeddings `[B, 1, L, Cy]` -> `[B, 1, L, D]` through a tanh-GELU MLP.

    `y_embedding` `[L, Cy]` is the learned null caption (a persistent buffer, as upstream). In training
    mode each sample's caption is replaced by it with probability `uncond_prob` (classifier-free guidance
    dropout); `force_drop_ids` `[B]` (1 = drop) forces the choice.
    """

    def __init__(self, in_channels: int, hidden_size: int, uncond_prob: float, token_num: int = 120) -> None:
        super().__init__()
        self.y_proj = Mlp(in_channels, hidden_size, hidden_size)
        self.register_buffer("y_embedding", torch.randn(token_num, in_channels) / in_channels**0.5)
        self.uncond_prob = uncond_prob

    def token_drop(self, caption: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if caption.shape[2:] != self.y_embedding.shape:
            raise ValueError(
                f"caption dropout needs captions of shape [B, 1, {self.y_embedding.shape[0]}, "
                f"{self.y_embedding.shape[1]}] (the null caption's), got {list(caption.shape)}"
            )
        if force_drop_ids is None:
            drop_ids = torch.rand(caption.shape[0], device=caption.device) < self.uncond_prob
        else:
            drop_ids = force_drop_ids.to(caption.device) == 1
        return torch.where(drop_ids[:, None, None, None], self.y_embedding.to(caption.dtype), caption)

    def forward(
        self,
        caption: torch.Tensor,
        train: bool,
        force_drop_ids: torch.Tensor | None = None,
        length: int | None = None,
    ) -> torch.Tensor:
        """`length`: project only the first `length` caption tokens (those after it are padding nobody uses)."""
        if (train and self.uncond_prob > 0) or force_drop_ids is not None:
            caption = self.token_drop(caption, force_drop_ids)
        if length is not None:
            caption = caption[:, :, :length]
        return self.y_proj(caption)


class LabelEmbedder(nn.Module):
    """Class labels `[B]` (int64) -> `[B, D]`; index `num_classes` is the null label used for guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        use_cfg_embedding = int(dropout_prob > 0)
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids.to(labels.device) == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(
        self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


# ---------------------------------------------------------------------------------------------------------
# Sin-cos position embeddings. Computed with numpy in float64 from float32 grid positions and returned as
# float32, which is bit for bit what Open-Sora 1.0 stores in its buffers (a float64 model uses these
# float32-rounded values too).
# ---------------------------------------------------------------------------------------------------------


def _sincos_from_positions(dim: int, pos: np.ndarray) -> np.ndarray:
    """`[M]` positions -> `[M, dim]` laid out `[sin | cos]`, frequencies 10000^(-i/(dim/2))."""
    assert dim % 2 == 0
    omega = np.arange(dim // 2, dtype=np.float64)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


@lru_cache(maxsize=64)
def _sincos_2d_cached(
    dim: int, grid_h: int, grid_w: int, scale: float, base_size: int | None
) -> torch.Tensor:
    pos_h = np.arange(grid_h, dtype=np.float32) / np.float32(scale)
    pos_w = np.arange(grid_w, dtype=np.float32) / np.float32(scale)
    if base_size is not None:
        pos_h *= np.float32(base_size / grid_h)
        pos_w *= np.float32(base_size / grid_w)
    # Token order is (h, w) row-major; the first half of the channels encodes the column (w) index.
    w_coord = np.tile(pos_w, grid_h)
    h_coord = np.repeat(pos_h, grid_w)
    emb = np.concatenate(
        [_sincos_from_positions(dim // 2, w_coord), _sincos_from_positions(dim // 2, h_coord)], 1
    )
    return torch.from_numpy(emb).float().unsqueeze(0)


def get_2d_sincos_pos_embed(
    dim: int, grid_h: int, grid_w: int, scale: float = 1.0, base_size: int | None = None
) -> torch.Tensor:
    """Spatial sin-cos embedding `[1, grid_h*grid_w, dim]` (float32).

    Channels `[0, dim/2)` encode the column index, `[dim/2, dim)` the row index; positions are
    `index / scale`, and with `base_size` (PixArt) additionally rescaled by `base_size / grid`.
    """
    return _sincos_2d_cached(int(dim), int(grid_h), int(grid_w), float(scale), base_size).clone()


@lru_cache(maxsize=64)
def _sincos_1d_cached(dim: int, length: int, scale: float) -> torch.Tensor:
    pos = np.arange(0, length)[..., None] / scale
    return torch.from_numpy(_sincos_from_positions(dim, pos)).float().unsqueeze(0)


def get_1d_sincos_pos_embed(dim: int, length: int, scale: float = 1.0) -> torch.Tensor:
    """Temporal sin-cos embedding `[1, length, dim]` (float32) of positions `frame / scale`."""
    return _sincos_1d_cached(int(dim), int(length), float(scale)).clone()
