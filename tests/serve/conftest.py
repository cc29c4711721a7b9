"""Fixtures: real `sorakit serve` processes (see serve_helpers.py)."""

from __future__ import annotations

import pytest
from serve_helpers import Server


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A server with one worker holding the built-in model (shared: tests must not assume it is empty)."""
    server = Server(tmp_path_factory.mktemp("serve"), ["--workers", "1"])
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_only(tmp_path_factory: pytest.TempPathFactory):
    """A server without workers (jobs stay queued), with an API key and a queue limit of 5."""
    server = Server(
        tmp_path_factory.mktemp("serve-api"), ["--workers", "0", "--max-queue", "5"], key="test-key-123"
    )
    yield server
    server.stop()
