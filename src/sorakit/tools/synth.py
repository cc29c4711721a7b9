"""The "shapes" world: synthetic text-to-video data that sorakit's built-in model is trained on.

The world itself (colours, shapes, motions, hold-out, caption templates) is defined in
``sorakit.shapes_world``. Every video shows one solid object on a black background: a colour from :data:`COLORS`, a shape from
:data:`SHAPES` (the triangle points up) and a straight motion from :data:`MOTIONS`. On a 64 px canvas the
object's bounding box is 14-22 px and it moves 1.5-2.5 px per frame (both scale with the canvas), and it
stays fully inside the frame in every frame. Captions come from :data:`TRAIN_TEMPLATES` and always name the
colour, the shape and the direction. The colour-shape-motion combinations of :data:`HELDOUT` are left out
of training (``holdout="default"``) so that an evaluation can test composition.

Rendering is anti-aliased (4x4 supersampling of the coverage), so sub-pixel motion is smooth.
Generation is deterministic: video ``i`` of a run with seed ``s`` depends only on ``(s, i)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
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
    check_concepts,
    combos,
    is_new,
    make_caption,
)
from sorakit.tools._io import write_csv
from sorakit.tools.executor import Pool, map_items, pool_for, remove_parts


@dataclass(frozen=True)
class ShapeSpec:
    """One video of the shapes world (pixel units of the full canvas)."""

    color: str
    shape: str
    motion: str
    side: float  # bounding-box side, px
    speed: float  # px per frame
    x0: float  # top-left corner of the bounding box in frame 0
    y0: float
    caption: str


def sample_spec(
    rng: np.random.Generator,
    triples: Sequence[tuple[str, str, str]],
    size: int = 64,
    frames: int = 16,
) -> ShapeSpec:
    """Draw one video: a triple, object size and speed, and a start position that keeps the object inside."""
    color, shape, motion = triples[rng.integers(len(triples))]
    scale = size / 64.0
    side = float(rng.uniform(14.0, 22.0)) * scale
    speed = float(rng.uniform(1.5, 2.5)) * scale
    travel = speed * (frames - 1)
    dx, dy = MOTION_VECTORS[motion]
    # along the motion axis the whole path must fit; across it any position inside the frame
    free = size - side
    if travel > free:  # tiny canvases / long videos: slow down so the object never leaves
        speed = free / max(frames - 1, 1)
        travel = speed * (frames - 1)
    lo_x, hi_x = (travel if dx < 0 else 0.0), (free - travel if dx > 0 else free)
    lo_y, hi_y = (travel if dy < 0 else 0.0), (free - travel if dy > 0 else free)
    x0 = float(rng.uniform(lo_x, hi_x))
    y0 = float(rng.uniform(lo_y, hi_y))
    return ShapeSpec(color, shape, motion, side, speed, x0, y0, make_caption(color, shape, motion, rng))


def shape_coverage(
    shape: str, height: int, width: int, x: float, y: float, side: float, ss: int = 4
) -> np.ndarray:
    """Fraction of each pixel covered by the shape whose bounding box has top-left (x, y) and side `side`.

    Returns float32 ``[H, W]`` in [0, 1], computed by ``ss`` x ``ss`` supersampling.
    """
    offs = (np.arange(ss, dtype=np.float32) + 0.5) / ss
    ys = (np.arange(height, dtype=np.float32)[:, None] + offs[None, :]).reshape(-1)  # [H*ss]
    xs = (np.arange(width, dtype=np.float32)[:, None] + offs[None, :]).reshape(-1)  # [W*ss]
    u = (xs[None, :] - x) / side  # [1, W*ss] position inside the box, 0..1
    v = (ys[:, None] - y) / side  # [H*ss, 1]
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if shape == "square":
        mask = inside
    elif shape == "circle":
        mask = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    elif shape == "triangle":  # apex at the top centre, base along the bottom edge
        mask = inside & (np.abs(u - 0.5) <= 0.5 * v)
    elif shape == "diamond":  # a square turned 45 degrees, its corners on the box's edge midpoints
        mask = np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5
    else:
        raise ValueError(f"unknown shape {shape!r}")
    mask = np.broadcast_to(mask, (height * ss, width * ss)).astype(np.float32)
    return mask.reshape(height, ss, width, ss).mean(axis=(1, 3))


def render(spec: ShapeSpec, size: int = 64, frames: int = 16) -> np.ndarray:
    """Frames ``[T, H, W, 3]`` uint8 of one video."""
    dx, dy = MOTION_VECTORS[spec.motion]
    rgb = np.asarray(ALL_COLORS[spec.color], dtype=np.float32)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        x = spec.x0 + dx * spec.speed * t
        y = spec.y0 + dy * spec.speed * t
        cov = shape_coverage(spec.shape, size, size, x, y, spec.side)
        out[t] = np.clip(np.rint(cov[..., None] * rgb), 0, 255).astype(np.uint8)
    return out


def video_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of video `index` of a run with `seed` (independent of worker count and order)."""
    return np.random.default_rng([int(seed), int(index)])


