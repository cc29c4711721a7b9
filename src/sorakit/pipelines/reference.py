"""Reference images and videos for generation (image-to-video, extension, looping, interpolation, editing).

Three steps, the first two before any weights load:

1. `load_references`: paths (PNG / JPEG / any video), PIL images or uint8 arrays -> frames resized to cover
   the output size and center-cropped, exactly as training clips are (`data.transforms.frames_to_tensor`),
   with the file's sha256 for the sidecar;
2. `plan_references`: the mask strategy (given, or the default: an image conditions frame 0, a video the first
   K frames with its last K) checked against the references, the video length and the loop count;
3. `ConditionBuilder`: the VAE latents of the references -> a sampler `Condition` per segment; after each
   segment its latents become a reference of the next (`--loop`).

Frame indices of a strategy count the frames the VAE makes (sorakit's VAEs are per frame: video frames).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sorakit.data.transforms import frames_to_tensor
from sorakit.data.video import read_video
from sorakit.diffusion.condition import Condition
from sorakit.errors import UserError
from sorakit.logging import get_logger
from sorakit.masks import (
    MaskEntry,
    apply_placements,
    check_strategy,
    default_strategy,
    format_mask_strategy,
    loop_entries,
    parse_mask_strategy,
    resolve,
)

log = get_logger(__name__)


MAX_LOOPS = 1000  # --loop segments at most


@dataclass
class Reference:
    """One reference at the output size: `frames` float32 `[3, T, H, W]` in [-1, 1]."""

    frames: torch.Tensor
    source: str
    sha256: str
    original_size: tuple[int, int]

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[1])

    def record(self) -> dict[str, Any]:
        """What the sidecar keeps: where it came from and its content hash."""
        return {"path": self.source, "sha256": self.sha256, "frames": self.num_frames}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _as_uint8_frames(item: Any, name: str) -> np.ndarray:
    """A PIL image or a uint8 array `[H, W, 3]` / `[T, H, W, 3]` -> uint8 `[T, H, W, 3]`."""
    if hasattr(item, "convert") and hasattr(item, "size"):  # PIL.Image
        item = np.asarray(item.convert("RGB"))
    if isinstance(item, torch.Tensor):
        item = item.cpu().numpy()
    arr = np.asarray(item)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or 0 in arr.shape:
        raise UserError(
            f"reference {name}: expected uint8 RGB [H, W, 3] or [T, H, W, 3], got {arr.dtype} {list(arr.shape)}"
        )
    return arr


def _read_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"--reference: no such file: {path}")
    try:
        return read_video(path)
    except (ValueError, OSError) as exc:
        raise UserError(f"--reference {path}: cannot read it as an image or video ({exc})") from None


def load_reference(item: Any, height: int, width: int) -> Reference:
    """A path, PIL image or uint8 array -> `Reference` at `height x width` (resize to cover, center crop).
    A `Reference` already at that size is returned as it is."""
    if isinstance(item, Reference):
        if tuple(item.frames.shape[2:]) == (height, width):
            return item
        raise UserError(
            f"reference {item.source} was prepared for {list(item.frames.shape[2:])}, not {height}x{width}"
        )

    if isinstance(item, (str, os.PathLike)):
        path = Path(os.path.expanduser(str(item)))
        frames, source, digest = _read_file(path), str(path.resolve()), file_sha256(path)
    else:
        frames = _as_uint8_frames(item, type(item).__name__)
        source, digest = f"<{type(item).__name__}>", hashlib.sha256(frames.tobytes()).hexdigest()
    t, h, w = frames.shape[:3]
    ref = Reference(frames_to_tensor(frames, (height, width)), source, digest, (h, w))
    if (h, w) != (height, width):
        log.info("reference %s: %d frame(s) %dx%d resized to cover %dx%d and center-cropped", source, t, h, w,
                 height, width)  # fmt: skip
    return ref


def load_references(items: Any, height: int, width: int) -> list[Reference]:
    """One reference or a list of them (None -> [])."""
    if items is None:
        return []
    if isinstance(items, (str, os.PathLike)) or not isinstance(items, (list, tuple)):
        items = [items]
    return [load_reference(item, height, width) for item in items]


@dataclass
class ReferencePlan:
    """The validated strategy: `entries` (segment 0.. of the user's or the default), `condition_frames` K,
    `loops` segments. Segment s > 0 also starts with the last K frames of segment s - 1."""

    references: list[Reference]
    entries: list[MaskEntry]
    condition_frames: int
    loops: int
    explicit: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def strategy(self) -> str:
        """The canonical strategy string (six fields per entry), as the sidecar records it."""
        return format_mask_strategy(self.entries)


def plan_references(
    references: list[Reference],
    mask_strategy: str | None,
    num_frames: int,
    condition_frames: int = 4,
    loops: int = 1,
) -> ReferencePlan | None:
    """Check the strategy against the references and the video; None when there is nothing to condition on.

    Raises UserError (one line) for: a malformed strategy, a reference index with no reference, a start
    outside a reference or the video, an edit ratio outside [0, 1], a video reference shorter than K, K or
    the loop count out of range.
    """
    if loops < 1:
        raise UserError(f"--loop must be >= 1, got {loops}")
    if loops > MAX_LOOPS:  # each segment is a full sampling run: 10**12 of them is a typo, not a request
        raise UserError(f"--loop must be <= {MAX_LOOPS}, got {loops}")
    if not references and mask_strategy is None and loops == 1:
        return None
    if not 1 <= condition_frames <= num_frames or (loops > 1 and condition_frames >= num_frames):
        raise UserError(
            f"--condition-frames must be in [1, {num_frames - (loops > 1)}] for {num_frames}-frame segments, "
            f"got {condition_frames}"
        )
    entries = parse_mask_strategy(mask_strategy)
    lengths = [r.num_frames for r in references]
    if not entries:
        for r in references:
            if 1 < r.num_frames < condition_frames:
                raise UserError(
                    f"reference {r.source} has {r.num_frames} frames, fewer than --condition-frames {condition_frames}"
                )
        entries = default_strategy(lengths, condition_frames)
    if not entries and loops == 1:
        return None
    check_strategy(entries, lengths, num_frames, loops)
    return ReferencePlan(references, entries, condition_frames, loops, explicit=mask_strategy is not None,
                         records=[r.record() for r in references])  # fmt: skip


class ConditionBuilder:
    """Reference latents -> a sampler `Condition` per segment.

    Args:
        plan: from `plan_references`; latents: the VAE latents `[C, T_r, h, w]` of each reference.
    """

    def __init__(self, plan: ReferencePlan, latents: list[torch.Tensor]) -> None:
        self.plan = plan
        self.latents = [lat[None] for lat in latents]  # [1, C, T_r, h, w]: shared by the batch
        self.entries = list(plan.entries)

    def condition(self, segment: int, shape: tuple[int, ...], device: torch.device) -> Any:
        """The `Condition` of `segment` for latents of `shape` `[B, C, T, h, w]` (None: nothing to condition)."""
        b, t = shape[0], shape[2]
        placed = resolve(self.entries, [lat.shape[2] for lat in self.latents], t, segment)
        if not placed:
            return None
        refs = [lat.expand(b, -1, -1, -1, -1) if lat.shape[0] == 1 else lat for lat in self.latents]
        like = torch.empty(shape, dtype=torch.float32, device=device)
        lat, ratio = apply_placements(placed, refs, like)
        return Condition(lat, ratio.expand(b, -1).clone())

    def add_segment(self, latents: torch.Tensor, next_segment: int) -> None:
        """`latents [B, C, T, h, w]` of a finished segment become a reference; the next segment starts with
        its last K frames (upstream `append_generated`)."""
        self.latents.append(latents.float())
        k = self.plan.condition_frames
        self.entries.append(loop_entries(next_segment, len(self.latents) - 1, k))


def join_segments(segments: list[torch.Tensor], condition_frames: int) -> torch.Tensor:
    """Segments `[B, C, T, h, w]` -> one video of N T - (N - 1) K frames (each later segment's first K frames
    repeat the previous segment's last K)."""
    parts = [segments[0]] + [s[:, :, condition_frames:] for s in segments[1:]]
    return torch.cat(parts, dim=2)
