"""The training loop end to end on tiny models: it learns, it resumes exactly, it survives bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _train_helpers import HashTextEncoder, make_cache, tiny_config, tiny_vae, write_clips, write_csv
from safetensors.torch import load_file

from sorakit.errors import ConfigError, UserError
from sorakit.training.trainer import Components, build_objective, train


def _components() -> Components:
    return Components(vae=tiny_vae(), text_encoder=HashTextEncoder(16, 8))


def _fixed_batch_loss(cfg, state_dict: dict[str, torch.Tensor], csv: Path) -> float:
    """IDDPM loss of the model on the whole (4-clip) dataset at 16 fixed (timestep, noise) draws."""
    from sorakit.data.dataset import VideoTextDataset, collate
    from sorakit.training.trainer import DataSource, build_model

    comp = _components()
    ds = VideoTextDataset(csv, 4, 1, (16, 16), flip=False)
    batch = collate([ds[i] for i in range(len(ds))])
    x0 = comp.vae.encode(batch["video"], sample=False)
    y, mask = comp.text_encoder.encode(batch["text"])
    data = DataSource(ds, None, False, (4, 8, 8), 4, 16, 8, False)  # type: ignore[arg-type]
    model = build_model(cfg, data)
    model.load_state_dict(state_dict)
    model.eval()
    objective = build_objective(cfg)
    g = torch.Generator().manual_seed(123)
    total = 0.0
    with torch.no_grad():
        for _ in range(16):
            t = objective.sample_timesteps(x0.shape[0], g, "cpu")
            noise = torch.randn(x0.shape, generator=g)
            total += (
                objective.training_losses(lambda x, tt: model(x, tt, y, mask), x0, t, noise)["loss"]
                .mean()
                .item()
            )
    return total / 16


def test_tiny_run_overfits_a_fixed_batch(tmp_path, clips_csv):
    # 4 clips of exactly 4 frames, batch 4, no flips, no caption dropout: every step sees the same batch
    cfg = tiny_config(
        "train.max_steps=60", "train.ckpt_every=60", "train.lr=2e-3", "train.caption_dropout=0.0",
        "data.random_flip=false", "train.ema_decay=0.9", f"data.csv={clips_csv}", "train.log_every=20",
    )  # fmt: skip
    result = train(cfg, tmp_path / "run", components=_components())
    assert result.step == 60 and result.checkpoint is not None
    ckpt = result.checkpoint
    assert {p.name for p in ckpt.iterdir()} >= {"model.safetensors", "ema.safetensors", "optimizer.pt", "scheduler.pt",
                                                "rng", "config.toml", "state.json"}  # fmt: skip

    import sorakit.training.trainer as trainer_mod

    torch.manual_seed(cfg.train.seed)
    data = trainer_mod.DataSource(None, None, False, (4, 8, 8), 4, 16, 8, False)  # type: ignore[arg-type]
    initial = trainer_mod.build_model(cfg, data).state_dict()
    trained = load_file(str(ckpt / "model.safetensors"))
    before = _fixed_batch_loss(cfg, initial, clips_csv)
    after = _fixed_batch_loss(cfg, trained, clips_csv)
    assert after < 0.6 * before, (before, after)
    # EMA trails the weights: different from both the start and the end
    ema = load_file(str(ckpt / "ema.safetensors"))
    key = "blocks.0.attn.qkv.weight"
    assert not torch.equal(ema[key], trained[key]) and not torch.equal(ema[key], initial[key])
    # logs: console/file log and metrics with throughput and MFU
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [20, 40, 60]
    assert all(
        m["samples_per_s"] > 0 and m["tokens_per_s"] == pytest.approx(m["samples_per_s"] * 64) for m in lines
    )
    assert all(0 < m["mfu"] for m in lines) and lines[-1]["loss"] < lines[0]["loss"]


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "ema.safetensors"):
        sa, sb = load_file(str(a / name)), load_file(str(b / name))
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}:{k} differs"
    oa = torch.load(a / "optimizer.pt", weights_only=True)
    ob = torch.load(b / "optimizer.pt", weights_only=True)
    for fqn, st in oa["state"].items():
        for k, v in st.items():
            assert torch.equal(v, ob["state"][fqn][k]), f"optimizer {fqn}.{k} differs"


def test_stop_and_resume_equals_uninterrupted(tmp_path):
    # videos longer than the clip (random starts) + flips + caption dropout: every RNG path is exercised
    paths = write_clips(tmp_path / "v", 9, frames=7, size=16)
    csv = write_csv(
        tmp_path / "d.csv", [{"path": str(p), "text": f"clip number {i}"} for i, p in enumerate(paths)]
    )
    over = [
        f"data.csv={csv}",
        "train.caption_dropout=0.5",
        "train.batch_size=4",
        "train.ckpt_every=3",
        "train.warmup_steps=4",
    ]
    full = train(tiny_config(*over, "train.max_steps=7"), tmp_path / "full", components=_components())
    # stopped at step 3 -- mid-epoch (9 samples = 2 batches of 4 per epoch: epoch 1, batch 1) -- resumed to 7
    part = train(tiny_config(*over, "train.max_steps=3"), tmp_path / "split", components=_components())
    assert part.step == 3
    with pytest.raises(UserError, match="--resume"):
        train(tiny_config(*over, "train.max_steps=7"), tmp_path / "split", components=_components())
    resumed = train(
        tiny_config(*over, "train.max_steps=7"), tmp_path / "split", resume=True, components=_components()
    )
    assert resumed.step == 7
    assert resumed.losses == full.losses[3:]
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 8))  # one line per step, none twice
    _assert_same_checkpoint(full.checkpoint, resumed.checkpoint)
    state = json.loads((resumed.checkpoint / "state.json").read_text())
    assert state["step"] == 7 and state["epoch"] == 3 and state["batch_in_epoch"] == 1


def test_keep_last_and_incomplete_checkpoints_ignored(tmp_path):
    cache = make_cache(tmp_path / "cache")
    cfg = tiny_config(f"data.csv={cache}", "train.max_steps=4", "train.ckpt_every=1", "train.keep_last=2")
    train(cfg, tmp_path / "run")
    from sorakit.training.checkpoint import list_checkpoints

    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [3, 4]
    # a crash mid-write leaves a temp folder / a folder without state.json: neither is a checkpoint
    (tmp_path / "run" / "checkpoints" / ".tmp-step-00000005" / "rng").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step-00000009").mkdir()
    res = train(tiny_config(f"data.csv={cache}", "train.max_steps=5", "train.ckpt_every=1", "train.keep_last=2"),
                tmp_path / "run", resume=True)  # fmt: skip
    assert res.step == 5 and res.losses and len(res.losses) == 1
    assert not (tmp_path / "run" / "checkpoints" / ".tmp-step-00000005").exists()


def test_missing_and_corrupt_files_are_skipped_and_reported(tmp_path):
    paths = write_clips(tmp_path / "v", 6, frames=4, size=16)
    (tmp_path / "v" / "corrupt.mp4").write_bytes(b"\x00\x01not a video" * 50)
    rows = [{"path": str(p), "text": "a clip"} for p in paths]
    rows += [{"path": "v/missing.mp4", "text": "gone"}, {"path": "v/corrupt.mp4", "text": "broken"}]
    csv = write_csv(tmp_path / "d.csv", rows)
    cfg = tiny_config(
        f"data.csv={csv}", "train.max_steps=6", "train.ckpt_every=6", "data.max_bad_fraction=0.5"
    )
    result = train(cfg, tmp_path / "run", components=_components())
    assert result.step == 6
    assert set(result.skipped) == {str(tmp_path / "v" / "missing.mp4"), str(tmp_path / "v" / "corrupt.mp4")}
    log = (tmp_path / "run" / "train.log").read_text()
    assert "missing.mp4" in log and "corrupt.mp4" in log
    listed = (tmp_path / "run" / "skipped_files.txt").read_text()
    assert "missing.mp4" in listed and "corrupt.mp4" in listed
    # the same data with a strict threshold stops with a clear error
    strict = tiny_config(f"data.csv={csv}", "train.max_steps=6", "data.max_bad_fraction=0.01")
    with pytest.raises(UserError, match="too many unreadable files"):
        train(strict, tmp_path / "strict", components=_components())


def test_freeze_not_temporal_trains_only_temporal_attention(tmp_path):
    import sorakit.training.trainer as trainer_mod

    cache = make_cache(tmp_path / "cache")
    cfg = tiny_config(
        f"data.csv={cache}", "train.max_steps=2", "train.ckpt_every=2", "train.freeze=not_temporal"
    )
    data = trainer_mod.DataSource(None, None, True, (4, 8, 8), 4, 16, 8, False)  # type: ignore[arg-type]
    model = trainer_mod.build_model(cfg, data)
    with (
        torch.no_grad()
    ):  # upstream init zeroes the output layers: randomise so that gradients reach every layer
        for p in model.parameters():
            p.normal_(0, 0.05)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    res = train(cfg, tmp_path / "run", components=Components(model=model))
    trained = load_file(str(res.checkpoint / "model.safetensors"))
    changed = {k for k in trained if not torch.equal(trained[k], initial[k])}
    assert changed and all("attn_temp" in k for k in changed)
    assert any("attn_temp.qkv" in k for k in changed)


def test_class_conditional_dit_trains_on_a_label_cache(tmp_path):
    from sorakit.data.cache import write_meta, write_shard

    g = torch.Generator().manual_seed(0)
    cache = tmp_path / "cache"
    cache.mkdir()
    write_shard(cache / "shard-00000.safetensors", {
        "latents": torch.randn(8, 4, 1, 8, 8, generator=g), "label": torch.arange(8) % 5, "row": torch.arange(8),
    })  # fmt: skip
    write_meta(cache, {"latent_shape": [4, 1, 8, 8]})
    cfg = tiny_config(f"data.csv={cache}", "model.type=DiT-tiny", "model.arch.condition=label_5",
                      "text_encoder.type=classes", "text_encoder.path='5'", "train.max_steps=3", "train.ckpt_every=3",
                      "train.caption_dropout=0.5")  # fmt: skip
    res = train(cfg, tmp_path / "run")
    assert res.step == 3 and all(torch.isfinite(torch.tensor(res.losses)))
    sd = load_file(str(res.checkpoint / "model.safetensors"))
    assert sd["y_embedder.embedding_table.weight"].shape[0] == 6  # 5 classes + the null class of guidance


def test_objective_follows_the_sampler_settings():
    from sorakit.config import load_config
    from sorakit.diffusion.rflow import time_shift

    cfg = load_config("builtin/stdit")
    assert cfg.train.objective == "rflow" and cfg.sampler.shift > 1
    shift = cfg.sampler.shift
    shifted = build_objective(cfg)
    cfg.sampler.shift = 1.0
    plain = build_objective(cfg)
    t = plain.sample_timesteps(1000, torch.Generator().manual_seed(0), "cpu")
    torch.testing.assert_close(
        shifted.sample_timesteps(1000, torch.Generator().manual_seed(0), "cpu"), time_shift(t, shift)
    )


def test_timestep_shift_moves_only_the_training_times(tmp_path):
    """`train.timestep_shift`: rflow training draws its times with that shift instead of the sampler's (the
    sampler's shift, which generation uses, is unchanged); equal to it, the same times; IDDPM refuses it."""
    from sorakit.config import load_config
    from sorakit.diffusion.rflow import time_shift

    def times(*over: str) -> torch.Tensor:
        cfg = load_config("builtin/stdit", list(over))
        return build_objective(cfg).sample_timesteps(1000, torch.Generator().manual_seed(0), "cpu")

    default = times()
    cfg = load_config("builtin/stdit", ["train.timestep_shift=3"])
    assert cfg.sampler.shift == 8.0 and cfg.train.timestep_shift == 3.0
    torch.testing.assert_close(times("train.timestep_shift=8"), default)
    plain = times("sampler.shift=1")
    torch.testing.assert_close(times("train.timestep_shift=3"), time_shift(plain, 3.0))
    assert times("train.timestep_shift=3").median() < default.median()  # more of training at lower noise
    paths = write_clips(tmp_path / "v", 2, frames=4, size=16)
    csv = write_csv(tmp_path / "d.csv", [{"path": str(p), "text": f"clip {i}"} for i, p in enumerate(paths)])
    with pytest.raises(ConfigError, match="train.timestep_shift applies to rflow training, not 'iddpm'"):
        train(tiny_config(f"data.csv={csv}", "train.objective=iddpm", "train.timestep_shift=3"), tmp_path / "r",
              components=_components())  # fmt: skip
    with pytest.raises(ConfigError, match="timestep_shift"):
        load_config("builtin/stdit", ["train.timestep_shift=0"])


