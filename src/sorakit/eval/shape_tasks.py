"""Scoring image-to-video, extension and looped generation on the "shapes" world (`sorakit eval shapes
--task i2v|extend`, `--loop N`), and other frame sizes and lengths (`--sizes`, `--frames`).

Each prompt gets its own reference, rendered by the world's own renderer from a seeded stream
(``(seed, prompt index)``), so a draw is reproducible and the same for every model scored on it:

- **i2v**: frame 0 of a clip of the prompt's colour, shape and direction at a random position, given as the
  reference image (the pipeline's default strategy conditions frame 0 on it). Checks: ``frame0`` -- the
  generated frame 0 shows the reference's object (same colour, mask IoU >= :data:`FRAME0_IOU`);
  ``continues`` -- the object of frame 1 is within :data:`MAX_STEP` px (x the canvas's shorter side / 64) of
  the reference's, so it moved on from it and did not jump. The usual colour / shape / direction apply.
- **extend**: the first :data:`EXTEND_REFERENCE` frames of a constant-speed clip are the reference video; the
  default strategy puts its last K (``--condition-frames``, 4) frames at the start of the output, and the rest
  is new. Checks: ``speed`` -- the speed fitted over the new frames is within :data:`SPEED_TOLERANCE` of the
  reference's; ``seam`` -- the first new centroid is within :data:`SEAM_PX` px of the one extrapolated from
  the reference (its last centroid plus its per-frame velocity); ``task`` -- direction as prompted, speed
  kept and no seam jump together (the issue's extension measure).
- **loop** (``--loop N``, any task): ``loop_direction`` -- every segment (the frames each sampling run
  produced, its first K shared with the one before) moves the prompted way.

The module works on uint8 frames ``[T, H, W, 3]`` with numpy; only :func:`generate_task` runs a pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sorakit.data.video import write_image, write_video
from sorakit.errors import UserError
from sorakit.eval.shapes import (
    FG_THRESHOLD,
    MIN_AREA,
    Score,
    VideoAnalysis,
    analyze_video,
    direction_of,
    label_components,
    parse_prompt,
    video_color,
)
from sorakit.shapes_world import render, sample_spec

TASKS = ("t2v", "i2v", "extend")
FRAME0_IOU = 0.7  # generated frame 0 vs the reference image: object masks overlap at least this much
MAX_STEP = 4.0  # px at 64: the fastest training speed (2.5 px / frame) plus slack for a blurred edge
SEAM_PX = 3.0  # px at 64: first new centroid vs the extrapolated one
SPEED_TOLERANCE = 0.25  # relative, plus 0.2 px / frame for slow objects
EXTEND_REFERENCE = 16  # frames of the reference clip of --task extend
_REF_TAG = 0x726566  # the references' stream, apart from the sampling noise


@dataclass
class TaskSpec:
    """What one evaluation generates: task, frames x height x width per segment, loop segments, K."""

    task: str = "t2v"
    num_frames: int = 16
    height: int = 64
    width: int = 64
    loop: int = 1
    condition_frames: int = 4

    @property
    def total_frames(self) -> int:
        """Frames of the output video: loop segments sharing K frames each."""
        return self.loop * self.num_frames - (self.loop - 1) * self.condition_frames

    @property
    def name(self) -> str:
        return f"{self.num_frames}x{self.height}x{self.width}"

    def check(self) -> None:
        if self.task not in TASKS:
            raise UserError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.num_frames < 2 or min(self.height, self.width) < 16:
            raise UserError(f"cannot score {self.name} videos (at least 2 frames of 16x16)")
        if self.loop < 1:
            raise UserError(f"--loop must be >= 1, got {self.loop}")
        k = self.condition_frames
        if (self.task == "extend" or self.loop > 1) and not 1 <= k < self.num_frames:
            raise UserError(f"--condition-frames must be in [1, {self.num_frames - 1}], got {k}")
        if self.task == "extend" and k > EXTEND_REFERENCE:
            raise UserError(f"--condition-frames must be <= {EXTEND_REFERENCE} for --task extend, got {k}")


# --------------------------------------------------------------------------------------------------
# References


def reference_for(
    task: TaskSpec, target: tuple[str, str, str], seed: int, index: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(reference frames for the pipeline, the ideal output) of prompt `index`, uint8 ``[T, H, W, 3]``.

    i2v: the reference is frame 0 ``[1, H, W, 3]`` of a clip whose whole output path fits the frame; extend:
    the first :data:`EXTEND_REFERENCE` frames of a clip that goes on for the output's new frames. The ideal
    output is that clip's continuation (what a perfect model would draw). t2v: (None, None).
    """
    if task.task == "t2v":
        return None, None
    rng = np.random.default_rng([int(seed), int(index), _REF_TAG])
    size = (task.height, task.width)
    if task.task == "i2v":
        spec = sample_spec(rng, [target], size=size, frames=task.total_frames)
        ideal = render(spec, size, task.total_frames)
        return ideal[:1], ideal
    new = task.total_frames - task.condition_frames
    spec = sample_spec(rng, [target], size=size, frames=EXTEND_REFERENCE + new)
    ideal = render(spec, size, task.total_frames, start=EXTEND_REFERENCE - task.condition_frames)
    return render(spec, size, EXTEND_REFERENCE), ideal


