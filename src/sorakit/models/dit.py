"""DiT as Open-Sora 1.0 runs it: full attention over all video tokens with adaLN-Zero conditioning on
timestep + (pooled caption | class label). Also the base of Latte (`latte.py`).

Conditioning is chosen by `condition`: `"text"` (a pooled caption embedding `y` `[B, 1, 1, caption_channels]`,
e.g. CLIP's 512-d) or `"label_<num_classes>"` (int64 labels `y` `[B]`, e.g. `"label_1000"` for ImageNet,
`"label_101"` for UCF101; the null label for guidance is index `num_classes`).
LayerNorms of the modulation run in float32 (upstream semantics). Parameter names are the upstream ones.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from einops import rearrange

from sorakit.models.base import DiffusionTransformer
from sorakit.models.layers import (
    Attention,
    CaptionEmbedder,
    FinalLayer,
    LabelEmbedder,
    Linear,
    Mlp,
    PatchEmbed3D,
    TimestepEmbedder,
    get_1d_sincos_pos_embed,
    get_2d_sincos_pos_embed,
    modulate_fp32_norm,
)


class DiTBlock(nn.Module):
    """adaLN-Zero block: gated self-attention and gated MLP on float32-normalised, modulated tokens."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x `[B, N, D]`, c `[B, D]` -> `[B, N, D]`."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(
            6, dim=1
        )
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate_fp32_norm(x, shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate_fp32_norm(x, shift_mlp, scale_mlp))
        return x


def parse_condition(condition: str) -> int | None:
    """`"text"` -> None; `"label_1000"` -> 1000."""
    if condition.startswith("label"):
        try:
            return int(condition.split("_")[-1])
        except ValueError:
            raise ValueError(f"condition {condition!r}: expected 'text' or 'label_<num_classes>'") from None
    return None


class DiT(DiffusionTransformer):
    """Full-attention DiT on `[B, C, T, H, W]` latents.

    `forward(x, timestep, y, mask=None)` -> `[B, C_out, T, H, W]` (C_out = 2C when `learn_sigma`). `mask`
    is accepted for a uniform call signature and ignored (the caption is one pooled token).
    Upstream-only keys (`dtype`, `enable_flashattn`, `enable_layernorm_kernel`, `enable_sequence_parallelism`)
    are accepted so Open-Sora configs build unchanged; see `DiffusionTransformer`.
    """

    variance_arg = "learn_sigma"
    scales_positions = False

    def __init__(
        self,
        input_size: tuple[int, int, int] = (16, 32, 32),
        in_channels: int = 4,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        learn_sigma: bool = True,
        condition: str = "text",
        no_temporal_pos_emb: bool = False,
        caption_channels: int = 512,
        model_max_length: int = 77,
        dtype: Any = None,
        enable_flashattn: bool = False,
        enable_layernorm_kernel: bool = False,
        enable_sequence_parallelism: bool = False,
    ) -> None:
        super().__init__()
        self._check_upstream_flags(enable_sequence_parallelism)
        self.config = dict(
            input_size=list(input_size), in_channels=in_channels, patch_size=list(patch_size),
            hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            class_dropout_prob=class_dropout_prob, learn_sigma=learn_sigma, condition=condition,
            no_temporal_pos_emb=no_temporal_pos_emb, caption_channels=caption_channels,
            model_max_length=model_max_length,
        )  # fmt: skip
        self.input_size = tuple(input_size)
        self.patch_size = tuple(patch_size)
        self.in_channels = in_channels
        self.learn_sigma = learn_sigma
        self.pred_sigma = learn_sigma
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.depth = depth
        self.mlp_ratio = mlp_ratio
        self.condition = condition
        self.num_classes = parse_condition(condition)
        self.use_text_encoder = self.num_classes is None
        self.caption_channels = caption_channels
        self.model_max_length = model_max_length
        self.no_temporal_pos_emb = no_temporal_pos_emb
        nt, nh, nw = self._built_grid
        self.num_temporal = nt
        self.num_spatial = nh * nw

        self.register_buffer("pos_embed_spatial", get_2d_sincos_pos_embed(hidden_size, nh, nw))
        self.register_buffer("pos_embed_temporal", get_1d_sincos_pos_embed(hidden_size, nt))
        self.x_embedder = PatchEmbed3D(self.patch_size, in_channels, hidden_size)
        if self.use_text_encoder:
            # one pooled caption token (CLIP)
            self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, class_dropout_prob, token_num=1)
        else:
            self.y_embedder = LabelEmbedder(self.num_classes, hidden_size, class_dropout_prob)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, self.patch_size[0] * self.patch_size[1] * self.patch_size[2],
                                      self.out_channels)  # fmt: skip
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Upstream init: xavier Linear layers, zero adaLN modulation and output layers."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)
        if self.use_text_encoder:
            nn.init.normal_(self.y_embedder.y_proj.fc1.weight, std=0.02)
            nn.init.normal_(self.y_embedder.y_proj.fc2.weight, std=0.02)

    def embed_condition(
        self, timestep: torch.Tensor, y: torch.Tensor, dtype: torch.dtype, force_drop_ids: torch.Tensor | None
    ) -> torch.Tensor:
        """Timestep + caption/label embedding `[B, D]`."""
        t = self.t_embedder(timestep, dtype=dtype)
        if self.use_text_encoder:
            if y.ndim != 4 or y.shape[1] != 1 or y.shape[2] != 1:
                raise ValueError(
                    f"text-conditioned DiT/Latte expects y [B, 1, 1, C] (pooled), got {list(y.shape)}"
                )
            y = self.y_embedder(y, self.training, force_drop_ids)[:, 0, 0]  # [B, D]
        else:
            if y.dtype not in (torch.int64, torch.int32):
                raise ValueError(
                    f"class-conditioned DiT/Latte expects int64 labels y [B], got dtype {y.dtype}"
                )
            y = self.y_embedder(y.reshape(-1).long(), self.training, force_drop_ids)
        return t + y

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        force_drop_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x `[B, C, T, H, W]`, timestep `[B]`, y `[B, 1, 1, C]` pooled caption or `[B]` labels -> `[B, C_out, T, H, W]`."""
        grid = self.patch_grid(x)
        nt, nh, nw = grid
        x = self.x_embedder(x)
        x = rearrange(x, "B (T S) D -> B T S D", T=nt)
        x = x + self._spatial_pos_embed(self.pos_embed_spatial, nh, nw, 1.0, None, x)
        if not self.no_temporal_pos_emb:
            x = rearrange(x, "B T S D -> B S T D")
            x = x + self._temporal_pos_embed(self.pos_embed_temporal, nt, 1.0, x)
            x = rearrange(x, "B S T D -> B (T S) D")
        else:
            x = rearrange(x, "B T S D -> B (T S) D")

        c = self.embed_condition(timestep, y, x.dtype, force_drop_ids)
        for block in self.blocks:
            x = self._run_block(block, x, c)
        x = self.final_layer(x, c)
        return self.unpatchify(x, grid)
