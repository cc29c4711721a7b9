"""Reference frames and masks (Open-Sora 1.1 / 1.2): the mask-strategy syntax, its resolution onto a video,
and the random masks drawn during training.

A video of T latent frames is generated under a per-frame *edit ratio* `[T]`: 1 = generate the frame from
noise, 0 = the frame is a condition (a reference latent, kept as it is), 0 < r < 1 = start the frame from the
reference noised to level r, then generate it (SDEdit). The model sees the boolean mask "generate" (`x_mask`,
True = generate) and modulates condition frames as timestep 0.

Mask strategy (upstream syntax): `;`-separated 6-tuples `loop,ref_idx,ref_start,target_start,length,
edit_ratio`: in segment `loop` of a looped generation, copy `length` frames of reference `ref_idx` starting at
its frame `ref_start` onto the output starting at `target_start`, with edit ratio `edit_ratio`. Missing
trailing fields take the upstream defaults `0,0,0,0,1,0`; negative frame indices count from the end; `length`
is clipped to what both the reference and the video hold (as upstream). See docs/masks.md.

Training masks (`MaskGenerator`): per sample, a pattern is drawn with the configured probabilities
(`train.mask_ratios`, upstream names) and turned into a boolean mask `[T]` (True = generate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass

import torch

from sorakit.errors import ConfigError, UserError

# ---------------------------------------------------------------------------------------------
# The mask-strategy string
# ---------------------------------------------------------------------------------------------

FIELDS = ("loop", "ref_idx", "ref_start", "target_start", "length", "edit_ratio")
DEFAULTS = (0, 0, 0, 0, 1, 0.0)  # upstream MASK_DEFAULT


class MaskStrategyError(UserError):
    """A malformed or out-of-range mask strategy."""


@dataclass(frozen=True)
class MaskEntry:
    """One `loop,ref_idx,ref_start,target_start,length,edit_ratio` tuple (upstream meaning, see module doc)."""

    loop: int = 0
    ref_idx: int = 0
    ref_start: int = 0
    target_start: int = 0
    length: int = 1
    edit_ratio: float = 0.0

    def __str__(self) -> str:
        return ",".join(str(v) for v in astuple(self)[:5]) + f",{self.edit_ratio:g}"


def _parse_int(text: str, name: str, entry: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise MaskStrategyError(
            f"mask strategy entry {entry!r}: {name} must be an integer, got {text!r}"
        ) from None


def parse_entry(text: str) -> MaskEntry:
    """One tuple -> MaskEntry; 1 to 6 comma-separated fields, the rest default (`0,0,0,0,1,0`)."""
    fields = [f.strip() for f in text.split(",")]
    if not 1 <= len(fields) <= 6 or any(f == "" for f in fields):
        raise MaskStrategyError(
            f"mask strategy entry {text.strip()!r}: expected 1 to 6 comma-separated numbers "
            f"({','.join(FIELDS)})"
        )
    values: list = [_parse_int(f, name, text.strip()) for f, name in zip(fields[:5], FIELDS)]
    values += list(DEFAULTS[len(values) : 5])
    ratio = DEFAULTS[5]
    if len(fields) == 6:
        try:
            ratio = float(fields[5])
        except ValueError:
            raise MaskStrategyError(
                f"mask strategy entry {text.strip()!r}: edit_ratio must be a number, got {fields[5]!r}"
            ) from None
    entry = MaskEntry(*values, edit_ratio=ratio)
    if entry.loop < 0:
        raise MaskStrategyError(f"mask strategy entry {text.strip()!r}: loop must be >= 0, got {entry.loop}")
    if entry.length < 1:
        raise MaskStrategyError(
            f"mask strategy entry {text.strip()!r}: length must be >= 1, got {entry.length}"
        )
    if not (math.isfinite(ratio) and 0.0 <= ratio <= 1.0):
        raise MaskStrategyError(
            f"mask strategy entry {text.strip()!r}: edit_ratio must be in [0, 1], got {ratio}"
        )
    return entry


def parse_mask_strategy(text: str | None) -> list[MaskEntry]:
    """`"0;0,1,0,-1,1"` -> [MaskEntry(), MaskEntry(ref_idx=1, target_start=-1)]. None / "" -> []."""
    if text is None or not text.strip():
        return []
    return [parse_entry(part) for part in text.split(";")]


def format_mask_strategy(entries: Sequence[MaskEntry]) -> str:
    """The canonical string (all six fields): `parse_mask_strategy(format_mask_strategy(e)) == e`."""
    return ";".join(str(e) for e in entries)


# ---------------------------------------------------------------------------------------------
# Resolution onto a video
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """A resolved entry: frames `[ref_start, ref_start + length)` of reference `ref_idx` go to output frames
    `[target_start, target_start + length)` with `edit_ratio`. All indices non-negative and in range."""

    ref_idx: int
    ref_start: int
    target_start: int
    length: int
    edit_ratio: float


def resolve(
    entries: Sequence[MaskEntry], ref_lengths: Sequence[int], num_frames: int, loop: int = 0
) -> list[Placement]:
    """The entries of segment `loop`, with negative indices resolved and `length` clipped (upstream rules).

    Args:
        entries: parsed strategy; ref_lengths: frames of each reference (in the units of `num_frames`);
        num_frames: frames of the output segment.
    Raises MaskStrategyError for a reference index with no reference, a start outside its video.
    """
    out = []
    for e in entries:
        if e.loop != loop:
            continue
        if not -len(ref_lengths) <= e.ref_idx < len(ref_lengths):
            have = f"{len(ref_lengths)} reference(s)" if ref_lengths else "no reference"
            raise MaskStrategyError(
                f"mask strategy entry '{e}': reference {e.ref_idx} does not exist ({have})"
            )
        idx = e.ref_idx % len(ref_lengths)
        n_ref = ref_lengths[idx]
        ref_start = e.ref_start + n_ref if e.ref_start < 0 else e.ref_start
        target = e.target_start + num_frames if e.target_start < 0 else e.target_start
        if not 0 <= ref_start < n_ref:
            raise MaskStrategyError(
                f"mask strategy entry '{e}': ref_start {e.ref_start} is outside reference {idx} ({n_ref} frames)"
            )
        if not 0 <= target < num_frames:
            raise MaskStrategyError(
                f"mask strategy entry '{e}': target_start {e.target_start} is outside the video ({num_frames} frames)"
            )
        length = min(e.length, num_frames - target, n_ref - ref_start)
        out.append(Placement(idx, ref_start, target, length, e.edit_ratio))
    return out


def check_strategy(
    entries: Sequence[MaskEntry], ref_lengths: Sequence[int], num_frames: int, loops: int = 1
) -> None:
    """Validate every entry against the references and the video before any heavy work.

    In a looped generation segment s may also name the outputs of segments 0..s-1, which become references
    `len(ref_lengths)`, ... of `num_frames` frames (upstream `append_generated`). Entries of a segment beyond
    `loops` are an error too (they would silently do nothing).
    """
    for e in entries:
        if e.loop >= loops:
            raise MaskStrategyError(
                f"mask strategy entry '{e}': loop {e.loop} but only {loops} segment(s) are generated"
            )
    for seg in range(loops):
        resolve(entries, list(ref_lengths) + [num_frames] * seg, num_frames, seg)


def apply_placements(
    placements: Sequence[Placement], references: Sequence[torch.Tensor], like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference latents and edit ratios for one video.

    Args:
        placements: from `resolve`; references: latents `[..., C, T_r, H, W]` each; like: `[..., C, T, H, W]`
            (shape, dtype and device of the output; frames are dim -3).
    Returns:
        (latents like `like`: the reference frames where placed, zeros elsewhere; ratio `[T]` float32, 1 where
        nothing is placed). A later entry overwrites an earlier one (upstream order).
    """
    latents = torch.zeros_like(like)
    ratio = torch.ones(like.shape[-3], dtype=torch.float32, device=like.device)
    for p in placements:
        src = references[p.ref_idx][..., p.ref_start : p.ref_start + p.length, :, :]
        latents[..., p.target_start : p.target_start + p.length, :, :] = src.to(like)
        ratio[p.target_start : p.target_start + p.length] = p.edit_ratio
    return latents, ratio


