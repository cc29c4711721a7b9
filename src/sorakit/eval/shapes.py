"""Scoring videos of the "shapes" world against their prompts.

For each video the object is found by colour in every frame, and four things are checked against the
colour, shape and direction named in the prompt:

- **colour**: the majority colour of the bright pixels (each channel on/off relative to the pixel's
  brightest channel, so blurred or dim pixels still vote for the right hue; a red-dominant pixel whose
  green is between :data:`ORANGE_GREEN` of its red, with little blue, votes orange);
- **shape**: per frame, the object's mask is compared with an ideal circle, square, upward triangle and
  diamond fitted to its bounding box (intersection over union); the majority over frames wins. The fill
  ratio of the box (circle ~0.785, square 1.0, triangle and diamond 0.5) is reported too;
- **direction**: the slope of a least-squares line through the object's centroids over time; the
  larger axis and its sign give left/right/up/down, and a path shorter than :data:`MIN_TRAVEL` of the
  canvas counts as "static";
- **temporal consistency**: exactly one object in every frame, of a plausible size (at most
  :data:`MAX_AREA` of the frame) that is stable (largest / smallest area <= :data:`MAX_AREA_RATIO`);
- **shape fidelity**: how cleanly the prompt's shape is drawn, the mean over frames of the IoU between the
  object's mask and the ideal prompted shape fitted to its bounding box (a frame without an object counts
  0). The renderer's own videos score ~0.94 after H.264 (circle 0.94, square 1.0, triangle 0.88: the
  pixel-centre template misses the anti-aliased slopes).

Image-to-video, extension and looped generation add their own checks (:mod:`sorakit.eval.shape_tasks`).

All functions take uint8 frames ``[T, H, W, 3]`` and need only numpy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from sorakit.data.video import write_video
from sorakit.errors import UserError
from sorakit.shapes_world import (
    ALL_COLORS,
    ALL_SHAPES,
    HELDOUT,
    TRAIN_TEMPLATES,
    combos,
    is_new,
    make_caption,
)

FG_THRESHOLD = 0.4  # a pixel is foreground when its brightest channel exceeds this (0..1)
MIN_TRAVEL = 0.125  # centroid travel below this fraction of the canvas's shorter side is "static"
MAX_AREA_RATIO = 1.5  # temporal consistency: largest / smallest object area over the frames
MIN_AREA = 0.01  # an object smaller than this fraction of the frame is "missing"
MAX_AREA = 0.25  # an "object" larger than this fraction of the frame is not one (the largest is ~12%)
SECOND_OBJECT = 0.15  # another component at least this fraction of the main one is a second object
# orange (255, 128, 0): green between these fractions of red (red ~0, orange 0.5, yellow ~1), blue under the
# last; the band sits around 0.5, so saturated red and yellow pixels vote as they always did
ORANGE_GREEN = (0.3, 0.8)
ORANGE_MAX_BLUE = 0.3

# colour name of each on/off channel pattern (r, g, b)
_CODE_TO_COLOR = {
    (1, 0, 0): "red",
    (0, 1, 0): "green",
    (0, 0, 1): "blue",
    (1, 1, 0): "yellow",
    (0, 1, 1): "cyan",
    (1, 0, 1): "magenta",
}

# words recognised in prompts (evaluation prompts may use synonyms never used in training)
COLOR_WORDS: dict[str, str] = {name: name for name in ALL_COLORS} | {"purple": "magenta", "pink": "magenta"}
SHAPE_WORDS: dict[str, str] = {
    "circle": "circle",
    "circles": "circle",
    "disc": "circle",
    "disk": "circle",
    "ball": "circle",
    "dot": "circle",
    "round": "circle",
    "square": "square",
    "squares": "square",
    "box": "square",
    "block": "square",
    "triangle": "triangle",
    "triangles": "triangle",
    "triangular": "triangle",
    "diamond": "diamond",
    "diamonds": "diamond",
    "rhombus": "diamond",
}
DIRECTION_WORDS: dict[str, str] = {
    "left": "left",
    "leftward": "left",
    "leftwards": "left",
    "west": "left",
    "right": "right",
    "rightward": "right",
    "rightwards": "right",
    "east": "right",
    "up": "up",
    "upward": "up",
    "upwards": "up",
    "top": "up",
    "rises": "up",
    "rising": "up",
    "north": "up",
    "down": "down",
    "downward": "down",
    "downwards": "down",
    "bottom": "down",
    "falls": "down",
    "falling": "down",
    "sinking": "down",
    "south": "down",
}

# Phrasings that never occur in training captions (set "novel").
NOVEL_TEMPLATES: tuple[str, ...] = (
    "watch the {c} {s} head {d}",
    "here is one {c} {s}; it glides {d}",
    "the {s} is {c} and it keeps heading {d}",
    "{c} {s} shifting steadily {d} through the scene",
    "an animation of a {c} {s} that travels in the {d} direction",
    "video: single {c} {s}, motion {d}",
    "see how the {c} {s} makes its way {d}",
    "one {c} {s} heading {d} on a dark screen",
)
NOVEL_DIRECTIONS: dict[str, tuple[str, ...]] = {
    "left": ("left",),
    "right": ("right",),
    "up": ("up",),
    "down": ("down",),
}


def parse_prompt(text: str) -> tuple[str, str, str]:
    """The (colour, shape, direction) named by a prompt; raises :class:`UserError` when one is missing."""
    words = re.findall(r"[a-z]+", text.lower())
    found: dict[str, str | None] = {"colour": None, "shape": None, "direction": None}
    for kind, table in (("colour", COLOR_WORDS), ("shape", SHAPE_WORDS), ("direction", DIRECTION_WORDS)):
        for w in words:
            if w in table:
                found[kind] = table[w]
                break
    missing = [k for k, v in found.items() if v is None]
    if missing:
        raise UserError(f"prompt {text!r} names no {' / '.join(missing)} of the shapes world")
    return found["colour"], found["shape"], found["direction"]  # type: ignore[return-value]


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean ``[H, W]`` mask: labels ``[H, W]`` (0 = background), count.

    Uses scipy when it is installed, else a (slower) numpy label propagation with the same result."""
    try:
        from scipy import ndimage
    except ImportError:
        ndimage = None
    if ndimage is not None:
        labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        return labels.astype(np.int32), int(n)
    return _label_numpy(mask)


