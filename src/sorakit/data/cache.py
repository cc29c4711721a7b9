"""Latent + text-embedding cache: precomputed VAE latents and caption embeddings in safetensors shards,
read by training directly (no VAE, no text encoder at training time).

Layout of a cache directory (written by ``sorakit data encode``)::

    DIR/meta.json                  format, counts, shapes, the encoders and data settings used
    DIR/shard-00000.safetensors    latents [n, C, T, h, w] float32
                                   y       [n, L_shard, Cy] (float16 by default)  -- text models
                                   mask    [n, L_shard] uint8                       -- text models
                                   label   [n] int64                                -- class models
                                   row     [n] int64  (the CSV row each sample came from)
                                   horizon [n] int64  (when the CSV has a horizon column; 0 = empty)

With ``data.buckets`` (``sorakit data encode --config`` a bucketed preset) every clip is stored at its bucket's
shape, one bucket per shard: ``DIR/bucket-<T>x<H>x<W>-00000.safetensors``, and meta.json counts the samples of
each bucket under ``"buckets"`` (read by :class:`sorakit.data.bucket_cache.BucketLatentCache`).

``L_shard`` is the longest caption of the shard (embeddings are padded back to ``model_max_length``
with zeros and mask 0 when read; masked positions never reach the model's output). Shards cover fixed
CSV row ranges and are written to a temporary name then renamed, so an interrupted encode is resumed
by running it again. ``meta.json`` is written last: a directory without it is not a cache. It records each
shard's size and sha256 (the cache's manifest): :func:`verify_shards` checks them, and
:class:`LatentCacheDataset` refuses or skips a damaged shard, naming its path.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sorakit.data.dataset import sample_rng
from sorakit.errors import ConfigError, UserError
from sorakit.fileutil import atomic_path, save_safetensors, write_text_atomic
from sorakit.jsonutil import read_versioned
from sorakit.logging import get_logger
from sorakit.manifest import check_entry, file_entry
from sorakit.tools.executor import pool_for, run_shards

log = get_logger(__name__)

FORMAT = "sorakit-latent-cache"
VERSION = 1
META = "meta.json"


def is_cache_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / META).is_file()


def shard_name(k: int, bucket: Any = None) -> str:
    """Shard `k`'s file name: ``shard-00000.safetensors``, or with a bucket ``bucket-8x64x96-00000.safetensors``."""
    return f"shard-{k:05d}.safetensors" if bucket is None else f"bucket-{bucket.name}-{k:05d}.safetensors"


def _shard_files(cache_dir: Path) -> list[Path]:
    return sorted([*cache_dir.glob("shard-*.safetensors"), *cache_dir.glob("bucket-*.safetensors")])


