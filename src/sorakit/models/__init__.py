"""Diffusion transformers of Open-Sora 1.0: STDiT, PixArt-alpha, DiT and Latte, one architecture per file.

The one model table: `MODELS` maps a preset name to `(class, preset kwargs)`; `ARCHITECTURES` (class name
-> class) is derived from it. Building:
  * `build_from_config(cfg, latent_size, ...)`: the transformer a sorakit `Config` describes (what the
    trainer and the pipeline build), with its `prediction_type` set;
  * `build_model(name, **overrides)`: a preset by name;
  * `build_architecture(name, config)`: a class name + stored constructor config (checkpoints, exports).
Loading is separate from building: `load_checkpoint(model, path)` for upstream / sorakit checkpoints,
`from_pretrained(dir)` for sorakit's own format (`save_pretrained`, see `models/pretrained.py`).
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
import torch.nn as nn

from sorakit.config import Config
from sorakit.errors import ConfigError, UserError
from sorakit.models.base import DiffusionTransformer
from sorakit.models.checkpoint import LoadReport, load_checkpoint
from sorakit.models.dit import DiT
from sorakit.models.flops import flops_per_sample
from sorakit.models.latte import Latte
from sorakit.models.pixart import PixArt
from sorakit.models.pretrained import (
    PREDICTION_TYPES,
    constructor_kwargs,
    load_weights,
    model_spec,
    prediction_type_of_objective,
    read_model_config,
    read_weights,
    save_pretrained,
)
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
# class name (as saved in config.json / checkpoints) -> class
ARCHITECTURES: dict[str, type[DiffusionTransformer]] = {cls.__name__: cls for cls, _ in MODELS.values()}


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


def build_from_config(
    cfg: Config,
    latent_size: tuple[int, int, int],
    *,
    in_channels: int | None = None,
    caption_channels: int | None = None,
    text_len: int | None = None,
    learn_variance: bool | None = None,
    class_dropout_prob: float | None = None,
) -> DiffusionTransformer:
    """The diffusion transformer `cfg` describes (random init, float32, CPU) for latents `(T, h, w)`.

    As Open-Sora does, the VAE's latent channels (`in_channels`) and the text encoder's width
    (`caption_channels`) and length (`text_len`, default `cfg.text_encoder.model_max_length`) are passed to
    the constructor; `model.space_scale` / `time_scale` when set; `learn_variance` and `class_dropout_prob`
    when given (the trainer's choices). `cfg.model.arch` overrides all of them. The model's
    `prediction_type` follows `cfg.train.objective` (rectified flow -> "flow", else "epsilon").
    """
    if cfg.model.type not in MODELS:
        raise UserError(f"unknown model '{cfg.model.type}' (valid: {', '.join(sorted(MODELS))})")
    cls = MODELS[cfg.model.type][0]
    kwargs: dict[str, Any] = {"input_size": list(latent_size)}
    if in_channels:
        kwargs["in_channels"] = in_channels
    if cls.scales_positions:
        if cfg.model.space_scale != 1.0:
            kwargs["space_scale"] = cfg.model.space_scale
        if cfg.model.time_scale != 1.0:
            kwargs["time_scale"] = cfg.model.time_scale
    if caption_channels and cfg.text_encoder.type != "classes":
        kwargs["caption_channels"] = caption_channels
        kwargs["model_max_length"] = int(text_len or cfg.text_encoder.model_max_length)
    if learn_variance is not None:
        kwargs[cls.variance_arg] = learn_variance
    if class_dropout_prob is not None:
        kwargs["class_dropout_prob"] = class_dropout_prob
    kwargs.update(cfg.model.arch)
    model = build_model(cfg.model.type, **kwargs)
    model.prediction_type = prediction_type_of_objective(cfg.train.objective)
    return model


def build_architecture(
    architecture: str, config: dict[str, Any], device: torch.device | str | None = None
) -> DiffusionTransformer:
    """Construct class `architecture` (a key of `ARCHITECTURES`) from its stored constructor config."""
    if architecture not in ARCHITECTURES:
        raise UserError(f"unknown architecture {architecture!r} (known: {', '.join(ARCHITECTURES)})")
    try:
        with torch.device(device or "cpu"):
            return ARCHITECTURES[architecture](**constructor_kwargs(config))
    except TypeError as exc:
        raise UserError(f"invalid {architecture} config: {exc}") from None


def instantiate(
    spec: dict[str, Any], state_dict: dict[str, torch.Tensor], source: str, prediction_type: str | None = None
) -> DiffusionTransformer:
    """A model from its spec (`architecture`, `config`, `preset`, `prediction_type`, see `model_spec`) and
    its complete weights: built on the meta device, then given the tensors. `prediction_type` is used
    when the spec has none (folders and checkpoints written before sorakit recorded it)."""
    model = build_architecture(spec["architecture"], spec["config"], device="meta")
    load_weights(model, state_dict, source)
    model.preset = spec.get("preset")
    model.prediction_type = spec.get("prediction_type") or prediction_type or "epsilon"
    return model


def from_pretrained(
    directory: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    prediction_type: str | None = None,
) -> DiffusionTransformer:
    """Build the model described by `directory/config.json` and load `model.safetensors` strictly; it comes
    back on `device` (default CPU) in `dtype` (default: as stored). `prediction_type`: see `instantiate`."""
    spec = read_model_config(directory)
    model = instantiate(spec, read_weights(directory), str(directory), prediction_type)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


__all__ = [
    "ARCHITECTURES",
    "DiT",
    "DiffusionTransformer",
    "LoadReport",
    "Latte",
    "MODELS",
    "PREDICTION_TYPES",
    "PixArt",
    "STDiT",
    "build_architecture",
    "build_from_config",
    "build_model",
    "flops_per_sample",
    "from_pretrained",
    "instantiate",
    "load_checkpoint",
    "model_kwargs",
    "model_spec",
    "prediction_type_of_objective",
    "read_model_config",
    "save_pretrained",
]