def _label_numpy(mask: np.ndarray) -> tuple[np.ndarray, int]:
    h, w = mask.shape
    big = h * w + 1
    lab = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), big)
    while True:
        p = np.pad(lab, 1, constant_values=big)
        nb = lab.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                nb = np.minimum(nb, p[dy : dy + h, dx : dx + w])
        nb = np.where(mask, nb, big)
        if np.array_equal(nb, lab):
            break
        lab = nb
    roots = np.unique(lab[mask])
    out = np.zeros((h, w), dtype=np.int32)
    if roots.size:
        out[mask] = np.searchsorted(roots, lab[mask]) + 1
    return out, int(roots.size)


def _template(shape: str, h: int, w: int, x0: float, y0: float, bw: float, bh: float) -> np.ndarray:
    """Boolean ``[H, W]`` mask (pixel centres) of an ideal shape fitted to the box (x0, y0, bw, bh)."""
    u = (np.arange(w) + 0.5 - x0)[None, :] / bw
    v = (np.arange(h) + 0.5 - y0)[:, None] / bh
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if shape == "square":
        return inside
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "diamond":
        return np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5
    return inside & (np.abs(u - 0.5) <= 0.5 * v)  # upward triangle


@dataclass
class FrameObject:
    """The main object of one frame."""

    area: int
    cx: float
    cy: float
    shape: str
    fill: float
    n_objects: int
    ious: dict[str, float] = field(default_factory=dict)  # IoU with each ideal shape fitted to the box


@dataclass
class VideoAnalysis:
    """What the evaluator sees in one video."""

    color: str | None
    shape: str | None
    direction: str | None
    consistent: bool
    displacement: tuple[float, float] = (0.0, 0.0)  # (dx, dy) px over the whole clip
    frames_with_object: int = 0
    num_frames: int = 0
    area_ratio: float = float("inf")
    mean_fill: float = 0.0
    notes: list[str] = field(default_factory=list)
    # per frame: the object's centroid (x, y) in px, its area in px and its IoU with each ideal shape; None / {}
    # without one
    centroids: list[tuple[float, float] | None] = field(default_factory=list)
    areas: list[int | None] = field(default_factory=list)
    frame_ious: list[dict[str, float]] = field(default_factory=list)

    def fidelity(self, shape: str) -> float:
        """Mean over frames of the IoU of the object with the ideal `shape` (0 for a frame without one)."""
        if not self.frame_ious:
            return 0.0
        return float(np.mean([f.get(shape, 0.0) for f in self.frame_ious]))


