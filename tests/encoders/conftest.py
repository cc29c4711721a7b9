"""Tiny text-encoder and VAE directories built from configs (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sorakit.pipelines.tiny import make_tiny_t5, make_tiny_vae


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_t5(tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_vae(tmp_path_factory.mktemp("vae"))
