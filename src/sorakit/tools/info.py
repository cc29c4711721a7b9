"""Probe videos and images: fill `num_frames`, `fps`, `height`, `width`, `aspect_ratio`, `duration`.

Unreadable files are collected as failures (with the reason), never fatal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sorakit.data.video import declared_frames, is_image, open_video, probe_video, stream_fps
from sorakit.tools._io import Row, fmt_float
from sorakit.tools.executor import Pool, map_items, pool_for

INFO_COLUMNS = ("num_frames", "fps", "height", "width", "aspect_ratio", "duration")


@dataclass
class Result:
    """Rows that were processed and rows that failed (each failure row has an `error` column)."""

    rows: list[Row] = field(default_factory=list)
    failures: list[Row] = field(default_factory=list)


def expected_frames(path: str | Path) -> int | None:
    """Frames the container says the video has (from the video stream's frame count or duration, or the
    file's duration when it has no other stream); None when it does not say. Reads headers only."""
    with open_video(path) as (container, stream):
        return declared_frames(container, stream)


def check_complete(path: str | Path, decoded: int) -> None:
    """Raise ValueError when fewer frames decode than the container announces (a truncated file).

    A shortfall of up to 2 frames or 2% is tolerated (containers round durations).
    """
    want = expected_frames(path)
    if want is not None and decoded < want - max(2, 0.02 * want):
        raise ValueError(f"truncated or corrupt: only {decoded} of {want} frames decodable")


def probe(path: str | Path, fast: bool = False) -> dict[str, str]:
    """The info columns of one file as strings. Raises ValueError when it cannot be read.

    By default every frame is decoded: exact counts, and truncated files are caught. `fast` trusts
    the container's frame count/duration instead (headers only; decodes when the container has none).
    `aspect_ratio` is height / width (Open-Sora's convention); images have fps 0 and 1 frame.
    """
    meta = _probe_headers(path) if fast and not is_image(path) else None
    if meta is None:
        meta = probe_video(path)
        if meta["fps"]:  # not an image
            check_complete(path, int(meta["num_frames"]))
    return {
        "num_frames": str(int(meta["num_frames"])),
        "fps": fmt_float(meta["fps"], 4),
        "height": str(int(meta["height"])),
        "width": str(int(meta["width"])),
        "aspect_ratio": fmt_float(meta["aspect_ratio"], 4),
        "duration": fmt_float(meta["duration"], 4),
    }


def _probe_headers(path: str | Path) -> dict | None:
    with open_video(path) as (container, stream):
        n = declared_frames(container, stream)
        h, w = stream.codec_context.height, stream.codec_context.width
        fps = stream_fps(stream)
    if not n or not fps:
        return None
    return {
        "num_frames": n,
        "fps": fps,
        "height": h,
        "width": w,
        "aspect_ratio": h / w if w else 0.0,
        "duration": n / fps,
    }


def _probe_item(job: tuple[Path, bool]) -> dict[str, str]:
    return probe(*job)


def run_info(
    rows: list[Row],
    paths: list[Path],
    workers: int = 1,
    progress: bool = True,
    fast: bool = False,
    pool: Pool | None = None,
    parts_dir: str | os.PathLike | None = None,
    retries: int = 0,
    shard_items: int | None = None,
) -> Result:
    """Probe every row's file; input order is kept in both outputs. Runs on `pool` (else a local pool
    of `workers`) in shards, as :func:`sorakit.tools.executor.map_items` describes."""
    jobs = [(p, fast) for p in paths]
    with pool_for(pool, workers) as ex:
        results = map_items(
            _probe_item, jobs, ex, parts_dir, shard_items, retries, desc="info" if progress else None
        )
    out = Result()
    for row, (ok, res) in zip(rows, results):
        if ok:
            out.rows.append({**row, **res})
        else:
            out.failures.append({**row, "error": res})
    return out