def analyze_frame(frame: np.ndarray, min_area: int) -> FrameObject | None:
    """Find the largest bright connected component of a uint8 ``[H, W, 3]`` frame and classify its shape."""
    x = frame.astype(np.float32) / 255.0
    fg = x.max(axis=-1) > FG_THRESHOLD
    if fg.sum() < min_area:
        return None
    labels, n = label_components(fg)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    main = int(np.argmax(areas)) + 1
    area = int(areas[main - 1])
    if area < min_area:
        return None
    n_objects = int((areas >= max(min_area * 0.5, SECOND_OBJECT * area)).sum())
    m = labels == main
    ys, xs = np.nonzero(m)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    bw, bh = float(x1 - x0), float(y1 - y0)
    h, w = m.shape
    ious = {}
    for shape in ALL_SHAPES:
        t = _template(shape, h, w, float(x0), float(y0), bw, bh)
        union = float((t | m).sum())
        ious[shape] = float((t & m).sum()) / union if union else 0.0
    best = max(ALL_SHAPES, key=lambda k: ious[k])  # the first of equals, as before
    return FrameObject(area, float(xs.mean()), float(ys.mean()), best, area / (bw * bh), n_objects, ious)


def video_color(frames: np.ndarray) -> str | None:
    x = frames.astype(np.float32) / 255.0
    peak = x.max(axis=-1)
    fg = peak > FG_THRESHOLD
    if not fg.any():
        return None
    px, pk = x[fg], peak[fg]  # [N, 3], [N]
    bits = (px > 0.5 * pk[:, None]).astype(np.int64)
    codes = bits[:, 0] * 4 + bits[:, 1] * 2 + bits[:, 2]
    green = px[:, 1] / pk
    orange = (
        (px[:, 0] >= pk)
        & (green >= ORANGE_GREEN[0])
        & (green < ORANGE_GREEN[1])
        & (px[:, 2] < ORANGE_MAX_BLUE * pk)
    )
    codes = np.where(orange, 8, codes)  # code 8: orange
    counts = np.bincount(codes, minlength=9)
    best = int(np.argmax(counts))
    if best == 8:
        return "orange"
    return _CODE_TO_COLOR.get(((best >> 2) & 1, (best >> 1) & 1, best & 1))


def min_object_area(height: int, width: int) -> int:
    """Pixels an object needs to count as one in a frame of this size (:data:`MIN_AREA`, at least 4)."""
    return max(4, int(MIN_AREA * height * width))


