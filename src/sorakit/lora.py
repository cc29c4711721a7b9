"""LoRA adapters on PEFT: injecting them into a sorakit transformer, the adapter folder format, merging.

An adapter folder is what ``peft`` itself writes and reads (``PeftModel.save_pretrained``)::

    DIR/
      adapter_config.json         peft's LoraConfig (peft_type "LORA", r, lora_alpha, target_modules, ...);
                                  the base model: its name in base_model_name_or_path, its fingerprint in
                                  revision ("sorakit-sha256:<hex>": a content hash is that base's version)
      adapter_model.safetensors   base_model.model.<module>.lora_A.weight [r, in], ...lora_B.weight [out, r]
      vae/                        optional: an adapter folder of the same form for the VAE's decoder (its base
                                  the autoencoder; ``sorakit.training.vae_lora``), applied with the folder
      sampler.json                optional: sampler settings the adapter was made for, e.g.
                                  {"guidance_interval": [500, 1000]}; they replace the base model's [sampler]
                                  defaults where the adapter is loaded, and a user's own settings replace them

The base-model **fingerprint** is the sha256 of the base transformer's parameters (names, shapes and values
rounded to float16, in name order): an adapter trained on one base is refused by any other, and float32 /
float16 copies of the same base agree. Used by the trainer (``sorakit.training.lora``), ``sorakit export``
and ``TextToVideoPipeline.load_lora``. ``peft`` is imported inside the functions that need it (it pulls in
transformers, seconds of import time).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sorakit.errors import UserError
from sorakit.fileutil import save_safetensors, write_text_atomic
from sorakit.jsonutil import read_json
from sorakit.safeload import load_safetensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # the key prefix PeftModel.save_pretrained gives every tensor
FINGERPRINT_TAG = "sorakit-sha256:"  # adapter_config.json's "revision": the base model's fingerprint
VAE_ADAPTER_DIR = "vae"  # an adapter folder's optional second adapter, for the VAE's decoder
ADAPTER_SAMPLER = "sampler.json"  # an adapter folder's optional sampler settings
# what sampler.json may set: how to sample, not the diffusion process the base was trained with
SAMPLER_KEYS: tuple[str, ...] = ("type", "num_sampling_steps", "guidance_scale", "guidance_interval",
                                 "guidance_channels", "cache")  # fmt: skip
# the adaLN-single projection (timestep -> the 6 shift / scale / gate vectors of every block)
ADALN_TARGETS: tuple[str, ...] = ("t_block.1",)


@dataclass
class AdapterSpec:
    """What an adapter is: its PEFT settings and the base it was trained on."""

    rank: int
    alpha: float
    dropout: float
    target_modules: list[str]
    base_name: str
    base_fingerprint: str

    def peft_dict(self) -> dict[str, Any]:
        """adapter_config.json: peft's own LoraConfig fields only (no key peft would warn about), the base
        recorded in two of them."""
        from peft import LoraConfig  # lazy: peft imports transformers

        cfg = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                         target_modules=list(self.target_modules), base_model_name_or_path=self.base_name,
                         revision=FINGERPRINT_TAG + self.base_fingerprint)  # fmt: skip
        data = cfg.to_dict()
        for key, value in data.items():  # sets (target_modules) are not JSON
            if isinstance(value, set):
                data[key] = sorted(value)
        return data

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules))  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Injection and the names of adapter tensors


def is_adapter_key(name: str) -> bool:
    """True for a LoRA tensor of an injected model (``...qkv.lora_A.default.weight``) or a peft file."""
    return ".lora_A." in name or ".lora_B." in name


def base_key(name: str) -> str:
    """The name a base tensor has in the plain model: ``blocks.0.attn.qkv.base_layer.weight`` -> ``...qkv.weight``."""
    return name.replace(".base_layer.", ".")


def inject(model: nn.Module, spec: AdapterSpec, adapter_name: str = "default") -> list[str]:
    """Put LoRA layers named `adapter_name` into `model` in place (PEFT's ``inject_adapter_in_model``): B starts
    at zero, so the model computes exactly what it did. Returns the adapted module names; none is a UserError."""
    from peft import inject_adapter_in_model  # lazy: peft imports transformers

    before = {n for n, _ in model.named_modules()}
    try:
        with warnings.catch_warnings():  # a second adapter on one model is what apply_adapters means to do
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(spec.peft_config(), model, adapter_name=adapter_name)
    except ValueError as exc:  # peft: "Target modules ... not found in the base model"
        raise UserError(f"lora.target_modules: {str(exc).splitlines()[0][:300]}") from exc
    adapted = sorted(n.rsplit(".lora_A", 1)[0] for n, _ in model.named_modules()
                     if n.endswith(f".lora_A.{adapter_name}") and n not in before)  # fmt: skip
    return adapted


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every PEFT LoRA layer in `model`."""
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def has_lora(model: nn.Module) -> bool:
    return any(is_adapter_key(n) for n, _ in model.named_parameters())


def base_fingerprint(model: nn.Module) -> str:
    """sha256 of the base's learned weights (its parameters: buffers such as position embeddings are computed
    for a size, not learned; adapters left out, injected layers read as their base)."""
    h = hashlib.sha256()
    state = {base_key(k): v for k, v in model.named_parameters() if not is_adapter_key(k)}
    for name in sorted(state):
        t = state[name].detach()
        t = t.full_tensor() if hasattr(t, "full_tensor") else t  # an FSDP2 shard: the whole tensor
        h.update(f"{name}:{list(t.shape)}:".encode())
        if t.is_floating_point():
            t = t.to(torch.float16)
        h.update(t.cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# The adapter folder


def to_peft_names(tensors: dict[str, torch.Tensor], adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """Adapter tensors of an injected model -> peft's file names (``base_model.model.<m>.lora_A.weight``)."""
    tag = f".{adapter_name}."
    return {PEFT_PREFIX + k.replace(tag, "."): v for k, v in tensors.items() if is_adapter_key(k)}


def save_adapter(out_dir: str | os.PathLike, spec: AdapterSpec, tensors: dict[str, torch.Tensor],
                 dtype: torch.dtype | None = None) -> Path:  # fmt: skip
    """Write `tensors` (adapter tensors of an injected model, adapter name "default") as a peft folder."""
    out = Path(out_dir)
    if out.exists() and not (out / ADAPTER_CONFIG).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an adapter folder: choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    named = {k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous()
             for k, v in to_peft_names(tensors).items()}  # fmt: skip
    if not named:
        raise UserError("no LoRA tensors to write (the checkpoint holds no adapter)")
    tmp = out / f".{ADAPTER_WEIGHTS}.tmp{os.getpid()}"
    save_safetensors(named, tmp, metadata={"format": "pt"})
    os.replace(tmp, out / ADAPTER_WEIGHTS)
    write_text_atomic(
        out / ADAPTER_CONFIG, json.dumps(spec.peft_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
    )
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _lora_numbers(data: dict[str, Any], cfg_file: Path) -> tuple[int, float, float]:
    """(r, lora_alpha, lora_dropout) of a peft adapter config, each checked: a UserError naming the file."""
    rank, alpha, dropout = data.get("r", 8), data.get("lora_alpha", 8), data.get("lora_dropout") or 0.0
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise UserError(f"{cfg_file}: r must be a whole number >= 1, got {rank!r}")
    if not _is_number(alpha) or alpha <= 0:
        raise UserError(f"{cfg_file}: lora_alpha must be a finite number > 0, got {alpha!r}")
    if not _is_number(dropout) or not 0 <= dropout < 1:
        raise UserError(f"{cfg_file}: lora_dropout must be in [0, 1), got {dropout!r}")
    return rank, float(alpha), float(dropout)


def read_adapter(path: str | os.PathLike) -> tuple[AdapterSpec, Path]:
    """An adapter folder -> (its spec, the weights file), checked without reading the weights."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"--lora: no such directory: {path}")
    cfg_file, weights = root / ADAPTER_CONFIG, root / ADAPTER_WEIGHTS
    if not cfg_file.is_file() or not weights.is_file():
        raise UserError(
            f"--lora {path}: not a LoRA adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})"
        )
    data = read_json(cfg_file)
    if not isinstance(data, dict) or data.get("peft_type") != "LORA":
        raise UserError(f"{cfg_file}: not a LoRA adapter (peft_type={data.get('peft_type') if isinstance(data, dict) else None!r})")  # fmt: skip
    revision = str(data.get("revision") or "")
    targets = data.get("target_modules") or []
    rank, alpha, dropout = _lora_numbers(data, cfg_file)
    spec = AdapterSpec(
        rank=rank, alpha=alpha, dropout=dropout,
        target_modules=[targets] if isinstance(targets, str) else list(targets),
        base_name=str(data.get("base_model_name_or_path") or "an unknown base"),
        base_fingerprint=revision.removeprefix(FINGERPRINT_TAG) if revision.startswith(FINGERPRINT_TAG) else "",
    )  # fmt: skip
    return spec, weights


def parse_lora_arg(text: str) -> tuple[str, float]:
    """``DIR`` or ``DIR:SCALE`` -> (DIR, scale); the folder must be an adapter folder (checked, not loaded)."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head and not Path(text).exists():
        try:
            scale = float(tail)
        except ValueError:
            raise UserError(f"--lora {text}: the scale after ':' must be a number, got {tail!r}") from None
        path = head
    if not (scale == scale and abs(scale) != float("inf")):  # NaN / inf
        raise UserError(f"--lora {text}: the scale must be a finite number, got {scale}")
    read_adapter(path)
    return path, scale


# --------------------------------------------------------------------------------------------------
# Loading onto a model: several adapters, each with its scale, merged or kept apart


def check_base(spec: AdapterSpec, path: str | os.PathLike, fingerprint: str, name: str) -> None:
    """Refuse an adapter trained on another base (one line naming both)."""
    if spec.base_fingerprint and spec.base_fingerprint != fingerprint:
        raise UserError(
            f"LoRA {path} was trained for base model {spec.base_name} (fingerprint {spec.base_fingerprint[:12]}), "
            f"not for {name} (fingerprint {fingerprint[:12]})"
        )


def check_adapters(adapters: list[tuple[str | os.PathLike, float]], fingerprint: str, name: str
                   ) -> list[tuple[AdapterSpec, Path]]:  # fmt: skip
    """(spec, weights file) of every adapter folder, each checked against the base `fingerprint` (nothing loaded)."""
    specs = []
    for path, _ in adapters:
        spec, weights = read_adapter(path)
        check_base(spec, path, fingerprint, name)
        specs.append((spec, weights))
    return specs


def _check_sampler_keys(settings: dict[str, Any], where: str = "") -> None:
    unknown = sorted(set(settings) - set(SAMPLER_KEYS))
    if unknown:
        raise UserError(
            f"{where}{', '.join(unknown)} cannot be set by an adapter (valid: {', '.join(SAMPLER_KEYS)})"
        )


def sampler_overrides(path: str | os.PathLike) -> list[str]:
    """An adapter folder's ``sampler.json`` as ``sampler.key=value`` overrides ([] without one); a bad file or
    a key outside SAMPLER_KEYS is a UserError naming it. The values are checked where they are applied."""
    file = Path(path) / ADAPTER_SAMPLER
    if not file.is_file():
        return []
    data = read_json(file)
    if not isinstance(data, dict):
        raise UserError(
            f'{file}: expected an object of sampler settings, e.g. {{"guidance_interval": [500, 1000]}}'
        )
    _check_sampler_keys(data, f"{file}: ")
    return [
        f"sampler.{k}={v if isinstance(v, str) else json.dumps(v, allow_nan=False)}" for k, v in data.items()
    ]


def write_sampler_settings(path: str | os.PathLike, settings: dict[str, Any]) -> Path:
    """Write an adapter folder's ``sampler.json`` (keys of SAMPLER_KEYS); returns the file."""
    _check_sampler_keys(settings)
    file = Path(path) / ADAPTER_SAMPLER
    write_text_atomic(file, json.dumps(settings, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return file


def vae_adapter(path: str | os.PathLike) -> Path | None:
    """An adapter folder's VAE decoder adapter (the subfolder ``vae/``, ``sorakit.training.vae_lora``) or None."""
    sub = Path(path) / VAE_ADAPTER_DIR
    return sub if (sub / ADAPTER_CONFIG).is_file() else None


def load_adapter_weights(model: nn.Module, weights: Path, adapter_name: str) -> None:
    """Copy a peft file's tensors into the injected adapter `adapter_name` of `model` (every tensor must fit)."""
    tensors = load_safetensors(weights)  # a damaged file: one UserError naming it
    own = {k for k, _ in model.named_parameters() if is_adapter_key(k) and f".{adapter_name}." in k}
    mapped = {}
    for key, value in tensors.items():
        name = key.removeprefix(PEFT_PREFIX)
        for part in ("lora_A", "lora_B"):
            name = name.replace(f".{part}.weight", f".{part}.{adapter_name}.weight")
        mapped[name] = value
    missing, extra = sorted(own - set(mapped)), sorted(set(mapped) - own)
    if missing or extra:
        raise UserError(
            f"LoRA {weights.parent} does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    state = model.state_dict()
    for name, value in mapped.items():
        if state[name].shape != value.shape:
            raise UserError(f"LoRA {weights.parent}: {name} has shape {list(value.shape)}, the model {list(state[name].shape)}")  # fmt: skip
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in mapped.items():
            params[name].copy_(value)


def apply_adapters(model: nn.Module, adapters: list[tuple[str | os.PathLike, float]], fingerprint: str,
                   name: str, merge: bool = True, first_index: int = 0) -> list[str]:  # fmt: skip
    """Load adapter folders ``[(dir, scale), ...]`` onto `model` (every base checked first). ``merge``: add
    each ``scale * B @ A`` into the base weights and drop the LoRA layers (a plain model, as fast as the base);
    else keep them as separate active adapters. Returns the adapter names used (``lora<i>``)."""
    specs = check_adapters(adapters, fingerprint, name)
    names = []
    for i, ((spec, weights), (_, scale)) in enumerate(zip(specs, adapters), start=first_index):
        adapter_name = f"lora{i}"
        inject(model, spec, adapter_name)
        load_adapter_weights(model, weights, adapter_name)
        for _, layer in lora_layers(model):
            layer.set_scale(adapter_name, float(scale))
        names.append(adapter_name)
    layers = lora_layers(model)
    for _, layer in layers:
        active = [a for a in layer.lora_A if a in names or a in layer.active_adapters]
        layer.set_adapter(active)
    if merge:
        for _, layer in layers:
            layer.merge(adapter_names=[a for a in names if a in layer.lora_A])
        unload(model)
    model.requires_grad_(False)
    model.eval()  # new layers are built in training mode (LoRA dropout)
    return names


def unload(model: nn.Module) -> None:
    """Replace every LoRA layer by its base layer (whatever was merged stays in the base weights)."""
    for name, layer in lora_layers(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    if "peft_config" in model.__dict__:  # what inject_adapter_in_model noted on the model
        del model.peft_config


def merge_into(
    model: nn.Module, spec: AdapterSpec, tensors: dict[str, torch.Tensor], scale: float = 1.0
) -> None:
    """Add an adapter given as an injected model's tensors (``...lora_A.default.weight``, e.g. a training
    checkpoint's) into `model`'s base weights; `model` stays a plain model."""
    inject(model, spec, "default")
    params = dict(model.named_parameters())
    missing = sorted(k for k in params if is_adapter_key(k) and k not in tensors)
    if missing:
        raise UserError(
            f"the adapter lacks {len(missing)} LoRA tensors of its own config, e.g. {missing[:2]}"
        )
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
    for _, layer in lora_layers(model):
        layer.set_scale("default", float(scale))
        layer.merge(adapter_names=["default"])
    unload(model)
