"""Weights named by hub id when the hub cannot be reached (issue #14 item 3): one line, no retries.

The hub endpoint is pointed at a closed local port (a refused connection, like a machine with no
network) and huggingface_hub's network functions are replaced by ones that record being called: the
error must come from sorakit's reachability check, before any download (and its ~25 s of retries).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import sorakit.hub as hub
from sorakit.errors import UserError


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: connecting is refused


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    hub._reachable.cache_clear()
    calls = []

    def online(*args, **kwargs):
        if kwargs.get("local_files_only"):
            raise FileNotFoundError("not in the cache")
        calls.append(args)
        raise AssertionError("a download was attempted")

    for name in ("snapshot_download", "hf_hub_download", "list_repo_files"):
        monkeypatch.setattr(huggingface_hub, name, online)
    yield calls
    hub._reachable.cache_clear()


def test_unreachable_hub_fails_before_any_download(unreachable_hub) -> None:
    with pytest.raises(UserError, match=r"is unreachable: run `huggingface-cli download owner/vae") as e:
        hub.resolve_dir("owner/vae", what="VAE", flag="--vae")
    assert "--vae DIR" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(
        UserError, match=r"is unreachable: .*hpcai-tech/Open-Sora OpenSora-v1-HQ-16x256x256.pth"
    ):
        hub.resolve_file("OpenSora-v1-HQ-16x256x256.pth")
    assert unreachable_hub == []


def test_unreachable_hub_cli_prints_one_line(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HOME=str(tmp_path / "hf"))
    cmd = [sys.executable, "-m", "sorakit.cli.main", "generate", "a cat", "--output", str(tmp_path / "a.mp4"),
           "--preset", "opensora/16x256x256", "--vae", "owner/some-vae"]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [out.stderr.strip()] and "is unreachable" in out.stderr, out.stderr
