"""Step caching in the pipeline and `sorakit generate --cache` (issue #19), on the built-in model (an STDiT
trained with rectified flow, so every sampler applies) with classifier-free guidance.

Threshold 0 is bit-identical to no cache for every sampler; a large threshold really skips the block stack
(counted at block 0) while the sample stays finite and near the uncached one; each call starts a fresh
cache; bad values are one line before any weights load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sorakit.cli.main import main
from sorakit.data.video import read_video
from sorakit.errors import UserError
from sorakit.models.layers import use_onednn
from sorakit.pipelines import TextToVideoPipeline

PROMPTS = ["a red circle moving to the right", "a blue square moving up"]
STEPS = {"rflow": 8, "iddpm": 8, "ddim": 8, "dpm-solver": 8}


@pytest.fixture(scope="module")
def builtin_pipe() -> TextToVideoPipeline:
    return _guided_every_step(TextToVideoPipeline.from_pretrained(None, device="cpu", dtype="fp32"))


def _guided_every_step(pipe: TextToVideoPipeline) -> TextToVideoPipeline:
    """The built-in model guides only its first steps (sampler.guidance_interval); these tests count block
    runs with the guided pair at every step, so that only the first and last calls are forced."""
    pipe.config.sampler.guidance_interval = None
    return pipe


def _sample(pipe: TextToVideoPipeline, sampler: str, **kw) -> torch.Tensor:
    kw = dict(seed=1, progress=False, output_type="latent", num_inference_steps=STEPS[sampler]) | kw
    return pipe(PROMPTS, sampler=sampler, **kw)


def _count_block_stack_runs(pipe: TextToVideoPipeline) -> list[int]:
    """A list that grows by one each time block 0 of the transformer runs (= the block stack ran)."""
    runs: list[int] = []
    pipe.transformer.blocks[0].register_forward_hook(lambda *_: runs.append(1))
    return runs


@pytest.mark.parametrize("sampler", ["rflow", "iddpm", "ddim", "dpm-solver"])
def test_threshold_zero_is_bit_identical(builtin_pipe: TextToVideoPipeline, sampler: str) -> None:
    assert builtin_pipe.config.sampler.guidance_scale > 1  # the guided pair goes through the cache
    plain = _sample(builtin_pipe, sampler)
    cached = _sample(builtin_pipe, sampler, cache="teacache:0")
    assert torch.equal(plain, cached)
    (cache,) = builtin_pipe.last_step_caches  # the cache was really in the loop
    assert cache.calls == cache.computed == STEPS[sampler]


@pytest.fixture(scope="module")
def counted_pipe() -> tuple[TextToVideoPipeline, list[int]]:
    """The built-in model (its own: a hook is added) and the list its block stack's runs are counted in."""
    pipe = _guided_every_step(TextToVideoPipeline.from_pretrained(None, device="cpu", dtype="fp32"))
    return pipe, _count_block_stack_runs(pipe)


@pytest.mark.parametrize("sampler", ["rflow", "iddpm", "dpm-solver"])
def test_a_huge_threshold_runs_the_blocks_only_first_and_last(counted_pipe, sampler: str) -> None:
    pipe, runs = counted_pipe
    runs.clear()
    _sample(pipe, sampler)
    assert len(runs) == STEPS[sampler]
    runs.clear()
    out = _sample(pipe, sampler, cache="teacache:1e9")
    assert len(runs) == 2 and pipe.last_step_caches[0].computed == 2
    assert torch.isfinite(out).all()


def test_skipping_some_steps_stays_near_the_uncached_sample(counted_pipe) -> None:
    pipe, runs = counted_pipe
    plain = _sample(pipe, "rflow", num_inference_steps=12)
    runs.clear()
    cached = _sample(pipe, "rflow", num_inference_steps=12, cache="teacache:0.2")
    (cache,) = pipe.last_step_caches
    assert 2 < len(runs) == cache.computed <= 8 and cache.calls == 12  # measured: 6 of 12
    assert torch.isfinite(cached).all()
    # much nearer than the sample of another seed (measured: 0.37 of that distance)
    other_seed = _sample(pipe, "rflow", num_inference_steps=12, seed=2)
    err, spread = (cached - plain).norm(), (other_seed - plain).norm()
    assert err < 0.5 * spread, (float(err), float(spread))


def test_every_call_starts_a_fresh_cache(builtin_pipe: TextToVideoPipeline) -> None:
    first = _sample(builtin_pipe, "rflow", cache="teacache:0.3")
    caches = list(builtin_pipe.last_step_caches)
    _sample(
        builtin_pipe, "rflow", cache="teacache:0.3", seed=5, num_frames=8
    )  # other noise and shape between
    again = _sample(builtin_pipe, "rflow", cache="teacache:0.3")
    assert torch.equal(first, again)
    assert builtin_pipe.last_step_caches[0] is not caches[0]
    assert builtin_pipe.last_step_caches[0].computed == caches[0].computed


def test_cache_default_comes_from_the_config(builtin_pipe: TextToVideoPipeline, monkeypatch) -> None:
    monkeypatch.setattr(builtin_pipe.config.sampler, "cache", "teacache:1e9")
    from_config = _sample(builtin_pipe, "rflow")
    assert builtin_pipe.last_step_caches[0].computed == 2
    assert torch.equal(from_config, _sample(builtin_pipe, "rflow", cache="teacache:1e9"))
    _sample(builtin_pipe, "rflow", cache="none")  # a call turns the config's cache off
    assert builtin_pipe.last_step_caches == []


