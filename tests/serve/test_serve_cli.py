"""`sorakit serve`'s flags are checked before anything heavy (one line, exit 2); the pipeline's step
callback that the server's progress comes from; the spritesheet layout."""

from __future__ import annotations

import fcntl
import socket
from pathlib import Path

import numpy as np
import pytest

from sorakit.cli.main import main
from sorakit.cli.serve import _bind
from sorakit.serve.worker import spritesheet


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "--port must be between 0 and 65535"),
        (["--workers", "-1"], "--workers must be at least 0"),
        (["--worker-nice", "20"], "--worker-nice must be between 0 and 19"),
        (["--max-queue", "0"], "--max-queue must be at least 1"),
        (["--max-attempts", "0"], "--max-attempts must be at least 1"),
        (["--api-key", "short"], "--api-key must be at least 8 characters"),
        (["--api-key", "has a space"], "without spaces"),
        (["--model", "/nonexistent/model"], "--model /nonexistent/model: no such folder"),
    ],
)
def test_bad_flags(args: list[str], message: str, capsys, tmp_path: Path) -> None:
    assert main(["serve", "--data-dir", str(tmp_path / "d"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sorakit: error: ") and message in err and "\n" not in err


def test_a_data_dir_in_use_and_a_taken_port(capsys, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert main(["serve", "--data-dir", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "serve.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["serve", "--data-dir", str(data)]) == 2
    assert "in use by another sorakit serve" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--data-dir", str(data), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_the_socket_accepts_connections_before_the_server_serves() -> None:
    """The URL is printed before uvicorn starts serving: a client connecting then must be queued, not refused
    (the socket listened only once uvicorn started, and /health right after the URL line was refused)."""
    sock = _bind("127.0.0.1", 0)
    try:
        with socket.create_connection(sock.getsockname(), timeout=5):
            pass  # accepted into the backlog; nobody has called accept() yet
    finally:
        sock.close()


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory):
    from sorakit.pipelines import TextToVideoPipeline
    from sorakit.pipelines.tiny import make_tiny_model_dir

    return TextToVideoPipeline.from_pretrained(
        make_tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny", seed=0), device="cpu"
    )


@pytest.mark.parametrize("sampler", ["iddpm", "ddim", "dpm-solver"])
def test_the_pipeline_reports_each_step(pipe, sampler: str) -> None:
    calls = []
    kw = dict(num_frames=2, num_inference_steps=5, sampler=sampler, seed=0, progress=False)
    plain = pipe("a cat", **kw)
    reported = pipe("a cat", callback=lambda done, total: calls.append((done, total)), **kw)
    assert calls == [(i, 5) for i in range(1, 6)]
    assert np.array_equal(plain, reported)  # observing does not change the result

    def stop(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipe("a cat", callback=stop, **kw)


def test_spritesheet_layout() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    sheet = spritesheet(frames)
    assert sheet.shape == (2 * 4, 3 * 6, 3)  # 3 columns (ceil sqrt 5), 2 rows
    for i in range(5):
        r, c = divmod(i, 3)
        assert np.array_equal(sheet[r * 4 : (r + 1) * 4, c * 6 : (c + 1) * 6], frames[i])
    assert not sheet[4:, 12:].any()  # the unused sixth cell stays black


def test_the_listening_socket_turns_nagle_off() -> None:
    """With Nagle's algorithm on, uvicorn's two writes per response (headers, body) meet the client's delayed
    ACK and every answer waits ~40 ms; asyncio turns it off only on sockets whose protocol says TCP."""
    listener = _bind("127.0.0.1", 0)
    try:
        listener.listen()
        assert listener.proto == socket.IPPROTO_TCP
        client = socket.create_connection(listener.getsockname()[:2])
        conn, _ = listener.accept()
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        conn.close()
        client.close()
    finally:
        listener.close()
