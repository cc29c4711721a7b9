"""The pieces of the `opensora-1.0` parity profile (the whole path: test_opensora_parity.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sorakit import parity
from sorakit.errors import UserError


def test_profiles() -> None:
    assert parity.get_profile(None) is None and parity.get_profile("") is None
    prof = parity.get_profile("OpenSora-1.0")
    assert prof is parity.PROFILES["opensora-1.0"]
    assert prof.guided_channels == {"iddpm": 3} and prof.crf == 23 and prof.keep_empty_prompts
    assert parity.runtime_dtype(prof, torch.device("cuda")) == "fp16"
    assert parity.runtime_dtype(prof, torch.device("cpu")) == "fp32"
    with pytest.raises(UserError, match="unknown parity profile 'opensora-2'"):
        parity.get_profile("opensora-2")


def upstream_save_sample_uint8(x: torch.Tensor) -> torch.Tensor:
    """Open-Sora 1.0 `save_sample` on one [C, T, H, W] sample, line for line (normalize=True, (-1, 1))."""
    low, high = -1, 1
    x = x.clone()
    x.clamp_(min=low, max=high)
    x.sub_(low).div_(max(high - low, 1e-5))
    return x.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 3, 0).to("cpu", torch.uint8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_uint8_conversion_is_save_samples(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    video = (torch.randn(2, 3, 3, 8, 8, generator=g) * 0.7).to(dtype)
    video[0, 0, 0, 0, :4] = torch.tensor([-1.5, -1.0, 1.0, 2.0])  # clamped ends
    got = parity.to_uint8(video)
    want = torch.stack([upstream_save_sample_uint8(v) for v in video])
    assert got.shape == (2, 3, 8, 8, 3) and torch.equal(got, want)
    if dtype != torch.float32:  # in half precision the arithmetic itself differs from float32 rounding
        from sorakit.pipelines.text_to_video import to_uint8

        assert not torch.equal(got, to_uint8(video))


def test_step_noise_is_drawn_for_both_guidance_halves() -> None:
    z = torch.zeros(2, 4, 1, 3, 3)
    torch.manual_seed(5)
    it = iter(parity.UpstreamStepNoise(z))
    first, second = next(it), next(it)
    torch.manual_seed(5)
    want1, want2 = torch.randn(4, 4, 1, 3, 3), torch.randn(4, 4, 1, 3, 3)
    assert first.shape == z.shape
    assert torch.equal(first, want1[:2]) and torch.equal(second, want2[:2])
    assert parity.sampler_kwargs("dpm-solver", z) == {}
    assert isinstance(parity.sampler_kwargs("iddpm", z)["noise"], parity.UpstreamStepNoise)


def test_seed_everything_seeds_every_generator() -> None:
    import random

    import numpy as np

    parity.seed_everything(7)
    a = (random.random(), np.random.rand(), torch.rand(1))
    parity.seed_everything(7)
    assert a == (random.random(), np.random.rand(), torch.rand(1))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sorakit.cli.main", *args], capture_output=True, text=True)


def test_cli_rejects_unknown_profile_before_loading(tmp_path: Path) -> None:
    out = run_cli("generate", "a cat", "--parity", "opensora-9", "--output", str(tmp_path / "a.mp4"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "sorakit: error: unknown parity profile 'opensora-9' (valid: opensora-1.0)"
    ]


def test_prompt_file_empty_lines(tmp_path: Path) -> None:
    from sorakit.pipelines.validate import read_prompt_file as _read_prompt_file

    f = tmp_path / "p.txt"
    f.write_text("a\n\n  b  \n", encoding="utf-8")
    assert _read_prompt_file(str(f)) == [
        (0, "a"),
        (1, "b"),
    ]  # numbered by prompt: the blank line uses no number
    assert _read_prompt_file(str(f), keep_empty=True) == [(0, "a"), (1, ""), (2, "b")]
    f.write_text("a\n\nb", encoding="utf-8")  # no final newline: still three lines, as readlines() gives
    assert _read_prompt_file(str(f), keep_empty=True) == [(0, "a"), (1, ""), (2, "b")]