def test_lr_schedule_warmup_stable_decay_and_resume_with_longer_run(tmp_path):
    from sorakit.training.optim import lr_factor

    lr = 1e-3
    paths = write_clips(tmp_path / "v", 4, frames=4, size=16)
    csv = write_csv(tmp_path / "d.csv", [{"path": str(p), "text": f"clip {i}"} for i, p in enumerate(paths)])
    over = [
        f"data.csv={csv}",
        "train.batch_size=2",
        "train.log_every=1",
        "train.ckpt_every=4",
        f"train.lr={lr}",
    ]
    over += ["train.warmup_steps=2"]

    def lrs(run: Path) -> list[float]:
        return [json.loads(x)["lr"] for x in (run / "metrics.jsonl").read_text().splitlines()]

    # warmup 2, constant, then a linear cooldown over the last 3 of 8 steps; the logged lr is the one each
    # step used: 1/2, 1, 1, 1, 1, then 3/3, 2/3, 1/3 of lr -- never 0 (a zero-lr step would be wasted)
    train(
        tiny_config(*over, "train.max_steps=8", "train.decay_steps=3"),
        tmp_path / "wsd",
        components=_components(),
    )
    expected = [lr * f for f in (0.5, 1, 1, 1, 1, 1, 2 / 3, 1 / 3)]
    assert lrs(tmp_path / "wsd") == pytest.approx(expected)
    assert [lr * lr_factor(i, 2, 3, 8) for i in range(8)] == pytest.approx(expected)
    # a constant-lr run stopped at step 4, resumed with a longer run and a cooldown: the new schedule applies
    train(tiny_config(*over, "train.max_steps=4"), tmp_path / "cont", components=_components())
    resumed = tiny_config(*over, "train.max_steps=10", "train.decay_steps=4")
    train(resumed, tmp_path / "cont", resume=True, components=_components())
    assert lrs(tmp_path / "cont") == pytest.approx([lr * f for f in (0.5, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25)])
    with pytest.raises(ConfigError, match="decay_steps"):
        train(
            tiny_config(*over, "train.max_steps=4", "train.decay_steps=5"),
            tmp_path / "bad",
            components=_components(),
        )


