"""`sorakit data encode` with a real (tiny) VAE and the packaged MiniLM text encoder, then `sorakit train` on
the cache: the path of the built-in model's training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from _train_helpers import write_clips, write_csv  # noqa: E402

from sorakit.cli.main import main  # noqa: E402


def test_encode_then_train_on_the_cache(tmp_path, capsys):
    from sorakit.pipelines.tiny import make_tiny_vae

    vae_dir = make_tiny_vae(tmp_path / "vae")
    paths = write_clips(tmp_path / "v", 5, frames=6, size=16)
    rows = [{"path": f"v/{p.name}", "text": f"a square number {i} moving"} for i, p in enumerate(paths)]
    rows.append({"path": "v/nothing.mp4", "text": "missing"})
    csv = write_csv(tmp_path / "data.csv", rows)
    common = [f"vae.path={vae_dir}", "data.image_size=[16,16]"]
    code = main(
        ["data", "encode", str(csv), *common, "--output", str(tmp_path / "cache"), "--shard-size", "4"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "5 samples in 2 shard(s), 1 row(s) skipped" in out
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert meta["text_dim"] == 384 and meta["model_max_length"] == 16 and meta["latent_shape"] == [4, 4, 8, 8]
    assert meta["text_encoder"]["type"] == "minilm"
    failures = json.loads((tmp_path / "cache" / "failures.json").read_text())
    assert failures[0]["path"].endswith("nothing.mp4")

    code = main(["train", "tiny", "train.tensorboard=false", "train.peak_tflops=1", "model.arch.hidden_size=32",
                 "--data", str(tmp_path / "cache"), "--output", str(tmp_path / "run"), "--max-steps", "3",
                 "--batch-size", "2"])  # fmt: skip
    assert code == 0
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000003"
    assert (ckpt / "ema.safetensors").is_file()
    state = json.loads((ckpt / "state.json").read_text())
    assert (
        state["model"]["config"]["caption_channels"] == 384 and state["model"]["config"]["in_channels"] == 4
    )
    # the run's config records the cache's encoders, which `sorakit export` hands to `sorakit generate`
    assert 'path = "builtin:minilm"' in (ckpt / "config.toml").read_text()
    # ... and so does the run folder's copy: the config actually used, not the one before the cache spoke
    assert (tmp_path / "run" / "config.toml").read_text() == (ckpt / "config.toml").read_text()
    assert state["model"]["prediction_type"] == "epsilon"
