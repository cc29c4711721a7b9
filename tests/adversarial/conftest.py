"""Helpers of the hostile-input tests: run the CLI in-process and check its error is one line, exit 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sorakit.cli.main import main


@pytest.fixture
def refused(capsys: pytest.CaptureFixture[str]) -> Callable[..., str]:
    """`refused(*argv)` runs `sorakit ARGV`, asserts it exits 2 with one `sorakit: error:` line and no
    traceback, and returns that line."""

    def run(*argv: str) -> str:
        code = main(list(argv))
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith("sorakit: error: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
        return err.strip()

    return run


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model directory (T5-style text encoder, tiny VAE, tiny STDiT), as tests/pipeline builds it."""
    from sorakit.pipelines.tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-t5", seed=0)
