"""Helpers for the serve tests: a real `sorakit serve` process on loopback (port 0: the server picks a
free port and prints its URL)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sorakit.data.video import read_video, write_video
from sorakit.tools.synth import ShapeSpec, render

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


# reference inputs: the shapes-world clip and image the reference tests upload, and how they compare
PROMPT = "a red circle moving to the right"
CLOSE = 4.0  # mean absolute difference (grey levels) of a held frame; unconditioned frames are ~20 away


def clip() -> np.ndarray:
    """A 16-frame shapes-world clip `[16, 64, 64, 3]`: a red circle moving right."""
    return render(ShapeSpec("red", "circle", "right", 18.0, 2.0, 4.0, 20.0, PROMPT), 64, 16)


def image() -> np.ndarray:
    """A blue square (not what the prompt asks for, so only the reference can put it on frame 0)."""
    return render(ShapeSpec("blue", "square", "down", 20.0, 2.0, 30.0, 6.0, "a blue square"), 64, 1)[0]


def png_bytes(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def mp4_bytes(frames: np.ndarray, folder: Path) -> tuple[bytes, np.ndarray]:
    """The clip as MP4 bytes, and its frames as the server will decode them (H.264 is lossy)."""
    path = folder / "clip.mp4"
    write_video(path, frames, fps=8)
    return path.read_bytes(), read_video(path)


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def frames_of(served, video_id: str) -> np.ndarray:  # noqa: ANN001
    """The 16 frames of a completed video, losslessly, from its spritesheet."""
    data = served.client().videos.download_content(video_id, variant="spritesheet").content
    sheet = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return sheet.reshape(4, 64, 4, 64, 3).transpose(0, 2, 1, 3, 4).reshape(16, 64, 64, 3)


def completed(served, video):  # noqa: ANN001, ANN201
    video = served.client().videos.poll(video.id, poll_interval_ms=100)
    assert video.status == "completed", video.error
    return video
