"""The "shapes" world: synthetic text-to-video data that sorakit's built-in model is trained on.

The world itself (colours, shapes, motions, hold-out, caption templates) is defined in
``sorakit.shapes_world``. Every video shows one solid object on a black background: a colour from :data:`COLORS`, a shape from
:data:`SHAPES` (the triangle points up) and a straight motion from :data:`MOTIONS`. On a 64 px canvas the
object's bounding box is 14-22 px and it moves 1.5-2.5 px per frame (both scale with the canvas's shorter
side), at a constant speed over the whole clip (so a clip's continuation is known: the ground truth of
extension), and it stays fully inside the frame in every frame (a long clip whose path would not fit moves
slower). Frames may be non-square (``size=(H, W)``), and one run may mix sizes and lengths (``sizes``,
``lengths``: each video draws one from its own seeded stream, so a video of a given size and length is the same
as in a run of that size and length alone). Captions come from :data:`TRAIN_TEMPLATES` and always name the
colour, the shape and the direction. The colour-shape-motion combinations of :data:`HELDOUT` are left out
of training (``holdout="default"``) so that an evaluation can test composition.

Rendering is anti-aliased (4x4 supersampling of the coverage), so sub-pixel motion is smooth.
Generation is deterministic: video ``i`` of a run with seed ``s`` depends only on ``(s, i)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sorakit.data.video import write_video
from sorakit.errors import UserError
from sorakit.shapes_world import (  # noqa: F401 - the world's names, also read as synth.X
    ALL_COLORS,
    ALL_SHAPES,
    COLORS,
    DIRECTION_PHRASES,
    HELDOUT,
    MOTION_VECTORS,
    MOTIONS,
    MOVE_VERBS,
    MOVE_VERBS_3P,
    NEW_COLORS,
    NEW_SHAPES,
    SHAPES,
    TRAIN_TEMPLATES,
    ShapeSpec,
    check_concepts,
    combos,
    frame_hw,
    is_new,
    make_caption,
    render,
    sample_spec,
    shape_coverage,
)
from sorakit.tools._io import write_csv
from sorakit.tools.executor import Pool, map_items, pool_for, remove_parts


def video_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of video `index` of a run with `seed` (independent of worker count and order)."""
    return np.random.default_rng([int(seed), int(index)])


CSV_COLUMNS = ("path", "text", "num_frames", "fps", "height", "width", "color", "shape", "motion", "horizon")


def _triples(rng: np.random.Generator, holdout: str, concepts: str, new_fraction: float | None) -> list:
    """The triples video draws from: all of the world's, or (`new_fraction`) the new ones with that
    probability and the old ones otherwise (one extra draw, so the default world's videos are unchanged)."""
    triples = combos(holdout, concepts)
    if new_fraction is None:
        return triples
    want_new = bool(rng.random() < new_fraction)
    return [t for t in triples if is_new(t) == want_new]


_SHAPE_TAG = 0x73697A65  # the stream that picks a video's size and length (apart from its spec's stream)
_HORIZON_TAG = 0x686F727A  # the stream that picks whether (and how far) a video's path runs on past its end
_WINDOW_TAG = 0x77696E64  # the stream that picks where on a long path a video's window starts
_SLACK_TAG = 0x736C636B  # the stream that picks the margin a slowed-down path leaves
MAX_HORIZON_RATIO = 3.0  # a long path is planned for up to 3x the clip's frames
MAX_PATH_SLACK = 0.5  # a slowed-down path spans at least half of the free width


def video_shape(
    seed: int, index: int, sizes: Sequence[tuple[int, int]], lengths: Sequence[int]
) -> tuple[tuple[int, int], int]:
    """((H, W), frames) of video `index`: the only choice, or one drawn from its own seeded stream."""
    if len(sizes) == 1 and len(lengths) == 1:
        return tuple(sizes[0]), int(lengths[0])  # type: ignore[return-value]
    rng = np.random.default_rng([int(seed), int(index), _SHAPE_TAG])
    size = sizes[int(rng.integers(len(sizes)))]
    return (int(size[0]), int(size[1])), int(lengths[int(rng.integers(len(lengths)))])


def video_horizon(seed: int, index: int, frames: int, long_paths: float) -> int:
    """The frames video `index`'s path is planned for: its own `frames`, or with probability `long_paths`
    ``frames x U(1, MAX_HORIZON_RATIO]`` (drawn from its own seeded stream): the clip is then the opening of a
    longer video, paced to keep the object inside for all of it (what a loop's first segment must do)."""
    if long_paths <= 0:
        return frames
    rng = np.random.default_rng([int(seed), int(index), _HORIZON_TAG])
    if rng.random() >= long_paths:
        return frames
    return max(frames + 1, int(round(frames * rng.uniform(1.0, MAX_HORIZON_RATIO))))


