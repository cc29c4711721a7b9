"""Training data: CSV validation, clip sampling, transforms, the resumable sampler, the latent cache."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from _train_helpers import HashTextEncoder, tiny_vae, write_clips, write_csv  # noqa: E402

from sorakit.data.cache import LatentCacheDataset, encode_to_cache, read_meta  # noqa: E402
from sorakit.data.dataset import ResumableBatchSampler, VideoTextDataset, read_table  # noqa: E402
from sorakit.data.transforms import clip_indices, clips_to_tensor, frames_to_tensor, resize_center_crop  # noqa: E402
from sorakit.errors import UserError  # noqa: E402


def test_csv_errors_name_the_problem(tmp_path):
    cases = {
        "": "empty file",
        "path,caption\na.mp4,x\n": "missing column(s) text",
        "path,text\n": "no data rows",
        "path,text,num_frames\na.mp4,hi,many\n": "num_frames is not a number",
        "path,text\n,hi\n": "empty path",
    }
    for content, msg in cases.items():
        f = tmp_path / "x.csv"
        f.write_text(content)
        with pytest.raises(UserError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            read_table(f)
    with pytest.raises(UserError, match="not found"):
        read_table(tmp_path / "absent.csv")
    f.write_text("path,text\na.mp4,hi\n")
    with pytest.raises(UserError, match="missing column.*label"):
        read_table(f, label_column=True)


def test_relative_paths_resolve_against_csv_folder_or_data_root(tmp_path):
    (tmp_path / "sub").mkdir()
    f = write_csv(tmp_path / "sub" / "d.csv", [{"path": "v/a.mp4", "text": "t"}])
    assert read_table(f)[0].path == tmp_path / "sub" / "v" / "a.mp4"
    assert read_table(f, data_root=tmp_path / "root")[0].path == tmp_path / "root" / "v" / "a.mp4"


def test_clip_indices():
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = clip_indices(100, 16, 3, rng)
        assert len(idx) == 16 and idx[0] >= 0 and idx[-1] <= 99
        assert np.all(np.diff(idx) == 3)  # every 3rd frame (Open-Sora 1.0: 16 frames, interval 3)
    starts = {clip_indices(100, 16, 3, np.random.default_rng(s))[0] for s in range(30)}
    assert len(starts) > 5  # the start is random
    assert clip_indices(5, 8, 3, rng) == [0, 1, 1, 2, 2, 3, 3, 4]
    assert clip_indices(46, 16, 3, rng) == list(
        range(0, 46, 3)
    )  # exactly fits  # short video: spread, frames repeat


def test_resize_center_crop_keeps_the_center_and_aspect():
    frames = torch.zeros(1, 3, 20, 40)
    frames[..., 8:12, 18:22] = 1.0  # a square in the middle
    out = resize_center_crop(frames, (10, 10))
    assert out.shape == (1, 3, 10, 10)
    # scale 0.5 -> 10x20, crop the middle 10 columns: the square lands at rows 4..5, cols 4..5
    assert out[0, 0, 4:6, 4:6].min() > 0.5 and out[0, 0, :3].max() < 0.1
    x = frames_to_tensor(np.full((2, 20, 40, 3), 255, np.uint8), (8, 8))
    assert x.shape == (3, 2, 8, 8) and torch.allclose(x, torch.ones_like(x))


def test_clips_to_tensor_matches_frames_to_tensor_per_clip():
    clips = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 12, 3), dtype=np.uint8)
    x = clips_to_tensor(clips)
    assert x.shape == (2, 3, 3, 8, 12) and x.dtype == torch.float32
    for clip, got in zip(clips, x):  # the same numbers as the dataset's path at the clip's own size
        torch.testing.assert_close(got, frames_to_tensor(clip, (8, 12)))
    assert float(clips_to_tensor(np.zeros((1, 1, 2, 2, 3), np.uint8)).max()) == -1.0


def test_video_dataset_items(tmp_path):
    paths = write_clips(tmp_path / "v", 2, frames=12, size=20)
    from sorakit.data.video import write_image

    img = write_image(tmp_path / "v" / "img.png", np.full((20, 30, 3), 200, np.uint8))
    csv = write_csv(tmp_path / "d.csv", [
        {"path": str(paths[0]), "text": "a", "start_frame": "", "end_frame": "", "num_frames": ""},
        {"path": str(paths[1]), "text": "b", "start_frame": 4, "end_frame": 10, "num_frames": 12},
        {"path": str(img), "text": "c", "start_frame": "", "end_frame": "", "num_frames": ""},
    ])  # fmt: skip
    ds = VideoTextDataset(csv, num_frames=3, frame_interval=2, image_size=(16, 16), seed=1)
    for i in range(3):
        item = ds[(i, 0)]
        assert item["video"].shape == (3, 3, 16, 16) and item["text"] == "abc"[i] and item["skipped"] == []
        assert item["video"].min() >= -1 and item["video"].max() <= 1
        assert torch.equal(item["video"], ds[(i, 0)]["video"])  # deterministic per (index, epoch)
    # an image is a still clip
    still = ds[(2, 0)]["video"]
    assert torch.allclose(still[:, 0], still[:, 2])
    # the clip of row 1 lies inside frames 4..9: its frames equal frames of the full decode
    from sorakit.data.video import read_video

    allf = read_video(paths[1])
    ds1 = VideoTextDataset(csv, 3, 2, (20, 20), seed=1, flip=False)
    clip = ds1[(1, 0)]["video"]
    cands = [frames_to_tensor(allf[j : j + 1], (20, 20))[:, 0] for j in range(len(allf))]
    matches = [
        min(range(len(cands)), key=lambda j: (cands[j] - clip[:, k]).abs().mean().item()) for k in range(3)
    ]
    assert all(4 <= m <= 9 for m in matches) and np.all(np.diff(matches) == 2)


def test_bad_file_is_replaced_and_reported(tmp_path):
    paths = write_clips(tmp_path / "v", 2, frames=4, size=16)
    csv = write_csv(
        tmp_path / "d.csv",
        [{"path": "v/missing.mp4", "text": "x"}] + [{"path": str(p), "text": "ok"} for p in paths],
    )
    ds = VideoTextDataset(csv, 2, 1, (16, 16))
    item = ds[(0, 0)]
    assert item["text"] == "ok" and item["index"] in (1, 2)
    assert item["skipped"][0][0].endswith("missing.mp4") and "missing" in item["skipped"][0][1]


def test_sampler_two_ranks_match_one_and_resume():
    one = ResumableBatchSampler(10, 4, seed=3)
    r0 = ResumableBatchSampler(10, 2, rank=0, num_replicas=2, seed=3)
    r1 = ResumableBatchSampler(10, 2, rank=1, num_replicas=2, seed=3)
    for epoch in range(3):
        for s in (one, r0, r1):
            s.set_epoch(epoch)
        batches = list(one)
        assert len(batches) == 2  # 10 // 4, the incomplete batch is dropped
        for b, a0, a1 in zip(batches, r0, r1):
            assert b == a0 + a1
    one.set_epoch(1)
    full = list(one)
    one.set_epoch(1, start_batch=1)
    assert list(one) == full[1:]
    one.set_epoch(0)
    e0 = list(one)
    one.set_epoch(1)
    assert e0 != list(one)  # a new order every epoch
    tiny = ResumableBatchSampler(3, 4)
    assert len(tiny) == 1 and len(next(iter(tiny))) == 4  # smaller than a batch: repeated


def test_encode_cache_and_read_back(tmp_path):
    paths = write_clips(tmp_path / "v", 5, frames=4, size=16)
    texts = ["red box", "a blue square moving right fast", "green", "white box up", "black"]
    rows = [{"path": str(p), "text": t} for p, t in zip(paths, texts)]
    rows.insert(2, {"path": "v/broken.mp4", "text": "gone"})
    csv = write_csv(tmp_path / "d.csv", rows)
    ds = VideoTextDataset(csv, 4, 1, (16, 16), flip=False)
    vae, text = tiny_vae(), HashTextEncoder(16, 8)
    meta = encode_to_cache(ds, tmp_path / "cache", vae, text, {"num_frames": 4}, shard_size=4, batch_size=3,
                           progress=False)  # fmt: skip
    assert meta["num_samples"] == 5 and len(meta["shards"]) == 2
    assert [f["row"] for f in meta["failures"]] == ["2"]
    assert read_meta(tmp_path / "cache")["latent_shape"] == [4, 4, 8, 8]

    mem = LatentCacheDataset(tmp_path / "cache", in_memory=True)
    mmap = LatentCacheDataset(tmp_path / "cache", in_memory=False)
    assert len(mem) == len(mmap) == 5
    y_ref, mask_ref = text.encode(texts)
    for i in range(5):
        a, b = mem[i], mmap[(i, 0)]
        for k in ("latent", "y", "mask"):
            assert torch.equal(a[k], b[k]), k
        assert a["y"].shape == (1, 8, 16) and a["mask"].shape == (8,)
        assert torch.equal(a["mask"], mask_ref[i])
        torch.testing.assert_close(a["y"], y_ref[i], atol=2e-3, rtol=2e-3)  # float16 storage
    # latents are what the VAE gives for the clip (posterior samples: compare with the mean loosely)
    z = vae.encode(ds[(0, 0)]["video"][None], sample=False)[0]
    assert (mem[0]["latent"] - z).abs().mean() < 0.5 * z.abs().mean() + 0.5
    batch = mem.get_batch([4, 0])
    assert torch.equal(batch["latent"][0], mem[4]["latent"]) and batch["y"].shape == (2, 1, 8, 16)

    # re-running keeps finished shards (resume) and gives the same cache
    before = (tmp_path / "cache" / "shard-00000.safetensors").stat().st_mtime_ns
    again = encode_to_cache(
        ds, tmp_path / "cache", vae, text, {"num_frames": 4}, shard_size=4, progress=False
    )
    assert again["num_samples"] == 5
    assert (tmp_path / "cache" / "shard-00000.safetensors").stat().st_mtime_ns == before


def test_cache_errors(tmp_path):
    with pytest.raises(UserError, match="not a latent cache"):
        LatentCacheDataset(tmp_path)
    (tmp_path / "meta.json").write_text('{"format": "other"}')
    with pytest.raises(UserError, match="not a sorakit latent cache"):
        LatentCacheDataset(tmp_path)
