"""Probe videos and images: fill `num_frames`, `fps`, `height`, `width`, `aspect_ratio`, `duration`.

Unreadable files are collected as failures (with the reason), never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sorakit.tools._io import Row, fmt_float, one_line, parallel_map

INFO_COLUMNS = ("num_frames", "fps", "height", "width", "aspect_ratio", "duration")


@dataclass
class Result:
    """Rows that were processed and rows that failed (each failure row has an `error` column)."""

    rows: list[Row] = field(default_factory=list)
    failures: list[Row] = field(default_factory=list)


def probe(path: str | Path) -> dict[str, str]:
    """The info columns of one file as strings. Raises ValueError when it cannot be read.

    `aspect_ratio` is height / width (Open-Sora's convention); images have fps 0 and 1 frame.
    """
    from sorakit.data.video import probe_video

    meta = probe_video(path)
    return {
        "num_frames": str(int(meta["num_frames"])),
        "fps": fmt_float(meta["fps"], 4),
        "height": str(int(meta["height"])),
        "width": str(int(meta["width"])),
        "aspect_ratio": fmt_float(meta["aspect_ratio"], 4),
        "duration": fmt_float(meta["duration"], 4),
    }


def _probe_safe(path: Path) -> dict[str, str] | str:
    try:
        return probe(path)
    except Exception as exc:  # any decoder failure is a per-file failure, reported, not fatal
        return one_line(exc)


def run_info(rows: list[Row], paths: list[Path], workers: int = 1, progress: bool = True) -> Result:
    """Probe every row's file; input order is kept in both outputs."""
    results: list[dict[str, str] | str] = [""] * len(rows)
    for i, res in parallel_map(_probe_safe, paths, workers, desc="info" if progress else None):
        results[i] = res
    out = Result()
    for row, res in zip(rows, results):
        if isinstance(res, dict):
            out.rows.append({**row, **res})
        else:
            out.failures.append({**row, "error": res})
    return out