def video_window(seed: int, index: int, frames: int, planned: int, windows: float) -> int:
    """The first frame of video `index`'s clip on a path planned for `planned` frames: 0 (the opening), or with
    probability `windows` (when the path is longer than the clip) a uniform start in ``0 .. planned -
    frames``, drawn from its own seeded stream: the clip is then a later window of the path, which runs on
    for ``planned - start`` frames from the clip's first one (what a loop's later segments continue)."""
    if windows <= 0 or planned <= frames:
        return 0
    rng = np.random.default_rng([int(seed), int(index), _WINDOW_TAG])
    if rng.random() >= windows:
        return 0
    return int(rng.integers(0, planned - frames + 1))


def video_slack(seed: int, index: int, slack: float) -> float:
    """The share of the free width that video `index`'s path leaves unused when it has to be slowed down to fit
    (:func:`sorakit.shapes_world.sample_spec`): uniform in ``[0, slack]`` from its own seeded stream, 0 when
    `slack` is 0 (the videos of earlier versions)."""
    if slack <= 0:
        return 0.0
    return float(np.random.default_rng([int(seed), int(index), _SLACK_TAG]).uniform(0.0, slack))


def _make_one(job: tuple) -> dict[str, str]:
    index, seed, holdout, sizes, lengths, fps, out_dir, concepts, new_fraction, long_paths, windows, slack = (
        job
    )

    size, frames = video_shape(seed, index, sizes, lengths)
    planned = video_horizon(seed, index, frames, long_paths)
    start = video_window(seed, index, frames, planned, windows)
    horizon = planned - start  # the frames the path runs on for from the clip's first one
    rng = video_rng(seed, index)
    spec = sample_spec(rng, _triples(rng, holdout, concepts, new_fraction), size=size, frames=frames,
                       horizon=planned, slack=video_slack(seed, index, slack))  # fmt: skip
    path = Path(out_dir) / "videos" / f"{index:06d}.mp4"
    if not path.exists():  # resumable: an existing file was written atomically by the same (seed, index)
        write_video(path, render(spec, size, frames, start=start), fps=fps)
    return {
        # relative to the CSV's folder (where every reader resolves it): the dataset can be moved
        "path": f"videos/{index:06d}.mp4",
        "text": spec.caption,
        "num_frames": str(frames),
        "fps": f"{fps:g}",
        "height": str(size[0]),
        "width": str(size[1]),
        "color": spec.color,
        "shape": spec.shape,
        "motion": spec.motion,
        "horizon": str(horizon),
    }


SizeArg = int | tuple[int, int] | Sequence[int | tuple[int, int]]


def size_list(size: SizeArg) -> list[tuple[int, int]]:
    """``64`` / ``(64, 96)`` / ``[64, (64, 96), (96, 64)]`` -> [(H, W), ...]."""
    if isinstance(size, (int, np.integer)):
        return [(int(size), int(size))]
    items = list(size)
    if len(items) == 2 and all(isinstance(v, (int, np.integer)) for v in items):
        return [(int(items[0]), int(items[1]))]  # one (H, W) pair
    return [frame_hw(v) for v in items]