def test_loss_channel_weights_change_the_loss_and_are_checked(tmp_path):
    """`train.loss_channel_weights`: the logged loss is the weighted one (equal weights: the same run), and a
    list that does not match the latents' channels is a one-line config error before any step."""
    paths = write_clips(tmp_path / "v", 2, frames=4, size=16)
    csv = write_csv(tmp_path / "d.csv", [{"path": str(p), "text": f"clip {i}"} for i, p in enumerate(paths)])
    over = [f"data.csv={csv}", "train.batch_size=2", "train.log_every=1", "train.max_steps=2"]

    def losses(name: str, *extra: str) -> list[float]:
        train(tiny_config(*over, *extra), tmp_path / name, components=_components())
        return [json.loads(x)["loss"] for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    plain = losses("plain")
    channels = tiny_vae().latent_channels
    assert losses("equal", f"train.loss_channel_weights={[2.0] * channels}") == plain
    weighted = losses("weighted", f"train.loss_channel_weights={[1.0] * (channels - 1) + [6.0]}")
    assert weighted[0] != pytest.approx(plain[0], rel=1e-3)
    with pytest.raises(ConfigError, match=f"has 2 values; the latents have {channels} channels"):
        losses("bad", "train.loss_channel_weights=[1.0, 2.0]")
    with pytest.raises(ConfigError, match="loss_channel_weights"):
        tiny_config(*over, "train.loss_channel_weights=[1.0, -2.0, 1.0, 1.0]")


_FLAGS = (
    "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}\n\nprocessor\t: 1\nflags\t\t: fpu\n"
)


def test_cpu_bf16_detection_reads_the_cpu_flags():
    from sorakit.cpu import cpu_flags, parse_cpu_flags
    from sorakit.runtime import cpu_has_native_bf16

    def native(extra: str) -> bool:
        return cpu_has_native_bf16(parse_cpu_flags(_FLAGS.format(extra=extra)))

    # every processor's flags line counts; "flags" text elsewhere does not
    assert parse_cpu_flags(_FLAGS.format(extra="x")) == {"fpu", "sse2", "avx2", "avx512f", "avx512bw", "x"}
    assert parse_cpu_flags("model name\t: flags cpu\n") == frozenset()
    assert native("avx512_bf16 avx512_vnni")
    assert native("amx_tile amx_bf16")
    # AVX-512 alone (oneDNN emulates bf16 there, at half the float32 rate) is not native bf16
    assert not native("avx512_vnni")
    assert not cpu_has_native_bf16(())
    # this machine's answer comes from the same flags, read once
    assert cpu_has_native_bf16() == cpu_has_native_bf16(cpu_flags())
    assert cpu_flags() is cpu_flags()


@pytest.mark.parametrize("native", [True, False])
def test_mixed_precision_auto_picks_bf16_only_where_the_cpu_has_it(tmp_path, monkeypatch, native):
    import sorakit.runtime as runtime
    import sorakit.training.trainer as trainer_mod

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda flags=None: native)
    seen: list[torch.dtype | None] = []
    model_fn = trainer_mod._model_fn

    def spy(*args, **kwargs):
        seen.append(args[5])  # the autocast dtype the step runs under
        return model_fn(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "_model_fn", spy)
    cache = make_cache(tmp_path / "cache")
    cfg = tiny_config(f"data.csv={cache}", "train.max_steps=2", "train.mixed_precision=auto")
    result = train(cfg, tmp_path / "run", components=_components())
    want = "bf16" if native else "fp32"
    assert seen == [torch.bfloat16 if native else None] * 2
    # the saved config is the run's concrete choice, so a resume elsewhere does not silently switch
    saved = (result.checkpoint / "config.toml").read_text()
    assert f'mixed_precision = "{want}"' in saved and 'mixed_precision = "auto"' not in saved
    assert runtime.resolve_mixed_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(ConfigError, match="mixed_precision"):
        train(tiny_config(f"data.csv={cache}", "train.mixed_precision=fp8"), tmp_path / "bad")
