"""Every .safetensors output follows the umask like any other file (issue #14 item 8).

safetensors (and diffusers/transformers through it) create files 0600; sorakit's checkpoints,
exported models, cache shards, train-vae states and converted models must read like 0o666 & ~umask.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in root.rglob("*.safetensors")}


def test_safetensors_outputs_follow_umask(tmp_path: Path, umask_022) -> None:
    from sorakit.data.cache import write_shard
    from sorakit.fileutil import save_safetensors
    from sorakit.models import build_model, save_pretrained
    from sorakit.pipelines.tiny import make_tiny_model_dir
    from sorakit.training.checkpoint import _safetensors_bytes, _write_file

    t = {"a": torch.arange(6.0).reshape(2, 3)}
    save_safetensors(t, tmp_path / "plain.safetensors")
    _write_file(tmp_path / "ckpt.safetensors", _safetensors_bytes(t))  # training checkpoints
    write_shard(tmp_path / "shard-00000.safetensors", t)  # latent cache shards
    save_pretrained(
        build_model("STDiT-tiny", depth=1, hidden_size=32, num_heads=2), tmp_path / "convert"
    )  # convert
    make_tiny_model_dir(
        tmp_path / "export"
    )  # export: transformer/, vae/ (diffusers), text_encoder/ (transformers)
    modes = _modes(tmp_path)
    assert {"plain.safetensors", "ckpt.safetensors", "shard-00000.safetensors"} <= set(modes)
    assert any(k.startswith("export/vae/") for k in modes) and any(
        k.startswith("export/text_encoder/") for k in modes
    )
    assert set(modes.values()) == {0o644}, modes


def test_train_vae_state_follows_umask(tmp_path: Path, umask_022) -> None:
    from sorakit.pipelines.tiny import make_tiny_autoencoder
    from sorakit.training.vae import VAETrainConfig, _save_state

    model = make_tiny_autoencoder(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _save_state(tmp_path / "state", model, opt, 1, VAETrainConfig())
    modes = _modes(tmp_path)
    assert modes and set(modes.values()) == {0o644}, modes