def analyze_video(frames: np.ndarray) -> VideoAnalysis:
    """Colour, shape, direction and temporal consistency of a uint8 ``[T, H, W, 3]`` video."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {list(frames.shape)}")
    t, h, w, _ = frames.shape
    min_area = min_object_area(h, w)
    objs = [analyze_frame(f, min_area) for f in frames]
    present = [(i, o) for i, o in enumerate(objs) if o is not None]
    res = VideoAnalysis(
        color=video_color(frames),
        shape=None,
        direction=None,
        consistent=False,
        num_frames=t,
        frames_with_object=len(present),
        centroids=[None if o is None else (o.cx, o.cy) for o in objs],
        areas=[None if o is None else o.area for o in objs],
        frame_ious=[{} if o is None else o.ious for o in objs],
    )
    if not present:
        res.notes.append("no object")
        return res
    shapes = [o.shape for _, o in present]
    res.shape = max(ALL_SHAPES, key=shapes.count)
    res.mean_fill = float(np.mean([o.fill for _, o in present]))
    areas = np.array([o.area for _, o in present], dtype=np.float64)
    res.area_ratio = float(areas.max() / areas.min())
    if len(present) >= 2:
        ts = np.array([i for i, _ in present], dtype=np.float64)
        cx = np.array([o.cx for _, o in present])
        cy = np.array([o.cy for _, o in present])
        sx = np.polyfit(ts, cx, 1)[0]
        sy = np.polyfit(ts, cy, 1)[0]
        dx, dy = sx * (t - 1), sy * (t - 1)
        res.displacement = (float(dx), float(dy))
        res.direction = direction_of(dx, dy, min(h, w))
    multi = sum(o.n_objects > 1 for _, o in present)
    if len(present) < t:
        res.notes.append(f"object missing in {t - len(present)} frame(s)")
    if multi:
        res.notes.append(f"more than one object in {multi} frame(s)")
    if res.area_ratio > MAX_AREA_RATIO:
        res.notes.append(f"size unstable (area ratio {res.area_ratio:.2f})")
    too_big = areas.max() > MAX_AREA * h * w
    if too_big:
        res.notes.append("object too large")
    res.consistent = len(present) == t and multi == 0 and res.area_ratio <= MAX_AREA_RATIO and not too_big
    return res


def direction_of(dx: float, dy: float, side: int) -> str:
    """left/right/up/down of a displacement (px), or "static" when it is under MIN_TRAVEL of `side` px."""
    if max(abs(dx), abs(dy)) < MIN_TRAVEL * side:
        return "static"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


@dataclass
class Score:
    """One video scored against its prompt; `checks` holds a task's own pass/fail measures (i2v, extend,
    loop: :mod:`sorakit.eval.shape_tasks`) and `details` their numbers."""

    prompt: str
    target: tuple[str, str, str]
    analysis: VideoAnalysis
    group: str = "custom"
    checks: dict[str, bool] = field(default_factory=dict)
    details: dict[str, float] = field(default_factory=dict)

    @property
    def fidelity(self) -> float:
        """Shape fidelity: mean IoU of the object with the prompted shape fitted to its box."""
        return self.analysis.fidelity(self.target[1])

    @property
    def color_ok(self) -> bool:
        return self.analysis.color == self.target[0]

    @property
    def shape_ok(self) -> bool:
        return self.analysis.shape == self.target[1]

    @property
    def direction_ok(self) -> bool:
        return self.analysis.direction == self.target[2]

    @property
    def all_ok(self) -> bool:
        return self.color_ok and self.shape_ok and self.direction_ok

    def row(self) -> dict[str, object]:
        a = asdict(self.analysis)
        return {
            "group": self.group,
            "prompt": self.prompt,
            "want_color": self.target[0],
            "want_shape": self.target[1],
            "want_direction": self.target[2],
            "color": a["color"],
            "shape": a["shape"],
            "direction": a["direction"],
            "color_ok": self.color_ok,
            "shape_ok": self.shape_ok,
            "direction_ok": self.direction_ok,
            "all_ok": self.all_ok,
            "consistent": self.analysis.consistent,
            "fidelity": round(self.fidelity, 3),
            "dx": round(a["displacement"][0], 2),
            "dy": round(a["displacement"][1], 2),
            "fill": round(a["mean_fill"], 3),
            **{f"{k}_ok": v for k, v in self.checks.items()},
            **{k: round(v, 2) for k, v in self.details.items()},
            "notes": "; ".join(a["notes"]),
        }


def score_video(frames: np.ndarray, prompt: str, group: str = "custom") -> Score:
    """Analyse `frames` ``[T, H, W, 3]`` uint8 and compare with what `prompt` asks for."""
    return Score(prompt, parse_prompt(prompt), analyze_video(frames), group)


METRICS = ("color", "shape", "direction", "all", "consistent")
# a task's checks, in table order, with their column headings
CHECK_TITLES: dict[str, str] = {
    "frame0": "frame 0 = reference %",
    "continues": "frame 1 continues %",
    "speed": "speed kept %",
    "seam": "no seam jump %",
    "task": "direction + speed + seam %",
    "loop_direction": "direction kept every segment %",
}


def summarize(scores: Sequence[Score]) -> dict[str, dict[str, float]]:
    """Accuracy (%) per group and overall: ``{group: {n, color, shape, direction, all, consistent, fidelity,
    CHECK...}}``; fidelity is the mean IoU (0..1), a task's checks (``frame0``, ``seam``, ...) are %."""
    groups: dict[str, list[Score]] = {}
    for s in scores:
        groups.setdefault(s.group, []).append(s)
    if len(groups) > 1:
        groups["overall"] = list(scores)
    out = {}
    for name, items in groups.items():
        n = len(items)
        out[name] = {
            "n": float(n),
            "color": 100.0 * sum(s.color_ok for s in items) / n,
            "shape": 100.0 * sum(s.shape_ok for s in items) / n,
            "direction": 100.0 * sum(s.direction_ok for s in items) / n,
            "all": 100.0 * sum(s.all_ok for s in items) / n,
            "consistent": 100.0 * sum(s.analysis.consistent for s in items) / n,
            "fidelity": float(np.mean([s.fidelity for s in items])),
        }
        for key in CHECK_TITLES:
            if any(key in s.checks for s in items):
                out[name][key] = 100.0 * sum(bool(s.checks.get(key)) for s in items) / n
    return out


