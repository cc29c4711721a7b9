"""Fixtures of the training tests (helpers live in _train_helpers.py: conftest modules share one name)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _train_helpers import write_clips, write_csv


@pytest.fixture
def clips_csv(tmp_path: Path) -> Path:
    paths = write_clips(tmp_path / "videos", 4, frames=4, size=16)
    words = ["red square left", "blue square right", "green box up", "white box down"]
    return write_csv(
        tmp_path / "data.csv", [{"path": f"videos/{p.name}", "text": w} for p, w in zip(paths, words)]
    )
