"""`sorakit serve`: an OpenAI-compatible video generation server with a job store and a web UI.

    sorakit serve                                  # the built-in model on http://127.0.0.1:8000
    sorakit serve --model DIR --workers 2 --api-key KEY --data-dir jobs/

Routes: POST/GET /v1/videos, GET/DELETE /v1/videos/{id}, GET /v1/videos/{id}/content, GET /v1/models,
the web UI at /, GET /health, GET /metrics. Jobs live in DIR/jobs.sqlite3 and DIR/videos/ (--data-dir)
and survive restarts. See docs/serving.md.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from sorakit.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP (OpenAI's video API) with a web UI",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", metavar="DIR", help="sorakit model directory (default: the built-in model)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--data-dir", metavar="DIR", default="serve-data",
                   help="where jobs and videos are kept (default ./serve-data)")  # fmt: skip
    p.add_argument("--api-key", metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1 and /metrics (or set SORAKIT_API_KEY)")  # fmt: skip
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes, each holding the model (default 1; 0 = API only, jobs wait)")  # fmt: skip
    p.add_argument("--max-queue", type=int, default=100, help="queued jobs beyond which requests get 429")
    p.add_argument("--max-attempts", type=int, default=3,
                   help="times a job is started before a crashing job is failed (default 3)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per worker (default 1, which keeps the API responsive; 0 = torch's choice)")  # fmt: skip
    p.add_argument("--worker-nice", type=int, default=0,
                   help="lower the workers' CPU priority by N (0-19) once loaded, so on a busy CPU the API answers first")  # fmt: skip
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> str | None:
    """Every flag checked before anything heavy; returns the API key (flag or SORAKIT_API_KEY)."""
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    if not 0 <= args.worker_nice <= 19:
        raise UserError(f"--worker-nice must be between 0 and 19, got {args.worker_nice}")
    for flag, value, low in (("--workers", args.workers, 0), ("--max-queue", args.max_queue, 1),
                             ("--max-attempts", args.max_attempts, 1), ("--threads", args.threads, 0)):  # fmt: skip
        if value < low:
            raise UserError(f"{flag} must be at least {low}, got {value}")
    key = args.api_key if args.api_key is not None else os.environ.get("SORAKIT_API_KEY")
    if key is not None and (len(key) < 8 or any(c.isspace() for c in key)):
        raise UserError("--api-key must be at least 8 characters without spaces")
    if args.model is not None and not Path(args.model).is_dir():
        raise UserError(f"--model {args.model}: no such folder")
    data = Path(args.data_dir)
    if data.exists() and not data.is_dir():
        raise UserError(f"--data-dir {data} exists and is not a folder")
    return key


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now so a taken port is a one-line error before workers start.

    The protocol is given as IPPROTO_TCP, not left 0: asyncio switches Nagle's algorithm off (TCP_NODELAY)
    only on connections whose socket says TCP. With it on, uvicorn's two writes per response (headers, then
    body) met the client's delayed ACK and every answer waited ~40 ms (p50 44 ms for GET /health on an idle
    server, 2 ms without)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets on Linux
    try:
        sock.bind((host, port))
        # listening now, not when uvicorn starts serving (after the lifespan has printed the URL): a client
        # that connects in between waits in the backlog instead of being refused
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def _lock_data_dir(data: Path):  # noqa: ANN202 - an open file
    """One server per data folder: an exclusive lock the kernel drops when the process dies (kill -9
    included), so a restart never finds a stale lock."""
    import fcntl

    try:
        data.mkdir(parents=True, exist_ok=True)
        from sorakit.fileutil import open_append

        handle = open_append(data / "serve.lock")  # held for the server's lifetime; never through a link
    except OSError as exc:
        raise UserError(f"--data-dir {data}: cannot write there ({exc.strerror or exc})") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UserError(f"--data-dir {data} is in use by another sorakit serve") from None
    return handle


def run(args: argparse.Namespace) -> int:
    key = _check_args(args)
    import uvicorn

    from sorakit.serve.api import read_model_info
    from sorakit.serve.app import ServeSettings, create_app

    info = read_model_info(args.model)
    data = Path(args.data_dir).resolve()
    lock = _lock_data_dir(data)
    sock = _bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    settings = ServeSettings(
        data_dir=data,
        model=args.model,
        api_key=key,
        workers=args.workers,
        max_queue=args.max_queue,
        device=args.device,
        threads=args.threads,
        max_attempts=args.max_attempts,
        worker_nice=args.worker_nice,
        url=f"http://{shown}:{port}",
    )
    app = create_app(settings, info)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        lock.close()
    return 0
