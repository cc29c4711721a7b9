"""sorakit's own transformer format: ``model.safetensors`` + ``config.json`` (diffusers' save_pretrained).

``config.json``::

    {"format": "sorakit-model", "format_version": 1,
     "architecture": "STDiT",            # class name (a key of sorakit.models.ARCHITECTURES)
     "preset": "STDiT-XL/2" | null,      # the MODELS name it was built from
     "config": {...},                    # constructor keyword arguments
     "prediction_type": "epsilon" | "flow",  # what the network predicts (absent in folders written before
                                             # sorakit recorded it: the loader's caller supplies it)
     "dtype": "float32"}

This module knows the file layout only; which class an ``architecture`` name means is decided by the model
table in ``sorakit.models`` (so that nothing inside ``models/`` imports the package that imports it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sorakit.errors import UserError
from sorakit.fileutil import atomic_path, save_safetensors, write_text_atomic
from sorakit.safeload import load_safetensors

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_NAME = "sorakit-model"
# What a network's output means: the noise (IDDPM, DDIM, DPM-Solver) or the flow velocity (rectified flow).
PREDICTION_TYPES = ("epsilon", "flow")


def prediction_type_of_objective(objective: str) -> str:
    """The prediction type a training objective teaches: "rflow" -> "flow", "iddpm" -> "epsilon"."""
    return "flow" if objective == "rflow" else "epsilon"


def _atomic_write(path: Path, write: Any) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def model_spec(model: nn.Module) -> dict[str, Any]:
    """What rebuilds `model` without its weights: architecture, preset, constructor config, prediction type."""
    if not hasattr(model, "config"):
        raise TypeError(f"{type(model).__name__} is not a sorakit model (no .config)")
    return {
        "architecture": type(model).__name__,
        "preset": getattr(model, "preset", None),
        "config": model.config,
        "prediction_type": getattr(model, "prediction_type", None),
    }


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike,
    dtype: torch.dtype | None = None,
    extra_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write `model.safetensors` (optionally cast to `dtype`) and `config.json` (module docstring) to
    `directory`; `extra_config` (e.g. the resolved run config) is stored under "extra_config".
    Files are written atomically."""
    spec = model_spec(model)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.to("cpu").contiguous()
    meta = {"format": FORMAT_NAME, "architecture": spec["architecture"]}
    _atomic_write(d / WEIGHTS_NAME, lambda p: save_safetensors(tensors, p, metadata=meta))
    cfg = {
        "format": FORMAT_NAME,
        "format_version": 1,
        "architecture": spec["architecture"],
        "preset": spec["preset"],
        "config": spec["config"],
        "dtype": str(next(iter(tensors.values())).dtype).removeprefix("torch.") if tensors else None,
    }
    if spec["prediction_type"] is not None:
        cfg["prediction_type"] = spec["prediction_type"]
    if extra_config is not None:
        cfg["extra_config"] = dict(extra_config)
    text = json.dumps(cfg, indent=2, allow_nan=False) + "\n"
    write_text_atomic(d / CONFIG_NAME, text)
    return d


def read_model_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed config.json of a sorakit transformer folder (checked for the fields every loader needs)."""
    d = Path(directory)
    cfg_path = d / CONFIG_NAME
    if not cfg_path.is_file() or not (d / WEIGHTS_NAME).is_file():
        raise UserError(f"{d}: not a sorakit model directory (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{cfg_path}: invalid JSON ({exc.msg})") from None
    if not isinstance(cfg.get("architecture"), str):
        raise UserError(f"{cfg_path}: missing 'architecture'")
    if not isinstance(cfg.get("config"), dict):
        raise UserError(f"{cfg_path}: missing 'config' object")
    if cfg.get("prediction_type") not in (None, *PREDICTION_TYPES):
        raise UserError(f"{cfg_path}: unknown prediction_type {cfg['prediction_type']!r}")
    return cfg


def constructor_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored constructor config -> keyword arguments (JSON lists become the tuples the models take)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Give a (meta-device) model exactly the tensors of `state_dict`; any missing / extra key is a UserError."""
    target = model.state_dict()
    missing = [k for k in target if k not in state_dict]
    unexpected = [k for k in state_dict if k not in target]
    if missing or unexpected:
        raise UserError(
            f"{source}: weights do not match the config: missing {_short(missing)}; unexpected {_short(unexpected)}"
        )
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model


def read_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of ``directory/model.safetensors`` on the CPU."""
    return load_safetensors(Path(directory) / WEIGHTS_NAME)


def _short(keys: list[str], limit: int = 12) -> str:
    text = ", ".join(keys[:limit])
    return text + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