def test_cache_with_a_guidance_interval(builtin_pipe: TextToVideoPipeline) -> None:
    """The model sees 2n rows inside the interval and n outside: each switch recomputes, threshold 0 is exact."""
    kw = dict(guidance_interval=(0, 500))
    assert torch.equal(
        _sample(builtin_pipe, "iddpm", **kw), _sample(builtin_pipe, "iddpm", cache="teacache:0", **kw)
    )
    out = _sample(builtin_pipe, "iddpm", cache="teacache:1e9", **kw)
    assert torch.isfinite(out).all()
    assert builtin_pipe.last_step_caches[0].computed == 3  # first, the switch to 2n rows, last


def test_pipeline_refuses_bad_cache_values(builtin_pipe: TextToVideoPipeline) -> None:
    for bad in ["teacache:-1", "pab:0.1", "teacache:x"]:
        with pytest.raises(UserError, match=r"must be teacache\[:THRESHOLD\]"):
            _sample(builtin_pipe, "rflow", cache=bad)


# -- the CLI ------------------------------------------------------------------------------------------------


def test_generate_cache_flag_is_applied_and_recorded(tmp_path: Path, made_pipelines) -> None:
    made = made_pipelines
    out = tmp_path / "a.mp4"
    args = ["generate", "a red circle moving to the right", "--output", str(out), "--steps", "4",
            "--no-progress", "--cache", "teacache:0.5"]  # fmt: skip
    assert main(args) == 0
    assert made[0].config.sampler.cache == "teacache:0.5"
    assert made[0].last_step_caches[0].calls == 4
    overrides = json.loads(out.with_suffix(".json").read_text())["model"]["overrides"]
    assert "sampler.cache=teacache:0.5" in overrides
    again = tmp_path / "again.mp4"  # --replay repeats the cache: the same file
    assert (
        main(["generate", "--replay", str(out.with_suffix(".json")), "--output", str(again), "--no-progress"])
        == 0
    )
    assert made[1].config.sampler.cache == "teacache:0.5" and made[1].last_step_caches[0].calls == 4
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--cache", "teacache:-0.1"], "--cache must be teacache[:THRESHOLD]"),
        (["--cache", "teacache:nan"], "--cache must be teacache[:THRESHOLD]"),
        (["--cache", "teacache:fast"], "got threshold 'fast'"),
        (["--cache", "tea"], "unknown method 'tea'"),
        (["--cache", ""], "unknown method ''"),
        (["--set", "sampler.cache=teacache:-2"], "sampler.cache must be teacache[:THRESHOLD]"),
        (
            ["--preset", "dit/1x256x256-class", "--cache", "teacache"],
            "step caching (--cache) needs an STDiT model",
        ),
    ],
)
def test_bad_cache_values_are_one_line_before_loading(
    capsys: pytest.CaptureFixture, monkeypatch, extra: list[str], needle: str
) -> None:
    def no_loading(*a, **k):
        raise AssertionError("weights were loaded before the input was validated")

    monkeypatch.setattr(TextToVideoPipeline, "from_pretrained", no_loading)
    monkeypatch.setattr(TextToVideoPipeline, "from_config", no_loading)
    code = main(["generate", "a cat", "--no-progress", *extra])
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sorakit: error:"), err
    assert needle in lines[0], lines[0]


def test_cache_under_compile_matches_eager(builtin_pipe: TextToVideoPipeline, monkeypatch) -> None:
    """`--compile --cache`: the decision runs eagerly (torch.compiler.disable), the blocks compiled; the same
    steps are skipped and the latents match eager's (`aot_eager` backend: no C compiler, seconds). A compiled
    graph runs PyTorch's own float32 linears (sorakit's oneDNN ones are eager-only), so both runs use PyTorch's
    everywhere (the text encoder too)."""
    kw = dict(num_inference_steps=6, num_frames=8, cache="teacache:0.3")
    with use_onednn(False):
        eager = _sample(builtin_pipe, "rflow", **kw)
    eager_computed = builtin_pipe.last_step_caches[0].computed
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **k: real_compile(model, backend="aot_eager", **k))
    pipe = TextToVideoPipeline(builtin_pipe.transformer, builtin_pipe.vae, builtin_pipe.text_encoder,
                               builtin_pipe.config, device="cpu", dtype="fp32", compile=True)  # fmt: skip
    with use_onednn(False):
        compiled = _sample(pipe, "rflow", **kw)
    assert pipe._compiled is not None and 2 < pipe.last_step_caches[0].computed == eager_computed < 6
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.distributed
def test_cache_under_sequence_parallel_matches_single_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    """2 processes (gloo) splitting the frames take the same skip decisions (the signal is computed on the
    whole sequence before the split) and write what one process writes with the same cache."""
    common = ["a red circle", "--model", str(tiny_model_dir), "--steps", "4", "--num-frames", "4", "--seed", "3",
              "--no-progress", "--device", "cpu", "--dtype", "fp32", "--cache", "teacache:1e9"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "sorakit.cli.main", "generate", *common, "--output", str(tmp_path / "sp.mp4"), "--sequence-parallel"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the blocks ran at 2 of 4 steps" in proc.stderr, proc.stderr[-3000:]
    assert main(["generate", *common, "--output", str(tmp_path / "one.mp4")]) == 0
    a, b = read_video(tmp_path / "sp.mp4"), read_video(tmp_path / "one.mp4")
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 2
