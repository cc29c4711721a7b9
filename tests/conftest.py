"""Shared test helpers: where the Open-Sora 1.0 reference fixtures live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A copy of ../shared/fixtures/opensora-v1.0 (1.5 MB) kept in the repository so that every clone,
# with or without shared/ beside it, runs the parity tests instead of skipping them.
IN_REPO_FIXTURES = REPO / "tests" / "fixtures" / "opensora-v1.0"


def fixtures_dir() -> Path:
    """`$SORAKIT_FIXTURES` when set, else the copy under `tests/fixtures/opensora-v1.0`."""
    env = os.environ.get("SORAKIT_FIXTURES")
    return Path(env) if env else IN_REPO_FIXTURES


@pytest.fixture(scope="session")
def fixtures() -> Path:
    path = fixtures_dir()
    if not path.is_dir():
        # Fail, never skip: a parity test that silently skips proves nothing.
        pytest.fail(f"Open-Sora reference fixtures not found at {path} (unset SORAKIT_FIXTURES or fix it)")
    return path
