"""TextToVideoPipeline.validate: every check and default of a request from config files alone."""

from __future__ import annotations

from pathlib import Path

import pytest

import sorakit.models.pretrained as pretrained
from sorakit.errors import UserError
from sorakit.pipelines import TextToVideoPipeline
from sorakit.pipelines.validate import ModelSource, parse_resolution


@pytest.fixture
def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("validation read weights")

    monkeypatch.setattr(pretrained, "load_safetensors", refuse)


def test_defaults_come_from_the_model_folder(tiny_model_dir: Path, no_weights: None) -> None:
    source = ModelSource.choose(model=str(tiny_model_dir))
    cfg = source.config()
    s = TextToVideoPipeline.validate(cfg, source, prompts=["a cat"])
    assert (s.num_frames, s.height, s.width) == (cfg.inference.num_frames, *cfg.inference.image_size)
    assert (s.steps, s.sampler, s.guidance) == (5, "iddpm", 4.0)
    assert (s.device, s.dtype, s.seed) == ("cpu", "fp32", cfg.inference.seed)
    assert source.geometry(cfg) == (2, (1, 2, 2))  # the tiny VAE halves the size, STDiT patches 1x2x2


def test_sampler_aliases_are_canonicalised_and_usable(tiny_model_dir: Path, tiny_pipe) -> None:
    source = ModelSource.choose(model=str(tiny_model_dir))
    s = TextToVideoPipeline.validate(source.config(), source, sampler="DPM_Solver", steps=2)
    assert s.sampler == "dpm-solver"
    a = tiny_pipe("a cat", num_frames=1, num_inference_steps=2, sampler="dpm_solver", seed=0, progress=False)
    b = tiny_pipe("a cat", num_frames=1, num_inference_steps=2, sampler="dpm-solver", seed=0, progress=False)
    assert (a == b).all()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(height=18, width=16), "multiples of 4x4"),
        (dict(steps=0), "steps must be positive"),
        (dict(sampler="euler"), "unknown sampler 'euler' (valid: iddpm, ddim, dpm-solver, rflow)"),
        (dict(guidance=-1.0), "guidance must be >= 0"),
        (dict(prompts=["a", " "]), "empty prompt"),
        (dict(prompts=["3"], class_labels=True), "class-conditional models"),
        (dict(sequence_parallel=True), "needs several processes"),
        (dict(num_frames=3, world_size=2, sequence_parallel=True), "do not split over 2 processes"),
    ],
)
def test_bad_requests_are_one_user_error(tiny_model_dir: Path, no_weights: None, kwargs, needle) -> None:
    source = ModelSource.choose(model=str(tiny_model_dir))
    with pytest.raises(UserError) as err:
        TextToVideoPipeline.validate(source.config(), source, **kwargs)
    assert needle in str(err.value)


def test_messages_use_the_callers_names(tiny_model_dir: Path) -> None:
    source = ModelSource.choose(model=str(tiny_model_dir))
    with pytest.raises(UserError, match="^--steps must be positive"):
        TextToVideoPipeline.validate(source.config(), source, steps=0, names={"steps": "--steps"})
    assert parse_resolution(" 32 x 48 ") == (32, 48)
    with pytest.raises(UserError, match="^size must look like HxW"):
        parse_resolution("big", "size")
