"""Cut clip rows (`path`, `start_frame`, `end_frame`) into their own H.264 files.

Each source video is decoded once, front to back, however many clips it has. Optionally the
shorter side is resized (PyAV/swscale, area filter) and the frame rate changed by picking the
nearest source frame for each output timestamp. Existing outputs are kept (the run resumes) unless
`overwrite`. The output CSV points at the new files; `source_path`, `source_start_frame` and
`source_end_frame` record where each clip came from.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sorakit.data.video import (
    MediaLimits,
    MediaTooLarge,
    check_clip_length,
    declared_frames,
    decode,
    open_video,
    probe_video,
    stream_fps,
    write_video,
)
from sorakit.errors import UserError
from sorakit.fileutil import write_text_atomic
from sorakit.tools._io import Row, fmt_float, one_line
from sorakit.tools.executor import Pool, map_items, pool_for

# Columns that describe the source range; they are replaced by source_* columns in the output.
_RANGE_COLUMNS = ("start_frame", "end_frame", "start", "end", "duration", "aspect_ratio")


@dataclass
class CutOptions:
    output_dir: Path
    short_side: int | None = None  # resize so that min(height, width) == short_side (rounded to even)
    fps: float | None = None  # output frame rate; None keeps the source's
    crf: int = 18
    overwrite: bool = False
    upscale: bool = False  # enlarge sources whose shorter side is below short_side (else keep their size)

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
    also: list[int] = field(default_factory=list)  # rows asking for the very same clip: cut once, for all


@dataclass
class Job:
    source: Path
    clips: list[Clip]
    opts: CutOptions


def resized_size(height: int, width: int, short_side: int | None, upscale: bool = True) -> tuple[int, int]:
    """(height, width) with the shorter side set to `short_side`, aspect kept, both even. Without
    `upscale`, a source already smaller than `short_side` keeps its size (enlarging adds no detail)."""
    if short_side is None or (not upscale and min(height, width) <= short_side):
        return height + height % 2, width + width % 2
    s = short_side + short_side % 2
    if height <= width:
        return s, max(2, 2 * round(width * s / height / 2))
    return max(2, 2 * round(height * s / width / 2)), s


def _clip_size(source: Path | None, height: int, width: int, opts: CutOptions) -> tuple[int, int]:
    if opts.short_side and not opts.upscale and min(height, width) < opts.short_side:
        print(f"sorakit: {source}: {width}x{height} is smaller than --short-side {opts.short_side}: kept at its "
              "size (--upscale enlarges it)", file=sys.stderr, flush=True)  # fmt: skip
    return resized_size(height, width, opts.short_side, opts.upscale)


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
    limits = MediaLimits.from_env()
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
        if end is not None and end - start > limits.max_frames:  # before any list of its frames is made
            try:
                check_clip_length(src, end - start, limits)
            except MediaTooLarge as exc:
                failures.append({**row, "error": str(exc)})
                continue
        tag = ""
        if len(stems[src.stem]) > 1:
            tag = "-" + hashlib.sha1(str(src).encode()).hexdigest()[:8]
        clip = Clip(i, start, end, opts.output_dir / clip_name(src, start, end, tag))
        job = by_source.setdefault(src, Job(src, [], opts))
        same = next((c for c in job.clips if c.out == clip.out), None)
        if same is not None:
            same.also.append(i)
        else:
            job.clips.append(clip)
    return list(by_source.values()), failures


def _output_row(meta: dict) -> dict[str, str]:
    return {
        "num_frames": str(int(meta["num_frames"])),
        "fps": fmt_float(meta["fps"], 4),
        "height": str(int(meta["height"])),
        "width": str(int(meta["width"])),
    }


def cut_source(job: Job) -> list[tuple[int, dict[str, str] | str]]:
    """Cut all clips of one source video. Returns (row index, output columns or error) per clip.

    The source goes through the media guard (:func:`sorakit.data.video.open_video`): a frame size over the
    limit fails its clips before anything is decoded, and so does a clip that starts past the frames the
    container declares (a range such as ``0,1000000000`` on a 24-frame video costs nothing)."""
    results, todo = _reuse_existing(job)
    if not todo:
        return results
    try:
        with open_video(job.source) as (container, stream):
            src_fps = stream_fps(stream)
            if src_fps <= 0:
                return results + [(c.index, f"{job.source}: unknown frame rate") for c in todo]
            todo, beyond = _within(todo, declared_frames(container, stream), job.source)
            plan = _ClipPlan(todo, src_fps, job.opts, job.source)
            n_decoded, decode_error = 0, ""
            try:
                for i, frame in enumerate(decode(container, stream, job.source)):
                    n_decoded = i + 1
                    if plan.finished_before(i):
                        break
                    results += plan.take(i, frame)
            except Exception as exc:  # a truncated or corrupt stream: clips not completed fail below
                decode_error = f" (decoding stopped: {one_line(exc)})"
            return results + beyond + plan.leftovers(job.source, n_decoded, decode_error)
    except MediaTooLarge as exc:  # its message names the file and the limit
        return results + [(c.index, str(exc)) for c in todo]
    except Exception as exc:
        return results + [(c.index, f"cannot open {job.source}: {one_line(exc)}") for c in todo]


def _too_long(source: Path | None, frames: int) -> str:
    try:
        check_clip_length(source or "", frames, MediaLimits.from_env())
    except MediaTooLarge as exc:
        return str(exc)
    return ""


def _within(clips: list[Clip], declared: int | None, source: Path) -> tuple[list[Clip], list]:
    """The clips that start inside the video's declared length, and a failure for each other one."""
    if declared is None:
        return clips, []
    tolerance = max(2, math.ceil(0.02 * declared))  # containers round their durations
    inside = [c for c in clips if c.start < declared + tolerance]
    beyond = [
        (c.index, f"{source} has {declared} frames; clip starts at frame {c.start}")
        for c in clips
        if c not in inside
    ]
    return inside, beyond


