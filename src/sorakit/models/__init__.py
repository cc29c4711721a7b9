"""Diffusion transformers of Open-Sora 1.0: STDiT, PixArt-alpha, DiT and Latte, one architecture per file.

`MODELS` maps a preset name to `(class, preset kwargs)`; `build_model(name, **overrides)` constructs one.
Loading is separate from building: `load_checkpoint(model, path)` for upstream / sorakit checkpoints,
`from_pretrained(dir)` for sorakit's own exported format (`save_pretrained`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch.nn as nn

from sorakit.errors import ConfigError
from sorakit.models.checkpoint import LoadReport, from_pretrained, load_checkpoint, save_pretrained
from sorakit.models.dit import DiT
from sorakit.models.flops import flops_per_sample
from sorakit.models.latte import Latte
from sorakit.models.pixart import PixArt
from sorakit.models.stdit import STDiT

_XL = dict(depth=28, hidden_size=1152, num_heads=16)
_B = dict(depth=12, hidden_size=768, num_heads=12)
_S = dict(depth=12, hidden_size=384, num_heads=6)
_TINY = dict(depth=2, hidden_size=64, num_heads=4)
_P122 = dict(patch_size=(1, 2, 2))
_P222 = dict(patch_size=(2, 2, 2))

# name -> (class, preset kwargs). The XL presets are Open-Sora 1.0's; S/B follow DiT's sizes; "tiny" is
# for tests and CPU demos.
MODELS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "STDiT-XL/2": (STDiT, {**_XL, **_P122}),
    "STDiT-B/2": (STDiT, {**_B, **_P122}),
    "STDiT-S/2": (STDiT, {**_S, **_P122}),
    "STDiT-tiny": (STDiT, {**_TINY, **_P122}),
    "PixArt-XL/2": (PixArt, {**_XL, **_P122}),
    "PixArt-S/2": (PixArt, {**_S, **_P122}),
    "PixArt-tiny": (PixArt, {**_TINY, **_P122}),
    "DiT-XL/2": (DiT, {**_XL, **_P122}),
    "DiT-XL/2x2": (DiT, {**_XL, **_P222}),
    "DiT-S/2": (DiT, {**_S, **_P122}),
    "DiT-tiny": (DiT, {**_TINY, **_P122}),
    "Latte-XL/2": (Latte, {**_XL, **_P122}),
    "Latte-XL/2x2": (Latte, {**_XL, **_P222}),
    "Latte-S/2": (Latte, {**_S, **_P122}),
    "Latte-tiny": (Latte, {**_TINY, **_P122}),
}


def model_kwargs(name: str, **overrides: Any) -> tuple[type[nn.Module], dict[str, Any]]:
    """The class and the merged constructor kwargs of preset `name` with `overrides`, validated."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    cls, preset = MODELS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise ConfigError(
            f"{name}: unknown model argument(s) {', '.join(unknown)} (accepted: {', '.join(sorted(accepted))})"
        )
    kwargs = {**preset, **overrides}
    for key in ("input_size", "patch_size"):
        if key in kwargs:
            value = kwargs[key]
            if (
                not isinstance(value, (list, tuple))
                or len(value) != 3
                or not all(isinstance(v, int) and v > 0 for v in value)
            ):
                raise ConfigError(f"{name}: {key} must be three positive integers (T, H, W), got {value!r}")
            kwargs[key] = tuple(value)
    return cls, kwargs


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Construct preset `name` (a key of `MODELS`) with its kwargs updated by `overrides` (float32, CPU)."""
    cls, kwargs = model_kwargs(name, **overrides)
    try:
        model = cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    model.preset = name
    return model


__all__ = [
    "DiT",
    "LoadReport",
    "Latte",
    "MODELS",
    "PixArt",
    "STDiT",
    "build_model",
    "flops_per_sample",
    "from_pretrained",
    "load_checkpoint",
    "model_kwargs",
    "save_pretrained",
]
