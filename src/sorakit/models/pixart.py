"""PixArt-alpha as Open-Sora 1.0 runs it: a text-to-image DiT with adaLN-single, applied to videos with full
attention over all frames' tokens. STDiT is initialised from its weights (`load_checkpoint`).

Parameter names and constructor arguments are the upstream ones (Open-Sora's `PixArt`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from einops import rearrange

from sorakit.models.base import DiffusionTransformer
from sorakit.models.layers import (
    Attention,
    CaptionEmbedder,
    DropPath,
    Linear,
    Mlp,
    MultiHeadCrossAttention,
    PatchEmbed3D,
    T2IFinalLayer,
    TimestepEmbedder,
    caption_key_mask,
    get_1d_sincos_pos_embed,
    get_2d_sincos_pos_embed,
    layer_norm,
    t2i_modulate,
)

FREEZE_MODES = ("text",)


class PixArtBlock(nn.Module):
    """Self-attention over all tokens, cross-attention to the caption, MLP (adaLN-single modulation)."""

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True)
        self.cross_attn = MultiHeadCrossAttention(hidden_size, num_heads)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, t0: torch.Tensor, y_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """x `[B, N, D]`, y `[B, L, D]`, t0 `[B, 6D]`, y_mask `[B, L]` bool or None -> `[B, N, D]`."""
        B = x.shape[0]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + t0.reshape(B, 6, -1)
        ).chunk(6, dim=1)
        x = x + self.drop_path(gate_msa * self.attn(t2i_modulate(layer_norm(x), shift_msa, scale_msa)))
        x = x + self.cross_attn(x, y, y_mask)
        x = x + self.drop_path(gate_mlp * self.mlp(t2i_modulate(layer_norm(x), shift_mlp, scale_mlp)))
        return x


class PixArt(DiffusionTransformer):
    """PixArt-alpha on `[B, C, T, H, W]` latents conditioned on T5 caption embeddings.

    Same call as STDiT: `forward(x, timestep, y [B, 1, L, Cy], mask [n, L] | None)` ->
    `[B, C_out, T, H, W]`. The spatial position embedding uses PixArt's `base_size` rescaling
    (base_size = sqrt of the built number of spatial tokens); unless `no_temporal_pos_emb`, a temporal
    sin-cos embedding is added to the tokens too (note: for T = 1 that adds cos(0) = 1 to half the channels,
    exactly as upstream).
    Upstream-only keys (`dtype`, `enable_flashattn`, `enable_layernorm_kernel`, `enable_sequence_parallelism`,
    `freeze`) are accepted so Open-Sora configs build unchanged; see `DiffusionTransformer`.
    """

    def __init__(
        self,
        input_size: tuple[int, int, int] = (1, 32, 32),
        in_channels: int = 4,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        pred_sigma: bool = True,
        drop_path: float = 0.0,
        no_temporal_pos_emb: bool = False,
        caption_channels: int = 4096,
        model_max_length: int = 120,
        space_scale: float = 1.0,
        time_scale: float = 1.0,
        freeze: str | None = None,
        dtype: Any = None,
        enable_flashattn: bool = False,
        enable_layernorm_kernel: bool = False,
        enable_sequence_parallelism: bool = False,
    ) -> None:
        super().__init__()
        self._check_upstream_flags(enable_sequence_parallelism, freeze, FREEZE_MODES)
        self.config = dict(
            input_size=list(input_size), in_channels=in_channels, patch_size=list(patch_size),
            hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            class_dropout_prob=class_dropout_prob, pred_sigma=pred_sigma, drop_path=drop_path,
            no_temporal_pos_emb=no_temporal_pos_emb, caption_channels=caption_channels,
            model_max_length=model_max_length, space_scale=space_scale, time_scale=time_scale,
        )  # fmt: skip
        self.input_size = tuple(input_size)
        self.patch_size = tuple(patch_size)
        self.in_channels = in_channels
        self.pred_sigma = pred_sigma
        self.out_channels = in_channels * 2 if pred_sigma else in_channels
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.depth = depth
        self.mlp_ratio = mlp_ratio
        self.caption_channels = caption_channels
        self.model_max_length = model_max_length
        self.space_scale = space_scale
        self.time_scale = time_scale
        self.no_temporal_pos_emb = no_temporal_pos_emb
        nt, nh, nw = self._built_grid
        self.num_temporal = nt
        self.num_spatial = nh * nw
        self.base_size = int(math.sqrt(self.num_spatial))

        self.x_embedder = PatchEmbed3D(self.patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), Linear(hidden_size, 6 * hidden_size, bias=True))
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, class_dropout_prob, model_max_length)
        self.register_buffer(
            "pos_embed", get_2d_sincos_pos_embed(hidden_size, nh, nw, space_scale, self.base_size)
        )
        self.register_buffer("pos_embed_temporal", get_1d_sincos_pos_embed(hidden_size, nt, time_scale))
        rates = [drop_path * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList(
            [
                PixArtBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio, drop_path=rates[i])
                for i in range(depth)
            ]
        )
        self.final_layer = T2IFinalLayer(hidden_size, self.patch_size[0] * self.patch_size[1] * self.patch_size[2],
                                         self.out_channels)  # fmt: skip
        self.initialize_weights()
        if freeze is not None:
            self.freeze(freeze)

    def initialize_weights(self) -> None:
        """Upstream init: xavier Linear layers, N(0, 0.02) embedding MLPs, zero cross-attn and final outputs."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.t_block[1].weight, std=0.02)
        nn.init.normal_(self.y_embedder.y_proj.fc1.weight, std=0.02)
        nn.init.normal_(self.y_embedder.y_proj.fc2.weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.cross_attn.proj.weight, 0)
            nn.init.constant_(block.cross_attn.proj.bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        force_drop_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x `[B, C, T, H, W]`, timestep `[B]`, y `[B, 1, L, Cy]`, mask `[n, L]` or None -> `[B, C_out, T, H, W]`."""
        B = x.shape[0]
        grid = self.patch_grid(x)
        nt, nh, nw = grid

        x = self.x_embedder(x)  # [B, N, D]
        x = rearrange(x, "B (T S) D -> B T S D", T=nt)
        x = x + self._spatial_pos_embed(self.pos_embed, nh, nw, self.space_scale, self.base_size, x)
        if not self.no_temporal_pos_emb:
            x = rearrange(x, "B T S D -> B S T D")
            x = x + self._temporal_pos_embed(self.pos_embed_temporal, nt, self.time_scale, x)
            x = rearrange(x, "B S T D -> B (T S) D")
        else:
            x = rearrange(x, "B T S D -> B (T S) D")

        t = self.t_embedder(timestep, dtype=x.dtype)
        t0 = self.t_block(t)
        y = self.y_embedder(y, self.training, force_drop_ids).squeeze(1)  # [B, L, D]
        y_mask = caption_key_mask(mask, B)

        for block in self.blocks:
            x = self._run_block(block, x, y, t0, y_mask)

        x = self.final_layer(x, t)
        return self.unpatchify(x, grid)