def _reuse_existing(job: Job) -> tuple[list[tuple[int, dict[str, str] | str]], list[Clip]]:
    """Clips whose output file is already there and readable (unless `overwrite`), and the rest."""
    results: list[tuple[int, dict[str, str] | str]] = []
    todo: list[Clip] = []
    for c in job.clips:
        if c.out.is_file() and not job.opts.overwrite:
            try:
                results.append((c.index, {"path": str(c.out), **_output_row(probe_video(c.out))}))
                continue
            except Exception:  # an unreadable leftover is redone
                pass
        todo.append(c)
    return results, todo


class _ClipPlan:
    """The clips of one source being collected during a single front-to-back decode.

    A clip with an end keeps only the source frames its (resampled) output needs and is written as soon
    as its last frame is decoded; an open-ended clip keeps every frame until the stream ends.
    """

    def __init__(self, clips: list[Clip], src_fps: float, opts: CutOptions, source: Path | None = None):
        self.source = source
        self.opts, self.src_fps, self.dst_fps = opts, src_fps, opts.fps or src_fps
        self.pending = sorted(clips, key=lambda c: c.start)
        self.need = {
            c.index: [c.start + k for k in resample_indices(c.end - c.start, src_fps, opts.fps)]
            for c in self.pending
            if c.end is not None
        }
        self.need_set = {k: set(v) for k, v in self.need.items()}
        self.got: dict[int, dict[int, np.ndarray]] = {k: {} for k in self.need}
        self.whole: dict[int, list[np.ndarray]] = {c.index: [] for c in self.pending if c.end is None}
        self.last_needed = max((c.end for c in self.pending if c.end is not None), default=-1)
        self.size: tuple[int, int] | None = None
        self.max_frames = MediaLimits.from_env().max_frames

    def finished_before(self, i: int) -> bool:
        """True when no clip needs frame `i` or any later one."""
        return not self.whole and i >= self.last_needed

    def take(self, i: int, frame) -> list[tuple[int, dict[str, str] | str]]:
        """Give frame `i` to the clips that use it; returns the clips completed by it."""
        users = [c for c in self.pending if i >= c.start and (c.end is None or i < c.end)]
        if not users:
            return []
        if self.size is None:
            self.size = _clip_size(self.source, frame.height, frame.width, self.opts)
        h, w = self.size
        arr = frame.to_ndarray(format="rgb24", height=h, width=w, interpolation="AREA")
        done = []
        for c in users:
            if c.end is None:
                self.whole[c.index].append(arr)
                if len(self.whole[c.index]) > self.max_frames:  # an open-ended clip over the limit
                    done.append((c.index, _too_long(self.source, len(self.whole.pop(c.index)))))
                    self.pending.remove(c)
            elif i in self.need_set[c.index]:
                self.got[c.index][i] = arr
            if c.end is not None and i == c.end - 1:
                got = self.got.pop(c.index)
                done.append(_finish(c, self.need.pop(c.index), got, self.dst_fps, self.opts, write_video))
                self.pending.remove(c)
        return done

    def leftovers(self, source: Path, n_decoded: int, decode_error: str) -> list:
        """Write the open-ended clips once the stream has ended; every other clip left is a failure."""
        results: list[tuple[int, dict[str, str] | str]] = []
        for c in self.pending:
            if c.end is None and self.whole[c.index] and not decode_error:
                offsets = resample_indices(len(self.whole[c.index]), self.src_fps, self.opts.fps)
                frames = np.stack([self.whole[c.index][k] for k in offsets])
                results.append(_write(c, frames, self.dst_fps, self.opts, write_video))
            elif c.end is None:
                results.append((c.index, f"{source}: no frames from {c.start}{decode_error}"))
            else:
                results.append(
                    (
                        c.index,
                        f"{source} has only {n_decoded} decodable frames; clip needs "
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


SETTINGS = ".cut-settings.json"


def check_settings(opts: CutOptions) -> None:
    """Record the settings the clips of ``opts.output_dir`` are cut with (before the first clip), and refuse
    a run with other ones: existing clips are kept on a resume, so a changed ``--short-side`` would
    otherwise leave clips of the old size in the output without a word. ``--overwrite`` re-cuts them."""
    path = opts.output_dir / SETTINGS
    now = {"short_side": opts.short_side, "fps": opts.fps, "crf": opts.crf, "upscale": opts.upscale}
    try:
        then = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        then = None  # unreadable: treated as unknown, rewritten below
    if isinstance(then, dict) and not opts.overwrite:
        diff = [k for k in now if k in then and then[k] != now[k]]
        if diff:
            flags = "; ".join(f"--{k.replace('_', '-')} {then[k]} then, {now[k]} now" for k in diff)
            raise UserError(
                f"the clips in {opts.output_dir} were cut with other settings ({flags}); they would be kept as "
                "they are: pass --overwrite to cut them again, or choose another --output-dir"
            )
    write_text_atomic(path, json.dumps(now, indent=2, allow_nan=False) + "\n")


def remove_partial_clips(folder: Path, names: list[str]) -> None:
    """Remove the hidden temporaries (``.NAME-STEM.XXXXXXXX.mp4``) that a writer killed mid-clip left for
    the clips `names`: they can never complete, and a clip already finished would never clean them up."""
    stems = {Path(n).stem: Path(n).suffix for n in names}
    for entry in folder.iterdir():
        name = entry.name
        if not name.startswith(".") or len(name) < 11:
            continue
        stem, dot, rest = name[1:].rpartition(".")
        head, _, tag = stem.rpartition(".")
        if dot and len(tag) == 8 and stems.get(head) == "." + rest and entry.is_file():
            entry.unlink(missing_ok=True)


@dataclass
class Result:
    rows: list[Row] = field(default_factory=list)
    failures: list[Row] = field(default_factory=list)


def run_cut(
    rows: list[Row],
    paths: list[Path],
    opts: CutOptions,
    workers: int = 1,
    progress: bool = True,
    pool: Pool | None = None,
    parts_dir: str | os.PathLike | None = None,
    retries: int = 0,
    shard_items: int | None = None,
) -> Result:
    """Cut every clip row; the output keeps the input order. Each row ends in `rows` or `failures`.

    One item per source video, run on `pool` (else a local pool of `workers`) in shards, as
    :func:`sorakit.tools.executor.map_items` describes.
    """
    opts.validate()
    opts.output_dir.mkdir(parents=True, exist_ok=True)
    check_settings(opts)
    jobs, failures = plan_jobs(rows, paths, opts)
    remove_partial_clips(opts.output_dir, [c.out.name for job in jobs for c in job.clips])
    outcome: dict[int, dict[str, str] | str] = {}
    with pool_for(pool, workers) as ex:
        done = map_items(
            cut_source, jobs, ex, parts_dir, shard_items, retries,
            desc="cut" if progress else None, unit="video",
        )  # fmt: skip
    for job, (ok, res) in zip(jobs, done):
        outcome.update(res if ok else [(c.index, res) for c in job.clips])
        outcome.update({j: outcome[c.index] for c in job.clips for j in c.also if c.index in outcome})
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
