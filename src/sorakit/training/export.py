"""Checkpoint -> sorakit model directory (``sorakit export``)."""

from __future__ import annotations

from pathlib import Path

from sorakit.config import LoRAConfig, apply_overrides, load_config
from sorakit.encoders.vae import VideoVAE, load_autoencoder
from sorakit.errors import UserError
from sorakit.lora import (
    AdapterSpec,
    apply_adapters,
    base_fingerprint,
    merge_into,
    read_adapter,
    sampler_overrides,
    save_adapter,
    vae_adapter,
)
from sorakit.manifest import MANIFEST
from sorakit.modeldir import is_model_dir, read_model_dir, save_model_dir
from sorakit.models import build_architecture, instantiate, load_checkpoint, prediction_type_of_objective
from sorakit.runtime import DTYPES
from sorakit.training import checkpoint as ckpt


def resolve_checkpoint(run_dir: Path, step: int | None = None) -> Path:
    """The checkpoint to export: the newest that verifies (damaged newer ones are logged and skipped), or
    step ``step``'s, which must verify."""
    if (run_dir / ckpt.STATE).is_file() or (run_dir / MANIFEST).is_file():  # a checkpoint folder itself
        return _verified(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"no such run directory: {run_dir}")
    found = dict(ckpt.list_checkpoints(run_dir))
    if step is not None:
        if step not in found:
            raise UserError(
                f"{run_dir}: no checkpoint for step {step} (have: {', '.join(map(str, sorted(found))) or 'none'})"
            )
        return _verified(found[step])
    path = ckpt.resume_checkpoint(run_dir) if found else None
    if path is None:
        raise UserError(
            f"{run_dir} holds no complete checkpoint (expected {ckpt.CHECKPOINTS}/step-NNNNNNNN/)"
            + (" that verifies: see `sorakit checkpoints`" if found else "")
        )
    return path


def _verified(path: Path) -> Path:
    verdict = ckpt.verify_checkpoint(path)
    if not verdict.ok:
        raise UserError(f"checkpoint {path} is damaged: {verdict.reason}")
    return path


def absolute_component_paths(cfg) -> None:  # noqa: ANN001 - sorakit.config.Config
    """Make ``vae.path`` / ``text_encoder.path`` absolute where they name an existing local path.

    A relative path means "from the folder the command ran in"; a model directory is used from
    anywhere, so it must not keep one (``vae`` stored as-is failed from another folder). Hub ids and
    ``builtin:`` names are not local paths and stay as they are."""
    for section in (cfg.vae, cfg.text_encoder):
        p = section.path
        if p and not Path(p).is_absolute() and Path(p).exists():
            section.path = str(Path(p).resolve())