def default_strategy(ref_lengths: Sequence[int], condition_frames: int) -> list[MaskEntry]:
    """The strategy when none is given: an image (1 frame) conditions frame 0 (image-to-video); a video
    conditions the first `condition_frames` frames with its last ones (extension). Several references: each
    in turn, later ones after earlier ones, as upstream's `0;0,1,0,-1,1` places a second image at the end."""
    entries = []
    for i, n in enumerate(ref_lengths):
        if n == 1:
            target = 0 if i == 0 else -1
            entries.append(MaskEntry(ref_idx=i, target_start=target))
        else:
            entries.append(MaskEntry(ref_idx=i, ref_start=-condition_frames, length=condition_frames))
    return entries


def loop_entries(segment: int, ref_idx: int, condition_frames: int, edit_ratio: float = 0.0) -> MaskEntry:
    """Segment `segment` starts with the last `condition_frames` frames of reference `ref_idx` (the previous
    segment's output): upstream `append_generated`'s `loop,idx,-K,0,K,edit`."""
    return MaskEntry(segment, ref_idx, -condition_frames, 0, condition_frames, edit_ratio)


def split_loop_prompt(prompt: str, loops: int) -> list[str]:
    """Per-segment prompts from upstream's `|0|first|2|from segment two on` form (a plain prompt: all the same).

    Raises UserError for a malformed form (indices not increasing from 0, or not integers).
    """
    if not prompt.startswith("|0|"):
        return [prompt] * loops
    parts = prompt.split("|")[1:]
    if len(parts) % 2:
        raise UserError(f"per-segment prompt {prompt!r}: expected |INDEX|TEXT pairs")
    starts, texts = [], []
    for i in range(0, len(parts), 2):
        try:
            starts.append(int(parts[i]))
        except ValueError:
            raise UserError(f"per-segment prompt: segment index {parts[i]!r} is not an integer") from None
        texts.append(parts[i + 1].strip())
    if any(b <= a for a, b in zip(starts, starts[1:])):
        raise UserError(f"per-segment prompt: segment indices must increase, got {starts}")
    out = []
    for seg in range(loops):
        k = max(i for i, s in enumerate(starts) if s <= seg)
        out.append(texts[k])
    return out


