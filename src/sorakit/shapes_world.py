"""The "shapes" world, defined once: the colours, shapes, motions, held-out combinations and caption
templates that the data generator (``sorakit.tools.synth``) draws from and the evaluator
(``sorakit.eval.shapes``) scores against. Neither owns it, so neither imports the other.

Two sets of concepts: ``"default"`` is the world the built-in model was trained on (:data:`COLORS`,
:data:`SHAPES`); ``"extended"`` adds concepts that model never saw -- the colour orange and the shape
diamond (:data:`NEW_COLORS`, :data:`NEW_SHAPES`), in every combination with the old ones -- for LoRA
fine-tuning (``make lora-demo``). Nothing changes for ``"default"``.
"""

from __future__ import annotations

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
