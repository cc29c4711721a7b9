"""Training datasets: video/image clips with captions (or class labels) from a CSV, a resumable
deterministic batch sampler, and the bookkeeping of files that could not be read.

CSV format: a header row with required columns ``path`` and ``text`` (or ``label`` for class-conditional
models); optional ``num_frames``, ``fps``, ``height``, ``width``, ``start_frame``, ``end_frame`` (a clip
inside a longer file). Relative paths resolve against ``data_root`` or the CSV's folder.

Determinism: every random choice for a sample (clip start, flip, the replacement of a bad file) is drawn
from a generator seeded by ``(seed, epoch, index)``, so a sample is the same whichever worker loads it
and whenever it is loaded -- which is what makes stop-and-resume exact.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sorakit.data.csvfile import confine, read_csv_file, shown
from sorakit.data.transforms import clip_indices, frames_to_tensor
from sorakit.data.video import is_image, read_video
from sorakit.errors import UserError
from sorakit.logging import get_logger

log = get_logger(__name__)

OPTIONAL_INT_COLUMNS = ("num_frames", "height", "width", "start_frame", "end_frame", "horizon")


@dataclass
class Row:
    """One CSV row, parsed."""

    path: Path
    text: str
    label: int | None = None
    num_frames: int | None = None
    start_frame: int = 0
    end_frame: int | None = None
    height: int | None = None
    width: int | None = None
    horizon: int | None = None  # frames the motion of the clip's first frame is planned for (None: its own)


def read_table(
    csv_path: str | os.PathLike, data_root: str | os.PathLike | None = None, label_column: bool = False
) -> list[Row]:
    """Read and validate a training CSV (through :func:`sorakit.data.csvfile.read_csv_file`). Raises
    :class:`UserError` with a one-line message naming the problem (missing file, empty file, missing or
    repeated columns, a bad number). With `data_root`, relative paths resolve against it and every path
    must stay inside it (:func:`~sorakit.data.csvfile.confine`)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"data CSV not found: {csv_path}")
    root = Path(data_root) if data_root else csv_path.parent
    header, records = read_csv_file(csv_path)
    need = ["path", "label"] if label_column else ["path", "text"]
    missing = [c for c in need if c not in header]
    if missing:
        raise UserError(
            f"{csv_path}: missing column(s) {', '.join(missing)} (header: {shown(', '.join(header))})"
        )
    rows = [
        _parse_row(csv_path, lineno, rec, root, label_column) for lineno, rec in enumerate(records, start=2)
    ]
    if not rows:
        raise UserError(f"{csv_path}: no data rows")
    if data_root:
        confine([r.path for r in rows], data_root, str(csv_path))
    return rows


def _parse_row(csv_path: Path, lineno: int, rec: dict[str, str], root: Path, label_column: bool) -> Row:
    path = rec["path"].strip()
    if not path:
        raise UserError(f"{csv_path}:{lineno}: empty path")
    p = Path(path)
    if not p.is_absolute():
        p = root / p
    ints: dict[str, int | None] = {}
    for col in (*OPTIONAL_INT_COLUMNS, *(("label",) if label_column else ())):
        raw = (rec.get(col) or "").strip()
        if raw == "":
            ints[col] = None
            continue
        try:
            ints[col] = int(float(raw))
        except (ValueError, OverflowError):
            raise UserError(f"{csv_path}:{lineno}: column {col} is not a number: {shown(raw)!r}") from None
    if label_column and ints["label"] is None:
        raise UserError(f"{csv_path}:{lineno}: empty label")
    return Row(
        path=p,
        text=(rec.get("text") or "").strip(),
        label=ints.get("label"),
        num_frames=ints["num_frames"],
        start_frame=ints["start_frame"] or 0,
        end_frame=ints["end_frame"],
        height=ints["height"],
        width=ints["width"],
        horizon=ints["horizon"],
    )