# ---------------------------------------------------------------------------------------------
# Training masks
# ---------------------------------------------------------------------------------------------

PATTERNS = (
    "identity",
    "quarter_random",
    "quarter_head",
    "quarter_tail",
    "quarter_head_tail",
    "image_random",
    "image_head",
    "image_tail",
    "image_head_tail",
    "random",
    "interpolate",
)
# Upstream 1.2 spells "interpolate" as "intepolate"; 1.1 prefixed every name with "mask_" and called the
# identity "mask_no". All are accepted and mean the same pattern.
_ALIASES = {"intepolate": "interpolate", "mask_no": "identity"}
_ALIASES.update({f"mask_{p}": p for p in PATTERNS})


def canonical_pattern(name: str) -> str:
    """The pattern's sorakit name (`intepolate` -> `interpolate`, `mask_image_head` -> `image_head`)."""
    key = _ALIASES.get(name, name)
    if key not in PATTERNS:
        raise ConfigError(f"train.mask_ratios: unknown pattern {name!r} (choose from {', '.join(PATTERNS)})")
    return key


def normalise_ratios(ratios: Mapping[str, float]) -> dict[str, float]:
    """Validated probabilities per canonical pattern; `identity` takes what the others leave (upstream)."""
    out: dict[str, float] = {}
    for name, value in ratios.items():
        key = canonical_pattern(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"train.mask_ratios.{name} must be a number in [0, 1], got {value!r}")
        if key in out:
            raise ConfigError(f"train.mask_ratios: pattern {key!r} given twice (as {name!r})")
        out[key] = float(value)
    if "identity" not in out:
        out["identity"] = max(0.0, 1.0 - sum(out.values()))
    total = sum(out.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ConfigError(
            f"train.mask_ratios must sum to 1 (identity takes the rest when omitted), got {total:g}"
        )
    return {p: out[p] for p in PATTERNS if p in out}


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high] (inclusive, like Python's random.randint)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def pattern_mask(name: str, num_frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The boolean mask `[T]` (True = generate) of one pattern (upstream `MaskGenerator.get_mask`).

    quarter_*: 1 to max(1, T // 4) condition frames (upstream T // 4 fails below 4 frames); image_*: 1;
    *_random: at a uniform position; head / tail / head_tail: at the start / end / both; random: each frame a
    condition with a probability drawn from U(0.1, 0.9); interpolate: every other frame, from frame 0 or 1.
    A pattern that would leave no frame to generate (T <= 2) gives the identity mask instead.
    """
    mask = torch.ones(num_frames, dtype=torch.bool)
    if num_frames <= 1 or name == "identity":
        return mask
    quarter = max(1, num_frames // 4)
    size = _randint(1, quarter, generator) if name.startswith("quarter") else 1
    if name.endswith("_random") and name != "random":
        pos = _randint(0, num_frames - size, generator)
        mask[pos : pos + size] = False
    elif name.endswith("_head_tail"):
        mask[:size] = False
        mask[-size:] = False
    elif name.endswith("_head"):
        mask[:size] = False
    elif name.endswith("_tail"):
        mask[-size:] = False
    elif name == "interpolate":
        mask[_randint(0, 1, generator) :: 2] = False
    elif name == "random":
        p = float(torch.rand((), generator=generator)) * 0.8 + 0.1
        mask = torch.rand(num_frames, generator=generator) > p
        if not mask.any():
            mask[-1] = True
    if not mask.any():
        return torch.ones(num_frames, dtype=torch.bool)
    return mask


class MaskGenerator:
    """Random training masks with the configured pattern probabilities (`train.mask_ratios`).

    Every draw comes from the `generator` passed in (the trainer's seeded stream), so masks are reproducible,
    checkpointed with it, and identical for 1 process or N data-parallel ranks drawing the global batch.
    """

    def __init__(self, ratios: Mapping[str, float]) -> None:
        self.ratios = normalise_ratios(ratios)
        self._names = list(self.ratios)
        self._cum = torch.tensor(list(self.ratios.values()), dtype=torch.float64).cumsum(0)

    def draw_pattern(self, generator: torch.Generator | None = None) -> str:
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        i = int(torch.searchsorted(self._cum, torch.tensor(u, dtype=torch.float64), right=True))
        return self._names[min(i, len(self._names) - 1)]

    def get_masks(
        self, batch_size: int, num_frames: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, list[str]]:
        """Masks `[batch_size, num_frames]` bool (True = generate) and the pattern drawn for each row."""
        names = [self.draw_pattern(generator) for _ in range(batch_size)]
        masks = torch.stack([pattern_mask(n, num_frames, generator) for n in names])
        return masks, names

    def __repr__(self) -> str:
        return f"MaskGenerator({self.ratios})"
