"""Buckets: the assignment of clips to (frames, height, width) buckets against a hand-computed table, keep
probabilities, and the distributed micro-batch sampler (one bucket per micro-batch, same in 1 and 2
processes, resumable)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "parallel"))
from _spawn import run_distributed  # noqa: E402

from sorakit.config import tomllib  # noqa: E402 - tomli on Python 3.10
from sorakit.data.buckets import (  # noqa: E402
    Bucket,
    BucketBatchSampler,
    BucketTable,
    ClipSize,
    assign_all,
    bucket_report,
    shape_for,
)
from sorakit.errors import ConfigError, UserError  # noqa: E402

# the tiny-buckets table: 64x64, 64x96, 96x64 (H x W) at 4 and 8 frames
TINY = {s: {"4": [1.0, 2], "8": [1.0, 2]} for s in ("64x64", "64x96", "96x64")}

# (frames, height, width, image) -> the bucket worked out by hand, or why the clip is dropped.
# Levels: 6144 px (64x96 ratio 0.667, 96x64 ratio 1.5), then 4096 px (64x64); a clip fits a level with
# >= 0.8x its pixels (4915.2 / 3276.8); nearest H/W ratio; longest of 8, 4 frames it has.
HAND = [
    ((16, 64, 96, False), "8x64x96"),  # exactly 64x96
    ((5, 96, 64, False), "4x96x64"),  # portrait, 5 frames -> 4
    ((8, 64, 64, False), "8x64x64"),  # 4096 px < 4915.2: square level
    ((3, 64, 64, False), "too few frames"),
    ((8, 32, 32, False), "smaller than every bucket"),
    ((10, 72, 72, False), "8x64x96"),  # 5184 px >= 4915.2; ratio 1.0 nearer 0.667 than 1.5
    ((8, 56, 64, False), "8x64x64"),  # 3584 px >= 3276.8: upsampled 1.14x
    ((8, 48, 64, False), "smaller than every bucket"),  # 3072 px < 3276.8: would need 1.33x
    ((None, 64, 64, False), "no size in the CSV"),
    ((1, 64, 64, True), "no 1-frame bucket for images"),
    ((7, 128, 128, False), "4x64x96"),  # largest level first; 7 frames -> 4
    ((8, 200, 90, False), "8x96x64"),  # ratio 2.2: nearest 1.5
]


def test_assignment_matches_hand_computed_table():
    table = BucketTable(TINY, frame_interval=1, multiple=16)
    for (t, h, w, image), want in HAND:
        bucket, why = table.assign(ClipSize(t, h, w, image))
        assert (bucket.name if bucket else why) == want, (t, h, w, image)
    # frame_interval 2: 8 frames span 15 source frames
    table2 = BucketTable(TINY, frame_interval=2)
    assert table2.assign(ClipSize(14, 64, 64))[0] == Bucket(4, 64, 64)
    assert table2.assign(ClipSize(15, 64, 64))[0] == Bucket(8, 64, 64)
    # images go to 1-frame buckets only
    table3 = BucketTable({"64x64": {"1": [1.0, 8], "4": [1.0, 2]}})
    assert table3.assign(ClipSize(1, 64, 64, True))[0] == Bucket(1, 64, 64)
    assert table3.assign(ClipSize(9, 64, 64))[0] == Bucket(4, 64, 64)


def test_named_resolutions_and_pixel_counts():
    # Open-Sora's 144p 16:9 frame is 144x256; its portrait twin 256x144
    table = BucketTable({"144p": {"16": [1.0, 4]}}, aspect_ratios=["16:9", "1:1", "9:16"], multiple=16)
    assert {(s.height, s.width) for _, shapes in table.levels for s in shapes} == {
        (144, 256),
        (192, 192),
        (256, 144),
    }
    assert table.assign(ClipSize(40, 720, 1280))[0] == Bucket(16, 144, 256)
    assert table.assign(ClipSize(40, 1920, 1080))[0] == Bucket(16, 256, 144)
    assert shape_for(4096, 1.0, 8) == (64, 64)
    assert BucketTable({"4096": {"4": [1.0, 1]}}, aspect_ratios=["1:1"]).buckets() == [Bucket(4, 64, 64)]
    for bad, msg in [
        ({"77p": {"4": [1, 1]}}, "unknown resolution"),
        ({"64x64": {"4": [1.5, 1]}}, "keep_prob in"),
        ({"64x64": {"4": 1}}, "expected num_frames = "),
        ({"60x64": {"4": [1, 1]}}, "multiple"),
        ({}, "empty"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            BucketTable(bad)
    with pytest.raises(ConfigError, match="W:H"):
        BucketTable({"240p": {"4": [1, 1]}}, aspect_ratios=["wide"])


def test_keep_probabilities_statistics_with_fixed_seed():
    # 64x96 clips: kept in 64x96 with p=0.3, otherwise they fall through to 64x64 (kept with p=0.5)
    table = BucketTable({"64x96": {"4": [0.3, 1]}, "64x64": {"4": [0.5, 1]}})
    n = 4000
    clips = [ClipSize(8, 64, 96)] * n
    sampler = BucketBatchSampler(table, clips, seed=7)
    per_epoch = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        seen = Counter(i for batch in sampler for i, _, _ in batch)
        assert max(seen.values()) == 1  # batch size 1: no padding, each kept clip once
        buckets = Counter(b for batch in sampler for _, _, b in batch)
        big, small = buckets[Bucket(4, 64, 96)], buckets[Bucket(4, 64, 64)]
        # binomial(4000, 0.3) = 1200 +- 29; binomial(4000, 0.7 * 0.5) = 1400 +- 30 (4 sigma bounds)
        assert abs(big - 1200) < 4 * 29 and abs(small - 1400) < 4 * 30
        _, dropped = assign_all(table, clips, 7, epoch)
        assert dropped == {"not kept (keep probability)": n - big - small}
        per_epoch.append(set(seen))
    assert per_epoch[0] != per_epoch[1]  # a new draw every epoch
    again = BucketBatchSampler(table, clips, seed=7)
    again.set_epoch(1)
    assert set(i for batch in again for i, _, _ in batch) == per_epoch[1]  # the same seed, the same draw


MIXED = [ClipSize(t, h, w) for t, h, w in [(16, 64, 96), (5, 96, 64), (8, 64, 64), (9, 72, 72), (4, 64, 64),
                                            (12, 96, 64), (8, 64, 96), (6, 128, 128), (3, 64, 64)] * 3]  # fmt: skip


def test_sampler_one_bucket_per_micro_batch_and_resume():
    table = BucketTable({**TINY, "64x64": {"4": [1.0, 3], "8": [0.5, 2]}})
    s = BucketBatchSampler(table, MIXED, seed=3)
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s) > 3
        for batch in batches:
            (bucket,) = {b for _, _, b in batch}  # one bucket per micro-batch
            assert len(batch) == table.batch_size(bucket)
            for i, e, _ in batch:
                assert e == epoch and table.assign(MIXED[i])[0] is not None
        # resume at step 2 of the epoch: exactly the rest
        s.set_epoch(epoch, 2)
        assert list(s) == batches[2:]
    with pytest.raises(UserError, match="no clip fits"):
        list(BucketBatchSampler(table, [ClipSize(2, 64, 64)]))


def _rank_batches(rank: int, world: int) -> list:
    table = BucketTable({**TINY, "64x64": {"4": [1.0, 3], "8": [0.5, 2]}})
    s = BucketBatchSampler(table, MIXED, rank=rank, num_replicas=world, seed=3)
    out = []
    for epoch in range(2):
        s.set_epoch(epoch)
        out.append(list(s))
    return out


def test_same_assignment_in_one_and_two_processes(tmp_path):
    single = _rank_batches(0, 1)
    ranks = run_distributed(_rank_batches, 2, tmp_path)
    for epoch in range(2):
        one = single[epoch]
        r0, r1 = ranks[0][epoch], ranks[1][epoch]
        assert len(r0) == len(r1) == (len(one) + 1) // 2
        # step k of 2 processes = micro-batches 2k and 2k+1 of one process (the odd tail padded from the start)
        interleaved = [mb for pair in zip(r0, r1) for mb in pair]
        assert interleaved[: len(one)] == one
        assert interleaved[len(one) :] == one[: len(interleaved) - len(one)]


def test_buckets_report_cli(tmp_path):
    import subprocess
    import sys

    rows = ["path,text,num_frames,height,width"]
    rows += [f"c{i}.mp4,clip {i},{t or ''},{h},{w}" for i, ((t, h, w, _), _) in enumerate(HAND) if i != 9]
    csv = tmp_path / "mixed.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = subprocess.run([sys.executable, "-m", "sorakit.cli.main", "data", "csv", "buckets", str(csv)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    counts = {ln.split()[1]: (int(ln.split()[4]), int(ln.split()[5])) for ln in lines[1:7]}
    # from the hand-computed table (the image row left out): clips, micro-batches (tiny-buckets batch sizes)
    assert counts == {"8x64x96": (2, 1), "8x96x64": (1, 1), "4x64x96": (1, 1), "4x96x64": (1, 1),
                      "8x64x64": (2, 1), "4x64x64": (0, 0)}  # fmt: skip
    assert "kept 7 of 11 clips" in out.stdout
    assert "smaller than every bucket: 2" in out.stdout and "too few frames: 1" in out.stdout
    assert "no size in the CSV: 1" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "sorakit.cli.main", "data", "csv", "buckets", str(csv), "--config",
                          "tiny"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (
        bad.returncode == 2 and bad.stderr.strip() == "sorakit: error: config tiny has no data.buckets table"
    )


# --- docs/training.md: the three-stage bucket tables parse, and the stage-1 report is what the code prints ----

DOCS = Path(__file__).resolve().parents[2] / "docs" / "training.md"
DOC_SIZES = [(120, 160), (240, 426), (360, 640), (480, 854), (720, 1280), (1080, 1920), (1920, 1080), (640, 360),
             (512, 512), (480, 640)]  # fmt: skip


def docs_clips(n: int = 1000, seed: int = 0) -> list[ClipSize]:
    """The docs' example CSV: 15% images, videos of 8 to 300 frames, sizes from 120x160 to 1920x1080."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        image = bool(rng.random() < 0.15)
        frames = 1 if image else int(rng.integers(8, 301))
        h, w = DOC_SIZES[int(rng.integers(len(DOC_SIZES)))]
        out.append(ClipSize(frames, h, w, image))
    return out


def _doc_block(after: str, lang: str) -> str:
    text = DOCS.read_text()
    start = text.index(f"```{lang}\n", text.index(after)) + len(lang) + 4
    return text[start : text.index("```", start)]


def test_docs_three_stage_tables_and_report():
    stages = _doc_block("### A three-stage recipe", "toml").split("# stage ")[1:]
    tables = [
        BucketTable(tomllib.loads(s.split("\n", 1)[1])["data"]["buckets"], frame_interval=3) for s in stages
    ]
    assert len(tables) == 3 and all(t.buckets() for t in tables)
    report = _doc_block("Before training, `sorakit data csv buckets", "")
    assert bucket_report(tables[0], docs_clips(), seed=42) == report.rstrip("\n")