def _check_some_file_exists(
    rows: list, csv_path: str | os.PathLike, data_root: str | os.PathLike | None
) -> None:
    """A one-line error when not one file of the CSV is on disk (a moved dataset, a wrong --data-root);
    stops at the first file found, so a healthy CSV costs one stat."""
    if rows and not any(row.path.exists() for row in rows):
        base = (
            f"--data-root {data_root}" if data_root else f"the CSV's folder {Path(csv_path).resolve().parent}"
        )
        raise UserError(
            f"{csv_path}: none of its {len(rows)} files exists (first: {rows[0].path}); relative paths resolve "
            f"against {base}: moved the data? pass --data-root DIR"
        )


def sample_rng(seed: int, epoch: int, index: int, attempt: int = 0) -> np.random.Generator:
    """The generator of one sample's random choices: depends only on its coordinates."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, index, attempt])


class VideoTextDataset(torch.utils.data.Dataset):
    """Clips ``[3, T, H, W]`` in [-1, 1] with their caption (or label), read from a CSV.

    Items are addressed by ``(index, epoch)`` (the :class:`ResumableBatchSampler` yields those) or by a
    plain index (epoch 0). A file that is missing or cannot be decoded is replaced by another sample
    (chosen deterministically); the item reports it in ``skipped`` so that the trainer counts and lists it.
    """

    def __init__(
        self,
        csv_path: str | os.PathLike,
        num_frames: int,
        frame_interval: int,
        image_size: tuple[int, int] | list[int],
        data_root: str | os.PathLike | None = None,
        seed: int = 0,
        flip: bool = True,
        label_column: bool = False,
        max_retries: int = 20,
    ) -> None:
        self.rows = read_table(csv_path, data_root, label_column)
        _check_some_file_exists(self.rows, csv_path, data_root)
        self.num_frames = num_frames
        self.frame_interval = frame_interval
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.seed = seed
        self.flip = flip
        self.label_column = label_column
        self.max_retries = max_retries
        # a `horizon` column: items carry it (0 where empty: the clip's own length), as does a cache of them
        self.has_horizon = any(r.horizon is not None for r in self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int, rng: np.random.Generator, bucket: Any = None) -> torch.Tensor:
        """Decode one row into ``[3, T, H, W]`` (raises on a missing or bad file); T, H, W are the
        dataset's or, given a :class:`~sorakit.data.buckets.Bucket`, the bucket's."""
        num_frames = bucket.num_frames if bucket is not None else self.num_frames
        size = (bucket.height, bucket.width) if bucket is not None else self.image_size
        row = self.rows[index]
        if not row.path.is_file():
            raise FileNotFoundError("missing file")
        if is_image(row.path):
            frames = read_video(row.path, end_frame=1, size_hint=size)
            frames = np.repeat(frames, num_frames, axis=0) if num_frames > 1 else frames
        elif row.num_frames is not None or row.end_frame is not None:
            start = row.start_frame
            end = row.end_frame if row.end_frame is not None else start + int(row.num_frames)  # type: ignore[arg-type]
            idx = clip_indices(end - start, num_frames, self.frame_interval, rng)
            frames = read_video(row.path, indices=[start + i for i in idx], size_hint=size)
        else:
            # frame count unknown: decode the clip once and pick from it
            allframes = read_video(row.path, start_frame=row.start_frame, size_hint=size)
            frames = allframes[clip_indices(len(allframes), num_frames, self.frame_interval, rng)]
        flip = self.flip and bool(rng.random() < 0.5)
        return frames_to_tensor(frames, size, flip=flip)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        # keys: index, (index, epoch) or (index, epoch, bucket) from the bucket sampler
        index, epoch, bucket = (key, 0, None) if isinstance(key, (int, np.integer)) else (*key, None)[:3]
        index = int(index)
        skipped: list[tuple[str, str]] = []
        current = index
        for attempt in range(self.max_retries + 1):
            rng = sample_rng(self.seed, epoch, current, attempt)
            try:
                video = self.load(current, rng, bucket)
            except Exception as exc:  # noqa: BLE001 - any decode failure means "skip this file"
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                skipped.append((str(self.rows[current].path), reason[:200]))
                current = int(rng.integers(0, len(self.rows)))
                continue
            row = self.rows[current]
            item: dict[str, Any] = {"video": video, "text": row.text, "index": current, "skipped": skipped}
            if self.label_column:
                item["label"] = row.label
            if self.has_horizon:
                item["horizon"] = int(row.horizon or 0)
            return item
        raise UserError(
            f"{self.max_retries + 1} files in a row could not be read (last: {skipped[-1][0]}: {skipped[-1][1]})"
        )


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings as lists, concatenate the skipped-file reports."""
    out: dict[str, Any] = {"skipped": [s for it in items for s in it["skipped"]]}
    for key in items[0]:
        if key == "skipped":
            continue
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, np.integer)):
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = values
    return out


