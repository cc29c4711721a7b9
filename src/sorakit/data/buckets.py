"""Buckets: train on clips of many resolutions, aspect ratios and lengths, one shape per micro-batch.

A bucket table (``data.buckets`` in the config, in the spirit of Open-Sora 1.2's ``bucket_config``) maps a
resolution to ``{num_frames: [keep_prob, batch_size]}``. A resolution is

- a name, ``144p`` / ``240p`` / ``360p`` / ``480p`` / ``720p`` / ``1080p`` (the pixel count of that 16:9 frame),
  or a plain pixel count such as ``"4096"``: one shape per aspect ratio of ``data.aspect_ratios``, each
  with about that many pixels, sides multiples of ``data.bucket_multiple``;
- or ``"HxW"``: exactly that shape (keys with equal pixel counts form one resolution with several ratios).

Assignment of one clip (``frames x height x width`` from the CSV), as upstream: resolutions are tried from the
largest down; one fits when the clip has at least 0.8x its pixels (a clip is never upsampled by more than
1.25x in area); in it the clip takes the shape of the nearest aspect ratio (H/W) and the longest length it
has frames for (``(n - 1) * frame_interval + 1`` frames; a 1-frame length is for images only). The bucket's
keep probability is then drawn; a clip that is not kept tries the next smaller resolution. Every draw comes
from a generator seeded by ``(seed, epoch, sample index)``, so every rank computes the same assignment.

Aspect ratios are written ``W:H`` as video is usually described (``16:9`` widescreen, ``9:16`` portrait).
Open-Sora's own tables key them by H/W; only the spelling differs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sorakit.data.video import is_image
from sorakit.errors import ConfigError, UserError

# 16:9 frames of these heights (Open-Sora 1.2's named resolutions), as pixel counts
NAMED_RESOLUTIONS: dict[str, int] = {
    "144p": 144 * 256,
    "240p": 240 * 426,
    "360p": 360 * 640,
    "480p": 480 * 853,
    "720p": 720 * 1280,
    "1080p": 1080 * 1920,
}
DEFAULT_ASPECT_RATIOS = ("9:16", "3:4", "1:1", "4:3", "16:9")
PIXEL_SLACK = 0.8  # a clip fits a resolution with >= 0.8x its pixels (upsampled by at most 1.25x)
_KEEP_TAG = 0x6B656570  # separates the keep-probability stream from other per-sample draws


@dataclass(frozen=True, order=True)
class Bucket:
    """One training shape: frames x height x width in pixels."""

    num_frames: int
    height: int
    width: int

    @property
    def name(self) -> str:
        return f"{self.num_frames}x{self.height}x{self.width}"


@dataclass(frozen=True)
class ClipSize:
    """What assignment needs to know of a clip: frames available, pixel size, image or video."""

    num_frames: int | None
    height: int | None
    width: int | None
    is_image: bool = False


@dataclass
class Shape:
    """One aspect ratio of a resolution with its length table {frames: (keep_prob, batch_size)}."""

    height: int
    width: int
    lengths: dict[int, tuple[float, int]]
    resolution: str = ""  # the table key it comes from


def parse_ratio(text: str) -> float:
    """``"W:H"`` -> H / W (``"16:9"`` -> 0.5625). Raises ConfigError on anything else."""
    try:
        w, h = (float(v) for v in str(text).split(":"))
        if w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        raise ConfigError(f"aspect ratio {text!r}: expected W:H with positive numbers, e.g. 16:9") from None
    return h / w


def shape_for(pixels: int, ratio: float, multiple: int) -> tuple[int, int]:
    """(H, W), multiples of `multiple`, with H / W close to `ratio` (= H/W) and H * W close to `pixels`."""
    h = max(multiple, round(math.sqrt(pixels * ratio) / multiple) * multiple)
    w = max(multiple, round(math.sqrt(pixels / ratio) / multiple) * multiple)
    return int(h), int(w)


def resolution_pixels(key: str) -> int | tuple[int, int]:
    """A table key -> its pixel count, or (H, W) for an exact ``HxW`` key."""
    k = str(key).strip().lower()
    if k in NAMED_RESOLUTIONS:
        return NAMED_RESOLUTIONS[k]
    if "x" in k:
        try:
            h, w = (int(v) for v in k.split("x"))
            if h > 0 and w > 0:
                return h, w
        except ValueError:
            pass
    elif k.isdigit() and int(k) > 0:
        return int(k)
    names = ", ".join(NAMED_RESOLUTIONS)
    raise ConfigError(f"data.buckets: unknown resolution {key!r} (a name: {names}; a pixel count; or HxW)")


def _parse_lengths(key: str, table: Any) -> dict[int, tuple[float, int]]:
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"data.buckets.{key}: expected a table {{num_frames = [keep_prob, batch_size]}}")
    out: dict[int, tuple[float, int]] = {}
    for frames, value in table.items():
        where = f"data.buckets.{key}.{frames}"
        try:
            n = int(frames)
            keep, bs = value
            keep, bs = float(keep), int(bs)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}: expected num_frames = [keep_prob, batch_size], got {value!r}"
            ) from None
        if n < 1 or not 0.0 <= keep <= 1.0 or bs < 1 or bs != value[1]:
            raise ConfigError(f"{where}: need num_frames >= 1, keep_prob in [0, 1], integer batch_size >= 1")
        out[n] = (keep, bs)
    return out


class BucketTable:
    """The parsed ``data.buckets`` table: resolutions (largest first), each a list of :class:`Shape`."""

    def __init__(
        self,
        table: dict[str, Any],
        aspect_ratios: Sequence[str] = DEFAULT_ASPECT_RATIOS,
        multiple: int = 16,
        frame_interval: int = 1,
    ) -> None:
        if not table:
            raise ConfigError("data.buckets is empty")
        if multiple < 1 or frame_interval < 1:
            raise ConfigError("data.bucket_multiple and data.frame_interval must be >= 1")
        ratios = [parse_ratio(r) for r in aspect_ratios]
        levels: dict[int, list[Shape]] = {}
        for key, lengths in table.items():
            parsed = _parse_lengths(str(key), lengths)
            size = resolution_pixels(key)
            if isinstance(size, tuple):
                if size[0] % multiple or size[1] % multiple:
                    raise ConfigError(
                        f"data.buckets: {key} is not a multiple of data.bucket_multiple={multiple}"
                    )
                levels.setdefault(size[0] * size[1], []).append(Shape(size[0], size[1], parsed, str(key)))
            else:
                levels.setdefault(size, []).extend(
                    Shape(*shape_for(size, r, multiple), parsed, str(key)) for r in ratios
                )
        self.levels = [(px, levels[px]) for px in sorted(levels, reverse=True)]
        self.frame_interval = frame_interval

    def buckets(self) -> list[Bucket]:
        """Every bucket of the table, sorted."""
        return sorted(
            {Bucket(n, s.height, s.width) for _, shapes in self.levels for s in shapes for n in s.lengths}
        )

    def batch_size(self, bucket: Bucket) -> int:
        return self._entry(bucket)[1]

    def keep_prob(self, bucket: Bucket) -> float:
        return self._entry(bucket)[0]

    def _entry(self, bucket: Bucket) -> tuple[float, int]:
        for _, shapes in self.levels:
            for s in shapes:
                if (s.height, s.width) == (bucket.height, bucket.width) and bucket.num_frames in s.lengths:
                    return s.lengths[bucket.num_frames]
        raise KeyError(bucket.name)

    def _length(self, shape: Shape, clip: ClipSize) -> int | None:
        """The longest length of `shape` the clip has frames for (1-frame lengths are for images only)."""
        if clip.is_image:
            return 1 if 1 in shape.lengths else None
        need = lambda n: (n - 1) * self.frame_interval + 1  # noqa: E731 - frames a clip of n spans
        fits = [n for n in shape.lengths if n > 1 and need(n) <= (clip.num_frames or 0)]
        return max(fits) if fits else None

    def assign(self, clip: ClipSize, rng: np.random.Generator | None = None) -> tuple[Bucket | None, str]:
        """(bucket, "") or (None, why it is dropped). `rng` draws keep probabilities (None: keep all)."""
        if clip.height is None or clip.width is None or (clip.num_frames is None and not clip.is_image):
            return None, "no size in the CSV"
        pixels = clip.height * clip.width
        reason = "smaller than every bucket"
        for level_pixels, shapes in self.levels:
            if pixels < level_pixels * PIXEL_SLACK:
                continue
            ratio = clip.height / clip.width
            shape = min(shapes, key=lambda s: abs(s.height / s.width - ratio))  # first on ties
            n = self._length(shape, clip)
            if n is None:
                if reason != "not kept (keep probability)":
                    reason = "too few frames" if not clip.is_image else "no 1-frame bucket for images"
                continue
            keep = shape.lengths[n][0]
            if keep >= 1.0 or (rng is not None and rng.random() < keep) or (rng is None and keep > 0):
                return Bucket(n, shape.height, shape.width), ""
            reason = "not kept (keep probability)"
        return None, reason


def _key(bucket: Bucket) -> tuple[int, int, int]:
    return bucket.num_frames, bucket.height, bucket.width


def clip_sizes(rows: Sequence[Any]) -> list[ClipSize]:
    """:class:`~sorakit.data.dataset.Row` s -> their :class:`ClipSize` (frames of ``start..end`` when set)."""
    out = []
    for r in rows:
        frames = r.end_frame - r.start_frame if r.end_frame is not None else r.num_frames
        out.append(ClipSize(frames, r.height, r.width, is_image(r.path)))
    return out


def clip_sizes_from_records(records: Sequence[dict[str, str]]) -> list[ClipSize]:
    """CSV records (dicts of strings: ``path``, ``num_frames``, ``height``, ``width``, optional ``start_frame`` /
    ``end_frame``) -> :class:`ClipSize` s; empty or missing sizes become None. Raises UserError on a bad
    number."""

    def num(rec: dict[str, str], col: str, line: int) -> int | None:
        raw = (rec.get(col) or "").strip()
        try:
            return int(float(raw)) if raw else None
        except ValueError:
            raise UserError(f"CSV line {line}: column {col} is not a number: {raw!r}") from None

    out = []
    for line, rec in enumerate(records, start=2):
        frames, start, end = (num(rec, c, line) for c in ("num_frames", "start_frame", "end_frame"))
        frames = end - (start or 0) if end is not None else frames
        path = rec.get("path") or ""
        out.append(
            ClipSize(frames, num(rec, "height", line), num(rec, "width", line), bool(path) and is_image(path))
        )
    return out


def build_table(data_cfg: Any) -> BucketTable | None:
    """The config's bucket table (`data.buckets`, `data.aspect_ratios`, ...), or None when it is empty."""
    if not data_cfg.buckets:
        return None
    return BucketTable(
        data_cfg.buckets, data_cfg.aspect_ratios, data_cfg.bucket_multiple, data_cfg.frame_interval
    )


