"""Loading model weights: official Open-Sora 1.0 / PixArt / DiT / Latte checkpoints and sorakit's own format.

`load_checkpoint(model, path)` never unpickles arbitrary objects (`torch.load(weights_only=True)`), never
loads partially without saying so: every key ends up in exactly one list of the returned `LoadReport`
(loaded, adapted, created, recomputed, ignored), and anything that does not fit raises a `UserError`
naming the missing / unexpected / mis-shaped keys.

Explicit adapters (each reported):
  * wrappers `{"ema": sd}`, `{"model": sd}`, `{"state_dict": sd}`, `{"module": sd}` (ema preferred, as upstream);
  * `module.` (DDP) and `_orig_mod.` (torch.compile) key prefixes;
  * sin-cos position-embedding entries (`pos_embed`, `pos_embed_spatial`, `pos_embed_temporal`, Latte's
    `temp_embed`) are dropped and the model keeps the buffers it computed for its own size;
  * a 2-D patch-embedding conv weight `[D, C, p, p]` (DiT/Latte/PixArt image checkpoints) is unsqueezed to 3-D;
  * `y_embedder.y_embedding` of another caption length is extended with its last row or truncated (upstream);
  * PixArt -> STDiT (Open-Sora's stage-1 start): when an STDiT receives a checkpoint with spatial blocks but no
    `attn_temp` weights, the temporal attention is created: its qkv keeps the model's initialisation and
    its output projection is zeroed, so the STDiT computes exactly what PixArt computes, frame by frame.
    PixArt-MS size embedders (`csize_embedder.*`, `ar_embedder.*`) are ignored in this case.
  * an STDiT built with ``horizon=True`` receiving a checkpoint without ``h_embedder.*`` (a model trained
    without the horizon embedding): the embedder keeps the model's initialisation, whose output layer is zero,
    so the model computes exactly what the checkpoint's model computed.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sorakit.errors import UserError
from sorakit.models.pretrained import CONFIG_NAME, WEIGHTS_NAME
from sorakit.models.stdit import STDiT
from sorakit.safeload import load_safetensors, load_torch

POS_EMBED_NAMES = ("pos_embed", "pos_embed_spatial", "pos_embed_temporal", "temp_embed")
WRAPPER_KEYS = ("ema", "model", "state_dict", "module")
STRIP_PREFIXES = ("module.", "_orig_mod.")
PIXART_MS_PREFIXES = ("csize_embedder.", "ar_embedder.")
HORIZON_PREFIX = "h_embedder."


@dataclass
class LoadReport:
    """What `load_checkpoint` did with every key."""

    source: str
    file_format: str  # "safetensors" | "torch" | "state_dict"
    wrapper: str | None = None  # the wrapper key the state dict was taken from
    stripped_prefix: str | None = None
    loaded: list[str] = field(default_factory=list)  # copied unchanged
    adapted: dict[str, str] = field(default_factory=dict)  # key -> what was done
    created: dict[str, str] = field(default_factory=dict)  # model key -> how it was initialised
    recomputed: list[str] = field(default_factory=list)  # position-embedding buffers kept from the model
    dropped: list[str] = field(default_factory=list)  # checkpoint position-embedding entries not used
    ignored: list[str] = field(default_factory=list)  # checkpoint keys not used (explicitly allowed)
    pixart_to_stdit: bool = False

    def summary(self) -> str:
        lines = [f"loaded {self.source} ({self.file_format}" + (f", wrapper '{self.wrapper}'" if self.wrapper else "")
                 + (f", stripped '{self.stripped_prefix}'" if self.stripped_prefix else "") + ")"]  # fmt: skip
        if self.pixart_to_stdit:
            lines.append("PixArt -> STDiT initialisation")
        lines.append(f"  copied: {len(self.loaded)} tensors")
        for name, what in (("adapted", self.adapted), ("created", self.created)):
            if what:
                lines.append(f"  {name}: {len(what)}")
                lines += [f"    {k}: {v}" for k, v in what.items()]
        if self.recomputed:
            lines.append(
                f"  position embeddings recomputed for the model's size: {', '.join(self.recomputed)}"
            )
        if self.dropped:
            lines.append(f"  checkpoint position embeddings dropped: {', '.join(self.dropped)}")
        if self.ignored:
            lines.append(f"  ignored: {len(self.ignored)}: {', '.join(self.ignored)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# ---------------------------------------------------------------------------------------------------------
# reading files
# ---------------------------------------------------------------------------------------------------------


def _sniff(path: Path) -> str:
    """File format from the content (never from the name): 'safetensors' or 'torch'."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "torch"  # torch zip archive or legacy pickle
    if len(head) >= 9:
        n = int.from_bytes(head[:8], "little")
        if 0 < n < 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    raise UserError(f"{path}: not a safetensors file nor a torch checkpoint")


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """Read a checkpoint file (or a sorakit model directory) without running arbitrary pickled code.

    Returns the raw top-level object (a dict) and the format name.
    """
    p = Path(path)
    if p.is_dir():
        if not (p / WEIGHTS_NAME).is_file():
            raise UserError(f"{p}: directory without {WEIGHTS_NAME} (not a sorakit model directory)")
        p = p / WEIGHTS_NAME
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}")
    fmt = _sniff(p)
    if fmt == "safetensors":
        return load_safetensors(p), fmt
    # argparse.Namespace holds training arguments in DiT/Latte checkpoints; it carries no code.
    obj = load_torch(p, allowed=[argparse.Namespace])
    if not isinstance(obj, Mapping):
        raise UserError(f"{p}: expected a dict of tensors, found {type(obj).__name__}")
    return dict(obj), fmt