def format_table(summary: dict[str, dict[str, float]]) -> str:
    """A Markdown table of :func:`summarize`'s result."""
    checks = [k for k in CHECK_TITLES if any(k in m for m in summary.values())]
    head = "| prompts | n | colour % | shape % | direction % | all three % | temporally consistent % | shape fidelity |"
    lines = [head + "".join(f" {CHECK_TITLES[k]} |" for k in checks), "|---|" + "---:|" * (7 + len(checks))]
    for name, m in summary.items():
        lines.append(
            f"| {name} | {int(m['n'])} | {m['color']:.1f} | {m['shape']:.1f} | {m['direction']:.1f} | "
            f"{m['all']:.1f} | {m['consistent']:.1f} | {m.get('fidelity', float('nan')):.3f} |"
            + "".join(f" {m[k]:.1f} |" if k in m else " - |" for k in checks)
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Prompt sets

PROMPT_SETS = ("train", "novel", "heldout", "new")


def prompt_set(name: str, n: int, seed: int = 0) -> list[tuple[str, tuple[str, str, str]]]:
    """`n` prompts with their targets.

    - ``train``: training phrasings, combinations seen in training;
    - ``novel``: phrasings from :data:`NOVEL_TEMPLATES` (never in training), seen combinations;
    - ``heldout``: training phrasings of the held-out combinations :data:`HELDOUT`;
    - ``new``: training phrasings of combinations with orange and/or diamond (the extended world's new
      concepts, which the built-in model never saw: for LoRA fine-tuning).

    Combinations are cycled in a seeded random order so every colour, shape and motion is covered.
    """
    if name not in PROMPT_SETS:
        raise UserError(f"unknown prompt set {name!r} (valid: {', '.join(PROMPT_SETS)})")
    rng = np.random.default_rng([seed, PROMPT_SETS.index(name)])
    if name == "new":
        triples = [t for t in combos("default", "extended") if is_new(t)]
    else:
        triples = list(HELDOUT) if name == "heldout" else combos("default")
    order = rng.permutation(len(triples))
    out = []
    for i in range(n):
        c, s, m = triples[order[i % len(triples)]]
        if name == "novel":
            template = NOVEL_TEMPLATES[i % len(NOVEL_TEMPLATES)]
            text = template.format(c=c, s=s, d=NOVEL_DIRECTIONS[m][0])
        else:
            text = make_caption(c, s, m, rng)
        out.append((text, (c, s, m)))
    return out


def check_novel_templates() -> None:
    """Assert that no novel template coincides with a training template (used by the tests)."""
    train = {t.replace("{a}", "") for t in TRAIN_TEMPLATES}
    for t in NOVEL_TEMPLATES:
        assert t not in train, t


# --------------------------------------------------------------------------------------------------
# Generating with a pipeline and scoring


def build_prompts(sets: Sequence[str], n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``(group, prompt)`` pairs: `n` prompts of each named set of :data:`PROMPT_SETS`."""
    return [(name, text) for name in sets for text, _ in prompt_set(name, n, seed)]


def generate_and_score(
    pipe,
    prompts: Sequence[tuple[str, str]],
    batch_size: int = 8,
    seed: int = 0,
    save_dir=None,
    fps: int = 8,
    progress: bool = False,
    **call_kwargs,
) -> list[Score]:
    """Generate one video per ``(group, prompt)`` with a :class:`TextToVideoPipeline` and score it.

    Batch ``k`` (prompts ``k*batch_size ...``) uses the seed ``seed + k``. With `save_dir`, every video
    is written there as ``NNNN.mp4``. `call_kwargs` go to the pipeline (``num_inference_steps``,
    ``guidance_scale``, ``sampler``, ...). `progress` shows a bar over the videos.
    """

    scores = []
    bar = tqdm(total=len(prompts), desc="eval", unit="video", disable=True if not progress else None)
    for k, start in enumerate(range(0, len(prompts), batch_size)):
        part = prompts[start : start + batch_size]
        gen = torch.Generator("cpu").manual_seed(seed + k)
        videos = pipe([p for _, p in part], generator=gen, progress=False, output_type="np", **call_kwargs)
        for j, ((group, text), video) in enumerate(zip(part, videos)):
            if save_dir is not None:
                write_video(f"{save_dir}/{start + j:04d}.mp4", video, fps=fps)
            scores.append(score_video(video, text, group))
        bar.update(len(part))
    bar.close()
    return scores
