"""The OpenAI video API's shapes: request parsing and validation, the ``Video`` object, errors.

Requests follow OpenAI's ``POST /v1/videos`` (the official client sends multipart/form-data; JSON is
accepted too): ``prompt``, ``model``, ``seconds``, ``size``, ``input_reference`` (an image: image-to-video; a
video: its extension). sorakit's extras sit beside them (the client's ``extra_body``): ``seed``, ``steps``,
``guidance``, ``sampler``, and with a reference ``mask_strategy`` and ``condition_frames``. Anything else is
a 400 naming the field, as OpenAI does for unknown parameters. Remix, edits and extensions make a job from
a video (a completed one, or an upload) through the same reference machinery.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from sorakit.diffusion import SAMPLERS  # sampler names are defined once, in sorakit.diffusion
from sorakit.errors import UserError
from sorakit.masks import check_strategy, parse_mask_strategy
from sorakit.masks import default_strategy as default_strategy_for
from sorakit.modeldir import builtin_model_dir, read_model_dir
from sorakit.serve.errors import ApiError
from sorakit.serve.media import ReferenceFile
from sorakit.serve.store import Job

STANDARD_FIELDS = ("prompt", "model", "seconds", "size", "input_reference")
EXTRA_FIELDS = ("seed", "steps", "guidance", "sampler")
REFERENCE_FIELDS = (
    "mask_strategy",
    "condition_frames",
)  # extras of requests with a reference (docs/masks.md)
MAX_STEPS = 500
MAX_GUIDANCE = 50.0
DEFAULT_CONDITION_FRAMES = 4  # K: the pipeline's default
EDIT_RATIO = 0.5  # remix and edits: every frame starts from the source noised halfway (SDEdit)


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
        steps=int(cfg.sampler.num_sampling_steps),
        guidance=float(cfg.sampler.guidance_scale),
        sampler=cfg.sampler.type,
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


def _check_unknown(fields: dict[str, Any], accepted: tuple[str, ...]) -> None:
    unknown = sorted(set(fields) - set(accepted))
    if unknown:
        raise ApiError(400, f"unknown parameter '{unknown[0]}' (accepted: {', '.join(accepted)})", unknown[0],
                       "unknown_parameter")  # fmt: skip


def _generation_params(
    fields: dict[str, Any], info: ModelInfo, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """seed, steps, guidance, sampler from the request, else from ``base`` (a remix's source), else the
    model's defaults (a random seed, reported back); plus the video's shape."""
    base = base or {}

    def given(name: str) -> bool:
        return fields.get(name) is not None

    sampler = _choice(fields, "sampler", list(info.samplers), base.get("sampler", info.sampler))
    return {
        "seed": _as_int(fields, "seed", 0, 2**63 - 1)
        if given("seed")
        else base.get("seed", secrets.randbelow(2**31)),
        "steps": _as_int(fields, "steps", 1, MAX_STEPS) if given("steps") else base.get("steps", info.steps),
        "guidance": _as_float(fields, "guidance", 0.0, MAX_GUIDANCE)
        if given("guidance")
        else base.get("guidance", info.guidance),
        "sampler": sampler,
        "num_frames": info.num_frames,
        "height": info.height,
        "width": info.width,
        "fps": info.fps,
    }


def reference_params(
    fields: dict[str, Any], ref: ReferenceFile, num_frames: int, default_strategy: str | None = None
) -> dict[str, Any]:
    """The job params of a reference: its record, the mask strategy (the request's ``mask_strategy``, else
    ``default_strategy``, else the pipeline's default: an image on frame 0, a video's last K frames on the
    first K) and K (``condition_frames``), checked against the reference's frame count exactly as the
    pipeline will check them, so a bad strategy is a 400 now rather than a failed job later."""
    k = (
        _as_int(fields, "condition_frames", 1, num_frames)
        if fields.get("condition_frames") is not None
        else None
    )
    k = k if k is not None else min(DEFAULT_CONDITION_FRAMES, num_frames)
    strategy = fields.get("mask_strategy")
    if strategy is not None and not isinstance(strategy, str):
        raise ApiError(422, "'mask_strategy' must be a string", "mask_strategy", "invalid_type")
    strategy = strategy if strategy is not None else default_strategy
    try:
        entries = parse_mask_strategy(strategy)
        if not entries:
            if 1 < ref.frames < k:
                raise UserError(
                    f"the reference video has {ref.frames} frames, fewer than condition_frames {k}"
                )
            entries = default_strategy_for([ref.frames], k)
        check_strategy(entries, [ref.frames], num_frames)
    except UserError as exc:
        raise ApiError(400, f"'mask_strategy': {exc}", "mask_strategy", "invalid_value") from None
    return {"reference": ref.record(), "mask_strategy": strategy, "condition_frames": k}


def _no_reference_extras(fields: dict[str, Any]) -> None:
    for name in REFERENCE_FIELDS:
        if fields.get(name) is not None:
            raise ApiError(400, f"'{name}' needs a reference (input_reference)", name, "invalid_value")


def parse_create(
    fields: dict[str, Any], info: ModelInfo, max_prompt_chars: int, ref: ReferenceFile | None = None
) -> dict[str, Any]:
    """Validate a create request's fields (``ref``: its checked ``input_reference``, if any); returns the
    job's columns (model, prompt, seconds, size) and ``params`` (what the worker hands the pipeline)."""
    _check_unknown(fields, STANDARD_FIELDS + EXTRA_FIELDS + REFERENCE_FIELDS)
    prompt = _check_prompt(fields, max_prompt_chars)
    model = _choice(fields, "model", [info.name], info.name)
    size = _choice(fields, "size", [info.size], info.size)
    seconds = _choice(fields, "seconds", [info.seconds], info.seconds)
    params = _generation_params(fields, info)
    if ref is None:
        _no_reference_extras(fields)
    else:
        params.update(reference_params(fields, ref, info.num_frames))
    return {"model": model, "prompt": prompt, "seconds": seconds, "size": size, "params": params}


def check_video_request(
    route: str, fields: dict[str, Any], info: ModelInfo, max_prompt_chars: int
) -> tuple[str, str]:
    """The checks of a remix / edits / extensions request that need no source video (run before it is looked
    up, so a malformed request is a 400 whatever its video); returns (prompt, seconds)."""
    accepted = {
        "remix": ("prompt",),
        "edits": ("prompt", "video"),
        "extensions": ("prompt", "seconds", "video"),
    }
    _check_unknown(fields, accepted[route] + EXTRA_FIELDS + REFERENCE_FIELDS)
    prompt = _check_prompt(fields, max_prompt_chars)
    if route == "extensions" and fields.get("seconds") is None:
        raise ApiError(400, "missing required parameter 'seconds'", "seconds", "missing_required_parameter")
    return prompt, _choice(fields, "seconds", [info.seconds], info.seconds)


def parse_from_video(
    route: str, fields: dict[str, Any], info: ModelInfo, max_prompt_chars: int, ref: ReferenceFile,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A job made from a video (``ref``, checked): ``remix`` (a completed video, ``source`` its params: the
    remix keeps its seed, steps, guidance and sampler unless the request sets them), ``edits`` (SDEdit of
    every frame) or ``extensions`` (its last K frames begin the new clip)."""
    prompt, seconds = check_video_request(route, fields, info, max_prompt_chars)
    params = _generation_params(fields, info, source)
    edit = f"0,0,0,0,{info.num_frames},{EDIT_RATIO}" if route != "extensions" else None
    params.update(reference_params(fields, ref, info.num_frames, edit))
    if route == "remix":
        params["remixed_from_video_id"] = ref.origin
    return {"model": info.name, "prompt": prompt, "seconds": seconds, "size": info.size, "params": params}


# --------------------------------------------------------------------------------------------------
# The Video object


def video_json(job: Job, queue_position: int | None = None) -> dict[str, Any]:
    """OpenAI's ``Video`` object for a job, plus a ``sorakit`` object (seed, steps, guidance, sampler,
    attempts, queue position) that the official client keeps as an extra attribute."""
    p = job.params
    extras: dict[str, Any] = {k: p[k] for k in EXTRA_FIELDS if k in p}
    if "reference" in p:
        ref = p["reference"]
        extras["reference"] = {k: ref[k] for k in ("kind", "frames", "origin", "sha256")}
        extras.update({k: p[k] for k in REFERENCE_FIELDS})
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
        "remixed_from_video_id": p.get("remixed_from_video_id"),
        "sorakit": extras,
    }
