"""STDiT: the spatial-temporal diffusion transformer of Open-Sora 1.0 (PixArt-alpha blocks + temporal attention).

Read top to bottom: `STDiTBlock` (one layer) then `STDiT` (embeddings, blocks, final layer). Parameter
names and constructor arguments are the upstream ones, so an official checkpoint loads with
`load_state_dict(sd, strict=True)`.

Block (adaLN-single):
  1. spatial self-attention inside each frame on the modulated LayerNorm, gated by gate_msa;
  2. temporal self-attention across frames at each spatial position on the raw residual (the temporal
     position embedding is added to its input in block 0 only), gated by the SAME gate_msa;
  3. cross-attention to the caption tokens (no norm, no gate);
  4. MLP on the modulated LayerNorm, gated by gate_mlp.

Reference frames (Open-Sora 1.1/1.2's per-frame mask, `x_mask [B, T]`, True = generate): condition frames are
clean latents, so every modulation and gate of their tokens (in each block and in the final layer) uses the
adaLN parameters of timestep 0 instead of t -- the same `t_block`, no new parameters. Without `x_mask` the
computation is exactly Open-Sora 1.0's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from einops import rearrange

from sorakit.models.base import DiffusionTransformer
from sorakit.models.layers import (
    Attention,
    CaptionEmbedder,
    DropPath,
    HorizonEmbedder,
    Linear,
    Mlp,
    MultiHeadCrossAttention,
    PatchEmbed3D,
    T2IFinalLayer,
    TimestepEmbedder,
    get_1d_sincos_pos_embed,
    get_2d_sincos_pos_embed,
    modulated_layer_norm,
    per_frame,
    trimmed_caption_mask,
)

FREEZE_MODES = ("not_temporal", "text")


def _norm_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, num_frames: int
) -> torch.Tensor:
    """t2i_modulate(layer_norm(x)) of tokens `x [B, T'*S, D]` by `[B, 1, D]` (one per sample) or `[B, T', 1, D]`
    (per frame)."""
    if shift.dim() == 3:
        return modulated_layer_norm(x, shift, scale)
    x = rearrange(x, "B (T S) D -> B T S D", T=num_frames)
    return rearrange(modulated_layer_norm(x, shift, scale), "B T S D -> B (T S) D")


def _gated_residual(
    x: torch.Tensor, gate: torch.Tensor, out: torch.Tensor, num_frames: int, drop_path: nn.Module
) -> torch.Tensor:
    """`x + drop_path(gate * out)` for tokens `[B, T'*S, D]`, gate `[B, 1, D]` or `[B, T', 1, D]`; without
    stochastic depth one `addcmul` pass (the same rounding for both gate shapes)."""
    if not isinstance(drop_path, nn.Identity):
        return x + drop_path(_gate(gate, out, num_frames))
    if gate.dim() == 3:
        return torch.addcmul(x, out, gate)  # out (autocast's dtype) first: 1.5x faster than gate first
    split = "B (T S) D -> B T S D"
    res = torch.addcmul(rearrange(x, split, T=num_frames), rearrange(out, split, T=num_frames), gate)
    return rearrange(res, "B T S D -> B (T S) D")


def _gate(gate: torch.Tensor, x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """gate * x for tokens `x [B, T'*S, D]`, gate `[B, 1, D]` or `[B, T', 1, D]`."""
    if gate.dim() == 3:
        return gate * x
    x = rearrange(x, "B (T S) D -> B T S D", T=num_frames)
    return rearrange(gate * x, "B T S D -> B (T S) D")


def token_frame_mask(x_mask: torch.Tensor, batch: int, num_frames: int, patch_t: int) -> torch.Tensor:
    """Latent-frame mask `[B, T]` (True = generate) -> token-frame mask `[B, T']` with T = T' * patch_t.

    A token spanning several latent frames (temporal patch > 1) counts as generated when any of its frames is:
    its output carries generated frames, so it must be modulated with the current timestep.
    """
    expected = (batch, num_frames * patch_t)
    if tuple(x_mask.shape) != expected:
        raise ValueError(f"x_mask must have shape [B, T] = {list(expected)}, got {list(x_mask.shape)}")
    return x_mask.to(torch.bool).reshape(batch, num_frames, patch_t).any(dim=-1)


class STDiTBlock(nn.Module):
    """One STDiT layer on tokens `[B, T'*S, D]` laid out (t, s) with S = H'*W'."""

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        # Registration order = upstream state-dict order.
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True)
        self.cross_attn = MultiHeadCrossAttention(hidden_size, num_heads)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.attn_temp = Attention(hidden_size, num_heads, qkv_bias=True)

    def modulation(
        self, t0: torch.Tensor, x_mask: torch.Tensor | None = None, t0_zero: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The six adaLN tensors (shift/scale/gate of attention, then of the MLP) for t0 `[B, 6D]`: each
        `[B, 1, D]`, or `[B, T', 1, D]` per frame with x_mask `[B, T']` (condition frames use t0_zero)."""
        B = t0.shape[0]
        mods = (self.scale_shift_table[None] + t0.reshape(B, 6, -1)).chunk(6, dim=1)
        if x_mask is not None:
            zero = (self.scale_shift_table[None] + t0_zero.reshape(B, 6, -1)).chunk(6, dim=1)
            mods = tuple(per_frame(m, z, x_mask) for m, z in zip(mods, zero))
        return mods

    def modulated_input(
        self,
        x: torch.Tensor,
        t0: torch.Tensor,
        num_frames: int,
        x_mask: torch.Tensor | None = None,
        t0_zero: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What the spatial attention of this block sees, `[B, N, D]`: LayerNorm(x) shifted and scaled by the
        timestep's modulation (step caching measures how much it changes between steps)."""
        shift_msa, scale_msa = self.modulation(t0, x_mask, t0_zero)[:2]
        return _norm_modulate(x, shift_msa, scale_msa, num_frames)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        t0: torch.Tensor,
        y_mask: torch.Tensor | None,
        tpe: torch.Tensor | None,
        num_frames: int,
        x_mask: torch.Tensor | None = None,
        t0_zero: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x `[B, N, D]`, y `[B, L, D]` caption tokens, t0 `[B, 6D]`, y_mask `[B, L]` bool or None,
        tpe `[1, T', D]` or None, num_frames = T', x_mask `[B, T']` bool (True = generate) or None,
        t0_zero `[B, 6D]` (the t_block output at timestep 0; needed with x_mask). Returns `[B, N, D]`."""
        B = x.shape[0]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(t0, x_mask, t0_zero)
        nt = num_frames

        # spatial: attention inside each frame
        x_s = _norm_modulate(x, shift_msa, scale_msa, nt)
        x_s = rearrange(x_s, "B (T S) D -> (B T) S D", T=num_frames)
        x_s = self.attn(x_s)
        x_s = rearrange(x_s, "(B T) S D -> B (T S) D", T=num_frames)
        x = _gated_residual(x, gate_msa, x_s, nt, self.drop_path)

        # temporal: attention across frames at each spatial position; no norm, reuses gate_msa
        x_t = rearrange(x, "B (T S) D -> (B S) T D", T=num_frames)
        if tpe is not None:
            x_t = x_t + tpe
        x_t = self.attn_temp(x_t)
        x_t = rearrange(x_t, "(B S) T D -> B (T S) D", B=B)
        x = _gated_residual(x, gate_msa, x_t, nt, self.drop_path)

        # cross-attention to the caption: no norm, no gate
        x = x + self.cross_attn(x, y, y_mask)

        # MLP
        x_m = _norm_modulate(x, shift_mlp, scale_mlp, nt)
        x = _gated_residual(x, gate_mlp, self.mlp(x_m), nt, self.drop_path)
        return x


class STDiT(DiffusionTransformer):
    """Spatial-temporal DiT conditioned on T5 caption embeddings (Open-Sora 1.0).

    `forward(x [B, C, T, H, W], timestep [B], y [B, 1, L, Cy], mask [n, L] | None, x_mask [B, T] | None)` ->
    `[B, C_out, T, H, W]` with C_out = 2C when `pred_sigma` (channels [0, C) = noise, [C, 2C) = variance
    interpolation values). Any T, H, W divisible by the patch is accepted; position embeddings for sizes
    other than `input_size` are computed on the fly. By default (Open-Sora 1.0) grid positions are
    `index / space_scale` on every grid, so a larger grid sees positions it never saw in training. With
    `base_size` (tokens; Open-Sora 1.1 STDiT2 / PixArt style) each axis of any grid is rescaled by
    `base_size / grid` to span the same extent as a `base_size`-wide grid, so a model trained at one size
    sees the spacing it was trained with at every resolution and aspect ratio.

    `no_temporal_pos_emb` is accepted for config compatibility; as in upstream STDiT it does not switch the
    temporal position embedding off.
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
        base_size: int | None = None,
        horizon: bool = False,
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
        if base_size is not None:  # only when set, so configs of upstream models stay as they were
            self.config["base_size"] = int(base_size)
        self.base_size = int(base_size) if base_size is not None else None
        if horizon:  # likewise: a sorakit extension, absent from upstream configs and state dicts
            self.config["horizon"] = True
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

        self.register_buffer(
            "pos_embed", get_2d_sincos_pos_embed(hidden_size, nh, nw, space_scale, self.base_size)
        )
        self.register_buffer("pos_embed_temporal", get_1d_sincos_pos_embed(hidden_size, nt, time_scale))

        self.x_embedder = PatchEmbed3D(self.patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), Linear(hidden_size, 6 * hidden_size, bias=True))
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, class_dropout_prob, model_max_length)
        self.h_embedder = HorizonEmbedder(hidden_size) if horizon else None
        rates = [drop_path * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList(
            [
                STDiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio, drop_path=rates[i])
                for i in range(depth)
            ]
        )
        self.final_layer = T2IFinalLayer(hidden_size, self.patch_size[0] * self.patch_size[1] * self.patch_size[2],
                                         self.out_channels)  # fmt: skip
        self.initialize_weights()
        if freeze is not None:
            self.freeze(freeze)

    def initialize_weights(self) -> None:
        """Upstream init: xavier Linear layers, N(0, 0.02) embedding MLPs, zero cross-attn/temporal/final outputs."""

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
        if self.h_embedder is not None:
            nn.init.normal_(self.h_embedder.mlp[0].weight, std=0.02)
            nn.init.constant_(self.h_embedder.mlp[2].weight, 0)  # adds nothing until trained
            nn.init.constant_(self.h_embedder.mlp[2].bias, 0)
        self.initialize_temporal()

    def initialize_temporal(self) -> None:
        """Zero the temporal attention's output projection: the block then computes what PixArt computes."""
        for block in self.blocks:
            nn.init.constant_(block.attn_temp.proj.weight, 0)
            nn.init.constant_(block.attn_temp.proj.bias, 0)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        force_drop_ids: torch.Tensor | None = None,
        x_mask: torch.Tensor | None = None,
        step_cache: Callable[..., torch.Tensor] | None = None,
        horizon: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """x `[B, C, T, H, W]`, timestep `[B]`, y `[B, 1, L, Cy]`, mask `[n, L]` 0/1 (n divides B) or None,
        force_drop_ids `[B]` (1 = replace the caption by the null caption), x_mask `[B, T]` bool over latent
        frames (True = generate, False = condition frame: modulated as timestep 0) or None (all generated,
        Open-Sora 1.0). `step_cache(x, signal, run_blocks)` (a `sorakit.diffusion.step_cache.StepCache`), when
        given, decides whether the block stack runs at this sampling step. `horizon` (a model built with
        ``horizon=True``): the frames the clip's motion is planned for, a number or `[B]` (None: the clip's own
        T latent frames); other models ignore it. Returns `[B, C_out, T, H, W]`."""
        B = x.shape[0]
        grid = self.patch_grid(x)
        nt, nh, nw = grid

        num_frames = x.shape[2]
        x = self.x_embedder(x)  # [B, N, D]
        x = rearrange(x, "B (T S) D -> B T S D", T=nt)
        x = x + self._spatial_pos_embed(self.pos_embed, nh, nw, self.space_scale, self.base_size, x)
        x = rearrange(x, "B T S D -> B (T S) D")

        h = self._horizon_embed(horizon, B, num_frames, x)  # [B, D] or None
        t = self.t_embedder(timestep, dtype=x.dtype)  # [B, D]
        t = t if h is None else t + h
        t0 = self.t_block(t)  # [B, 6D]
        y_mask, y_len = trimmed_caption_mask(mask, B)  # padding after the last used token is cut off
        y = self.y_embedder(y, self.training, force_drop_ids, length=y_len).squeeze(1)  # [B, L', D]
        tpe = self._temporal_pos_embed(self.pos_embed_temporal, nt, self.time_scale, x)
        frame_mask = t_zero = t0_zero = None
        if x_mask is not None:
            frame_mask = token_frame_mask(x_mask.to(x.device), B, nt, self.patch_size[0])
            t_zero = self.t_embedder(torch.zeros_like(timestep), dtype=x.dtype)  # [B, D]
            t_zero = t_zero if h is None else t_zero + h
            t0_zero = self.t_block(t_zero)

        extra = () if frame_mask is None else (frame_mask, t0_zero)

        def run_blocks(h: torch.Tensor) -> torch.Tensor:
            for i, block in enumerate(self.blocks):
                h = self._run_block(block, h, y, t0, y_mask, tpe if i == 0 else None, nt, *extra)
            return h

        if step_cache is None:
            x = run_blocks(x)
        else:  # the cache runs the blocks, or reuses their last residual (sorakit.diffusion.step_cache)
            x = step_cache(x, self.blocks[0].modulated_input(x, t0, nt, *extra), run_blocks)

        x = self.final_layer(x, t, frame_mask, t_zero)  # [B, N, prod(patch) * C_out]
        return self.unpatchify(x, grid)

    def _horizon_embed(
        self, horizon: torch.Tensor | float | None, batch: int, num_frames: int, like: torch.Tensor
    ) -> torch.Tensor | None:
        """The horizon embedding `[B, D]` (None without an embedder): ratio horizon / T, 1 when not given."""
        if self.h_embedder is None:
            return None
        if horizon is None:
            ratio = torch.ones(batch, device=like.device)
        else:
            ratio = torch.as_tensor(horizon, dtype=torch.float32, device=like.device).reshape(-1) / num_frames
            ratio = ratio.expand(batch) if ratio.numel() == 1 else ratio
        return self.h_embedder(ratio, dtype=like.dtype)