class ResumableBatchSampler:
    """Deterministic, resumable batches for one data-parallel rank.

    Epoch ``e`` shuffles the dataset with seed ``seed + e``; global batch ``b`` is the slice
    ``[b*G, (b+1)*G)`` of that order (``G = batch_size * num_replicas``) and rank ``r`` takes its
    ``r``-th part, so 2 ranks x batch 2 see exactly the samples of 1 rank x batch 4. Incomplete global
    batches are dropped; a dataset smaller than one global batch is repeated. ``set_epoch(e, start)``
    positions the sampler at batch `start` of epoch `e` (resume). Yields lists of ``(index, epoch)``.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        rank: int = 0,
        num_replicas: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if num_samples <= 0:
            raise UserError("the dataset is empty")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.num_replicas = num_replicas
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.num_replicas

    def order(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            perm = list(range(self.num_samples))
        while len(perm) < self.global_batch:
            perm = perm + perm
        return perm

    def __len__(self) -> int:
        """Batches per epoch."""
        return max(self.num_samples, self.global_batch) // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm = self.order(self.epoch)
        g, b = self.global_batch, self.batch_size
        for batch in range(self.start_batch, len(self)):
            chunk = perm[batch * g : (batch + 1) * g][self.rank * b : (self.rank + 1) * b]
            yield [(i, self.epoch) for i in chunk]


@dataclass
class SkipReport:
    """Counts samples that could not be read and stops the run when too many fail.

    ``fraction = failed loads / attempted loads``; checked once at least `min_attempts` loads happened.
    """

    max_fraction: float = 0.1
    min_attempts: int = 16
    attempts: int = 0
    failures: int = 0
    files: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def update(self, skipped: list[tuple[str, str]], attempts: int, failures: int | None = None) -> None:
        """Record one batch: `skipped` (path, reason) failures seen here, `attempts` loads in all (under
        several processes: attempts and failures summed over ranks, so that every rank decides alike)."""
        self.attempts += attempts
        self.failures += len(skipped) if failures is None else failures
        for path, reason in skipped:
            if path not in self.files:
                log.warning("skipped unreadable file %s: %s", path, reason)
                self.files[path] = reason
            self.counts[path] = self.counts.get(path, 0) + 1

    def check(self) -> None:
        if self.attempts >= self.min_attempts and self.fraction > self.max_fraction:
            raise UserError(
                f"too many unreadable files: {self.failures} of {self.attempts} loads failed "
                f"({100 * self.fraction:.0f}% > data.max_bad_fraction={self.max_fraction}); "
                f"first: {next(iter(self.files))}: {next(iter(self.files.values()))}"
            )

    @property
    def fraction(self) -> float:
        return self.failures / max(1, self.attempts)

    def state_dict(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "failures": self.failures,
            "files": dict(self.files),
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.attempts = int(state.get("attempts", 0))
        self.failures = int(state.get("failures", 0))
        self.files = dict(state.get("files", {}))
        self.counts = {k: int(v) for k, v in state.get("counts", {}).items()}

    def summary(self) -> str:
        if not self.files:
            return "no unreadable files"
        listed = "; ".join(f"{p} ({self.counts.get(p, 0)}x: {r})" for p, r in self.files.items())
        return f"skipped {self.failures} loads of {len(self.files)} unreadable file(s): {listed}"