def _is_state_dict(obj: Mapping[str, Any]) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(
    obj: Mapping[str, Any], wrapper_key: str | None = None
) -> tuple[dict[str, torch.Tensor], str | None]:
    """Find the state dict inside upstream wrappers (`ema` preferred, then `model`, `state_dict`, `module`)."""
    if wrapper_key is not None:
        if wrapper_key not in obj or not isinstance(obj[wrapper_key], Mapping):
            raise UserError(f"checkpoint has no '{wrapper_key}' entry (top-level keys: {_short(list(obj))})")
        inner = obj[wrapper_key]
        if not _is_state_dict(inner):
            raise UserError(f"checkpoint entry '{wrapper_key}' is not a dict of tensors")
        return dict(inner), wrapper_key
    if _is_state_dict(obj):
        return dict(obj), None
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and _is_state_dict(inner):
            return dict(inner), key
    raise UserError(
        f"no state dict found in checkpoint: top-level keys {_short(list(obj))} "
        f"(expected tensors or one of the wrappers {', '.join(WRAPPER_KEYS)})"
    )


def _short(keys: Iterable[str], limit: int = 12) -> str:
    keys = list(keys)
    text = ", ".join(keys[:limit])
    return text + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# ---------------------------------------------------------------------------------------------------------
# loading into a model
# ---------------------------------------------------------------------------------------------------------


def load_checkpoint(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, Any],
    *,
    wrapper_key: str | None = None,
    ignore: Iterable[str] = (),
) -> LoadReport:
    """Load a checkpoint into `model` strictly, through the explicit adapters listed in the module doc.

    `source`: a `.safetensors` file, a torch `.pt/.pth` file (read with `weights_only=True`), a sorakit
    model directory, or an in-memory (possibly wrapped) state dict. `wrapper_key` picks the wrapper entry
    explicitly; `ignore` lists checkpoint key prefixes that may be left unused (they are reported).
    Raises `UserError` naming the keys when the checkpoint does not fit the model.
    """
    sd, report = _read_source(model, source, wrapper_key)
    target = model.state_dict()
    ignore = tuple(ignore)

    # position embeddings: keep the model's own (computed for its size)
    pos_buffers = [k for k in target if k in POS_EMBED_NAMES]
    for k in POS_EMBED_NAMES:
        if k in sd:
            sd.pop(k)
            report.dropped.append(k)
    report.recomputed = pos_buffers

    # PixArt -> STDiT: spatial weights present, no temporal attention
    is_pixart_source = any(".attn.qkv." in k for k in sd) and not any(".attn_temp." in k for k in sd)
    if isinstance(model, STDiT) and is_pixart_source:
        report.pixart_to_stdit = True
        ignore = ignore + PIXART_MS_PREFIXES

    new_sd = _adapt(sd, target, ignore, report)
    if report.pixart_to_stdit:
        _create_temporal_attention(new_sd, target, report)
    if isinstance(model, STDiT) and not any(k.startswith(HORIZON_PREFIX) for k in sd):
        for k in (k for k in target if k.startswith(HORIZON_PREFIX)):
            new_sd[k] = target[k]
            report.created[k] = "model init (output layer zero: the horizon adds nothing until trained)"
    for k in pos_buffers:
        new_sd[k] = target[k]
    _check_fit(new_sd, target, report.source, type(model).__name__)
    model.load_state_dict(new_sd, strict=True)
    return report


