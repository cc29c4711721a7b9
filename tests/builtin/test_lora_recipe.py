"""`make lora-demo` at toy scale: every stage runs offline (data with the new concepts, cache, LoRA training
on the built-in model, PEFT export, the VAE decoder adapter, evaluation), and a second run resumes: it redoes
nothing."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from sorakit.builtin.lora_recipe import GUIDANCE_INTERVAL, GUIDANCE_SCALE, main
from sorakit.encoders.vae import load_autoencoder
from sorakit.lora import (
    ADAPTER_CONFIG,
    ADAPTER_SAMPLER,
    ADAPTER_WEIGHTS,
    VAE_ADAPTER_DIR,
    base_fingerprint,
    read_adapter,
)
from sorakit.modeldir import BUILTIN_MODEL_DIR
from sorakit.pipelines import TextToVideoPipeline


def test_lora_recipe_end_to_end_and_resume(tmp_path, capfd):
    work = tmp_path / "lora-demo"
    argv = ["--workdir", str(work), "--num-videos", "8", "--eval-prompts", "1", "--eval-steps", "2",
            "--timing-repeats", "1", "--set", "train.max_steps=2", "--set", "train.batch_size=2",
            "--set", "train.warmup_steps=0", "--set", "train.decay_steps=0", "--vae-steps", "2"]  # fmt: skip
    assert main(argv) == 0
    out = capfd.readouterr().out
    assert "| new |" in out and "| train |" in out and "without the adapter" in out
    adapter = work / "adapter"
    assert {p.name for p in adapter.iterdir()} == {
        ADAPTER_CONFIG,
        ADAPTER_WEIGHTS,
        VAE_ADAPTER_DIR,
        ADAPTER_SAMPLER,
    }
    spec, _ = read_adapter(adapter)
    assert spec.rank == 8 and spec.base_name == "the built-in model"
    # the adapter's sampler.json: its guidance interval and scale are what `--lora` samples with
    sampler = json.loads((adapter / ADAPTER_SAMPLER).read_text())
    assert sampler == {"guidance_interval": list(GUIDANCE_INTERVAL), "guidance_scale": GUIDANCE_SCALE}
    pipe = TextToVideoPipeline.from_pretrained(None, device="cpu")
    base_scale, base_shift = pipe.config.sampler.guidance_scale, pipe.config.sampler.shift
    pipe.load_lora(adapter)
    assert pipe.config.sampler.shift == base_shift  # the run's timestep_shift moved training times only
    assert tuple(pipe.config.sampler.guidance_interval) == GUIDANCE_INTERVAL
    assert pipe.config.sampler.guidance_scale == GUIDANCE_SCALE != base_scale
    # the run weighted latent channel 3 in its loss and drew its times with shift 3 (in its saved config)
    run_config = (work / "lora" / "config.toml").read_text()
    assert "loss_channel_weights = [1.0, 1.0, 1.0, 3.0]" in run_config
    assert "timestep_shift = 3.0" in run_config
    for folder in (adapter, adapter / VAE_ADAPTER_DIR):  # stored in fp16: half the bytes
        assert {t.dtype for t in load_file(str(folder / ADAPTER_WEIGHTS)).values()} == {torch.float16}
    vae_spec, _ = read_adapter(adapter / VAE_ADAPTER_DIR)  # the decoder adapter, on the built-in VAE
    assert vae_spec.rank == 4 and vae_spec.base_fingerprint == base_fingerprint(
        load_autoencoder(BUILTIN_MODEL_DIR / "vae")
    )
    assert all(m.startswith("decoder.") for m in vae_spec.target_modules)
    result = json.loads((work / "eval.json").read_text())
    assert result["adapter_bytes"] < 1_000_000 and set(result["timing"]) == {"batch", "without_s", "merged_s"}
    assert set(result["summary"]) >= {"new", "train", "new, without the adapter"}
    rows = (work / "data" / "train.csv").read_text()
    assert "orange" in rows or "diamond" in rows
    state = json.loads(next((work / "lora" / "checkpoints").glob("step-*/state.json")).read_text())
    assert state["lora"]["base_path"] == str(BUILTIN_MODEL_DIR.resolve())
    mtimes = {p: p.stat().st_mtime_ns for p in [work / "eval.json", adapter / ADAPTER_WEIGHTS]}
    assert main(argv) == 0  # resumed: every stage finds its output
    assert "nothing to do" in capfd.readouterr().err
    assert (work / "eval.json").stat().st_mtime_ns == mtimes[work / "eval.json"]