# --------------------------------------------------------------------------------------------------
# Checks


def object_mask(frame: np.ndarray) -> np.ndarray | None:
    """Boolean ``[H, W]`` mask of the largest bright component of a uint8 ``[H, W, 3]`` frame, or None."""
    fg = frame.astype(np.float32).max(axis=-1) / 255.0 > FG_THRESHOLD
    min_area = max(4, int(MIN_AREA * fg.size))
    if fg.sum() < min_area:
        return None
    labels, n = label_components(fg)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    main = int(np.argmax(areas)) + 1
    return labels == main if areas[main - 1] >= min_area else None


def _velocity(centroids: Sequence[tuple[float, float] | None], frames: range) -> np.ndarray | None:
    """Least-squares velocity (vx, vy) px / frame of the centroids of `frames` (None: fewer than 2 found)."""
    pts = [(t, centroids[t]) for t in frames if centroids[t] is not None]
    if len(pts) < 2:
        return None
    ts = np.array([t for t, _ in pts], dtype=np.float64)
    xy = np.array([c for _, c in pts], dtype=np.float64)  # [n, 2]
    return np.array([np.polyfit(ts, xy[:, 0], 1)[0], np.polyfit(ts, xy[:, 1], 1)[0]])


def check_i2v(video: np.ndarray, analysis: VideoAnalysis, reference: np.ndarray) -> tuple[dict, dict]:
    """``({frame0, continues}, {frame0_iou, step1_px})`` of a uint8 video ``[T, H, W, 3]`` against its
    reference image ``[1, H, W, 3]`` (see the module doc)."""
    ref_mask, gen_mask = object_mask(reference[0]), object_mask(video[0])
    scale = min(video.shape[1:3]) / 64.0
    iou, step = 0.0, float("inf")
    if ref_mask is not None and gen_mask is not None:
        iou = float((ref_mask & gen_mask).sum() / (ref_mask | gen_mask).sum())
    same_colour = video_color(video[:1]) == video_color(reference)
    if ref_mask is not None and len(analysis.centroids) > 1 and analysis.centroids[1] is not None:
        ys, xs = np.nonzero(ref_mask)
        step = float(np.hypot(analysis.centroids[1][0] - xs.mean(), analysis.centroids[1][1] - ys.mean()))
    checks = {"frame0": bool(same_colour and iou >= FRAME0_IOU), "continues": bool(step <= MAX_STEP * scale)}
    return checks, {"frame0_iou": iou, "step1_px": step}


def check_extend(
    analysis: VideoAnalysis, reference: VideoAnalysis, condition_frames: int, direction_ok: bool, side: int
) -> tuple[dict, dict]:
    """``({speed, seam, task}, {ref_speed, new_speed, seam_px})`` of an extension: the output's frames
    ``K..`` against the reference clip's measured velocity and last centroid (see the module doc)."""
    k, t = condition_frames, analysis.num_frames
    v_ref = _velocity(reference.centroids, range(reference.num_frames))
    v_new = _velocity(analysis.centroids, range(k, t))
    last = reference.centroids[-1]
    first = analysis.centroids[k] if k < t else None
    scale = side / 64.0
    details = {"ref_speed": float("nan"), "new_speed": float("nan"), "seam_px": float("inf")}
    if v_ref is None or last is None:
        return {"speed": False, "seam": False, "task": False}, details
    details["ref_speed"] = float(np.hypot(*v_ref))
    speed_ok = False
    if v_new is not None:
        details["new_speed"] = float(np.hypot(*v_new))
        speed_ok = (
            abs(details["new_speed"] - details["ref_speed"]) <= SPEED_TOLERANCE * details["ref_speed"] + 0.2
        )
        # the new frames must move the reference's way, not only as fast
        speed_ok = speed_ok and float(v_new @ v_ref) > 0
    if first is not None:
        details["seam_px"] = float(np.hypot(first[0] - last[0] - v_ref[0], first[1] - last[1] - v_ref[1]))
    seam_ok = details["seam_px"] <= SEAM_PX * scale
    return {"speed": speed_ok, "seam": seam_ok, "task": bool(direction_ok and speed_ok and seam_ok)}, details


