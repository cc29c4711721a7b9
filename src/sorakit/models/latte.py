"""Latte as Open-Sora 1.0 runs it: DiT blocks alternating between spatial attention (even blocks, inside each
frame) and temporal attention (odd blocks, across frames at each position).

Same parameters and constructor as `DiT` (the upstream class subclasses DiT too); only the forward differs:
no temporal embedding after the patch embedding, instead the temporal sin-cos embedding is added to the
residual stream right before block 1 (the first temporal block). `no_temporal_pos_emb` is unused, as upstream.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat

from sorakit.models.dit import DiT


class Latte(DiT):
    """Latte on `[B, C, T, H, W]` latents; `forward(x, timestep, y, mask=None)` as `DiT`."""

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        force_drop_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x `[B, C, T, H, W]`, timestep `[B]`, y pooled caption `[B, 1, 1, C]` or labels `[B]` -> `[B, C_out, T, H, W]`."""
        grid = self.patch_grid(x)
        nt, nh, nw = grid
        S = nh * nw
        x = self.x_embedder(x)
        x = rearrange(x, "B (T S) D -> B T S D", T=nt)
        x = x + self._spatial_pos_embed(self.pos_embed_spatial, nh, nw, 1.0, None, x)
        x = rearrange(x, "B T S D -> B (T S) D")

        c = self.embed_condition(timestep, y, x.dtype, force_drop_ids)  # [B, D]
        c_spatial = repeat(c, "B D -> (B T) D", T=nt)
        c_temporal = repeat(c, "B D -> (B S) D", S=S)

        for i, block in enumerate(self.blocks):
            if i % 2 == 0:  # spatial
                x = rearrange(x, "B (T S) D -> (B T) S D", T=nt)
                x = self._run_block(block, x, c_spatial)
                x = rearrange(x, "(B T) S D -> B (T S) D", T=nt)
            else:  # temporal
                x = rearrange(x, "B (T S) D -> (B S) T D", T=nt)
                if i == 1:
                    x = x + self._temporal_pos_embed(self.pos_embed_temporal, nt, 1.0, x)
                x = self._run_block(block, x, c_temporal)
                x = rearrange(x, "(B S) T D -> B (T S) D", S=S)

        x = self.final_layer(x, c)
        return self.unpatchify(x, grid)
