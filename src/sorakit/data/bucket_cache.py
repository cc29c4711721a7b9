"""A latent cache whose clips keep their bucket's shape (``sorakit data encode`` with ``data.buckets``).

Every CSV row is assigned its bucket once (:func:`bucket_groups`: as training would, keep probabilities aside)
and encoded at that shape by :func:`sorakit.data.cache.encode_to_cache`, one bucket per shard::

    DIR/meta.json                                  as a plain cache, plus "buckets": {name: count}
    DIR/bucket-<F>x<H>x<W>-<k>.safetensors         latents [n, C, F, H/f, W/f], y, mask / label, row

Training reads it with :class:`BucketLatentCache`; each epoch keeps a clip with its bucket's keep
probability (a cached clip cannot fall back to a smaller resolution: it is stored at one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from sorakit.data.buckets import Bucket, BucketTable, clip_sizes
from sorakit.data.cache import LatentCacheDataset, _drop_damaged, read_meta
from sorakit.errors import UserError


def open_cache(path: str | os.PathLike, damaged: str = "refuse") -> LatentCacheDataset | BucketLatentCache:
    """The dataset of a latent cache directory: bucketed (:class:`BucketLatentCache`) or plain."""
    if "buckets" in read_meta(path):
        return BucketLatentCache(path, damaged)
    return LatentCacheDataset(path, damaged=damaged)


def bucket_groups(
    rows: list[Any], table: BucketTable
) -> tuple[dict[Bucket, list[int]], list[dict[str, str]]]:
    """({bucket: CSV rows}, failures) for encoding: each row's largest bucket (a bucket with keep_prob 0 is
    never chosen), and a failure entry with the reason for each row that fits none."""
    groups: dict[Bucket, list[int]] = {}
    failures: list[dict[str, str]] = []
    for i, clip in enumerate(clip_sizes(rows)):
        bucket, why = table.assign(clip, None)
        if bucket is None:
            failures.append({"row": str(i), "path": str(rows[i].path), "error": f"no bucket: {why}"})
        else:
            groups.setdefault(bucket, []).append(i)
    if not groups:
        raise UserError("no row of the CSV fits a bucket of data.buckets (see `sorakit data csv buckets`)")
    return groups, failures


class BucketLatentCache(torch.utils.data.Dataset):
    """A bucketed latent cache in memory: sample i has its own latent shape (``buckets[i]``), and a batch of
    one bucket is gathered with :meth:`get_batch`. Items as :class:`~sorakit.data.cache.LatentCacheDataset`;
    damaged shards are refused or skipped in the same way (``damaged``)."""

    in_memory = True

    def __init__(self, cache_dir: str | os.PathLike, damaged: str = "refuse") -> None:
        self.dir = Path(cache_dir)
        self.meta = _drop_damaged(self.dir, read_meta(self.dir), damaged)
        self.max_length = int(self.meta.get("model_max_length") or 0)
        self.has_text = bool(self.meta.get("text_dim"))
        per: dict[str, dict[str, list[torch.Tensor]]] = {}
        for shard in self.meta["shards"]:
            name = shard["file"][len("bucket-") :].rsplit("-", 1)[0]
            for k, v in load_file(str(self.dir / shard["file"])).items():
                per.setdefault(name, {}).setdefault(k, []).append(v)
        self.groups: dict[str, dict[str, torch.Tensor]] = {}
        self.index: list[tuple[str, int]] = []  # sample -> (bucket name, position in its group)
        self.buckets: list[Bucket] = []
        for name in sorted(per):
            self.groups[name] = {k: self._cat(k, v) for k, v in per[name].items()}
            t, h, w = (int(v) for v in name.split("x"))
            for j in range(len(self.groups[name]["row"])):
                self.index.append((name, j))
                self.buckets.append(Bucket(t, h, w))
        first = next(iter(self.groups.values()))["latents"]
        self.latent_shape = [first.shape[1], *first.shape[2:]]  # [C, T, h, w] of the first bucket

    def _cat(self, key: str, parts: list[torch.Tensor]) -> torch.Tensor:
        if key == "y":  # pad captions back to model_max_length (mask 0), as the plain cache does
            parts = [torch.nn.functional.pad(p, (0, 0, 0, self.max_length - p.shape[1])) for p in parts]
        elif key == "mask":
            parts = [torch.nn.functional.pad(p, (0, self.max_length - p.shape[1])) for p in parts]
        return torch.cat(parts)

    def __len__(self) -> int:
        return len(self.index)

    def get_batch(self, indices: list[int]) -> dict[str, Any]:
        """Samples of one bucket: ``latent [B, C, T, h, w]``, ``y [B, 1, L, C]``, ``mask [B, L]`` or ``label``."""
        names = {self.index[i][0] for i in indices}
        if len(names) != 1:
            raise ValueError(f"a batch must hold one bucket, got {sorted(names)}")
        data = self.groups[names.pop()]
        pos = torch.tensor([self.index[i][1] for i in indices], dtype=torch.long)
        out: dict[str, Any] = {
            "latent": data["latents"][pos].float(),
            "skipped": [],
            "index": torch.tensor(indices),
        }
        if self.has_text:
            out["y"] = data["y"][pos].float().unsqueeze(1)
            out["mask"] = data["mask"][pos].long()
        for key in ("label", "horizon"):
            if key in data:
                out[key] = data[key][pos]
        return out

    def __getitem__(self, key: int | tuple) -> dict[str, Any]:
        index = int(key if isinstance(key, int) else key[0])
        item = self.get_batch([index])
        return {k: (v[0] if isinstance(v, torch.Tensor) and k != "index" else v) for k, v in item.items()} | {
            "index": index
        }