CSV_COLUMNS = ("path", "text", "num_frames", "fps", "height", "width", "color", "shape", "motion")


def _triples(rng: np.random.Generator, holdout: str, concepts: str, new_fraction: float | None) -> list:
    """The triples video draws from: all of the world's, or (`new_fraction`) the new ones with that
    probability and the old ones otherwise (one extra draw, so the default world's videos are unchanged)."""
    triples = combos(holdout, concepts)
    if new_fraction is None:
        return triples
    want_new = bool(rng.random() < new_fraction)
    return [t for t in triples if is_new(t) == want_new]


def _make_one(job: tuple[int, int, str, int, int, float, str, str, float | None]) -> dict[str, str]:
    index, seed, holdout, size, frames, fps, out_dir, concepts, new_fraction = job

    rng = video_rng(seed, index)
    spec = sample_spec(rng, _triples(rng, holdout, concepts, new_fraction), size=size, frames=frames)
    path = Path(out_dir) / "videos" / f"{index:06d}.mp4"
    if not path.exists():  # resumable: an existing file was written atomically by the same (seed, index)
        write_video(path, render(spec, size, frames), fps=fps)
    return {
        # relative to the CSV's folder (where every reader resolves it): the dataset can be moved
        "path": f"videos/{index:06d}.mp4",
        "text": spec.caption,
        "num_frames": str(frames),
        "fps": f"{fps:g}",
        "height": str(size),
        "width": str(size),
        "color": spec.color,
        "shape": spec.shape,
        "motion": spec.motion,
    }


def check_options(num_videos: int, size: int, frames: int, fps: float, holdout: str, concepts: str = "default",
                  new_fraction: float | None = None) -> None:  # fmt: skip
    """Raise UserError for a setting synthesize cannot use (before any pool is started)."""
    if num_videos < 1:
        raise UserError(f"--num-videos must be >= 1, got {num_videos}")
    if size < 16 or size % 2:
        raise UserError(f"--size must be an even number >= 16, got {size}")
    if frames < 2:
        raise UserError(f"--frames must be >= 2, got {frames}")
    if fps <= 0:
        raise UserError(f"--fps must be > 0, got {fps}")
    combos(holdout, concepts)  # validates the modes
    if new_fraction is not None and (concepts == "default" or not 0.0 <= new_fraction <= 1.0):
        raise UserError(f"--new-fraction must be in [0, 1] and needs --concepts extended, got {new_fraction}")


def synthesize(
    output: str | os.PathLike,
    num_videos: int,
    seed: int = 0,
    size: int = 64,
    frames: int = 16,
    fps: float = 8,
    holdout: str = "default",
    workers: int = 1,
    pool: Pool | None = None,
    retries: int = 0,
    shard_items: int | None = None,
    progress: bool = False,
    concepts: str = "default",
    new_fraction: float | None = None,
) -> Path:
    """Write `num_videos` videos under ``output/videos/`` and ``output/train.csv``; returns the CSV path.

    Videos are made in shards on `pool` (else a local pool of `workers`); finished shards are kept in
    ``output/train.parts/`` until the CSV is written, so an interrupted run resumes. The CSV's paths are
    relative to its folder (``videos/000000.mp4``). ``concepts="extended"`` adds orange and diamond
    (``sorakit.shapes_world``); ``new_fraction`` is then the share of videos showing one of them (default:
    every triple equally likely).
    """
    check_options(num_videos, size, frames, fps, holdout, concepts, new_fraction)
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    out = Path(output)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    jobs = [
        (i, seed, holdout, size, frames, float(fps), str(out), concepts, new_fraction)
        for i in range(num_videos)
    ]
    parts = out / "train.parts"
    with pool_for(pool, workers) as ex:
        done = map_items(_make_one, jobs, ex, parts, shard_items, retries, desc="synth" if progress else None)
    failed = [(j[0], v) for j, (ok, v) in zip(jobs, done) if not ok]
    if failed:
        raise UserError(f"{len(failed)} video(s) could not be written; video {failed[0][0]}: {failed[0][1]}")
    path = write_csv(out / "train.csv", [v for _, v in done], CSV_COLUMNS)
    remove_parts(parts)
    return path
