"""What every sorakit diffusion transformer shares: its constructor config, gradient checkpointing switched
from outside, patch-grid bookkeeping, and the save_pretrained / from_pretrained methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.utils.checkpoint
from einops import rearrange

from sorakit.models.layers import get_1d_sincos_pos_embed, get_2d_sincos_pos_embed
from sorakit.models.pretrained import (
    constructor_kwargs,
    load_weights,
    read_model_config,
    read_weights,
    save_pretrained,
)


class DiffusionTransformer(nn.Module):
    """Base class of STDiT, PixArt, DiT and Latte (single-device model code, no distributed calls).

    Subclasses set `self.config` (the constructor keyword arguments, JSON-able), `in_channels`,
    `out_channels`, `patch_size`, `input_size`, `hidden_size` and `blocks`.
    """

    config: dict[str, Any]
    gradient_checkpointing: bool = False
    # What the output means ("epsilon" or "flow", see sorakit.models.pretrained); set by whoever builds or
    # loads the model, saved in config.json. Upstream checkpoints all predict the noise.
    prediction_type: str = "epsilon"
    # The constructor argument that switches the learned variance on (upstream names differ per family).
    variance_arg: str = "pred_sigma"
    # Whether the constructor takes `space_scale` / `time_scale` (position-embedding scales).
    scales_positions: bool = True
    preset: str | None = None

    # Upstream constructor keys accepted so that Open-Sora configs build unchanged, without effect here:
    # `dtype` (precision is set by the caller: `.to(dtype)` / autocast), `enable_flashattn` and
    # `enable_layernorm_kernel` (SDPA picks its kernels), `enable_sequence_parallelism` (must be False:
    # sequence parallelism is applied from `sorakit.parallel`). `freeze` sets requires_grad as upstream.
    def _check_upstream_flags(
        self, enable_sequence_parallelism: bool, freeze: str | None = None, freeze_modes: tuple[str, ...] = ()
    ) -> None:
        if enable_sequence_parallelism:
            raise ValueError(
                "enable_sequence_parallelism: model code is single-device; apply sequence parallelism from "
                "sorakit.parallel instead"
            )
        if freeze is not None and freeze not in freeze_modes:
            raise ValueError(
                f"freeze={freeze!r}: expected one of {', '.join(freeze_modes) or 'nothing'} or None"
            )

    def freeze(self, mode: str) -> None:
        """Upstream `freeze`: "not_temporal" trains only `attn_temp` (STDiT); "text" freezes the cross-attention."""
        for name, p in self.named_parameters():
            if mode == "not_temporal" and "attn_temp" not in name:
                p.requires_grad = False
            elif mode == "text" and "cross_attn" in name:
                p.requires_grad = False

    def enable_gradient_checkpointing(self, flag: bool = True) -> None:
        """Recompute each transformer block in the backward pass instead of storing its activations."""
        self.gradient_checkpointing = bool(flag)

    def _run_block(self, block: nn.Module, *args: Any) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    # --- patch grid -----------------------------------------------------------------------------------

    def patch_grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        """Token grid `(T', H', W')` of a latent `[B, C, T, H, W]`; its sizes must be multiples of the patch."""
        if x.ndim != 5:
            raise ValueError(f"expected latents [B, C, T, H, W], got shape {list(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} latent channels, got {x.shape[1]}")
        sizes = tuple(x.shape[2:])
        if any(s % p for s, p in zip(sizes, self.patch_size)):
            raise ValueError(
                f"latent size {list(sizes)} is not divisible by the patch size {list(self.patch_size)}"
            )
        return tuple(s // p for s, p in zip(sizes, self.patch_size))  # type: ignore[return-value]

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """`[B, N, T_p*H_p*W_p*C_out]` (C_out fastest) -> `[B, C_out, T, H, W]`."""
        nt, nh, nw = grid
        tp, hp, wp = self.patch_size
        return rearrange(
            x,
            "B (Nt Nh Nw) (Tp Hp Wp C) -> B C (Nt Tp) (Nh Hp) (Nw Wp)",
            Nt=nt,
            Nh=nh,
            Nw=nw,
            Tp=tp,
            Hp=hp,
            Wp=wp,
            C=self.out_channels,
        )

    def _spatial_pos_embed(
        self,
        buffer: torch.Tensor,
        grid_h: int,
        grid_w: int,
        scale: float,
        base_size: int | None,
        ref: torch.Tensor,
    ) -> torch.Tensor:
        """The stored buffer when the grid matches the built size, else the embedding for this grid."""
        if buffer.shape[1] == grid_h * grid_w and self._built_grid[1:] == (grid_h, grid_w):
            pe = buffer
        else:
            pe = get_2d_sincos_pos_embed(self.hidden_size, grid_h, grid_w, scale, base_size)
        return pe.to(device=ref.device, dtype=ref.dtype)

    def _temporal_pos_embed(
        self, buffer: torch.Tensor, length: int, scale: float, ref: torch.Tensor
    ) -> torch.Tensor:
        pe = buffer if buffer.shape[1] == length else get_1d_sincos_pos_embed(self.hidden_size, length, scale)
        return pe.to(device=ref.device, dtype=ref.dtype)

    @property
    def _built_grid(self) -> tuple[int, int, int]:
        return tuple(s // p for s, p in zip(self.input_size, self.patch_size))  # type: ignore[return-value]

    # --- what the network predicts ----------------------------------------------------------------------

    @property
    def learns_variance(self) -> bool:
        """Whether the output carries a variance next to the prediction (IDDPM's learned sigma: 2C channels)."""
        return self.out_channels == 2 * self.in_channels

    # --- persistence --------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write `model.safetensors` + `config.json` to `directory` (see `sorakit.models.pretrained`)."""
        return save_pretrained(self, directory, dtype=dtype)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> DiffusionTransformer:
        """Build this class from `directory/config.json` on the meta device (no wasted initialisation) and
        give it the stored weights; it comes back on `device` (default CPU) in `dtype` (default: as stored)."""
        spec = read_model_config(directory)
        if spec["architecture"] != cls.__name__:
            raise TypeError(f"{directory} holds a {spec['architecture']}, not a {cls.__name__}")
        with torch.device("meta"):
            model = cls(**constructor_kwargs(spec["config"]))
        load_weights(model, read_weights(directory), str(directory))
        model.preset = spec.get("preset")
        if spec.get("prediction_type"):
            model.prediction_type = spec["prediction_type"]
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        return model
