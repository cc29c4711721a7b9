"""Cut clip rows (`path`, `start_frame`, `end_frame`) into their own H.264 files.

Each source video is decoded once, front to back, however many clips it has. Optionally the
shorter side is resized (PyAV/swscale, area filter) and the frame rate changed by picking the
nearest source frame for each output timestamp. Existing outputs are kept (the run resumes) unless
`overwrite`. The output CSV points at the new files; `source_path`, `source_start_frame` and
`source_end_frame` record where each clip came from.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sorakit.errors import UserError
from sorakit.tools._io import Row, fmt_float, one_line, parallel_map

# Columns that describe the source range; they are replaced by source_* columns in the output.
_RANGE_COLUMNS = ("start_frame", "end_frame", "start", "end", "duration", "aspect_ratio")


@dataclass
class CutOptions:
    output_dir: Path
    short_side: int | None = None  # resize so that min(height, width) == short_side (rounded to even)
    fps: float | None = None  # output frame rate; None keeps the source's
    crf: int = 18
    overwrite: bool = False

    def validate(self) -> None:
        if self.short_side is not None and self.short_side < 2:
            raise UserError(f"--short-side must be >= 2, got {self.short_side}")
        if self.fps is not None and not (0 < self.fps <= 1000):
            raise UserError(f"--fps must be in (0, 1000], got {self.fps}")
        if not 0 <= self.crf <= 51:
            raise UserError(f"--crf must be in [0, 51], got {self.crf}")


@dataclass
class Clip:
    index: int  # row index in the input CSV
    start: int
    end: int | None  # exclusive; None = to the end of the video
    out: Path


@dataclass
class Job:
    source: Path
    clips: list[Clip]
    opts: CutOptions


def resized_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(height, width) with the shorter side set to `short_side`, aspect kept, both even."""
    if short_side is None:
        return height + height % 2, width + width % 2
    s = short_side + short_side % 2
    if height <= width:
        return s, max(2, 2 * round(width * s / height / 2))
    return max(2, 2 * round(height * s / width / 2)), s


def resample_indices(n: int, src_fps: float, dst_fps: float | None) -> list[int]:
    """Source frame offsets (0..n-1) for each output frame when changing the frame rate.

    Output frame k is shown at k / dst_fps; it takes the source frame nearest to that time. The clip
    keeps its duration: round(n * dst_fps / src_fps) frames (at least 1).
    """
    if dst_fps is None or abs(dst_fps - src_fps) < 1e-6:
        return list(range(n))
    m = max(1, math.floor(n * dst_fps / src_fps + 0.5))
    return [min(n - 1, math.floor(k * src_fps / dst_fps + 0.5)) for k in range(m)]


def clip_name(source: Path, start: int, end: int | None, tag: str = "") -> str:
    end_s = f"{end:06d}" if end is not None else "end"
    return f"{source.stem}{tag}_{start:06d}-{end_s}.mp4"


def plan_jobs(rows: list[Row], paths: list[Path], opts: CutOptions) -> tuple[list[Job], list[Row]]:
    """Group the rows by source video. Rows with unusable ranges become failures (with `error`).

    Output names are `{stem}_{start}-{end}.mp4`; when two different sources share a stem, a short
    hash of the source path is added so names never collide (deterministic for a given CSV).
    """
    failures: list[Row] = []
    stems: dict[str, set[Path]] = {}
    for p in paths:
        stems.setdefault(p.stem, set()).add(p)
    by_source: dict[Path, Job] = {}
    for i, (row, src) in enumerate(zip(rows, paths)):
        try:
            start = int(row.get("start_frame") or 0)
            end = int(row["end_frame"]) if row.get("end_frame") else None
        except ValueError:
            failures.append({**row, "error": "start_frame/end_frame are not integers"})
            continue
        if start < 0 or (end is not None and end <= start):
            failures.append({**row, "error": f"empty or negative frame range [{start}, {end})"})
            continue
        tag = ""
        if len(stems[src.stem]) > 1:
            tag = "-" + hashlib.sha1(str(src).encode()).hexdigest()[:8]
        clip = Clip(i, start, end, opts.output_dir / clip_name(src, start, end, tag))
        by_source.setdefault(src, Job(src, [], opts)).clips.append(clip)
    return list(by_source.values()), failures


def _output_row(meta: dict) -> dict[str, str]:
    return {
        "num_frames": str(int(meta["num_frames"])),
        "fps": fmt_float(meta["fps"], 4),
        "height": str(int(meta["height"])),
        "width": str(int(meta["width"])),
    }


