"""The README's "seconds on a CPU" path works offline (issue #14 item 1): `data synth` + `train tiny`
from videos, with the built-in model's VAE; `--vae` / `--text-encoder` on `train` and `data encode`."""

from __future__ import annotations

import json

import pytest

from sorakit.cli.main import main
from sorakit.config import load_config


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_tiny_preset_trains_from_videos_offline(tmp_path, offline):
    assert load_config("tiny").vae.path == "builtin:vae"
    shapes = tmp_path / "shapes"
    assert main(["data", "synth", "--output", str(shapes), "--num-videos", "4", "--frames", "4"]) == 0
    run = tmp_path / "runs" / "tiny"
    args = ["train", "tiny", "--data", str(shapes / "train.csv"), "--output", str(run), "--max-steps", "2"]
    assert main([*args, "train.batch_size=2", "train.tensorboard=false"]) == 0
    ckpt = run / "checkpoints" / "step-00000002"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["model"]["config"]["input_size"] == [4, 16, 16]  # 64x64 frames through the 4x built-in VAE


def test_vae_and_text_encoder_flags_on_train_and_encode(tmp_path, offline, capsys):
    from sorakit.pipelines.tiny import make_tiny_vae

    vae = make_tiny_vae(tmp_path / "vae")  # 2x downsampling: 64x64 -> 32x32 (the built-in one: 16x16)
    shapes = tmp_path / "shapes"
    assert main(["data", "synth", "--output", str(shapes), "--num-videos", "2", "--frames", "4"]) == 0
    cache = tmp_path / "cache"
    code = main(["data", "encode", str(shapes / "train.csv"), "--output", str(cache), "--config", "tiny",
                 "--vae", str(vae), "--text-encoder", "builtin:minilm"])  # fmt: skip
    assert code == 0
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["vae"]["path"] == str(vae) and meta["latent_shape"] == [4, 4, 32, 32]
    run = tmp_path / "run"
    code = main(["train", "tiny", "--data", str(shapes / "train.csv"), "--output", str(run), "--max-steps", "1",
                 "--vae", str(vae), "train.batch_size=2", "train.tensorboard=false"])  # fmt: skip
    assert code == 0
    assert load_config(str(run / "checkpoints" / "step-00000001" / "config.toml")).vae.path == str(vae)
    capsys.readouterr()
    for cmd in (["train", "tiny", "--data", str(shapes / "train.csv"), "--output", str(run)],
                ["data", "encode", str(shapes / "train.csv"), "--output", str(cache)]):  # fmt: skip
        assert main([*cmd, "--vae", str(tmp_path / "nope")]) == 2
        assert "--vae: no such directory" in capsys.readouterr().err
