"""The FastAPI application of `sorakit serve`: OpenAI's video routes under ``/v1``, the web UI at ``/``,
``/health`` and ``/metrics``.

The API process never runs a model: it validates requests, writes jobs to the store and reads them
back; worker processes (:mod:`sorakit.serve.pool`) generate. Handlers that write to SQLite or
touch files run in the thread pool (plain ``def`` handlers, or ``run_in_threadpool``), so the event
loop stays free. The polling reads (``GET /v1/videos/{id}``, ``GET /v1/videos``) and the API-key check
run on the event loop itself: each is a fraction of a millisecond (in WAL mode a reader never waits
for a writer), while a hop to a pool thread and back costs two thread wake-ups, which on a CPU busy
with generating workers is where a poll's latency went.
"""

from __future__ import annotations

import hmac
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser

from sorakit.serve.api import ModelInfo, check_video_request, parse_create, parse_from_video, video_json
from sorakit.serve.errors import ApiError
from sorakit.serve.media import ReferenceFile, Upload, check_upload, reference_from_field
from sorakit.serve.pool import WorkerPool
from sorakit.serve.store import DB_FILE, Job, JobStore, QueueFull, new_id, valid_id
from sorakit.serve.worker import VARIANTS, VIDEO_FILE, job_dir

POLL_AFTER_MS = "250"


@dataclass
class ServeSettings:
    """Everything `sorakit serve` is configured with (the CLI flags)."""

    data_dir: Path
    model: str | None = None
    api_key: str | None = None
    workers: int = 1
    max_queue: int = 100
    device: str = "auto"
    threads: int = 1
    max_attempts: int = 3
    worker_nice: int = 0
    max_body_bytes: int = 10 * 2**20
    max_prompt_chars: int = 2000
    url: str = ""


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is a 413, whether it announces its length
    (rejected before reading) or streams it (rejected once the limit is crossed)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = ApiError(
            413, f"request body is over the {self.max_bytes} byte limit", None, "body_too_large"
        )
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_error(send, too_large)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise too_large
            return message

        await self.app(scope, limited, send)


