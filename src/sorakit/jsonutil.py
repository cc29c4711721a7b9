"""JSON that every parser reads: sorakit never writes the bare ``NaN`` / ``Infinity`` Python's json allows.

Writers of values that are finite by construction (configs, sidecars, checkpoint state) pass
``allow_nan=False`` so that a bug fails loudly; writers of measurements that may legitimately be
non-finite (a metric of a diverging run, a score of an empty set) use `dumps`, which writes them as null.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sorakit.errors import UserError


def finite(value: Any) -> Any:
    """`value` with every non-finite float (in nested dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` with non-finite floats written as null (valid JSON, RFC 8259)."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is beyond float's range")
    return value


def read_json(path: Path) -> Any:
    """The JSON in `path`, read strictly: the bare NaN / Infinity Python's json accepts, a number beyond
    float's range (1e400, read as inf) and invalid JSON or text are a UserError naming the file."""
    try:
        return json.loads(path.read_text(), parse_constant=_no_constant, parse_float=_finite_float)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{path}: invalid JSON ({getattr(exc, 'msg', exc)})") from None


def read_versioned(path: Path, fmt: str, max_version: int, what: str, version_key: str = "version") -> dict:
    """The JSON object in `path`, checked to be sorakit's format `fmt` at a version this sorakit reads:
    invalid JSON, another format or a newer version is a UserError naming the file (`what` names the format,
    e.g. "latent cache")."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{path}: not a sorakit {what} (format={found!r})")
    if int(data.get(version_key, 0)) > max_version:
        raise UserError(
            f"{path}: {what} version {data[version_key]} is newer than this sorakit reads ({max_version}): "
            "upgrade sorakit"
        )
    return data
