"""Item 13 of issue #24: a request far beyond the machine's memory is refused before any weights load,
with the estimate and the memory available in one line; --force / SORAKIT_FORCE_MEMORY lets it start."""

from __future__ import annotations

from pathlib import Path

import pytest

from sorakit.cli.main import main
from sorakit.pipelines import memory
from sorakit.pipelines.validate import ModelSource, validate

GIB = 2**30


def _estimate(height: int, width: int, frames: int = 16):
    source = ModelSource.choose()
    cfg = source.config()
    settings = validate(
        cfg, source, height=height, width=width, num_frames=frames, device="cpu", force_memory=True
    )
    return memory.estimate(cfg, source.model_dir, settings, *source.geometry(cfg))


def test_estimate_grows_with_pixels_and_frames() -> None:
    small, big = _estimate(256, 256), _estimate(4096, 4096)
    assert 0 < small.peak < 2 * GIB  # what the built-in model really needs at 256x256 (about 1 GB)
    # 256x more pixels: the VAE term scales with pixels, the transformer's with tokens
    assert big.vae_decode == 256 * small.vae_decode and big.transformer > 200 * small.transformer
    assert big.peak > 64 * GIB
    assert _estimate(256, 256, frames=32).vae_decode == 2 * small.vae_decode


def test_4096_is_refused_before_loading(refused, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda device: (16 * GIB, "available (CPU memory)"))
    monkeypatch.delenv(memory.FORCE_ENV, raising=False)
    out = tmp_path / "v.mp4"
    msg = refused("generate", "a cat", "--resolution", "4096x4096", "-o", str(out), "--device", "cpu")
    assert "16 frames at 4096x4096 (batch 1) need about" in msg
    assert "but only 16.0 GiB is available (CPU memory)" in msg and "--force" in msg
    assert not out.exists()


def test_force_and_env_skip_the_refusal(monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda device: (1 * GIB, "free on cuda:0"))
    source = ModelSource.choose()
    cfg = source.config()
    with pytest.raises(memory.UserError, match="but only 1.0 GiB is free on cuda:0"):
        validate(cfg, source, height=4096, width=4096, device="cpu")
    validate(cfg, source, height=4096, width=4096, device="cpu", force_memory=True)
    monkeypatch.setenv(memory.FORCE_ENV, "1")
    validate(cfg, source, height=4096, width=4096, device="cpu")


def test_small_requests_pass_on_this_machine() -> None:
    """The default request fits whatever machine runs the suite (no monkeypatching)."""
    source = ModelSource.choose()
    validate(source.config(), source, device="cpu")


def test_cli_force_flag_reaches_the_check(monkeypatch, tmp_path: Path) -> None:
    seen = {}

    def fake_check(cfg, model_dir, settings, factor, patch, force=False):  # noqa: ANN001, ANN202
        seen["force"] = force
        raise memory.UserError("stop here")

    monkeypatch.setattr("sorakit.pipelines.validate.check_memory", fake_check)
    assert main(["generate", "a cat", "-o", str(tmp_path / "v.mp4"), "--force"]) == 2
    assert seen == {"force": True}
