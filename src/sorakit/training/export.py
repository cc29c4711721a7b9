"""Checkpoint -> sorakit model directory (``sorakit export``)."""

from __future__ import annotations

from pathlib import Path

from sorakit.config import load_config
from sorakit.encoders.vae import VideoVAE, load_autoencoder
from sorakit.errors import UserError
from sorakit.manifest import MANIFEST
from sorakit.modeldir import save_model_dir
from sorakit.models import instantiate, prediction_type_of_objective
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
) -> Path:
    """Write the EMA (or raw) weights of a run's checkpoint as a model directory; returns its path.

    With ``bundle_vae`` the run's VAE (``vae.path``, a local diffusers AutoencoderKL directory) is copied into
    the model directory, which then needs nothing but the text encoder to generate."""
    path = resolve_checkpoint(run_dir, step)
    info = ckpt.load_train_state(path)
    spec = info.get("model") or {}
    if not spec.get("architecture") or not isinstance(spec.get("config"), dict):
        raise UserError(f"{path}/state.json does not describe the model (written by an older sorakit?)")
    cfg = load_config(str(path / "config.toml"))
    absolute_component_paths(cfg)  # runs trained before the trainer stored absolute paths
    if bundle_vae and not (cfg.vae.path and Path(cfg.vae.path).is_dir()):  # checked before any weights load
        raise UserError(f"--bundle-vae needs a local VAE directory; the run's vae.path is {cfg.vae.path!r}")
    # checkpoints written before the model recorded its prediction type: the run's objective tells it
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
    if bundle_vae:
        vae = VideoVAE(load_autoencoder(cfg.vae.path), scaling_factor=cfg.vae.scaling_factor)
    return save_model_dir(out_dir, model, cfg, vae=vae, dtype=DTYPES[dtype])
