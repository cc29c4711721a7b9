"""The OpenAI video API's shapes: request parsing and validation, the ``Video`` object, errors.

Requests follow OpenAI's ``POST /v1/videos`` (the official client sends multipart/form-data; JSON is
accepted too): ``prompt``, ``model``, ``seconds``, ``size``, ``input_reference``. sorakit's extras sit
beside them (the client's ``extra_body``): ``seed``, ``steps``, ``guidance``, ``sampler``. Anything
else is a 400 naming the field, as OpenAI does for unknown parameters.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from sorakit.serve.store import Job

STANDARD_FIELDS = ("prompt", "model", "seconds", "size", "input_reference")
EXTRA_FIELDS = ("seed", "steps", "guidance", "sampler")
MAX_STEPS = 500
MAX_GUIDANCE = 50.0
MASKS_PENDING = (
    "needs sorakit's conditioning-mask machinery (image-to-video, extension, remix and edit), which this "
    "version does not have yet; only text-to-video is served"
)


@dataclass
class Upload:
    """A file part of a multipart request (only its presence matters: no route reads uploads yet)."""

    filename: str | None

    def __str__(self) -> str:
        return "<file upload>"


class ApiError(Exception):
    """An error answered in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``."""

    TYPES = {
        401: "authentication_error",
        404: "not_found_error",
        429: "rate_limit_error",
        501: "server_error",
    }

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = self.TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class ModelInfo:
    """What the served model accepts, read from its model directory's config (no weights loaded)."""

    name: str
    path: str | None
    width: int
    height: int
    num_frames: int
    fps: int
    steps: int
    guidance: float
    sampler: str
    objective: str
    samplers: tuple[str, ...] = field(default=())

    @property
    def size(self) -> str:
        """OpenAI writes sizes width x height."""
        return f"{self.width}x{self.height}"

    @property
    def seconds(self) -> str:
        """The clip duration, as OpenAI's string (``"2"``, or ``"1.5"`` when frames/fps is not whole)."""
        value = Fraction(self.num_frames, self.fps)
        return str(value.numerator) if value.denominator == 1 else f"{float(value):g}"

    def to_json(self) -> dict[str, Any]:
        """A ``GET /v1/models`` entry, with what a client needs to build valid requests."""
        return {
            "id": self.name,
            "object": "model",
            "created": 0,
            "owned_by": "sorakit",
            "sizes": [self.size],
            "seconds": [self.seconds],
            "defaults": {"steps": self.steps, "guidance": self.guidance, "sampler": self.sampler},
            "samplers": list(self.samplers),
            "max_steps": MAX_STEPS,
        }


def read_model_info(model: str | None) -> ModelInfo:
    """The served model's name and accepted sizes and durations (UserError when ``model`` is not a
    sorakit model directory). The built-in model is called ``sorakit-builtin``."""
    from sorakit.diffusion import SAMPLERS  # sampler names are defined once, in sorakit.diffusion
    from sorakit.modeldir import builtin_model_dir, read_model_dir

    root = builtin_model_dir() if model is None else Path(model)
    _, cfg = read_model_dir(root)
    name = "sorakit-builtin" if model is None else (root.resolve().name or "model")
    samplers = SAMPLERS if cfg.train.objective == "rflow" else tuple(s for s in SAMPLERS if s != "rflow")
    return ModelInfo(
        name=name,
        path=None if model is None else str(root),
        width=int(cfg.inference.image_size[1]),
        height=int(cfg.inference.image_size[0]),
        num_frames=int(cfg.inference.num_frames),
        fps=int(cfg.inference.fps),
        steps=int(cfg.scheduler.num_sampling_steps),
        guidance=float(cfg.scheduler.cfg_scale),
        sampler=cfg.scheduler.type,
        objective=cfg.train.objective,
        samplers=tuple(samplers),
    )


# --------------------------------------------------------------------------------------------------
# POST /v1/videos


def _as_int(fields: dict[str, Any], name: str, low: int, high: int) -> int:
    value = fields[name]
    try:
        number = int(value) if not isinstance(value, bool) else None
        if number is None or (isinstance(value, float) and value != number):
            raise ValueError
    except (TypeError, ValueError):
        raise ApiError(
            422, f"'{name}' must be an integer, got {str(value)[:40]!r}", name, "invalid_type"
        ) from None
    if not low <= number <= high:
        raise ApiError(400, f"'{name}' must be between {low} and {high}, got {number}", name, "invalid_value")
    return number


