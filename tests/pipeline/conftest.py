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


@pytest.fixture
def made_pipelines(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every TextToVideoPipeline constructed during the test, in order (so a CLI test can look at the
    pipeline `sorakit generate` built: its config, its options, what its last sampling run did)."""
    from sorakit.pipelines import TextToVideoPipeline

    made: list[TextToVideoPipeline] = []
    real_init = TextToVideoPipeline.__init__

    def spy(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        real_init(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(TextToVideoPipeline, "__init__", spy)
    return made
