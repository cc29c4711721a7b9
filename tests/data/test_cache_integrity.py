"""A damaged latent-cache shard is reported by its path: training refuses the cache, or leaves the shard
out when the user asked for that (data.damaged_shards=skip)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from _train_helpers import make_cache, tiny_config  # noqa: E402

from sorakit.data.cache import LatentCacheDataset, verify_shards  # noqa: E402
from sorakit.errors import ConfigError, UserError  # noqa: E402


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # a latent value, not the header
    path.write_bytes(bytes(data))


def test_meta_records_size_and_sha256_and_a_flipped_bit_is_reported_by_path(tmp_path):
    cache = make_cache(tmp_path / "cache", n=12)
    shards = json.loads((cache / "meta.json").read_text())["shards"]
    assert all(len(s["sha256"]) == 64 and s["size"] > 0 for s in shards)
    assert verify_shards(cache) == []
    bad = cache / "shard-00001.safetensors"
    _flip_byte(bad)
    assert verify_shards(cache, deep=False) == []  # same size: only the sha256 sees it
    assert verify_shards(cache) == [(bad, "shard-00001.safetensors does not match its sha256 "
                                          "(the content changed after it was written)")]  # fmt: skip
    with pytest.raises(UserError, match=f"1 damaged shard\\(s\\): {bad} \\(.*data.damaged_shards=skip"):
        LatentCacheDataset(cache)
    ds = LatentCacheDataset(cache, damaged="skip")
    assert len(ds) == 6 and ds.shards == [cache / "shard-00000.safetensors"]
    with pytest.raises(ConfigError, match="data.damaged_shards: unknown 'ignore'"):
        LatentCacheDataset(cache, damaged="ignore")


def test_truncated_and_missing_shards_and_older_caches(tmp_path):
    cache = make_cache(tmp_path / "cache", n=12)
    first, second = cache / "shard-00000.safetensors", cache / "shard-00001.safetensors"
    second.write_bytes(second.read_bytes()[:100])
    [(path, why)] = verify_shards(cache, deep=False)
    assert path == second and "has 100 bytes" in why
    first.unlink()
    with pytest.raises(UserError, match="every shard is damaged"):
        LatentCacheDataset(cache, damaged="skip")
    # a cache written before checksums: the shard must still open and hold its samples
    old = make_cache(tmp_path / "old", n=12)
    meta = json.loads((old / "meta.json").read_text())
    for s in meta["shards"]:
        del s["size"], s["sha256"]
    (old / "meta.json").write_text(json.dumps(meta))
    assert verify_shards(old) == []
    (old / "shard-00001.safetensors").write_bytes(b"\x08" + b"\x00" * 20)
    [(path, why)] = verify_shards(old)
    assert path.name == "shard-00001.safetensors" and why.startswith("does not open")


def test_training_refuses_or_skips_a_damaged_shard(tmp_path):
    from sorakit.training.trainer import train

    cache = make_cache(tmp_path / "cache", n=12)
    _flip_byte(cache / "shard-00000.safetensors")
    cfg = tiny_config(f"data.csv={cache}", "train.max_steps=1")
    with pytest.raises(UserError, match="shard-00000.safetensors"):
        train(cfg, tmp_path / "refused")
    res = train(
        tiny_config(f"data.csv={cache}", "train.max_steps=1", "data.damaged_shards=skip"), tmp_path / "ok"
    )
    assert res.step == 1