def cut_source(job: Job) -> list[tuple[int, dict[str, str] | str]]:
    """Cut all clips of one source video. Returns (row index, output columns or error) per clip."""
    import av

    from sorakit.data.video import probe_video, write_video

    opts = job.opts
    results: list[tuple[int, dict[str, str] | str]] = []
    todo: list[Clip] = []
    for c in job.clips:
        if c.out.is_file() and not opts.overwrite:
            try:
                results.append((c.index, {"path": str(c.out), **_output_row(probe_video(c.out))}))
                continue
            except Exception:  # an unreadable leftover is redone
                pass
        todo.append(c)
    if not todo:
        return results
    try:
        container = av.open(str(job.source))
    except Exception as exc:
        return results + [(c.index, f"cannot open {job.source}: {one_line(exc)}") for c in todo]
    with container:
        if not container.streams.video:
            return results + [(c.index, f"{job.source}: no video stream") for c in todo]
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        src_fps = float(rate) if rate else 0.0
        if src_fps <= 0:
            return results + [(c.index, f"{job.source}: unknown frame rate") for c in todo]
        dst_fps = opts.fps or src_fps
        # per clip: the source frame indices it needs (after frame-rate change) and what it collected
        need: dict[int, list[int]] = {}
        need_set: dict[int, set[int]] = {}
        got: dict[int, dict[int, np.ndarray]] = {}
        pending = sorted(todo, key=lambda c: c.start)
        open_ended = [c for c in pending if c.end is None]
        for c in pending:
            if c.end is not None:
                need[c.index] = [c.start + k for k in resample_indices(c.end - c.start, src_fps, opts.fps)]
                need_set[c.index] = set(need[c.index])
                got[c.index] = {}
        last_needed = max((c.end for c in pending if c.end is not None), default=-1)
        whole: dict[int, list[np.ndarray]] = {c.index: [] for c in open_ended}
        size: tuple[int, int] | None = None
        n_decoded = 0
        decode_error = ""
        try:
            for i, frame in enumerate(container.decode(stream)):
                n_decoded = i + 1
                if not open_ended and i >= last_needed:
                    break
                users = [c for c in pending if i >= c.start and (c.end is None or i < c.end)]
                if not users:
                    continue
                if size is None:
                    size = resized_size(frame.height, frame.width, opts.short_side)
                arr = frame.to_ndarray(format="rgb24", height=size[0], width=size[1], interpolation="AREA")
                for c in users:
                    if c.end is None:
                        whole[c.index].append(arr)
                    elif i in need_set[c.index]:
                        got[c.index][i] = arr
                for c in [c for c in users if c.end is not None and i == c.end - 1]:
                    results.append(
                        _finish(c, need.pop(c.index), got.pop(c.index), dst_fps, opts, write_video)
                    )
                    pending.remove(c)
        except Exception as exc:  # a truncated or corrupt stream: clips not completed fail below
            decode_error = f" (decoding stopped: {one_line(exc)})"
        for c in pending:
            if c.end is None and whole[c.index] and not decode_error:
                offsets = resample_indices(len(whole[c.index]), src_fps, opts.fps)
                frames = np.stack([whole[c.index][k] for k in offsets])
                results.append(_write(c, frames, dst_fps, opts, write_video))
            elif c.end is None:
                results.append((c.index, f"{job.source}: no frames from {c.start}{decode_error}"))
            else:
                results.append(
                    (
                        c.index,
                        f"{job.source} has only {n_decoded} decodable frames; clip needs "
                        f"[{c.start}, {c.end}){decode_error}",
                    )
                )
    return results


def _finish(c: Clip, idx: list[int], got: dict[int, np.ndarray], fps: float, opts: CutOptions, write_video):
    frames = np.stack([got[i] for i in idx])
    return _write(c, frames, fps, opts, write_video)


def _write(c: Clip, frames: np.ndarray, fps: float, opts: CutOptions, write_video):
    try:
        write_video(c.out, frames, fps=fps, crf=opts.crf)
    except Exception as exc:
        return c.index, f"cannot write {c.out}: {one_line(exc)}"
    t, h, w, _ = frames.shape
    return c.index, {
        "path": str(c.out),
        **_output_row({"num_frames": t, "fps": fps, "height": h, "width": w}),
    }


def _cut_safe(job: Job) -> list[tuple[int, dict[str, str] | str]]:
    try:
        return cut_source(job)
    except Exception as exc:
        return [(c.index, one_line(exc)) for c in job.clips]


@dataclass
class Result:
    rows: list[Row] = field(default_factory=list)
    failures: list[Row] = field(default_factory=list)


def run_cut(
    rows: list[Row], paths: list[Path], opts: CutOptions, workers: int = 1, progress: bool = True
) -> Result:
    """Cut every clip row; the output keeps the input order. Each row ends in `rows` or `failures`."""
    opts.validate()
    opts.output_dir.mkdir(parents=True, exist_ok=True)
    jobs, failures = plan_jobs(rows, paths, opts)
    outcome: dict[int, dict[str, str] | str] = {}
    for _, res in parallel_map(
        _cut_safe, jobs, workers, desc="cut" if progress else None, processes=True, unit="video"
    ):
        outcome.update(res)
    out = Result(failures=list(failures))
    for i, (row, src) in enumerate(zip(rows, paths)):
        if i not in outcome:
            continue
        res = outcome[i]
        base = {k: v for k, v in row.items() if k not in _RANGE_COLUMNS}
        if isinstance(res, str):
            out.failures.append({**row, "error": res})
            continue
        start = int(row.get("start_frame") or 0)
        out.rows.append(
            {
                **base,
                **res,
                "source_path": str(src),
                "source_start_frame": str(start),
                "source_end_frame": row.get("end_frame", ""),
            }
        )
    return out