def _as_float(fields: dict[str, Any], name: str, low: float, high: float) -> float:
    value = fields[name]
    try:
        number = float(value) if not isinstance(value, bool) else None
        if number is None or number != number:  # NaN
            raise ValueError
    except (TypeError, ValueError):
        raise ApiError(
            422, f"'{name}' must be a number, got {str(value)[:40]!r}", name, "invalid_type"
        ) from None
    if not low <= number <= high:
        raise ApiError(
            400, f"'{name}' must be between {low:g} and {high:g}, got {number:g}", name, "invalid_value"
        )
    return number


def _check_prompt(fields: dict[str, Any], max_chars: int) -> str:
    prompt = fields.get("prompt")
    if prompt is None:
        raise ApiError(400, "missing required parameter 'prompt'", "prompt", "missing_required_parameter")
    if not isinstance(prompt, str):
        raise ApiError(422, "'prompt' must be a string", "prompt", "invalid_type")
    if not prompt.strip():
        raise ApiError(400, "'prompt' is empty", "prompt", "invalid_value")
    if len(prompt) > max_chars:
        raise ApiError(
            400, f"'prompt' is {len(prompt)} characters; the limit is {max_chars}", "prompt", "too_long"
        )
    return prompt


def _choice(fields: dict[str, Any], name: str, allowed: list[str], default: str) -> str:
    value = fields.get(name)
    if value is None:
        return default
    value = str(value)
    if value not in allowed:
        raise ApiError(
            400,
            f"unsupported {name} {value[:40]!r}: this model supports {', '.join(allowed)}",
            name,
            "invalid_value",
        )
    return value


def parse_create(fields: dict[str, Any], info: ModelInfo, max_prompt_chars: int) -> dict[str, Any]:
    """Validate a create request's fields; returns the job's columns (model, prompt, seconds, size) and
    ``params`` (what the worker hands the pipeline). Raises :class:`ApiError`."""
    unknown = sorted(set(fields) - set(STANDARD_FIELDS) - set(EXTRA_FIELDS))
    if unknown:
        raise ApiError(
            400,
            f"unknown parameter '{unknown[0]}' (accepted: {', '.join(STANDARD_FIELDS + EXTRA_FIELDS)})",
            unknown[0],
            "unknown_parameter",
        )
    prompt = _check_prompt(fields, max_prompt_chars)
    if fields.get("input_reference") not in (None, ""):
        raise ApiError(
            400, f"input_reference (image-to-video) {MASKS_PENDING}", "input_reference", "unsupported"
        )
    model = _choice(fields, "model", [info.name], info.name)
    size = _choice(fields, "size", [info.size], info.size)
    seconds = _choice(fields, "seconds", [info.seconds], info.seconds)
    sampler = _choice(fields, "sampler", list(info.samplers), info.sampler)
    params = {
        "seed": _as_int(fields, "seed", 0, 2**63 - 1)
        if fields.get("seed") is not None
        else secrets.randbelow(2**31),
        "steps": _as_int(fields, "steps", 1, MAX_STEPS) if fields.get("steps") is not None else info.steps,
        "guidance": _as_float(fields, "guidance", 0.0, MAX_GUIDANCE)
        if fields.get("guidance") is not None
        else info.guidance,
        "sampler": sampler,
        "num_frames": info.num_frames,
        "height": info.height,
        "width": info.width,
        "fps": info.fps,
    }
    return {"model": model, "prompt": prompt, "seconds": seconds, "size": size, "params": params}


# --------------------------------------------------------------------------------------------------
# The Video object


def video_json(job: Job, queue_position: int | None = None) -> dict[str, Any]:
    """OpenAI's ``Video`` object for a job, plus a ``sorakit`` object (seed, steps, guidance, sampler,
    attempts, queue position) that the official client keeps as an extra attribute."""
    p = job.params
    extras: dict[str, Any] = {k: p[k] for k in EXTRA_FIELDS if k in p}
    extras["attempts"] = job.attempts
    extras["queue_position"] = queue_position
    if job.gen_seconds is not None:
        extras["generation_seconds"] = round(job.gen_seconds, 3)
    return {
        "id": job.id,
        "object": "video",
        "status": job.status,
        "progress": job.progress,
        "created_at": job.created_at,
        "completed_at": job.completed_at,
        "expires_at": None,  # files are kept until the video is deleted
        "model": job.model,
        "prompt": job.prompt,
        "seconds": job.seconds,
        "size": job.size,
        "error": job.error,
        "remixed_from_video_id": None,
        "sorakit": extras,
    }