def write_shard(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write one shard atomically (temporary name in the same folder, then rename)."""
    with atomic_path(path) as tmp:
        save_safetensors({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


def write_meta(cache_dir: Path, meta: dict[str, Any]) -> None:
    """Write ``meta.json`` (atomically) listing the shards present with their sample counts, sizes and
    sha256."""
    shards = []
    total = 0
    buckets: dict[str, int] = {}
    for f in _shard_files(cache_dir):
        with safe_open(str(f), "pt") as fh:
            n = fh.get_slice("latents").get_shape()[0]
        if n:
            # size + sha256: the cache's manifest, checked by verify_shards when training opens the cache
            shards.append({"file": f.name, "count": int(n), **file_entry(f)})
            total += int(n)
            if f.name.startswith("bucket-"):
                name = f.name[len("bucket-") :].rsplit("-", 1)[0]
                buckets[name] = buckets.get(name, 0) + int(n)
    meta = {"format": FORMAT, "version": VERSION, **meta, "num_samples": total, "shards": shards}
    if buckets:
        meta["buckets"] = buckets
    write_text_atomic(cache_dir / META, json.dumps(meta, indent=2, allow_nan=False))


def read_meta(cache_dir: str | os.PathLike) -> dict[str, Any]:
    cache_dir = Path(cache_dir)
    path = cache_dir / META
    if not path.is_file():
        raise UserError(
            f"{cache_dir} is not a latent cache (no {META}; write one with `sorakit data encode`)"
        )
    meta = read_versioned(path, FORMAT, VERSION, "latent cache")
    if not meta.get("num_samples"):
        raise UserError(f"{cache_dir}: the cache holds no samples")
    return meta


def verify_shards(cache_dir: str | os.PathLike, deep: bool = True) -> list[tuple[Path, str]]:
    """The damaged shards of a cache as ``(path, reason)``; empty when every shard checks out.

    Shards are checked against the size and sha256 recorded in ``meta.json`` (``deep=False``: size only);
    caches written before checksums existed get a lighter check (the shard opens and holds the number of
    samples meta.json says)."""
    root = Path(cache_dir)
    bad = []
    for s in read_meta(root)["shards"]:
        path = root / s["file"]
        if "sha256" in s:
            why = check_entry(path, s, deep)
        elif not path.is_file():
            why = f"{path.name} is missing"
        else:
            try:
                with safe_open(str(path), "pt") as fh:
                    n = fh.get_slice("latents").get_shape()[0]
                why = "" if n == int(s["count"]) else f"holds {n} samples, meta.json says {s['count']}"
            except Exception as exc:  # noqa: BLE001 - whatever a damaged header raises
                why = f"does not open ({str(exc).strip()[:200]})"
        if why:
            bad.append((path, why))
    return bad


def _drop_damaged(cache_dir: Path, meta: dict[str, Any], policy: str) -> dict[str, Any]:
    """Apply ``data.damaged_shards``: refuse a cache with a damaged shard, or leave those shards out."""
    if policy not in ("refuse", "skip"):
        raise ConfigError(f"data.damaged_shards: unknown '{policy}' (valid: refuse, skip)")
    bad = verify_shards(cache_dir)
    if not bad:
        return meta
    listed = "; ".join(f"{p} ({why})" for p, why in bad)
    if policy == "refuse":
        raise UserError(
            f"latent cache {cache_dir}: {len(bad)} damaged shard(s): {listed}. Delete them and run `sorakit "
            "data encode` again to rewrite them, or train without them with data.damaged_shards=skip"
        )
    names = {p.name for p, _ in bad}
    kept = [s for s in meta["shards"] if s["file"] not in names]
    if not kept:
        raise UserError(f"latent cache {cache_dir}: every shard is damaged: {listed}")
    log.warning("latent cache: skipping %d damaged shard(s) (data.damaged_shards=skip): %s", len(bad), listed)
    return {**meta, "shards": kept, "num_samples": sum(int(s["count"]) for s in kept)}


class LatentCacheDataset(torch.utils.data.Dataset):
    """Items ``{"latent": [C, T, h, w], "y": [1, L, Cy], "mask": [L]}`` (or ``"label"``) from a cache.

    With ``in_memory`` (default when the cache is under `memory_limit_bytes`) every shard is loaded once
    and items are slices of RAM tensors -- the fastest path; otherwise shards are memory-mapped and read
    per item. Items accept ``(index, epoch)`` keys like :class:`~sorakit.data.dataset.VideoTextDataset`.

    Every shard is checked first (:func:`verify_shards`); ``damaged="refuse"`` stops with an error naming
    the damaged shards, ``"skip"`` leaves them out with a warning naming them.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        in_memory: bool | None = None,
        memory_limit_bytes: int = 4 << 30,
        damaged: str = "refuse",
    ) -> None:
        self.dir = Path(cache_dir)
        self.meta = _drop_damaged(self.dir, read_meta(self.dir), damaged)
        self.shards = [self.dir / s["file"] for s in self.meta["shards"]]
        counts = [int(s["count"]) for s in self.meta["shards"]]
        self.offsets = torch.tensor([0] + counts).cumsum(0).tolist()
        self.max_length = int(self.meta.get("model_max_length") or 0)
        self.has_text = bool(self.meta.get("text_dim"))
        size = sum(s.stat().st_size for s in self.shards)
        self.in_memory = size <= memory_limit_bytes if in_memory is None else in_memory
        self._data: dict[str, torch.Tensor] | None = None
        self._handles: dict[int, Any] = {}
        self._pid = -1
        if self.in_memory:
            self._data = self._load_all()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def latent_shape(self) -> list[int]:
        return list(self.meta["latent_shape"])

    def _pad_text(self, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[n, l, C]``, ``[n, l]`` -> ``[n, L, C]``, ``[n, L]`` (zeros, mask 0 beyond l; dtypes kept)."""
        n, length, c = y.shape
        if length < self.max_length:
            y = torch.cat([y, y.new_zeros(n, self.max_length - length, c)], dim=1)
            mask = torch.cat([mask, mask.new_zeros(n, self.max_length - length)], dim=1)
        return y, mask

    def _load_all(self) -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {}
        for s in self.shards:
            data = load_file(str(s))
            if self.has_text:
                data["y"], data["mask"] = self._pad_text(data["y"], data["mask"])
            for k, v in data.items():
                parts.setdefault(k, []).append(v)
        return {k: torch.cat(v) for k, v in parts.items()}

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = bisect.bisect_right(self.offsets, index) - 1
        return k, index - self.offsets[k]

    def _handle(self, k: int) -> Any:
        if self._pid != os.getpid():  # handles do not survive a fork into a worker
            self._handles, self._pid = {}, os.getpid()
        if k not in self._handles:
            self._handles[k] = safe_open(str(self.shards[k]), "pt")
        return self._handles[k]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index = int(key if isinstance(key, int) else key[0])
        if self._data is not None:
            rows = {k: v[index] for k, v in self._data.items()}
        else:
            k, i = self._locate(index)
            fh = self._handle(k)
            rows = {name: fh.get_slice(name)[i : i + 1] for name in fh.keys()}
            if self.has_text:
                rows["y"], rows["mask"] = self._pad_text(rows["y"], rows["mask"])
            rows = {name: v[0] for name, v in rows.items()}
        item: dict[str, Any] = {"latent": rows["latents"].float(), "index": index, "skipped": []}
        if self.has_text:
            item["y"] = rows["y"].float().unsqueeze(0)
            item["mask"] = rows["mask"].long()
        if "label" in rows:
            item["label"] = int(rows["label"])
        if "horizon" in rows:
            item["horizon"] = int(rows["horizon"])
        return item

    def get_batch(self, indices: list[int]) -> dict[str, Any]:
        """A whole batch by fancy indexing (in-memory caches only): the fast path of the trainer."""
        assert self._data is not None
        idx = torch.as_tensor(indices, dtype=torch.long)
        out: dict[str, Any] = {"latent": self._data["latents"].index_select(0, idx).float(), "skipped": []}
        out["index"] = idx
        if self.has_text:
            out["y"] = self._data["y"].index_select(0, idx).float().unsqueeze(1)
            out["mask"] = self._data["mask"].index_select(0, idx).long()
        for key in ("label", "horizon"):
            if key in self._data:
                out[key] = self._data[key].index_select(0, idx)
        return out


# --------------------------------------------------------------------------------------------------
# Writing a cache (``sorakit data encode``)


@dataclass(frozen=True)
class EncodeSettings:
    """How every shard of a cache is encoded (the same on every worker)."""

    batch_size: int = 8
    text_dtype: torch.dtype = torch.float16
    device: str = "cpu"
    seed: int = 0
    label: bool = False
    bucket: Any = None  # a sorakit.data.buckets.Bucket: clips decoded at its frames x height x width


SETTINGS = "settings.json"


def cache_settings(
    meta: dict[str, Any], shard_size: int, text_dtype: torch.dtype, label: bool
) -> dict[str, Any]:
    """What decides the content of a cache's shards: `meta` (VAE, text encoder, frames, frame interval,
    image size, CSV, seed), the rows per shard, the text dtype and labels vs captions. JSON-normalised."""
    record = {
        **meta,
        "shard_size": shard_size,
        "text_dtype": str(text_dtype).removeprefix("torch."),
        "label": label,
    }
    return json.loads(json.dumps(record, default=str, allow_nan=False))


def check_cache_settings(out_dir: str | os.PathLike, settings: dict[str, Any]) -> None:
    """Refuse to resume a cache written with other settings: its finished shards would be kept and mixed
    with new ones of another shape (training then fails on a tensor size, or trains on mixed data). The
    settings are those of ``settings.json`` (written before the first shard), else of ``meta.json``."""
    out = Path(out_dir)
    old: dict[str, Any] | None = None
    for name in (SETTINGS, META):
        if (out / name).is_file():
            try:
                old = json.loads((out / name).read_text())
            except (OSError, ValueError):
                raise UserError(
                    f"{out / name} is unreadable: remove {out} or choose another --output"
                ) from None
            break
    if not isinstance(old, dict):
        return
    diff = [k for k in settings if k in old and old[k] != settings[k]]
    if diff:
        said = "; ".join(f"{k}: {old[k]!r} then, {settings[k]!r} now" for k in diff[:4])
        raise UserError(
            f"{out} holds a cache encoded with other settings ({said}); resuming would mix them: "
            "choose a new --output, or remove it to start over"
        )


def encode_to_cache(
    dataset: Any,
    out_dir: str | os.PathLike,
    vae: Any,
    text_encoder: Any,
    meta: dict[str, Any],
    shard_size: int = 1024,
    batch_size: int = 8,
    text_dtype: torch.dtype = torch.float16,
    device: torch.device | str = "cpu",
    seed: int = 0,
    label: bool = False,
    progress: bool = True,
    pool: Any = None,
    builder: Any = None,
    retries: int = 0,
    groups: dict[Any, list[int]] | None = None,
) -> dict[str, Any]:
    """Encode every row of a :class:`~sorakit.data.dataset.VideoTextDataset` into cache shards.

    One clip per row (the clip start drawn from ``(seed, 0, row)``, no flip). Rows whose file is missing or
    undecodable are skipped and returned in ``failures``; shards that already exist are kept (resume).
    Each shard is one task on `pool` (a :class:`sorakit.tools.executor.Pool`; default: this process).
    On workers of another process, `builder()` gives ``(dataset, vae, text_encoder)`` (loaded once per
    worker); without one, the objects themselves are sent. `groups` (``{Bucket: rows}``, data.buckets):
    each bucket's rows at its shape, in shards of their own. Returns the meta dict written to ``meta.json``.
    """
    out = Path(out_dir)
    record = cache_settings(meta, shard_size, text_dtype, label)
    check_cache_settings(out, record)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        out / SETTINGS, json.dumps(record, indent=2, sort_keys=True, allow_nan=False)
    )  # before any shard
    settings = EncodeSettings(batch_size, text_dtype, str(device), seed, label)
    jobs = _shard_jobs(len(dataset), shard_size, settings, groups)  # (file name, rows, settings) per shard
    rows = [job[1] for job in jobs]
    todo = [k for k in range(len(jobs)) if not (out / jobs[k][0]).is_file()]
    done: dict[int, dict[str, Any]] = {}
    with pool_for(pool, 1) as ex:
        remote = builder is not None and not ex.inline
        head = (builder,) if remote else (dataset, vae, text_encoder)
        tasks = [(*head, out / jobs[k][0], jobs[k][1], jobs[k][2]) for k in todo]
        run_shards(
            ex, encode_shard_built if remote else encode_shard, tasks,
            lambda j, res: done.__setitem__(todo[j], res), [len(rows[k]) for k in todo], retries,
            desc="encode" if progress else None, unit="clip",
        )  # fmt: skip
    failures = [f for k in sorted(done) for f in done[k]["failures"]]
    shapes = {k: v for res in done.values() for k, v in res["shapes"].items()} or _existing_shapes(out)
    if "latent_shape" not in shapes:
        raise UserError(
            "no row of the CSV could be encoded"
            + (f" (first error: {failures[0]['error']})" if failures else "")
        )
    full = {**meta, **shapes, "failures": failures}
    if label:
        full.pop("text_dim", None)
    write_meta(out, full)
    return read_meta(out) | {"failures": failures}


def _shard_jobs(
    n: int, shard_size: int, settings: EncodeSettings, groups: dict[Any, list[int]] | None
) -> list[tuple[str, list[int], EncodeSettings]]:
    """(file name, CSV rows, settings) of every shard: fixed row ranges, or each bucket's rows in order."""
    if groups is None:
        return [(shard_name(k), list(range(k * shard_size, min(n, (k + 1) * shard_size))), settings)
                for k in range((n + shard_size - 1) // shard_size)]  # fmt: skip
    jobs = []
    for bucket in sorted(groups):
        at_shape = dataclasses.replace(settings, bucket=bucket)
        rows = groups[bucket]
        for k in range((len(rows) + shard_size - 1) // shard_size):
            jobs.append((shard_name(k, bucket), rows[k * shard_size : (k + 1) * shard_size], at_shape))
    return jobs


def encode_shard_built(builder: Any, path: Path, rows: list[int], settings: EncodeSettings) -> dict[str, Any]:
    """:func:`encode_shard` on a worker that builds (once) its own dataset, VAE and text encoder, on the
    worker's own device when the builder names one (``resolved_device``)."""
    if hasattr(builder, "resolved_device"):
        settings = dataclasses.replace(settings, device=str(builder.resolved_device()))
    return encode_shard(*builder(), path, rows, settings)


def encode_shard(
    dataset: Any, vae: Any, text_encoder: Any, path: Path, rows: list[int], settings: EncodeSettings
) -> dict[str, Any]:
    """Encode CSV `rows` into the shard file `path` (written atomically; not at all when every row
    failed). Returns ``{"failures": [{"row", "path", "error"}], "shapes": {...}}``."""
    parts: dict[str, list[torch.Tensor]] = {}
    failures: list[dict[str, str]] = []
    shapes: dict[str, Any] = {}
    for start in range(0, len(rows), settings.batch_size):
        chunk = rows[start : start + settings.batch_size]
        _encode_batch(dataset, vae, text_encoder, chunk, settings, parts, failures, shapes)
    if parts:
        tensors = {name: torch.cat(v) for name, v in parts.items()}
        if "y" in tensors:
            longest = max(1, int(tensors["mask"].sum(1).max()))
            tensors["y"] = tensors["y"][:, :longest].to(settings.text_dtype)
            tensors["mask"] = tensors["mask"][:, :longest]
        write_shard(path, tensors)
    return {"failures": failures, "shapes": shapes}


def _encode_batch(dataset, vae, text_encoder, chunk, settings, parts, failures, shapes) -> None:
    """Load and encode one batch of rows, appending tensors to `parts` and failed rows to `failures`."""
    videos, texts, labels, horizons, ok = [], [], [], [], []
    for i in chunk:
        try:
            rng = sample_rng(settings.seed, 0, i)
            bucket = () if settings.bucket is None else (settings.bucket,)
            videos.append(dataset.load(i, rng, *bucket))
        except Exception as exc:  # noqa: BLE001 - report and go on
            failures.append({"row": str(i), "path": str(dataset.rows[i].path), "error": str(exc)[:200]})
            continue
        texts.append(dataset.rows[i].text)
        labels.append(dataset.rows[i].label)
        horizons.append(int(dataset.rows[i].horizon or 0))
        ok.append(i)
    if not ok:
        return
    device = settings.device
    with torch.no_grad():
        x = torch.stack(videos).to(device)
        z = vae.encode(x.to(getattr(vae, "dtype", torch.float32)), sample=True,
                       generator=torch.Generator(device=device).manual_seed(settings.seed + ok[0])).float().cpu()  # fmt: skip
        parts.setdefault("latents", []).append(z)
        parts.setdefault("row", []).append(torch.tensor(ok, dtype=torch.long))
        if getattr(dataset, "has_horizon", False):
            parts.setdefault("horizon", []).append(torch.tensor(horizons, dtype=torch.long))
        if settings.label:
            parts.setdefault("label", []).append(torch.tensor(labels, dtype=torch.long))
        else:
            y, mask = text_encoder.encode(texts)
            y = y.float().cpu()[:, 0]  # [b, L, C]
            mask = mask.cpu() if mask is not None else torch.ones(y.shape[:2], dtype=torch.long)
            parts.setdefault("y", []).append(y)
            parts.setdefault("mask", []).append(mask.to(torch.uint8))
            shapes["text_dim"] = int(y.shape[-1])
            shapes["model_max_length"] = int(y.shape[1])
    shapes["latent_shape"] = list(z.shape[1:])


def _existing_shapes(out: Path) -> dict[str, Any]:
    """Every shard was there already (resumed): read the shapes back from meta.json or a shard."""
    previous = json.loads((out / META).read_text()) if (out / META).is_file() else {}
    shapes = {k: previous[k] for k in ("latent_shape", "text_dim", "model_max_length") if k in previous}
    if "latent_shape" not in shapes and _shard_files(out):
        with safe_open(str(_shard_files(out)[0]), "pt") as fh:
            shapes["latent_shape"] = list(fh.get_slice("latents").get_shape()[1:])
    return shapes