async def _send_error(send: Any, error: ApiError) -> None:
    body = json.dumps(error.body(), allow_nan=False).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: ServeSettings, info: ModelInfo) -> FastAPI:
    """The application; its lifespan re-queues jobs a killed server left running, then starts the
    workers (none when ``settings.workers == 0``: jobs wait for a server that has some)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(settings.data_dir / DB_FILE)
    pool = WorkerPool(
        store, settings.data_dir, settings.model, settings.workers, settings.device, settings.threads,
        settings.max_attempts, settings.worker_nice,
    )  # fmt: skip

    # uploads stay in memory (the body limit bounds them) instead of spooling to the system's temporary
    # folder: the server writes files only under --data-dir
    MultiPartParser.spool_max_size = settings.max_body_bytes

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store.release(None, settings.max_attempts, "the server stopped while it ran")
        _drop_orphans(store, settings.data_dir)
        pool.start()
        if settings.url:
            print(f"sorakit serve: {settings.url} (model {info.name}, {settings.workers} worker(s), "
                  f"data {settings.data_dir})", flush=True)  # fmt: skip
        yield
        pool.stop()

    app = FastAPI(title="sorakit serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.state.store, app.state.pool, app.state.info, app.state.settings = store, pool, info, settings
    _add_error_handlers(app)
    auth = Depends(_auth(settings))
    app.include_router(_public_routes(store, pool, info, auth))
    app.include_router(_video_routes(store, info, settings), prefix="/v1", dependencies=[auth])
    return app


def _drop_orphans(store: JobStore, data_dir: Path) -> None:
    """Remove job folders without a job: a reference written by a server killed before it committed the
    job, or files a deleted job's worker wrote after the API removed its folder."""
    root = data_dir / "videos"
    if root.is_dir():
        for folder in root.iterdir():
            if folder.is_dir() and valid_id(folder.name) and store.get(folder.name) is None:
                shutil.rmtree(folder, ignore_errors=True)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = str(first.get("loc", ["", "?"])[-1])
        error = ApiError(
            422, f"invalid '{param}': {first.get('msg', 'invalid value')}", param, "invalid_value"
        )
        return JSONResponse(error.body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = ApiError(exc.status_code, str(exc.detail), None, None)
        return JSONResponse(error.body(), status_code=exc.status_code)


def _auth(settings: ServeSettings) -> Any:
    """A dependency: with ``--api-key``, ``Authorization: Bearer KEY`` (compared in constant time)."""
    expected = (settings.api_key or "").encode()

    async def check(request: Request) -> None:  # async: no thread hop per request (module docstring)
        if not expected:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY'", None, "missing_api_key")
        if not hmac.compare_digest(given.strip().encode(), expected):
            raise ApiError(401, "incorrect API key provided", None, "invalid_api_key")

    return check


def _get_job(store: JobStore, video_id: str) -> Job:
    """The job of a path's id: 400 for a malformed id (so no id ever reaches the filesystem unchecked),
    404 for an unknown one."""
    if not valid_id(video_id):
        raise ApiError(400, f"invalid video id {video_id[:80]!r}", "video_id", "invalid_id")
    job = store.get(video_id)
    if job is None:
        raise ApiError(404, f"no video found with id '{video_id}'", "video_id", "video_not_found")
    return job


def _job_json(store: JobStore, job: Job) -> dict[str, Any]:
    return video_json(job, store.queue_position(job) if job.status == "queued" else None)


def _public_routes(store: JobStore, pool: WorkerPool, info: ModelInfo, auth: Any) -> APIRouter:
    """The UI page and /health are open (a load balancer probes /health); /metrics needs the key."""
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        page = resources.files("sorakit.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(page)

    @router.get("/health")
    def health(request: Request) -> dict[str, Any]:
        settings: ServeSettings = request.app.state.settings
        counts = store.counts()
        return {
            "status": "ok",
            "model": info.name,
            "auth": bool(settings.api_key),
            "queue_length": counts["queued"],
            "workers": pool.status(),
        }

    @router.get("/metrics", response_class=PlainTextResponse, dependencies=[auth])
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(_metrics_text(store, pool), media_type="text/plain; version=0.0.4")

    return router


def _metrics_text(store: JobStore, pool: WorkerPool) -> str:
    """Prometheus text exposition: queue length, jobs by status, seconds per video, workers."""
    counts = store.counts()
    done, seconds = store.generation_stats()
    workers = pool.status()
    lines = [
        "# HELP sorakit_queue_length Jobs waiting for a worker.",
        "# TYPE sorakit_queue_length gauge",
        f"sorakit_queue_length {counts['queued']}",
        "# HELP sorakit_jobs Jobs in the store by status.",
        "# TYPE sorakit_jobs gauge",
        *(f'sorakit_jobs{{status="{k}"}} {v}' for k, v in counts.items()),
        "# HELP sorakit_video_generation_seconds Wall seconds per generated video (completed jobs in the store).",
        "# TYPE sorakit_video_generation_seconds summary",
        f"sorakit_video_generation_seconds_sum {seconds:.6f}",
        f"sorakit_video_generation_seconds_count {done}",
        "# HELP sorakit_workers Worker processes alive, and of those with their model loaded.",
        "# TYPE sorakit_workers gauge",
        f'sorakit_workers{{state="alive"}} {sum(w["alive"] for w in workers)}',
        f'sorakit_workers{{state="ready"}} {sum(w["alive"] and w["ready"] for w in workers)}',
        "# HELP sorakit_worker_restarts_total Workers started to replace one that exited.",
        "# TYPE sorakit_worker_restarts_total counter",
        f"sorakit_worker_restarts_total {sum(w['restarts'] for w in workers)}",
    ]
    return "\n".join(lines) + "\n"


async def _request_fields(request: Request, max_bytes: int) -> dict[str, Any]:
    """A POST body as a dict: JSON, or multipart/url-encoded form (what the official client sends).
    Form keys like ``video[id]`` (the client's encoding of nested objects) become nested dicts."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            data = await request.json()
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON", None, "invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
        return data
    if ctype not in ("multipart/form-data", "application/x-www-form-urlencoded", ""):
        raise ApiError(
            400, f"unsupported content type {ctype!r}: send JSON or multipart/form-data", None, None
        )
    if ctype == "":
        return {}
    fields: dict[str, Any] = {}
    async with request.form(max_files=4, max_fields=64, max_part_size=max_bytes) as form:
        for key, value in form.multi_items():
            outer, _, inner = key.partition("[")
            item = value if isinstance(value, str) else Upload(value.filename, await value.read())
            if inner:
                sub = fields.setdefault(outer, {})
                if isinstance(sub, dict):
                    sub[inner.rstrip("]")] = item
            else:
                fields[key] = item
    return fields


def _video_routes(store: JobStore, info: ModelInfo, settings: ServeSettings) -> APIRouter:
    router = APIRouter()

    @router.get("/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [info.to_json()]}

    @router.post("/videos")
    async def create(request: Request) -> JSONResponse:
        fields = await _request_fields(request, settings.max_body_bytes)
        value = fields.pop("input_reference", None)
        ref = None
        if value not in (None, ""):
            ref = await run_in_threadpool(reference_from_field, value, "input_reference", ("image", "video"))
        spec = parse_create(fields, info, settings.max_prompt_chars, ref)
        return await _queue(store, settings, spec, ref)

    @router.get("/videos")
    async def list_videos(
        after: str | None = None,
        limit: int = Query(20, ge=1, le=100),
        order: str = Query("desc", pattern="^(asc|desc)$"),
    ) -> dict[str, Any]:
        if after is not None and not valid_id(after):
            raise ApiError(400, f"invalid cursor 'after': {after[:80]!r}", "after", "invalid_id")
        try:
            jobs, more = store.page(after, limit, order)
        except KeyError:
            raise ApiError(
                404, f"no video found with id '{after}' (the 'after' cursor)", "after", None
            ) from None
        data = [_job_json(store, j) for j in jobs]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }

    @router.get("/videos/{video_id}")
    async def retrieve(video_id: str) -> JSONResponse:
        body = _job_json(store, _get_job(store, video_id))
        return JSONResponse(body, headers={"openai-poll-after-ms": POLL_AFTER_MS})

    @router.delete("/videos/{video_id}")
    def delete(video_id: str) -> dict[str, Any]:
        _get_job(store, video_id)
        if store.delete(video_id) is None:
            raise ApiError(404, f"no video found with id '{video_id}'", "video_id", "video_not_found")
        shutil.rmtree(job_dir(settings.data_dir, video_id), ignore_errors=True)
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    @router.get("/videos/{video_id}/content")
    def content(video_id: str, variant: str = "video") -> FileResponse:
        if variant not in VARIANTS:
            raise ApiError(
                400, f"unknown variant {variant[:40]!r} (valid: {', '.join(VARIANTS)})", "variant", None
            )
        job = _get_job(store, video_id)
        name, media = VARIANTS[variant]
        path = job_dir(settings.data_dir, video_id) / name
        if job.status != "completed" or not path.is_file():
            raise ApiError(404, f"video '{video_id}' is {job.status}: content exists once it is completed",
                           "video_id", "video_not_ready")  # fmt: skip
        return FileResponse(path, media_type=media, filename=f"{video_id}{Path(name).suffix}")

    _reference_routes(router, store, info, settings)
    return router


async def _queue(
    store: JobStore, settings: ServeSettings, spec: dict[str, Any], ref: ReferenceFile | None
) -> JSONResponse:
    """Write the reference (if any) into the new job's folder, then commit the job: a job in the store
    always has its reference on disk, so a restart loses neither."""

    def write_and_create() -> Job:
        job_id = new_id()
        folder = job_dir(settings.data_dir, job_id)
        try:
            if ref is not None:
                ref.write(folder)
            return store.create(**spec, max_queue=settings.max_queue, job_id=job_id)
        except FileNotFoundError:  # the source video was deleted a moment ago
            shutil.rmtree(folder, ignore_errors=True)
            raise ApiError(
                404, f"video '{ref.origin if ref else ''}' was deleted", "video_id", "video_not_found"
            ) from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    try:
        job = await run_in_threadpool(write_and_create)
    except QueueFull:
        raise ApiError(
            429, f"the queue is full ({settings.max_queue} videos waiting): retry later", None, "queue_full",
            headers={"Retry-After": "5"},
        ) from None  # fmt: skip
    body = await run_in_threadpool(_job_json, store, job)
    return JSONResponse(body, headers={"openai-poll-after-ms": POLL_AFTER_MS})


def _source(store: JobStore, data_dir: Path, video_id: str) -> tuple[ReferenceFile, Job]:
    """A completed video as a reference (copied into the new job's folder when it is queued)."""
    job = _get_job(store, video_id)
    path = job_dir(data_dir, video_id) / VIDEO_FILE
    if job.status != "completed" or not path.is_file():
        raise ApiError(409, f"video '{video_id}' is {job.status}; only a completed video can be used",
                       "video_id", "video_not_ready")  # fmt: skip
    p = job.params
    ref = ReferenceFile(
        "video", ".mp4", int(p["num_frames"]), int(p["width"]), int(p["height"]), job.id, path=path
    )
    return ref, job


def _reference_routes(router: APIRouter, store: JobStore, info: ModelInfo, settings: ServeSettings) -> None:
    """Remix (a completed video, new prompt), edits and extensions (a completed video's id or an uploaded
    video): jobs with the video as their reference (docs/serving.md says which mask strategy each uses)."""

    @router.post("/videos/{video_id}/remix")
    async def remix(video_id: str, request: Request) -> JSONResponse:
        fields = await _request_fields(request, settings.max_body_bytes)
        check_video_request("remix", fields, info, settings.max_prompt_chars)
        ref, source = await run_in_threadpool(_source, store, settings.data_dir, video_id)
        spec = parse_from_video("remix", fields, info, settings.max_prompt_chars, ref, source.params)
        return await _queue(store, settings, spec, ref)

    async def from_video(request: Request, route: str) -> JSONResponse:
        fields = await _request_fields(request, settings.max_body_bytes)
        check_video_request(route, fields, info, settings.max_prompt_chars)
        video = fields.get("video")
        if video in (None, ""):
            raise ApiError(400, "missing required parameter 'video'", "video", "missing_required_parameter")
        if isinstance(video, dict) and set(video) == {"id"}:
            ref, _ = await run_in_threadpool(_source, store, settings.data_dir, str(video["id"]))
        elif isinstance(video, Upload):
            ref = await run_in_threadpool(check_upload, video.data, "video", ("video",))
        else:
            raise ApiError(400, "'video' must be a video file upload or {\"id\": a completed video's id}", "video",
                           "invalid_value")  # fmt: skip
        spec = parse_from_video(route, fields, info, settings.max_prompt_chars, ref)
        return await _queue(store, settings, spec, ref)

    @router.post("/videos/edits")
    async def edits(request: Request) -> JSONResponse:
        return await from_video(request, "edits")

    @router.post("/videos/extensions")
    async def extensions(request: Request) -> JSONResponse:
        return await from_video(request, "extensions")
