"""The built-in model's recipe end to end at toy size: synth -> train-vae -> encode -> `sorakit train` ->
`sorakit export --bundle-vae` -> `sorakit eval shapes`, then a second run that resumes training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sorakit.builtin import recipe
from sorakit.config import load_config
from sorakit.modeldir import is_model_dir, read_model_dir


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("recipe")
    out = work / "model"
    argv = [
        "--workdir", str(work), "--export", str(out), "--num-videos", "8", "--vae-steps", "3",
        "--eval-prompts", "1", "--threads", "1",
        "--set", "train.max_steps=2", "--set", "train.decay_steps=1", "--set", "train.batch_size=2",
        "--set", "train.log_every=1",
        "--set", "train.tensorboard=false",
    ]  # fmt: skip
    assert recipe.main(argv) == 0
    return work, out, argv


def test_recipe_writes_every_stage(toy_run):
    work, out, _ = toy_run
    assert sorted(json.loads((work / "times.json").read_text())) == sorted(recipe.STAGES)
    assert len((work / "data" / "train.csv").read_text().splitlines()) == 9
    meta = json.loads((work / "cache" / "meta.json").read_text())
    assert meta["num_samples"] == 8 and meta["latent_shape"] == [4, 16, 16, 16]
    # the STDiT stage is a plain `sorakit train` run: its checkpoints are where the trainer puts them
    assert (work / "stdit" / "checkpoints" / "step-00000002").is_dir()
    result = json.loads((work / "eval.json").read_text())
    assert set(result["summary"]) >= {"train", "novel", "heldout"}


def test_exported_model_is_self_contained_and_generates(toy_run):
    from sorakit.pipelines import TextToVideoPipeline

    _, out, _ = toy_run
    assert is_model_dir(out)
    stored = json.loads((out / "sorakit_pipeline.json").read_text())["config"]
    assert (
        stored["vae"]["path"] == "vae" and (out / "vae" / "config.json").is_file()
    )  # bundled, not a reference
    assert stored["data"]["csv"] is None and stored["data"]["cache_dir"] is None
    _, cfg = read_model_dir(out)
    assert (
        cfg.text_encoder.type == "minilm"
        and cfg.sampler.shift == load_config(recipe.PRESET).sampler.shift > 1
    )
    assert cfg.data.random_flip is False
    torch.set_num_threads(1)
    pipe = TextToVideoPipeline.from_pretrained(out, device="cpu")
    video = pipe("a red circle moving to the right", num_inference_steps=2, seed=0, progress=False)
    assert video.shape == (1, 16, 64, 64, 3) and video.dtype == np.uint8


def test_rerun_resumes_training_and_skips_finished_stages(toy_run, capfd):
    work, out, argv = toy_run
    stamp = (work / "vae" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    argv = [a if a != "train.max_steps=2" else "train.max_steps=3" for a in argv]
    assert recipe.main([*argv, "--stages", "data,vae,encode,train"]) == 0
    assert (work / "vae" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    assert (work / "stdit" / "checkpoints" / "step-00000003").is_dir()
    log = (work / "stdit" / "train.log").read_text()
    assert "resumed from" in log and "step-00000002" in log


def test_unknown_stage_is_a_one_line_error(tmp_path, capsys):
    assert recipe.main(["--workdir", str(tmp_path), "--stages", "data,bake"]) == 2
    assert "unknown stage" in capsys.readouterr().err


def test_ctrl_c_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    """Ctrl-C in `make train-builtin` (issue #14 item 11): in the recipe's own stages, or in a child
    `sorakit` command that exits 130, ends with one line and status 130."""
    import subprocess

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe, "stage_data", interrupted)
    assert recipe.main(["--workdir", str(tmp_path / "w"), "--stages", "data"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "sorakit: interrupted; run the same command again to resume (every stage resumes)"
    ]
    monkeypatch.setattr(subprocess, "call", lambda cmd: 130)
    with pytest.raises(KeyboardInterrupt):
        recipe._sorakit("train", "x")