def _read_source(
    model: nn.Module, source: str | os.PathLike | Mapping[str, Any], wrapper_key: str | None
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """The state dict of `source` unwrapped and stripped of DDP / compile prefixes, and the report so far."""
    if isinstance(source, Mapping):
        raw, fmt, name = dict(source), "state_dict", "<state dict>"
    else:
        name = str(source)
        if Path(source).is_dir():
            _check_config_architecture(Path(source), model)
        raw, fmt = read_state_dict(source)
    sd, wrapper = unwrap_state_dict(raw, wrapper_key)
    report = LoadReport(source=name, file_format=fmt, wrapper=wrapper)
    for prefix in STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
            report.stripped_prefix = prefix
            break
    return sd, report


def _adapt(
    sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor], ignore: tuple[str, ...], report: LoadReport
) -> dict[str, torch.Tensor]:
    """Every checkpoint tensor under its model key, 2-D patch convs and null captions adapted (reported)."""
    new_sd: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k not in target:
            if ignore and k.startswith(ignore):
                report.ignored.append(k)
                continue
            new_sd[k] = v  # reported as unexpected by _check_fit
            continue
        want = target[k]
        if k == "x_embedder.proj.weight" and v.ndim == 4 and want.ndim == 5 and want.shape[2] == 1:
            v = v.unsqueeze(2)
            report.adapted[k] = f"2-D patch conv {list(v.shape[:2]) + list(v.shape[3:])} unsqueezed to 3-D"
        elif k == "y_embedder.y_embedding" and v.ndim == 2 and want.ndim == 2 and v.shape[1] == want.shape[1] \
                and v.shape[0] != want.shape[0]:  # fmt: skip
            v = _fit_null_caption(k, v, want.shape[0], report)
        else:
            report.loaded.append(k)
        new_sd[k] = v
    return new_sd


def _fit_null_caption(key: str, v: torch.Tensor, length: int, report: LoadReport) -> torch.Tensor:
    """Upstream's rule for another caption length: repeat the last row, or truncate."""
    if v.shape[0] < length:
        report.adapted[key] = (
            f"null caption extended from {v.shape[0]} to {length} tokens (last row repeated)"
        )
        return torch.cat([v, v[-1:].expand(length - v.shape[0], -1)], dim=0)
    report.adapted[key] = f"null caption truncated from {v.shape[0]} to {length} tokens"
    return v[:length]


def _create_temporal_attention(
    new_sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor], report: LoadReport
) -> None:
    """PixArt -> STDiT: zero output projection (the block starts as the identity), qkv from the model's init."""
    for k in target:
        if ".attn_temp." in k and k not in new_sd:
            if ".attn_temp.proj." in k:
                new_sd[k] = torch.zeros_like(target[k])
                report.created[k] = "zeros (temporal attention output projection)"
            else:
                new_sd[k] = target[k]
                report.created[k] = "kept from the model's initialisation"


def _check_fit(
    new_sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor], name: str, model_name: str
) -> None:
    """Missing, unexpected or mis-shaped keys -> one UserError naming them."""
    missing = [k for k in target if k not in new_sd]
    unexpected = [k for k in new_sd if k not in target]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_short(unexpected)}")
        raise UserError(f"{name} does not fit {model_name}: " + "; ".join(parts))
    mismatched = [f"{k} {list(new_sd[k].shape)} vs model {list(target[k].shape)}" for k in target
                  if tuple(new_sd[k].shape) != tuple(target[k].shape)]  # fmt: skip
    if mismatched:
        raise UserError(f"{name} does not fit {model_name}: shape mismatch for {_short(mismatched, 6)}")


def _check_config_architecture(directory: Path, model: nn.Module) -> None:
    cfg_path = directory / CONFIG_NAME
    if cfg_path.is_file():
        arch = json.loads(cfg_path.read_text()).get("architecture")
        if arch is not None and arch != type(model).__name__:
            raise UserError(f"{directory} holds a {arch} model, not a {type(model).__name__}")
