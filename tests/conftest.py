"""Shared test helpers: where the Open-Sora 1.0 reference fixtures live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def fixtures_dir() -> Path:
    """`$SORAKIT_FIXTURES`, else `<repo>/../shared/fixtures/opensora-v1.0` (CI clones with shared/ beside it)."""
    env = os.environ.get("SORAKIT_FIXTURES")
    return Path(env) if env else REPO.parent / "shared" / "fixtures" / "opensora-v1.0"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    path = fixtures_dir()
    if not path.is_dir():
        pytest.skip(f"Open-Sora reference fixtures not found at {path} (set SORAKIT_FIXTURES)")
    return path
