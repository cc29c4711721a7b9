"""JSON that every parser reads: sorakit never writes the bare ``NaN`` / ``Infinity`` Python's json allows.

Writers of values that are finite by construction (configs, sidecars, checkpoint state) pass
``allow_nan=False`` so that a bug fails loudly; writers of measurements that may legitimately be
non-finite (a metric of a diverging run, a score of an empty set) use `dumps`, which writes them as null.
"""

from __future__ import annotations

import json
import math
from typing import Any


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