def check_loop(analysis: VideoAnalysis, task: TaskSpec, direction: str, side: int) -> dict[str, bool]:
    """``{loop_direction}``: every segment's frames move the prompted `direction`."""
    stride = task.num_frames - task.condition_frames
    for seg in range(task.loop):
        frames = range(seg * stride, min(seg * stride + task.num_frames, analysis.num_frames))
        v = _velocity(analysis.centroids, frames)
        if v is None or direction_of(*(v * (len(frames) - 1)), side) != direction:
            return {"loop_direction": False}
    return {"loop_direction": True}


def score_task(
    video: np.ndarray, prompt: str, task: TaskSpec, reference: np.ndarray | None = None, group: str = "custom"
) -> Score:
    """Score one generated video ``[T, H, W, 3]`` of `task` against its prompt (and its reference)."""
    target = parse_prompt(prompt)
    analysis = analyze_video(video)
    score = Score(prompt, target, analysis, group)
    side = min(video.shape[1:3])
    if task.task == "i2v" and reference is not None:
        checks, details = check_i2v(video, analysis, reference)
        score.checks.update(checks)
        score.details.update(details)
    elif task.task == "extend" and reference is not None:
        checks, details = check_extend(
            analysis, analyze_video(reference), task.condition_frames, score.direction_ok, side
        )
        score.checks.update(checks)
        score.details.update(details)
    if task.loop > 1:
        score.checks.update(check_loop(analysis, task, target[2], side))
    return score


# --------------------------------------------------------------------------------------------------
# Generating and scoring


def generate_task(
    pipe: Any,
    prompts: Sequence[tuple[str, str]],
    task: TaskSpec,
    batch_size: int = 8,
    seed: int = 0,
    save_dir: Any = None,
    fps: int = 8,
    progress: bool = False,
    **call_kwargs: Any,
) -> list[Score]:
    """Generate and score one video per ``(group, prompt)`` under `task` with a TextToVideoPipeline.

    Text-to-video runs `batch_size` prompts at once (batch ``k`` seeded ``seed + k``, as
    :func:`sorakit.eval.shapes.generate_and_score`); i2v / extend one at a time, since a reference is shared
    by the whole batch (prompt ``i`` seeded ``seed + i``). `save_dir` gets ``NNNN.mp4`` (and the reference as
    ``NNNN-ref.png`` / ``NNNN-ref.mp4``). `call_kwargs` go to the pipeline (steps, guidance, sampler).
    """
    task.check()
    step = batch_size if task.task == "t2v" else 1
    shape = dict(num_frames=task.num_frames, height=task.height, width=task.width, loop=task.loop,
                 condition_frames=task.condition_frames)  # fmt: skip
    scores: list[Score] = []
    bar = tqdm(total=len(prompts), desc="eval", unit="video", disable=True if not progress else None)
    for k, start in enumerate(range(0, len(prompts), step)):
        part = prompts[start : start + step]
        ref = reference_for(task, parse_prompt(part[0][1]), seed, start)[0] if step == 1 else None
        gen = torch.Generator("cpu").manual_seed(seed + k)
        videos = pipe([p for _, p in part], generator=gen, progress=False, output_type="np", reference=ref,
                      **shape, **call_kwargs)  # fmt: skip
        for j, ((group, text), video) in enumerate(zip(part, videos)):
            if save_dir is not None:
                write_video(f"{save_dir}/{start + j:04d}.mp4", video, fps=fps)
                if ref is not None and task.task == "i2v":
                    write_image(f"{save_dir}/{start + j:04d}-ref.png", ref[0])
                elif ref is not None:
                    write_video(f"{save_dir}/{start + j:04d}-ref.mp4", ref, fps=fps)
            scores.append(score_task(video, text, task, ref, group))
        bar.update(len(part))
    bar.close()
    return scores