def length_list(frames: int | Sequence[int]) -> list[int]:
    return [int(frames)] if isinstance(frames, (int, np.integer)) else [int(f) for f in frames]


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"64"`` / ``"64x96"`` / ``"64x64,64x96,96x64"`` (H x W) -> [(H, W), ...]; UserError otherwise."""
    out = []
    for part in (p.strip().lower() for p in str(text).split(",")):
        try:
            h, w = (int(v) for v in part.split("x")) if "x" in part else (int(part), int(part))
        except ValueError:
            raise UserError(
                f"--size: expected N or HxW (comma-separated for several), got {part!r}"
            ) from None
        out.append((h, w))
    return out


def parse_lengths(text: str) -> list[int]:
    """``"16"`` / ``"8,16,32"`` / ``"8-32"`` (every length from 8 to 32) -> [frames, ...]; UserError otherwise."""
    out: list[int] = []
    try:
        for part in (p.strip() for p in str(text).split(",")):
            if "-" in part.lstrip("-"):
                lo, hi = (int(v) for v in part.split("-"))
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise UserError(f"--frames: expected N, N,M,... or A-B, got {text!r}") from None
    return out


def check_options(num_videos: int, size: SizeArg, frames: int | Sequence[int], fps: float, holdout: str,
                  concepts: str = "default", new_fraction: float | None = None,
                  long_paths: float = 0.0, windows: float = 0.0, slack: float = 0.0) -> None:  # fmt: skip
    """Raise UserError for a setting synthesize cannot use (before any pool is started)."""
    if num_videos < 1:
        raise UserError(f"--num-videos must be >= 1, got {num_videos}")
    for h, w in size_list(size):
        if min(h, w) < 16 or h % 2 or w % 2:
            shown = h if h == w else f"{h}x{w}"
            raise UserError(f"--size must be even numbers >= 16, got {shown}")
    for f in length_list(frames):
        if f < 2:
            raise UserError(f"--frames must be >= 2, got {f}")
    if fps <= 0:
        raise UserError(f"--fps must be > 0, got {fps}")
    combos(holdout, concepts)  # validates the modes
    if new_fraction is not None and (concepts == "default" or not 0.0 <= new_fraction <= 1.0):
        raise UserError(f"--new-fraction must be in [0, 1] and needs --concepts extended, got {new_fraction}")
    if not 0.0 <= long_paths <= 1.0:
        raise UserError(f"--long-paths must be in [0, 1], got {long_paths}")
    if not 0.0 <= windows <= 1.0:
        raise UserError(f"--path-windows must be in [0, 1], got {windows}")
    if not 0.0 <= slack <= MAX_PATH_SLACK:
        raise UserError(f"--path-slack must be in [0, {MAX_PATH_SLACK}], got {slack}")


def synthesize(
    output: str | os.PathLike,
    num_videos: int,
    seed: int = 0,
    size: SizeArg = 64,
    frames: int | Sequence[int] = 16,
    fps: float = 8,
    holdout: str = "default",
    workers: int = 1,
    pool: Pool | None = None,
    retries: int = 0,
    shard_items: int | None = None,
    progress: bool = False,
    concepts: str = "default",
    new_fraction: float | None = None,
    long_paths: float = 0.0,
    windows: float = 0.0,
    slack: float = 0.0,
) -> Path:
    """Write `num_videos` videos under ``output/videos/`` and ``output/train.csv``; returns the CSV path.

    Videos are made in shards on `pool` (else a local pool of `workers`); finished shards are kept in
    ``output/train.parts/`` until the CSV is written, so an interrupted run resumes. The CSV's paths are
    relative to its folder (``videos/000000.mp4``). ``concepts="extended"`` adds orange and diamond
    (``sorakit.shapes_world``); ``new_fraction`` is then the share of videos showing one of them (default:
    every triple equally likely). `size` (a side, (H, W) or a list of them) and `frames` (an int or a list):
    with several, each video draws its size and length (:func:`video_shape`); the CSV row says which.
    `long_paths`: the share of videos that open a longer path (:func:`video_horizon`); the CSV's ``horizon``
    column says for how many frames each video's path runs on from its first frame (its own length otherwise).
    `windows`: the share of those longer paths shown from a later frame than their opening
    (:func:`video_window`); 0 keeps the videos of earlier versions unchanged. `slack`: a path too long for the
    frame is slowed down to span a random ``1 - U(0, slack)`` of the free width, not all of it
    (:func:`video_slack`), so the object does not touch both borders; 0 keeps earlier videos unchanged.
    """
    check_options(num_videos, size, frames, fps, holdout, concepts, new_fraction, long_paths, windows, slack)
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    out = Path(output)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    sizes, lengths = tuple(size_list(size)), tuple(length_list(frames))
    jobs = [
        (i, seed, holdout, sizes, lengths, float(fps), str(out), concepts, new_fraction, float(long_paths),
         float(windows), float(slack))
        for i in range(num_videos)
    ]  # fmt: skip
    parts = out / "train.parts"
    with pool_for(pool, workers) as ex:
        done = map_items(_make_one, jobs, ex, parts, shard_items, retries, desc="synth" if progress else None)
    failed = [(j[0], v) for j, (ok, v) in zip(jobs, done) if not ok]
    if failed:
        raise UserError(f"{len(failed)} video(s) could not be written; video {failed[0][0]}: {failed[0][1]}")
    path = write_csv(out / "train.csv", [v for _, v in done], CSV_COLUMNS)
    remove_parts(parts)
    return path
