"""The "shapes" world, defined once: the colours, shapes, motions, held-out combinations and caption
templates that the data generator (``sorakit.tools.synth``) draws from and the evaluator
(``sorakit.eval.shapes``) scores against. Neither owns it, so neither imports the other.

Two sets of concepts: ``"default"`` is the world the built-in model was trained on (:data:`COLORS`,
:data:`SHAPES`); ``"extended"`` adds concepts that model never saw -- the colour orange and the shape
diamond (:data:`NEW_COLORS`, :data:`NEW_SHAPES`), in every combination with the old ones -- for LoRA
fine-tuning (``make lora-demo``). Nothing changes for ``"default"``.

Videos of the world are drawn (:func:`sample_spec`) and rendered (:func:`render`) here too: the data generator
writes them, and the evaluator renders the reference frames and clips of image-to-video and extension.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sorakit.errors import UserError

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# concepts the built-in model never saw (the "extended" world); a diamond is a square turned 45 degrees, its
# corners touching the midpoints of the usual bounding box
NEW_COLORS: dict[str, tuple[int, int, int]] = {"orange": (255, 128, 0)}
NEW_SHAPES: tuple[str, ...] = ("diamond",)
ALL_COLORS: dict[str, tuple[int, int, int]] = COLORS | NEW_COLORS
ALL_SHAPES: tuple[str, ...] = SHAPES + NEW_SHAPES
CONCEPTS: tuple[str, ...] = ("default", "extended")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down")
# unit displacement (dx, dy) per motion, image coordinates (y grows downwards)
MOTION_VECTORS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

# Colour-shape-motion combinations never shown in training with holdout="default": every colour,
# shape and motion still appears in training, only these triples are new.
HELDOUT: tuple[tuple[str, str, str], ...] = (
    ("red", "triangle", "up"),
    ("green", "circle", "left"),
    ("blue", "square", "down"),
    ("yellow", "triangle", "right"),
    ("cyan", "circle", "down"),
    ("magenta", "square", "up"),
    ("red", "square", "left"),
    ("blue", "circle", "right"),
)

# Direction phrasings used in training captions (the "to the" forms need the template "{move} {dir}").
DIRECTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("left", "to the left", "leftward", "leftwards", "towards the left"),
    "right": ("right", "to the right", "rightward", "rightwards", "towards the right"),
    "up": ("up", "upward", "upwards", "towards the top"),
    "down": ("down", "downward", "downwards", "towards the bottom"),
}
MOVE_VERBS: tuple[str, ...] = ("moving", "going", "travelling", "sliding", "drifting")
MOVE_VERBS_3P: tuple[str, ...] = ("moves", "goes", "travels", "slides")

# Caption templates used for training: {a} is "a "/"" (with or without article), {c} colour, {s} shape,
# {m} a present participle, {v} a third-person verb, {d} a direction phrase.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "{a}{c} {s} {m} {d}",
    "{a}{c} {s} {v} {d}",
    "{a}{c} {s} {m} {d} on a black background",
    "{a}{c} {s} that {v} {d}",
    "{a}{c} {s}, {m} {d}",
    "{a}{c} {s} is {m} {d}",
    "{a}{s} in {c} {m} {d}",
    "{a}{c} colored {s} {m} {d}",
    "{a}{c} {s} {v} {d} across the frame",
    "{a}solid {c} {s} {m} {d}",
    "{a}{c} {s} {m} {d} over black",
    "{a}{s}, {c}, {m} {d}",
)


def check_concepts(concepts: str) -> None:
    if concepts not in CONCEPTS:
        raise UserError(f"--concepts must be 'default' or 'extended', got {concepts!r}")


def is_new(triple: tuple[str, str, str]) -> bool:
    """True when a colour-shape-motion triple names a concept of the extended world (orange, diamond)."""
    return triple[0] in NEW_COLORS or triple[1] in NEW_SHAPES


def combos(holdout: str = "default", concepts: str = "default") -> list[tuple[str, str, str]]:
    """The colour-shape-motion triples used for training under a hold-out mode ('default' or 'none'), in
    the default world or the extended one (old triples first, in the same order, then the new ones)."""
    if holdout not in ("default", "none"):
        raise UserError(f"--holdout must be 'default' or 'none', got {holdout!r}")
    check_concepts(concepts)
    held = set(HELDOUT) if holdout == "default" else set()
    old = [(c, s, m) for c in COLORS for s in SHAPES for m in MOTIONS if (c, s, m) not in held]
    if concepts == "default":
        return old
    new = [(c, s, m) for c in ALL_COLORS for s in ALL_SHAPES for m in MOTIONS if is_new((c, s, m))]
    return old + new


def make_caption(color: str, shape: str, motion: str, rng: np.random.Generator) -> str:
    """A random training caption naming the colour, the shape and the direction."""
    template = TRAIN_TEMPLATES[rng.integers(len(TRAIN_TEMPLATES))]
    article = "a " if rng.random() < 0.6 else ""
    return template.format(
        a=article,
        c=color,
        s=shape,
        m=MOVE_VERBS[rng.integers(len(MOVE_VERBS))],
        v=MOVE_VERBS_3P[rng.integers(len(MOVE_VERBS_3P))],
        d=DIRECTION_PHRASES[motion][rng.integers(len(DIRECTION_PHRASES[motion]))],
    )


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


def frame_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """``64`` -> (64, 64); ``(64, 96)`` -> (64, 96) (height, width)."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def sample_spec(
    rng: np.random.Generator,
    triples: Sequence[tuple[str, str, str]],
    size: int | tuple[int, int] = 64,
    frames: int = 16,
    horizon: int | None = None,
    slack: float = 0.0,
) -> ShapeSpec:
    """Draw one video: a triple, object size and speed, and a start position that keeps the object inside.

    `size` is the side of a square frame or (H, W); object size and speed scale with the shorter side. The
    speed is constant over the clip; a path longer than the frame allows is slowed down to fit it. `horizon`
    (>= `frames`; default `frames`): the path is planned for that many frames -- slowed and placed so that the
    object would stay inside for all of them -- of which the clip shows the first `frames` (the same draws,
    so ``horizon=frames`` gives the video of ``horizon=None``). `slack` in [0, 1): a path longer than ``1 -
    slack`` of the free width is slowed to span exactly that, and its start is drawn anywhere in the rest (no
    extra draw: ``slack=0`` gives the same video as before)."""
    if not 0.0 <= slack < 1.0:
        raise ValueError(f"slack must be in [0, 1), got {slack}")
    color, shape, motion = triples[rng.integers(len(triples))]
    height, width = frame_hw(size)
    scale = min(height, width) / 64.0
    side = float(rng.uniform(14.0, 22.0)) * scale
    speed = float(rng.uniform(1.5, 2.5)) * scale
    span = max(int(horizon or frames), frames) - 1  # frame steps the path is planned for
    travel = speed * span
    dx, dy = MOTION_VECTORS[motion]
    # along the motion axis the whole path must fit; across it any position inside the frame
    free_x, free_y = width - side, height - side
    free = free_x if dx else free_y
    fit = free * (1.0 - slack)
    if travel > fit:  # tiny canvases / long videos: slow down so the object never leaves
        speed = fit / max(span, 1)
        travel = min(speed * span, fit)  # not a rounding error past the frame
    lo_x, hi_x = (travel if dx < 0 else 0.0), (free_x - travel if dx > 0 else free_x)
    lo_y, hi_y = (travel if dy < 0 else 0.0), (free_y - travel if dy > 0 else free_y)
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


def render(spec: ShapeSpec, size: int | tuple[int, int] = 64, frames: int = 16, start: int = 0) -> np.ndarray:
    """Frames ``[T, H, W, 3]`` uint8 of one video (`size`: a square's side or (H, W)); `start` > 0 renders
    frames ``start .. start + frames - 1`` of the same constant-speed path (a continuation)."""
    height, width = frame_hw(size)
    dx, dy = MOTION_VECTORS[spec.motion]
    rgb = np.asarray(ALL_COLORS[spec.color], dtype=np.float32)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for i in range(frames):
        t = start + i
        x = spec.x0 + dx * spec.speed * t
        y = spec.y0 + dy * spec.speed * t
        cov = shape_coverage(spec.shape, height, width, x, y, spec.side)
        out[i] = np.clip(np.rint(cov[..., None] * rgb), 0, 255).astype(np.uint8)
    return out
