"""TextToVideoPipeline end to end on CPU with tiny components built from configs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from sorakit import modeldir as model_dir_module
from sorakit.config import Config
from sorakit.errors import UserError
from sorakit.pipelines import (
    PIPELINE_FILE,
    TextToVideoPipeline,
    null_caption,
    read_model_dir,
    resolve_device,
    resolve_dtype,
    save_model_dir,
    to_uint8,
)
from sorakit.pipelines.tiny import make_tiny_model_dir, make_tiny_transformer, tiny_config

PROMPTS = ["a red circle moving to the right", "a cat playing the piano"]


def test_frames_shape_and_types(tiny_pipe: TextToVideoPipeline) -> None:
    frames = tiny_pipe(
        PROMPTS, num_frames=3, height=16, width=24, num_inference_steps=3, seed=0, progress=False
    )
    assert isinstance(frames, np.ndarray) and frames.dtype == np.uint8
    assert frames.shape == (2, 3, 16, 24, 3)
    assert frames.std() > 1  # not a constant image
    pt = tiny_pipe(PROMPTS[0], num_frames=2, num_inference_steps=2, seed=0, output_type="pt", progress=False)
    assert isinstance(pt, torch.Tensor) and pt.dtype == torch.uint8 and pt.shape == (1, 2, 16, 16, 3)


def test_latents_decode_to_the_same_frames(tiny_pipe: TextToVideoPipeline) -> None:
    kw = dict(num_frames=2, num_inference_steps=3, seed=5, progress=False)
    latents = tiny_pipe(PROMPTS, output_type="latent", **kw)
    assert latents.shape == (2, 4, 2, 8, 8) and latents.dtype == torch.float32
    frames = tiny_pipe(PROMPTS, **kw)
    manual = to_uint8(tiny_pipe.vae.decode(latents)).numpy()
    np.testing.assert_array_equal(frames, manual)


def test_seeds(tiny_pipe: TextToVideoPipeline) -> None:
    kw = dict(num_frames=2, num_inference_steps=4, progress=False)
    a = tiny_pipe(PROMPTS, seed=1, **kw)
    b = tiny_pipe(PROMPTS, seed=1, **kw)
    c = tiny_pipe(PROMPTS, seed=2, **kw)
    g = tiny_pipe(PROMPTS, generator=torch.Generator().manual_seed(1), **kw)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, g)
    assert (a != c).mean() > 0.5


def test_prompt_and_guidance_matter(tiny_pipe: TextToVideoPipeline) -> None:
    kw = dict(num_frames=2, num_inference_steps=4, seed=3, progress=False, output_type="latent")
    one = tiny_pipe([PROMPTS[0]], **kw)
    other = tiny_pipe([PROMPTS[1]], **kw)
    assert (one - other).abs().max() > 1e-3
    unguided = tiny_pipe([PROMPTS[0]], guidance_scale=1.0, **kw)
    assert (one - unguided).abs().max() > 1e-3


def test_null_caption_is_the_models_learned_embedding(tiny_pipe: TextToVideoPipeline) -> None:
    emb = tiny_pipe.transformer.y_embedder.y_embedding
    null = null_caption(tiny_pipe.transformer, 3)
    assert null.shape == (3, 1, *emb.shape)
    assert torch.equal(null[2, 0], emb)
    y, mask, y_null = tiny_pipe.encode_prompt(PROMPTS)
    assert y.shape == y_null.shape == (2, 1, 12, 32) and mask.shape == (2, 12)
    assert torch.equal(y_null[0, 0], emb)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_frames=0), "frames must be positive"),
        (dict(num_inference_steps=0), "steps must be positive"),
        (dict(height=18), "patches"),
        (dict(width=15), "not divisible"),
        (dict(sampler="euler"), "unknown sampler"),
        (dict(output_type="gif"), "output_type"),
        (dict(guidance_scale=-1.0), "guidance"),
    ],
)
def test_bad_inputs(tiny_pipe: TextToVideoPipeline, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        tiny_pipe("a cat", progress=False, **kwargs)


def test_empty_prompt(tiny_pipe: TextToVideoPipeline) -> None:
    with pytest.raises(UserError, match="empty"):
        tiny_pipe(["a cat", "  "], progress=False)
    with pytest.raises(UserError, match="no prompts"):
        tiny_pipe([], progress=False)


def test_save_and_reload_roundtrip(tiny_pipe: TextToVideoPipeline, tmp_path) -> None:
    old = os.umask(0o022)
    try:
        out = tiny_pipe.save_pretrained(
            tmp_path / "copy", text_encoder_dir=tiny_pipe.config.text_encoder.path
        )
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o755  # built under a mkdtemp name, but not left owner-only
    spec = json.loads((out / PIPELINE_FILE).read_text())
    assert spec["format"] == "sorakit-pipeline" and spec["config"]["vae"]["path"] == "vae"
    assert (out / "transformer" / "config.json").is_file() and (out / "vae" / "config.json").is_file()
    again = TextToVideoPipeline.from_pretrained(out, device="cpu")
    kw = dict(num_frames=2, num_inference_steps=3, seed=9, progress=False)
    np.testing.assert_array_equal(tiny_pipe(PROMPTS, **kw), again(PROMPTS, **kw))


def test_model_dir_errors(tmp_path, tiny_model_dir) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a sorakit model directory"):
        save_model_dir(tmp_path / "busy", make_tiny_transformer(32, 12), tiny_config())
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(UserError, match="not a sorakit model directory"):
        read_model_dir(tmp_path / "busy")
    _, cfg = read_model_dir(tiny_model_dir)
    assert cfg.text_encoder.path == str(tiny_model_dir / "text_encoder")
    assert cfg.model.type == "STDiT-tiny" and cfg.inference.num_frames == 4


def test_builtin_model_missing_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(model_dir_module, "BUILTIN_MODEL_DIR", tmp_path / "none")
    with pytest.raises(UserError, match="no built-in model is installed yet"):
        TextToVideoPipeline.from_pretrained(None, device="cpu")


def test_text_encoder_width_mismatch(tmp_path, tiny_model_dir) -> None:
    """A MiniLM (384-d) model directory given the 32-d tiny T5 as --text-encoder."""
    d = make_tiny_model_dir(tmp_path / "minilm", text_encoder="minilm")
    with pytest.raises(UserError, match="gives 32-d embeddings but STDiT-tiny expects 384"):
        TextToVideoPipeline.from_pretrained(
            d, device="cpu", text_encoder=str(tiny_model_dir / "text_encoder")
        )


def test_minilm_model_dir(tmp_path) -> None:
    """The real pip-packaged MiniLM encoder drives a tiny transformer."""
    d = make_tiny_model_dir(tmp_path / "minilm", text_encoder="minilm")
    pipe = TextToVideoPipeline.from_pretrained(d, device="cpu")
    assert pipe.text_encoder.output_dim == 384
    frames = pipe(PROMPTS, num_frames=2, num_inference_steps=2, seed=0, progress=False)
    assert frames.shape == (2, 2, 16, 16, 3)


def test_from_config_with_checkpoint(tiny_pipe: TextToVideoPipeline, tiny_model_dir, tmp_path) -> None:
    """A preset-style Config + --ckpt gives the same model as the model directory; a checkpoint of
    another architecture size is refused with one line."""
    _, cfg = read_model_dir(tiny_model_dir)
    weights = tiny_model_dir / "transformer" / "model.safetensors"
    pipe = TextToVideoPipeline.from_config(cfg, ckpt=weights, device="cpu")
    kw = dict(num_frames=2, num_inference_steps=2, seed=4, progress=False)
    np.testing.assert_array_equal(pipe(PROMPTS, **kw), tiny_pipe(PROMPTS, **kw))

    from safetensors.torch import save_file

    other = make_tiny_transformer(32, 12)
    sd = {k: v for k, v in other.state_dict().items() if not k.startswith("blocks.1.")}
    save_file(sd, str(tmp_path / "short.safetensors"))
    with pytest.raises(UserError) as info:
        TextToVideoPipeline.from_config(cfg, ckpt=tmp_path / "short.safetensors", device="cpu")
    assert "does not match" in str(info.value) and "\n" not in str(info.value)


def test_device_and_dtype_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(UserError, match="fp16 is not supported on CPU"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(UserError, match="unknown dtype"):
        resolve_dtype("int8", cpu)
    assert resolve_device("cpu") == cpu
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("tpu9")


def test_bf16_on_cpu(tiny_model_dir) -> None:
    pipe = TextToVideoPipeline.from_pretrained(tiny_model_dir, device="cpu", dtype="bf16")
    assert pipe.transformer.x_embedder.proj.weight.dtype == torch.bfloat16
    frames = pipe(PROMPTS[0], num_frames=2, num_inference_steps=2, seed=0, progress=False)
    assert frames.shape == (1, 2, 16, 16, 3)


def test_config_defaults_are_used(tiny_pipe: TextToVideoPipeline) -> None:
    cfg: Config = tiny_pipe.config
    frames = tiny_pipe("a cat", num_inference_steps=1, progress=False)
    assert frames.shape == (1, cfg.inference.num_frames, *cfg.inference.image_size, 3)


def test_text_encoder_is_offloaded_around_encoding(tiny_pipe: TextToVideoPipeline, monkeypatch) -> None:
    """With offloading on, the encoder goes to the pipeline's device only while encoding, then back to CPU."""
    moves: list[str] = []
    encoder = tiny_pipe.text_encoder
    real_to, real_encode = encoder.to, encoder.encode

    def record_to(device, *a, **k):
        moves.append(f"to {torch.device(device).type}")
        return real_to(device, *a, **k)

    def record_encode(prompts):
        moves.append("encode")
        return real_encode(prompts)

    monkeypatch.setattr(encoder, "to", record_to)
    monkeypatch.setattr(encoder, "encode", record_encode)
    monkeypatch.setattr(tiny_pipe, "offload_text_encoder", True)
    tiny_pipe("a cat", num_frames=1, num_inference_steps=1, progress=False)
    assert moves == [f"to {tiny_pipe.device.type}", "encode", "to cpu"]