def keep_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The keep-probability generator of one sample (same on every rank and every run)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, index, _KEEP_TAG])


def assign_all(
    table: BucketTable, clips: Sequence[ClipSize], seed: int, epoch: int
) -> tuple[dict[Bucket, list[int]], dict[str, int]]:
    """Assign every clip for one epoch: ({bucket: sample indices ascending}, {drop reason: count})."""
    groups: dict[Bucket, list[int]] = {}
    dropped: dict[str, int] = {}
    for i, clip in enumerate(clips):
        bucket, why = table.assign(clip, keep_rng(seed, epoch, i))
        if bucket is None:
            dropped[why] = dropped.get(why, 0) + 1
        else:
            groups.setdefault(bucket, []).append(i)
    return groups, dropped


class BucketBatchSampler:
    """Distributed, resumable micro-batches of one bucket each.

    Epoch ``e``: every clip is assigned (:func:`assign_all`); each bucket's samples are shuffled by
    ``(seed, e, bucket)`` and cut into micro-batches of the bucket's batch size (the last one filled up by
    wrapping round the bucket, so every micro-batch is full); the micro-batches are shuffled by ``(seed, e)``
    and the list is padded to a multiple of the world size by repeating its start. Step ``b`` of the epoch
    gives rank ``r`` micro-batch ``b * world + r``. Nothing depends on the rank but that choice, so 1 and N
    processes see the same micro-batches in the same order. ``set_epoch(e, start)`` positions the sampler
    at step `start` of epoch `e` (resume). Yields lists of ``(index, epoch, bucket)``.
    """

    def __init__(
        self,
        table: BucketTable,
        clips: Sequence[ClipSize],
        rank: int = 0,
        num_replicas: int = 1,
        seed: int = 0,
        fixed: Sequence[Bucket] | None = None,
    ) -> None:
        """`fixed`: each sample's bucket, already decided (a bucketed latent cache); only the keep
        probability is drawn per epoch then, and `clips` is unused."""
        self.table, self.clips = table, list(clips)
        self.fixed = list(fixed) if fixed is not None else None
        for b in set(self.fixed or ()):
            if b not in set(table.buckets()):
                raise UserError(f"the latent cache holds bucket {b.name}, which data.buckets does not list")
        self.rank, self.num_replicas, self.seed = rank, num_replicas, seed
        self.epoch, self.start_batch = 0, 0
        self._cache: tuple[int, list[tuple[Bucket, list[int]]]] | None = None

    def micro_batches(self, epoch: int) -> list[tuple[Bucket, list[int]]]:
        """The epoch's global list of (bucket, sample indices), padded to a multiple of the world size."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self.fixed is None:
            groups, _ = assign_all(self.table, self.clips, self.seed, epoch)
        else:
            groups = {}
            for i, b in enumerate(self.fixed):
                keep = self.table.keep_prob(b)
                if keep >= 1.0 or keep_rng(self.seed, epoch, i).random() < keep:
                    groups.setdefault(b, []).append(i)
        if not groups:
            raise UserError("no clip fits any bucket of data.buckets (see `sorakit data csv buckets`)")
        out: list[tuple[Bucket, list[int]]] = []
        for bucket in sorted(groups):
            order = [groups[bucket][j] for j in self._perm(len(groups[bucket]), epoch, *_key(bucket))]
            bs = self.table.batch_size(bucket)
            for start in range(0, len(order), bs):
                out.append((bucket, [order[(start + k) % len(order)] for k in range(bs)]))
        out = [out[j] for j in self._perm(len(out), epoch)]
        world = self.num_replicas
        out += [out[k % len(out)] for k in range(-len(out) % world)]
        self._cache = (epoch, out)
        return out

    def _perm(self, n: int, *key: int) -> list[int]:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, *key]).permutation(n).tolist()

    def __len__(self) -> int:
        """Steps in the current epoch."""
        return len(self.micro_batches(self.epoch)) // self.num_replicas

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int, Bucket]]]:
        mbs = self.micro_batches(self.epoch)
        world = self.num_replicas
        for step in range(self.start_batch, len(mbs) // world):
            bucket, indices = mbs[step * world + self.rank]
            yield [(i, self.epoch, bucket) for i in indices]


def bucket_report(table: BucketTable, clips: Sequence[ClipSize], seed: int, epoch: int = 0) -> str:
    """A table of clips and micro-batches per bucket for one epoch, then the dropped clips by reason."""
    groups, dropped = assign_all(table, clips, seed, epoch)
    lines = [f"{'resolution':<11} {'bucket (frames x H x W)':<24} {'keep':>5} {'batch':>5} {'clips':>6} "
             f"{'micro-batches':>13}"]  # fmt: skip
    for _, shapes in table.levels:  # largest resolution first, then longest length, then aspect ratio
        for n_frames in sorted({n for s in shapes for n in s.lengths}, reverse=True):
            for s in (s for s in shapes if n_frames in s.lengths):
                bucket = Bucket(n_frames, s.height, s.width)
                n = len(groups.get(bucket, []))
                keep, bs = s.lengths[n_frames]
                lines.append(
                    f"{s.resolution:<11} {bucket.name:<24} {keep:>5.2f} {bs:>5d} {n:>6d} {-(-n // bs):>13d}"
                )
    kept = sum(len(v) for v in groups.values())
    lines.append(
        f"kept {kept} of {len(clips)} clips (epoch {epoch}, seed {seed}); dropped {len(clips) - kept}"
    )
    for why, n in sorted(dropped.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {why}: {n}")
    return "\n".join(lines)
