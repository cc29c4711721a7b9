"""Tiny model directories (T5 / MiniLM text encoders, tiny VAE, tiny STDiT) built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from sorakit.pipelines.tiny import make_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-t5", seed=0)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir: Path):
    from sorakit.pipelines import TextToVideoPipeline

    return TextToVideoPipeline.from_pretrained(tiny_model_dir, device="cpu", dtype="fp32")
