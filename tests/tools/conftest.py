"""Synthetic videos (and a local chat-completions server) for the data tool tests: several shots with known cut frames, each shot with its
own content (colour, pattern) and its own slow motion, encoded as real H.264 files with PyAV."""

from __future__ import annotations

import json
import threading
import time
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

H, W = 48, 64


def shot_frame(kind: int, t: int, seed: int) -> np.ndarray:
    """Frame t (uint8 [H, W, 3]) of a shot of pattern `kind`; consecutive frames differ by a little motion."""
    rng = np.random.default_rng(seed)
    c1 = rng.integers(30, 226, 3)
    c2 = 255 - c1
    yy, xx = np.mgrid[0:H, 0:W]
    if kind % 4 == 0:  # solid background, a square moving right
        img = np.broadcast_to(c1, (H, W, 3)).copy()
        x = (4 + 2 * t) % (W - 12)
        img[16:28, x : x + 12] = c2
    elif kind % 4 == 1:  # horizontal gradient scrolling left
        ramp = ((xx + t) % W) / W
        img = c1[None, None] * (1 - ramp[..., None]) + c2[None, None] * ramp[..., None]
    elif kind % 4 == 2:  # checkerboard drifting down
        check = (((yy + t) // 8 + xx // 8) % 2).astype(bool)
        img = np.where(check[..., None], c1, c2)
    else:  # vertical gradient with a disc moving down-right
        ramp = yy / H
        img = c1[None, None] * (1 - ramp[..., None]) + c2[None, None] * ramp[..., None]
        cy, cx = 10 + t % 28, 10 + t % 44
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = c2 // 2
    return np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))


def make_video(path: Path, shot_lengths: list[int], fps: int = 24, seed: int = 0) -> list[int]:
    """Write an H.264 MP4 of consecutive shots; returns the cut frames (first frame of each new shot)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))  # MP4 or MKV by suffix
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "20"}
        for k, n in enumerate(shot_lengths):
            for t in range(n):
                frame = av.VideoFrame.from_ndarray(shot_frame(seed + k, t, seed * 100 + k), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return list(np.cumsum(shot_lengths)[:-1])


@pytest.fixture
def media(tmp_path: Path) -> dict:
    """A folder with two good videos, a truncated MP4, a truncated MKV and a text file named .mp4."""
    d = tmp_path / "media"
    a_shots, b_shots = [18, 22, 20, 16], [30, 17]
    cuts_a = make_video(d / "a.mp4", a_shots, fps=24, seed=1)
    cuts_b = make_video(d / "sub" / "b.mp4", b_shots, fps=30, seed=5)
    make_video(d / "trunc.mp4", [40], fps=24, seed=9)
    data = (d / "trunc.mp4").read_bytes()
    (d / "trunc.mp4").write_bytes(data[: len(data) // 2])
    # Matroska keeps its index up front: a cut-off file still opens and decodes its first frames
    make_video(d / "cutoff.mkv", [20, 40], fps=24, seed=3)
    data = (d / "cutoff.mkv").read_bytes()
    (d / "cutoff.mkv").write_bytes(data[: len(data) // 2])
    (d / "notes.mp4").write_text("this is not a video\n")
    return {
        "dir": d,
        "a": (d / "a.mp4", cuts_a, sum(a_shots), 24),
        "b": (d / "sub" / "b.mp4", cuts_b, sum(b_shots), 30),
        "bad": [d / "trunc.mp4", d / "notes.mp4", d / "cutoff.mkv"],
    }


class ChatServer:
    """A chat-completions server; `script` gives, per request in arrival order, what to answer:
    a caption string, ("status", code, headers) for an HTTP error, or ("refusal", text)."""

    def __init__(self, script: list, default: object = "A default caption."):
        self.script = list(script)
        self.default = default
        self.requests: list[dict] = []
        self.times: list[float] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                server.times.append(time.monotonic())
                action = server.script.pop(0) if server.script else server.default
                if isinstance(action, tuple) and action[0] == "status":
                    self.send_response(action[1])
                    for k, v in action[2].items():
                        self.send_header(k, v)
                    payload = json.dumps({"error": {"message": f"server says {action[1]}"}}).encode()
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                message = {"role": "assistant", "content": action}
                if isinstance(action, tuple) and action[0] == "refusal":
                    message = {"role": "assistant", "content": None, "refusal": action[1]}
                payload = json.dumps(
                    {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def chat_server():
    """`chat_server(script, default)`: a ChatServer to use as a context manager."""
    return ChatServer
