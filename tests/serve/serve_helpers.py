"""Helpers for the serve tests: a real `sorakit serve` process on loopback (port 0: the server picks a
free port and prints its URL)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

STEPS = 4  # sampler steps per test video: the built-in model then takes well under a second per video
START_TIMEOUT_S = 600.0  # model loading on a CPU shared with other tests can be slow


class Server:
    """A `sorakit serve` subprocess; its output is collected in ``lines`` by a reader thread."""

    def __init__(self, data_dir: Path, args: list[str], key: str | None = None) -> None:
        self.data_dir = data_dir
        self.key = key
        cmd = [
            sys.executable,
            "-m",
            "sorakit.cli.main",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            *args,
        ]
        if key:
            cmd += ["--api-key", key]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._url = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()
        if not self._url.wait(START_TIMEOUT_S):
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("sorakit serve: http://") and not self._url.is_set():
                self.url = line.split()[2]
                self._url.set()

    def get(self, path: str, key: str | None = None) -> tuple[int, Any]:
        """GET a path with urllib (for the routes the openai client has no method for)."""
        request = urllib.request.Request(self.url + path)
        if key or self.key:
            request.add_header("Authorization", f"Bearer {key or self.key}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
                status, ctype = response.status, response.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            body, status, ctype = exc.read(), exc.code, exc.headers.get("content-type", "")
        return status, json.loads(body) if ctype.startswith("application/json") else body.decode()

    def health(self) -> dict[str, Any]:
        return self.get("/health")[1]

    def client(self, key: str | None = None, **kwargs: Any):  # noqa: ANN201 - openai.OpenAI
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key=key or self.key or "unused", max_retries=0, **kwargs)

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> list[dict[str, Any]]:
        """Wait until every worker has loaded its model; returns /health's workers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = self.health()["workers"]
            if all(w["alive"] and w["ready"] for w in workers):
                return workers
            time.sleep(0.2)
        raise TimeoutError("workers not ready:\n" + "".join(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie whose parent died counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_for(predicate, timeout: float = 120.0, interval: float = 0.1, what: str = "condition"):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")
