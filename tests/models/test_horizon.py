"""The horizon embedding (``arch.horizon``): a clip tells the model how many frames its motion is planned for,
so a loop's first segment can pace the object for the whole loop. Checked here: a model that gains the
embedder computes exactly what the checkpoint it loads computed; the horizon changes the output only through
the ratio horizon / T, per sample; the data carries it from the CSV to the cache and the trainer; a loop
tells each segment the frames left from its start."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from sorakit.data.bucket_cache import BucketLatentCache
from sorakit.data.cache import LatentCacheDataset
from sorakit.data.dataset import VideoTextDataset
from sorakit.data.video import read_video
from sorakit.errors import UserError
from sorakit.models.checkpoint import load_checkpoint
from sorakit.models.stdit import STDiT
from sorakit.tools import synth

KW = dict(input_size=(8, 8, 8), in_channels=4, patch_size=(2, 2, 2), hidden_size=32, depth=2, num_heads=2,
          caption_channels=16, model_max_length=6, pred_sigma=False)  # fmt: skip


def _pair() -> tuple[STDiT, STDiT]:
    torch.manual_seed(0)
    plain = STDiT(**KW).eval()
    with torch.no_grad():  # every weight non-zero, so no zero-initialised layer hides a difference
        for p in plain.parameters():
            p.normal_(0, 0.1)
    horizon = STDiT(horizon=True, **KW).eval()
    report = load_checkpoint(horizon, plain.state_dict())
    assert sorted(report.created) == sorted(k for k in horizon.state_dict() if k.startswith("h_embedder."))
    return plain, horizon


def _inputs(b: int = 2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 4, 8, 8, 8, generator=g)
    t = torch.tensor([10.0, 700.0][:b])
    y = torch.randn(b, 1, 6, 16, generator=g)
    x_mask = torch.ones(b, 8, dtype=torch.bool)
    x_mask[:, :2] = False
    return x, t, y, x_mask


@torch.no_grad()
def test_gaining_the_embedder_changes_nothing_until_trained():
    plain, horizon = _pair()
    x, t, y, x_mask = _inputs()
    for h in (None, 8, 20.0, torch.tensor([8.0, 24.0])):
        assert torch.equal(plain(x, t, y, horizon=h), horizon(x, t, y, horizon=h))
        assert torch.equal(plain(x, t, y, x_mask=x_mask), horizon(x, t, y, x_mask=x_mask, horizon=h))
    assert "horizon" not in plain.config and horizon.config["horizon"] is True


@torch.no_grad()
def test_horizon_acts_through_its_ratio_per_sample():
    _, model = _pair()
    torch.nn.init.normal_(model.h_embedder.mlp[2].weight, std=0.5)  # as if trained
    x, t, y, x_mask = _inputs()
    own = model(x, t, y)
    assert torch.equal(own, model(x, t, y, horizon=8))  # T = 8 latent frames: ratio 1 is the default
    assert torch.equal(own, model(x, t, y, horizon=torch.tensor([4.0, 2.0])))  # below T counts as T
    longer = model(x, t, y, horizon=20)
    assert (longer - own).abs().max() > 1e-3
    mixed = model(x, t, y, x_mask=x_mask, horizon=torch.tensor([8.0, 20.0]))
    assert torch.allclose(mixed[0], model(x[:1], t[:1], y[:1], x_mask=x_mask[:1])[0], atol=1e-5)
    assert torch.allclose(mixed[1], model(x[1:], t[1:], y[1:], x_mask=x_mask[1:], horizon=20)[0], atol=1e-5)


@torch.no_grad()
def test_horizon_guidance_extrapolates_away_from_the_clips_own_length():
    from sorakit.diffusion.guidance import horizon_guided

    _, model = _pair()
    torch.nn.init.normal_(model.h_embedder.mlp[2].weight, std=0.5)  # as if trained
    x, t, y, x_mask = _inputs()
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]])  # [1, L]: shared by every row
    far = model(x, t, y, mask=mask, x_mask=x_mask, horizon=20)
    near = model(x, t, y, mask=mask, x_mask=x_mask)  # T = 8: its own length
    for w in (1.0, 2.5):
        guided = horizon_guided(model, 20, w)(x, t, y, mask=mask, x_mask=x_mask)  # one call of 2B rows
        assert torch.allclose(guided, far + w * (far - near), atol=1e-5)
    # off, or a horizon no longer than the clip: exactly the plain model planned for that horizon
    assert torch.equal(
        horizon_guided(model, 20, 0.0)(x, t, y, mask=mask), model(x, t, y, mask=mask, horizon=20)
    )
    assert torch.equal(
        horizon_guided(model, 8, 3.0)(x, t, y, mask=mask), model(x, t, y, mask=mask, horizon=8)
    )
    calls: list = []
    model.register_forward_pre_hook(lambda _m, a, kw: calls.append(a[0].shape[0]), with_kwargs=True)
    horizon_guided(model, 20, 1.0)(x, t, y)
    assert calls == [4]  # one model call per sampler step (a step cache sees one call)


def test_long_paths_keep_the_object_inside_for_the_whole_horizon():
    triples = synth.combos("default")
    for i in range(40):
        same = [synth.sample_spec(synth.video_rng(0, i), triples, 64, 16, horizon=h) for h in (None, 16)]
        assert same[0] == same[1]  # the horizon of the clip's own length is the old draw
        spec = synth.sample_spec(synth.video_rng(0, i), triples, 64, 16, horizon=40)
        end = synth.render(spec, 64, frames=1, start=39)[0]  # the path's last frame
        side = int(np.ceil(spec.side))
        assert end.any(axis=-1).sum() >= 0.45 * side * side  # the whole object still on the canvas
        first = synth.render(spec, 64, frames=16)
        assert np.array_equal(first[0], synth.render(spec, 64, frames=1)[0]) and first.shape[0] == 16
        assert spec.speed * 39 <= 64 - spec.side + 1e-6  # paced for 40 frames


def test_video_horizon_is_seeded_and_bounded():
    draws = [synth.video_horizon(7, i, 16, 0.4) for i in range(400)]
    assert draws == [synth.video_horizon(7, i, 16, 0.4) for i in range(400)]
    longer = [d for d in draws if d > 16]
    assert 0.3 < len(longer) / len(draws) < 0.5
    assert max(draws) <= 16 * synth.MAX_HORIZON_RATIO and min(draws) == 16
    assert all(synth.video_horizon(7, i, 16, 0.0) == 16 for i in range(50))


def test_path_windows_show_a_later_stretch_of_the_same_path(tmp_path):
    starts = [synth.video_window(5, i, 16, 40, 0.6) for i in range(400)]
    assert starts == [synth.video_window(5, i, 16, 40, 0.6) for i in range(400)]  # seeded
    later = [s for s in starts if s > 0]
    assert 0.5 < len(later) / len(starts) < 0.7 and max(later) <= 40 - 16
    assert all(synth.video_window(5, i, 16, 16, 1.0) == 0 for i in range(50))  # no longer path: the opening
    assert all(synth.video_window(5, i, 16, 40, 0.0) == 0 for i in range(50))

    csv_path = synth.synthesize(
        tmp_path, 16, seed=4, size=[(32, 32)], frames=[8], long_paths=1.0, windows=0.5
    )
    rows = list(csv.DictReader(open(csv_path)))
    triples = synth.combos("default")
    shown_later = 0
    for i, row in enumerate(rows):
        planned = synth.video_horizon(4, i, 8, 1.0)
        start = synth.video_window(4, i, 8, planned, 0.5)
        assert int(row["horizon"]) == planned - start >= 8  # the frames the path runs on for
        spec = synth.sample_spec(synth.video_rng(4, i), triples, (32, 32), 8, horizon=planned)
        want = synth.render(spec, (32, 32), 8, start=start)  # frames start .. start + 7 of that path
        got = read_video(tmp_path / row["path"])
        assert got.shape[0] == 8 and np.abs(got.astype(int) - want.astype(int)).mean() < 3  # (lossy codec)
        shown_later += start > 0
    assert shown_later > 0


def test_path_slack_leaves_a_margin_on_slowed_paths_only(tmp_path):
    triples = synth.combos("default")
    margins = []
    for i in range(60):
        slack = synth.video_slack(2, i, 0.3)
        assert slack == synth.video_slack(2, i, 0.3) and 0.0 <= slack <= 0.3  # seeded, bounded
        base = synth.sample_spec(synth.video_rng(2, i), triples, 64, 16, horizon=40)
        spec = synth.sample_spec(synth.video_rng(2, i), triples, 64, 16, horizon=40, slack=slack)
        assert all(
            getattr(spec, f) == getattr(base, f) for f in ("color", "shape", "motion", "side", "caption")
        )
        free = 64 - spec.side
        assert spec.speed * 39 == pytest.approx(free * (1 - slack))  # spans 1 - slack of the free width
        dx, dy = synth.MOTION_VECTORS[spec.motion]
        end_x, end_y = spec.x0 + 39 * spec.speed * dx, spec.y0 + 39 * spec.speed * dy
        assert all(-1e-9 <= p <= free + 1e-9 for p in (spec.x0, spec.y0, end_x, end_y))  # inside all along
        start = spec.x0 if dx else spec.y0
        margins.append(start if (dx or dy) > 0 else free - start)  # gap to the border it starts from
        short = synth.sample_spec(synth.video_rng(2, i), triples, 64, 8, slack=slack)  # fits: not slowed
        assert short == synth.sample_spec(synth.video_rng(2, i), triples, 64, 8)
    assert max(margins) > 3.0  # starts are spread over the margin, not pinned to the border
    assert all(synth.video_slack(2, i, 0.0) == 0.0 for i in range(20))
    with pytest.raises(ValueError, match="slack"):  # the object would leave the frame
        synth.sample_spec(synth.video_rng(2, 0), triples, 64, 16, horizon=40, slack=-0.1)
    with pytest.raises(UserError, match="--path-slack"):
        synth.check_options(4, 64, 16, 8, "default", slack=0.9)
    plain = synth.synthesize(tmp_path / "a", 3, seed=1, size=[(32, 32)], frames=[8], long_paths=1.0)
    zero = synth.synthesize(tmp_path / "b", 3, seed=1, size=[(32, 32)], frames=[8], long_paths=1.0, slack=0.0)
    for row_a, row_b in zip(csv.DictReader(open(plain)), csv.DictReader(open(zero))):
        assert np.array_equal(
            read_video(plain.parent / row_a["path"]), read_video(zero.parent / row_b["path"])
        )
    slack_csv = synth.synthesize(
        tmp_path / "c", 4, seed=1, size=[(32, 32)], frames=[16], long_paths=1.0, slack=0.4
    )
    moved = 0
    for i, row in enumerate(csv.DictReader(open(slack_csv))):
        planned = synth.video_horizon(1, i, 16, 1.0)
        spec = synth.sample_spec(synth.video_rng(1, i), triples, (32, 32), 16, horizon=planned,
                                 slack=synth.video_slack(1, i, 0.4))  # fmt: skip
        got = read_video(slack_csv.parent / row["path"]).astype(int)
        err = np.abs(got - synth.render(spec, (32, 32), 16).astype(int)).mean()
        assert err < 3  # (lossy codec)
        unslacked = synth.sample_spec(synth.video_rng(1, i), triples, (32, 32), 16, horizon=planned)
        moved += np.abs(got - synth.render(unslacked, (32, 32), 16).astype(int)).mean() > err + 2
    assert moved >= 1  # the videos follow the slackened paths, not the old ones


@pytest.fixture(scope="module")
def horizon_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("horizon-data")
    csv_path = synth.synthesize(out, 12, seed=3, size=[(32, 32)], frames=[8], long_paths=0.5)
    return csv_path, [int(r["horizon"]) for r in csv.DictReader(open(csv_path))]


def test_horizon_goes_from_csv_through_cache_to_the_trained_embedder(horizon_data, tmp_path):
    from safetensors.torch import load_file

    from sorakit.cli.main import main
    from sorakit.pipelines.tiny import make_tiny_vae

    csv_path, horizons = horizon_data
    assert any(h > 8 for h in horizons) and any(h == 8 for h in horizons)
    ds = VideoTextDataset(csv_path, num_frames=8, frame_interval=1, image_size=(32, 32), flip=False)
    assert [ds[i]["horizon"] for i in range(len(ds))] == horizons
    vae = make_tiny_vae(tmp_path / "vae")
    cache = tmp_path / "cache"
    assert main(["data", "encode", str(csv_path), f"vae.path={vae}", "data.image_size=[32,32]", "data.num_frames=8",
                 "--output", str(cache), "--shard-size", "5"]) == 0  # fmt: skip
    cached = LatentCacheDataset(cache)
    rows = cached.get_batch(list(range(len(cached))))
    by_row = dict(zip(cached._data["row"].tolist(), rows["horizon"].tolist()))
    assert by_row == dict(enumerate(horizons))
    assert cached[0]["horizon"] == by_row[int(cached._data["row"][0])]

    # training feeds it to the embedder: its zero output layer moves (a model without one ignores it)
    assert main(["train", "tiny", "train.tensorboard=false", "model.arch.hidden_size=32", "model.arch.horizon=true",
                 "--data", str(cache), "--output", str(tmp_path / "run"), "--max-steps", "2",
                 "--batch-size", "4"]) == 0  # fmt: skip
    weights = load_file(str(tmp_path / "run" / "checkpoints" / "step-00000002" / "model.safetensors"))
    assert weights["h_embedder.mlp.2.weight"].abs().max() > 0


def test_bucket_cache_carries_horizon(horizon_data, tmp_path):
    from sorakit.cli.main import main
    from sorakit.pipelines.tiny import make_tiny_vae

    csv_path, horizons = horizon_data
    vae = make_tiny_vae(tmp_path / "vae")
    cache = tmp_path / "cache"
    preset = tmp_path / "buckets.toml"
    preset.write_text('base = "builtin/stdit"\n[data]\nbuckets = { "32x32" = { 8 = [1.0, 4] } }\n')
    assert main(["data", "encode", str(csv_path), "--config", str(preset), f"vae.path={vae}",
                 "--output", str(cache)]) == 0  # fmt: skip
    cached = BucketLatentCache(cache)
    batch = cached.get_batch(list(range(len(cached))))
    rows = [int(cached.groups[n]["row"][j]) for n, j in cached.index]
    assert batch["horizon"].tolist() == [horizons[r] for r in rows]