def export_run(
    run_dir: Path,
    out_dir: Path,
    step: int | None = None,
    weights: str = "ema",
    dtype: str = "fp32",
    bundle_vae: bool = False,
    merge_lora: bool = False,
    vae_lora: Path | None = None,
) -> Path:
    """Write the EMA (or raw) weights of a run's checkpoint as a model directory; returns its path.

    With ``bundle_vae`` the run's VAE (``vae.path``, a local diffusers AutoencoderKL directory) is copied into
    the model directory, which then needs nothing but the text encoder to generate. A LoRA run's checkpoint
    holds an adapter: it is written as a peft adapter folder (``sorakit.lora``), or with ``merge_lora`` added
    into its base model and written as a plain model directory; ``vae_lora`` (an adapter folder with a ``vae/``
    subfolder, or a VAE decoder adapter folder) is then merged into the base's VAE, which is bundled, and that
    folder's ``sampler.json`` (if any) becomes the model's sampler defaults."""
    vae_folder, sampler = None, []
    if vae_lora is not None:  # checked before any weights load
        if not merge_lora:
            raise UserError("--vae-lora merges a VAE adapter into a model directory: add --merge-lora")
        vae_folder = vae_adapter(vae_lora) or Path(vae_lora)
        read_adapter(vae_folder)  # one line when it is no adapter folder
        sampler = sampler_overrides(vae_lora)
    path = resolve_checkpoint(run_dir, step)
    info = ckpt.load_train_state(path)
    spec = info.get("model") or {}
    if not spec.get("architecture") or not isinstance(spec.get("config"), dict):
        raise UserError(f"{path}/state.json does not describe the model (written by an older sorakit?)")
    cfg = load_config(str(path / "config.toml"))
    absolute_component_paths(cfg)  # runs trained before the trainer stored absolute paths
    if merge_lora and not info.get("lora"):
        raise UserError(f"--merge-lora: {path} is not a LoRA run's checkpoint (it holds the whole model)")
    if info.get("lora") and not merge_lora:
        if bundle_vae:
            raise UserError(
                "--bundle-vae writes a model directory: add --merge-lora (a LoRA run exports an adapter)"
            )
        tensors = ckpt.load_tensors(path, f"{weights}.safetensors")
        return save_adapter(
            out_dir, lora_spec(info), tensors, dtype=None if dtype == "fp32" else DTYPES[dtype]
        )
    if bundle_vae and not (cfg.vae.path and Path(cfg.vae.path).is_dir()):  # checked before any weights load
        raise UserError(f"--bundle-vae needs a local VAE directory; the run's vae.path is {cfg.vae.path!r}")
    if info.get("lora"):
        model = merged_model(path, info, weights, prediction_type_of_objective(cfg.train.objective))
        cfg.lora = LoRAConfig()  # a plain model now
    else:  # checkpoints written before the model recorded its prediction type: the run's objective tells it
        model = instantiate(
            spec, ckpt.load_tensors(path, f"{weights}.safetensors"), f"{path}: {weights} weights",
            prediction_type=prediction_type_of_objective(cfg.train.objective),
        )  # fmt: skip
    # generation defaults follow the training clips
    cfg.inference.num_frames = cfg.data.num_frames
    cfg.inference.image_size = list(cfg.data.image_size)
    cfg.model.from_pretrained = None
    cfg.train.init_from = None
    cfg.data.csv = cfg.data.cache_dir = cfg.data.data_root = None  # training data is not part of the model
    vae = None
    if vae_folder is not None:
        vae = merged_vae(vae_folder, info["lora"].get("base_path"), cfg)
        apply_overrides(cfg, sampler)  # the adapter folder's sampler.json, if any
    elif bundle_vae:
        vae = VideoVAE(load_autoencoder(cfg.vae.path), scaling_factor=cfg.vae.scaling_factor)
    return save_model_dir(out_dir, model, cfg, vae=vae, dtype=DTYPES[dtype])


def lora_spec(info: dict) -> AdapterSpec:
    """The adapter a LoRA checkpoint's state.json describes."""
    d = info["lora"]
    return AdapterSpec(rank=int(d["rank"]), alpha=float(d["alpha"]), dropout=float(d["dropout"]),
                       target_modules=list(d["target_modules"]), base_name=str(d["base_name"]),
                       base_fingerprint=str(d["base_fingerprint"]))  # fmt: skip


def merged_model(path: Path, info: dict, weights: str, prediction_type: str):  # noqa: ANN201 - a sorakit model
    """The LoRA run's base (its --init, checked against the fingerprint) with the adapter merged in."""
    spec, adapter = info["model"], lora_spec(info)
    base = info["lora"].get("base_path")
    if not base or not Path(base).exists():
        raise UserError(
            f"--merge-lora: the run's base model {base or adapter.base_name} is gone: it is needed to merge"
        )
    model = build_architecture(spec["architecture"], spec["config"])
    model.preset = spec.get("preset")
    model.prediction_type = spec.get("prediction_type") or prediction_type
    load_checkpoint(model, Path(base) / "transformer" if is_model_dir(base) else Path(base))
    found = base_fingerprint(model)
    if found != adapter.base_fingerprint:
        raise UserError(f"--merge-lora: {base} changed since training (fingerprint {found[:12]}, the adapter was "
                        f"trained on {adapter.base_fingerprint[:12]})")  # fmt: skip
    merge_into(model, adapter, ckpt.load_tensors(path, f"{weights}.safetensors"))
    return model


def merged_vae(folder: Path, base: str | None, cfg) -> VideoVAE:  # noqa: ANN001 - sorakit.config.Config
    """The base's VAE (its model directory's ``vae/``, else the run's local ``vae.path``) with the decoder
    adapter folder `folder` merged in (refused, naming both, when it was trained on another VAE)."""
    if base and is_model_dir(base) and (Path(base) / "vae").is_dir():
        vae_dir, scaling = Path(base) / "vae", read_model_dir(base)[1].vae.scaling_factor
    elif cfg.vae.path and Path(cfg.vae.path).is_dir():
        vae_dir, scaling = Path(cfg.vae.path), cfg.vae.scaling_factor
    else:
        raise UserError(
            f"--vae-lora needs the base's VAE as a local folder; the run's vae.path is {cfg.vae.path!r}"
        )
    ae = load_autoencoder(vae_dir)
    apply_adapters(ae, [(folder, 1.0)], base_fingerprint(ae), str(vae_dir))
    return VideoVAE(ae, scaling_factor=scaling)