def test_rflow_time_shift_reaches_the_sampler(tiny_pipe: TextToVideoPipeline, monkeypatch) -> None:
    """scheduler.shift moves the rectified-flow steps the model sees; DDPM samplers drive a flow-trained
    model through velocity_as_eps (model times are flow times s*1000 < 1000); the rflow sampler refuses an
    eps-trained model."""
    from sorakit.diffusion.rflow import sampling_timesteps

    seen: list[float] = []
    real = tiny_pipe._denoiser

    def record(x, t, *a, **k):
        seen.append(float(t.reshape(-1)[0]))
        return real(x, t, *a, **k)

    assert tiny_pipe.transformer.prediction_type == "epsilon"
    with pytest.raises(UserError, match="rectified flow"):
        tiny_pipe("a cat", num_frames=2, num_inference_steps=2, sampler="rflow", progress=False)
    monkeypatch.setattr(tiny_pipe, "_denoiser", record)
    monkeypatch.setattr(tiny_pipe.config.sampler, "shift", 3.0)
    monkeypatch.setattr(
        tiny_pipe.transformer, "prediction_type", "flow"
    )  # what the model says, not the config
    tiny_pipe("a cat", num_frames=2, num_inference_steps=4, sampler="rflow", seed=0, progress=False)
    assert seen == pytest.approx(sampling_timesteps(4, shift=3.0))
    seen.clear()
    tiny_pipe("a cat", num_frames=2, num_inference_steps=4, sampler="ddim", seed=0, progress=False)
    assert len(seen) == 4 and seen[0] < 1000


def test_model_dir_manifest_detects_damage(tmp_path, tiny_model_dir) -> None:
    import shutil

    from sorakit.manifest import verify_folder

    assert verify_folder(tiny_model_dir).status == "verified"
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    weights = copy / "transformer" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40
    weights.write_bytes(bytes(data))
    read_model_dir(copy)  # the cheap check (sizes) passes: a flipped bit needs the sha256
    with pytest.raises(
        UserError, match="copy is damaged: transformer/model.safetensors does not match its sha256"
    ):
        TextToVideoPipeline.from_pretrained(copy, device="cpu")
    weights.write_bytes(bytes(data[:1000]))  # a copy that stopped half-way: refused by every reader
    with pytest.raises(UserError, match="transformer/model.safetensors has 1000 bytes"):
        read_model_dir(copy)
    (copy / "manifest.json").unlink()  # an export from before manifests: accepted as it is
    read_model_dir(copy)
