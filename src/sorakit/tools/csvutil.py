"""CSV utilities: merge, filter, strip caption prefixes, absolute/relative paths, train/val split, stats.

Every function works on rows as dicts of strings (see `sorakit.tools._io`) and is pure: it returns new
rows, and for operations that drop rows, the dropped rows with a `reason` column, so nothing is lost
silently.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sorakit.errors import UserError
from sorakit.tools._io import Row, read_csv, resolve_path

# Openings that captioners put in front of what a video shows. Matched case-insensitively at the
# start, longest first; a following comma/colon and spaces go too.
DEFAULT_PREFIXES = (
    "The video shows",
    "The video depicts",
    "The video features",
    "The video captures",
    "The video presents",
    "The video displays",
    "The video is",
    "This video shows",
    "This video depicts",
    "This video features",
    "In this video,",
    "In the video,",
    "The image shows",
    "The image depicts",
    "This image shows",
    "The scene shows",
    "The clip shows",
)


# ----------------------------------------------------------------------------------------- merge
def _row_key(row: Row, abs_path: str) -> tuple[str, str, str]:
    # clips of one video share a path: a row is a duplicate only if its frame range is the same too
    return (abs_path, row.get("start_frame", ""), row.get("end_frame", ""))


def merge(csv_paths: Sequence[str | os.PathLike], output: str | os.PathLike) -> tuple[list[Row], list[Row]]:
    """Concatenate CSVs (columns united, header-aware) and drop duplicate rows.

    Two rows are duplicates when they point at the same file (after resolving relative paths
    against their own CSV's folder) and the same `start_frame`/`end_frame`; the first one is kept.
    Relative paths stay relative when their CSV is in the output's folder, and become absolute
    otherwise (so they still point at the same file). Returns (rows, duplicates with `reason`).
    """
    if not csv_paths:
        raise UserError("merge needs at least one input CSV")
    out_dir = Path(output).expanduser().resolve().parent
    seen: dict[tuple[str, str, str], str] = {}
    rows: list[Row] = []
    dups: list[Row] = []
    for cp in csv_paths:
        _, src_rows = read_csv(cp, require=("path",))
        base = Path(cp).expanduser().resolve().parent
        for r in src_rows:
            absolute = str(resolve_path(r["path"], base).absolute())
            key = _row_key(r, os.path.normpath(absolute))
            if key in seen:
                dups.append({**r, "reason": f"duplicate of a row from {seen[key]}"})
                continue
            seen[key] = str(cp)
            if not Path(r["path"]).is_absolute() and base != out_dir:
                r = {**r, "path": absolute}
            rows.append(r)
    return rows, dups


# ---------------------------------------------------------------------------------------- filter
@dataclass
class FilterSpec:
    """Bounds a row must meet; None means "no bound". Frames, duration, size in the row's units."""

    min_frames: int | None = None
    max_frames: int | None = None
    min_duration: float | None = None
    max_duration: float | None = None
    min_height: int | None = None
    min_width: int | None = None
    min_short_side: int | None = None
    min_aspect: float | None = None  # aspect ratio = height / width
    max_aspect: float | None = None
    min_caption_words: int | None = None
    max_caption_words: int | None = None
    drop_empty_caption: bool = False

    def active(self) -> bool:
        return any(v not in (None, False) for v in self.__dict__.values())


def _num(row: Row, col: str) -> float | None:
    v = row.get(col, "").strip()
    if not v:
        return None
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def row_frames(row: Row) -> float | None:
    """Frames of a row: `num_frames`, else `end_frame - start_frame`."""
    n = _num(row, "num_frames")
    if n is None:
        s, e = _num(row, "start_frame"), _num(row, "end_frame")
        if s is not None and e is not None:
            n = e - s
    return n


def row_duration(row: Row) -> float | None:
    """Seconds of a row: `duration`, else frames / fps, else `end - start`."""
    d = _num(row, "duration")
    if d is None:
        n, fps = row_frames(row), _num(row, "fps")
        if n is not None and fps:
            d = n / fps
    if d is None:
        s, e = _num(row, "start"), _num(row, "end")
        if s is not None and e is not None:
            d = e - s
    return d


def row_aspect(row: Row) -> float | None:
    a = _num(row, "aspect_ratio")
    if a is None:
        h, w = _num(row, "height"), _num(row, "width")
        if h is not None and w:
            a = h / w
    return a


def caption_words(text: str) -> int:
    return len(text.split())


def _check(value: float | None, lo: float | None, hi: float | None, name: str) -> str | None:
    if lo is None and hi is None:
        return None
    if value is None:
        return f"{name} unknown"
    if lo is not None and value < lo:
        return f"{name} {value:g} < {lo:g}"
    if hi is not None and value > hi:
        return f"{name} {value:g} > {hi:g}"
    return None


def filter_rows(
    rows: Sequence[Row], spec: FilterSpec, fields: Sequence[str] = ()
) -> tuple[list[Row], list[Row]]:
    """Split rows into (kept, rejected); each rejected row gets a `reason` naming the first failed test.

    A bound on a quantity the CSV has no column for at all is a UserError (e.g. a frames bound on a
    CSV without num_frames: run `sorakit data info` first); a row whose cell is empty or not a
    number is rejected with reason "... unknown".
    """
    cols = set(fields) if fields else {k for r in rows for k in r}
    need = (
        ("frames", (spec.min_frames, spec.max_frames), ("num_frames", "end_frame")),
        ("duration", (spec.min_duration, spec.max_duration), ("duration", "end", "fps")),
        ("height", (spec.min_height,), ("height",)),
        ("width", (spec.min_width,), ("width",)),
        ("short side", (spec.min_short_side,), ("height",)),
        ("aspect ratio", (spec.min_aspect, spec.max_aspect), ("aspect_ratio", "height")),
        (
            "caption",
            (spec.min_caption_words, spec.max_caption_words, spec.drop_empty_caption or None),
            ("text",),
        ),
    )
    for name, bounds, any_of in need:
        if rows and any(b is not None for b in bounds) and not cols.intersection(any_of):
            hint = " (run `sorakit data info` first)" if name != "caption" else ""
            raise UserError(
                f"cannot filter by {name}: the CSV has none of the columns {', '.join(any_of)}{hint}"
            )
    kept: list[Row] = []
    rejected: list[Row] = []
    for r in rows:
        reason = _reject_reason(r, spec)
        if reason is None:
            kept.append(r)
        else:
            rejected.append({**r, "reason": reason})
    return kept, rejected


def _reject_reason(r: Row, spec: FilterSpec) -> str | None:
    text = r.get("text", "")
    if spec.drop_empty_caption and not text.strip():
        return "empty caption"
    checks = (
        (row_frames(r), spec.min_frames, spec.max_frames, "frames"),
        (row_duration(r), spec.min_duration, spec.max_duration, "duration"),
        (_num(r, "height"), spec.min_height, None, "height"),
        (_num(r, "width"), spec.min_width, None, "width"),
        (_short_side(r), spec.min_short_side, None, "short side"),
        (row_aspect(r), spec.min_aspect, spec.max_aspect, "aspect ratio"),
        (float(caption_words(text)), spec.min_caption_words, spec.max_caption_words, "caption words"),
    )
    for value, lo, hi, name in checks:
        reason = _check(value, lo, hi, name)
        if reason:
            return reason
    return None


def _short_side(r: Row) -> float | None:
    h, w = _num(r, "height"), _num(r, "width")
    return None if h is None or w is None else min(h, w)


# ---------------------------------------------------------------------------------- strip prefix
def strip_prefix(text: str, prefixes: Sequence[str] = DEFAULT_PREFIXES) -> str:
    """Remove a leading captioner phrase ("The video shows a cat" -> "A cat").

    The longest matching prefix (case-insensitive, at a word boundary) is removed with the
    punctuation and spaces after it, and the first letter of the rest is capitalised. A caption
    that would become empty is returned unchanged.
    """
    stripped = text.lstrip()
    for p in sorted(prefixes, key=len, reverse=True):
        p = p.strip()
        if not p:
            continue
        m = re.match(re.escape(p) + r"(?=\W|$)[\s,:;.\-]*", stripped, flags=re.IGNORECASE)
        if m:
            rest = stripped[m.end() :].rstrip()
            if not rest:
                return text
            return rest[0].upper() + rest[1:]
    return text


def strip_prefixes(rows: Sequence[Row], prefixes: Sequence[str] = DEFAULT_PREFIXES) -> tuple[list[Row], int]:
    """Rows with `text` prefix-stripped, and how many changed."""
    out, changed = [], 0
    for r in rows:
        new = strip_prefix(r.get("text", ""), prefixes)
        if new != r.get("text", ""):
            changed += 1
            r = {**r, "text": new}
        out.append(r)
    return out, changed


# ----------------------------------------------------------------------------------------- paths
def rebase_paths(
    rows: Sequence[Row], src_csv: str | os.PathLike, output: str | os.PathLike, mode: str
) -> list[Row]:
    """Rewrite `path` cells as absolute (`mode="absolute"`) or relative to the output CSV's folder
    (`mode="relative"`). Relative inputs are resolved against the input CSV's folder first. Columns
    `source_path` (from `cut`) are rewritten the same way."""
    if mode not in ("absolute", "relative"):
        raise ValueError(mode)
    base = Path(src_csv).expanduser().resolve().parent
    out_dir = Path(output).expanduser().resolve().parent
    out = []
    for r in rows:
        r = dict(r)
        for col in ("path", "source_path"):
            if not r.get(col):
                continue
            p = resolve_path(r[col], base).absolute()
            p = Path(os.path.normpath(p))
            r[col] = str(p) if mode == "absolute" else os.path.relpath(p, out_dir)
        out.append(r)
    return out


# ----------------------------------------------------------------------------------------- split
def split_rows(
    rows: Sequence[Row],
    val_fraction: float | None = None,
    val_count: int | None = None,
    seed: int = 0,
    group_by: str | None = None,
) -> tuple[list[Row], list[Row]]:
    """Random train/validation split, keeping input order within each part.

    Rows sharing `group_by` (default: `source_path` when present, else `path`) land in the same part,
    so clips of one video never leak between train and validation. The validation part gets
    `val_count` groups or round(`val_fraction` * groups), at least one when the fraction is > 0.
    """
    if (val_fraction is None) == (val_count is None):
        raise UserError("give exactly one of --val-fraction or --val-count")
    if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if val_count is not None and val_count < 0:
        raise UserError(f"--val-count must be >= 0, got {val_count}")
    if group_by is None:
        group_by = "source_path" if rows and all(r.get("source_path") for r in rows) else "path"
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if group_by not in r:
            raise UserError(f"no column {group_by!r} to group the split by")
        groups.setdefault(r[group_by], []).append(i)
    keys = list(groups)
    if val_count is None:
        assert val_fraction is not None
        n_val = round(val_fraction * len(keys))
        if val_fraction > 0 and n_val == 0 and len(keys) > 1:
            n_val = 1
    else:
        n_val = val_count
    if n_val >= len(keys) and len(keys) > 0:
        raise UserError(
            f"validation would take all {len(keys)} groups ({group_by}); nothing left to train on"
        )
    rng = random.Random(seed)
    val_keys = set(rng.sample(keys, n_val))
    val_idx = {i for k in val_keys for i in groups[k]}
    train = [r for i, r in enumerate(rows) if i not in val_idx]
    val = [r for i, r in enumerate(rows) if i in val_idx]
    return train, val


# ----------------------------------------------------------------------------------------- stats
def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    mid = values[len(values) // 2]
    return f"min {values[0]:g}  median {mid:g}  mean {sum(values) / len(values):.4g}  max {values[-1]:g}"


def stats(rows: Sequence[Row], fields: Sequence[str]) -> str:
    """A human-readable summary: counts, frames, durations, sizes, fps, captions, labels."""
    lines = [f"rows: {len(rows)}", f"columns: {', '.join(fields)}"]
    paths = Counter(r.get("path", "") for r in rows)
    lines.append(f"distinct paths: {len(paths)}")
    frames = [x for x in (row_frames(r) for r in rows) if x is not None]
    if frames:
        lines.append(f"frames: {_summary(frames)}  total {sum(frames):g}")
    durs = [x for x in (row_duration(r) for r in rows) if x is not None]
    if durs:
        lines.append(f"duration (s): {_summary(durs)}  total {sum(durs) / 3600:.3g} h")
    sizes = Counter(f"{r['height']}x{r['width']}" for r in rows if r.get("height") and r.get("width"))
    if sizes:
        top = ", ".join(f"{k} ({v})" for k, v in sizes.most_common(5))
        lines.append(f"sizes HxW (top 5 of {len(sizes)}): {top}")
    fps = Counter(r["fps"] for r in rows if r.get("fps"))
    if fps:
        lines.append("fps: " + ", ".join(f"{k} ({v})" for k, v in fps.most_common(5)))
    if "text" in fields:
        texts = [r.get("text", "") for r in rows]
        empty = sum(1 for t in texts if not t.strip())
        words = [float(caption_words(t)) for t in texts if t.strip()]
        lines.append(f"captions: {len(texts) - empty} non-empty, {empty} empty")
        if words:
            lines.append(f"caption words: {_summary(words)}")
        prefixed = sum(1 for t in texts if t.strip() and strip_prefix(t) != t)
        if prefixed:
            lines.append(
                f"captions with a removable prefix: {prefixed} (see `sorakit data csv strip-prefix`)"
            )
    if "label" in fields:
        labels = Counter(r.get("label", "") for r in rows)
        lines.append(
            f"labels: {len(labels)} distinct; most common: "
            + ", ".join(f"{k} ({v})" for k, v in labels.most_common(5))
        )
    dup = sum(v - 1 for v in paths.values() if v > 1)
    if dup and not any(r.get("start_frame") for r in rows):
        lines.append(f"duplicate paths: {dup} rows (see `sorakit data csv merge` to de-duplicate)")
    return "\n".join(lines)
