"""LoRA fine-tuning in the trainer (``[lora] rank > 0``): the base transformer, loaded from ``--init``, is
frozen; PEFT's LoRA layers are put into it in place (``sorakit.lora.inject``; the model stays the same
class, so DDP / FSDP2, the EMA, bf16 autocast and the latent cache work as for full training). Only the
adapter tensors are trainable, so only they reach the optimizer, the EMA and the checkpoints.

A checkpoint of a LoRA run holds the adapter alone (``model.safetensors`` / ``ema.safetensors``) and, in
``state.json``, the LoRA settings with the base model's path and fingerprint. Resuming loads the base from
``--init`` again (every time, not only on a fresh run), checks its fingerprint against the checkpoint's, then
loads the adapter: the run continues bit for bit. ``sorakit export`` turns the adapter into a peft folder
(``sorakit.lora``), or with ``--merge-lora`` into a plain model directory.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sorakit.config import Config
from sorakit.errors import ConfigError, UserError
from sorakit.logging import get_logger
from sorakit.lora import ADALN_TARGETS, AdapterSpec, base_fingerprint, inject, is_adapter_key
from sorakit.modeldir import BUILTIN_MODEL_DIR

log = get_logger(__name__)


def enabled(cfg: Config) -> bool:
    return cfg.lora.rank > 0


def validate(cfg: Config) -> None:
    """The ``[lora]`` settings, checked before anything is built."""
    lc = cfg.lora
    if lc.rank < 0:
        raise ConfigError(f"lora.rank must be >= 0 (0 = no LoRA), got {lc.rank}")
    if not enabled(cfg):
        return
    if lc.alpha is not None and lc.alpha <= 0:
        raise ConfigError(f"lora.alpha must be > 0, got {lc.alpha}")
    if not 0.0 <= lc.dropout < 1.0:
        raise ConfigError(f"lora.dropout must be in [0, 1), got {lc.dropout}")
    if not lc.target_modules and not lc.adaln:
        raise ConfigError("lora.target_modules is empty: name the layers to adapt (or set lora.rank=0)")
    if cfg.train.freeze:
        raise ConfigError(
            "train.freeze and lora.rank > 0 do not combine: LoRA freezes the whole base already"
        )


def base_label(init: str | None) -> str:
    """How an adapter names its base: "the built-in model", or the --init path."""
    if not init:
        return "a model without --init"
    path = Path(init).resolve()
    if path == BUILTIN_MODEL_DIR.resolve():
        return "the built-in model"
    return str(path)


def attach(cfg: Config, model: nn.Module, init: str | None) -> AdapterSpec:
    """Freeze `model` (its base weights already loaded) and put LoRA layers into it; returns the spec, which
    is also kept on the model (``model.sorakit_lora``) for checkpoints and export."""
    lc = cfg.lora
    targets = list(lc.target_modules) + (list(ADALN_TARGETS) if lc.adaln else [])
    spec = AdapterSpec(
        rank=lc.rank, alpha=float(lc.alpha if lc.alpha is not None else lc.rank), dropout=lc.dropout,
        target_modules=targets, base_name=base_label(init), base_fingerprint=base_fingerprint(model),
    )  # fmt: skip
    model.requires_grad_(False)
    adapted = inject(model, spec)
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_key(name))
    model.sorakit_lora = spec  # type: ignore[assignment]  # a plain attribute: read by the functions below
    model.sorakit_lora_base = str(Path(init).resolve()) if init else None  # type: ignore[assignment]
    log.info("LoRA rank %d (alpha %g) on %d layers; base %s (fingerprint %s) frozen", spec.rank, spec.alpha,
             len(adapted), spec.base_name, spec.base_fingerprint[:12])  # fmt: skip
    return spec


def spec_of(model: nn.Module) -> AdapterSpec | None:
    return getattr(model, "sorakit_lora", None)


def checkpoint_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of a model / EMA state dict: all of it, or with LoRA the adapter alone."""
    if spec_of(model) is None:
        return tensors
    return {k: v for k, v in tensors.items() if is_adapter_key(k)}


def train_state(model: nn.Module) -> dict[str, Any]:
    """The ``state.json`` entry of a LoRA run (empty without LoRA)."""
    spec = spec_of(model)
    if spec is None:
        return {}
    return {"lora": {**asdict(spec), "base_path": getattr(model, "sorakit_lora_base", None)}}


def check_resume(model: nn.Module, info: dict[str, Any], path: Path) -> None:
    """A LoRA checkpoint continues only on the base it was trained on (and LoRA only after LoRA)."""
    spec, saved = spec_of(model), info.get("lora")
    if (spec is None) != (saved is None):
        raise UserError(
            f"{path} is a {'LoRA' if saved else 'full-model'} checkpoint but this run "
            f"{'trains the whole model' if spec is None else 'trains a LoRA'}: use the same lora.rank as before"
        )
    if spec is not None and saved.get("base_fingerprint") != spec.base_fingerprint:
        raise UserError(
            f"{path} holds a LoRA for base {saved.get('base_name')} (fingerprint {str(saved.get('base_fingerprint'))[:12]}), "
            f"but --init gives {spec.base_name} (fingerprint {spec.base_fingerprint[:12]}): resume with the same --init"
        )  # fmt: skip
