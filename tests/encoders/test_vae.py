"""The per-frame video VAE on a tiny AutoencoderKL built from a config."""

from __future__ import annotations

import pytest
import torch

from sorakit.config import VAEConfig
from sorakit.encoders.vae import VideoVAE, build_vae
from sorakit.errors import UserError
from sorakit.pipelines.tiny import make_tiny_autoencoder


@pytest.fixture(scope="module")
def vae() -> VideoVAE:
    return VideoVAE(make_tiny_autoencoder(scaling_factor=0.5))


def test_properties_come_from_the_config() -> None:
    assert VideoVAE(make_tiny_autoencoder()).downsample_factor == 2
    three = VideoVAE(make_tiny_autoencoder(
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 8, 16), latent_channels=6, scaling_factor=0.3,
    ))  # fmt: skip
    assert three.downsample_factor == 4 and three.latent_channels == 6 and three.scaling_factor == 0.3
    assert VideoVAE(make_tiny_autoencoder(scaling_factor=0.3), scaling_factor=0.7).scaling_factor == 0.7


def test_encode_decode_shapes_and_scaling(vae: VideoVAE) -> None:
    x = torch.rand(2, 3, 5, 16, 12) * 2 - 1
    z = vae.encode(x, sample=False)
    assert z.shape == (2, 4, 5, 8, 6)
    # frame (b=1, t=3) encoded alone as an image, times the configured scaling factor (0.5)
    raw = vae.autoencoder.encode(x[1:2, :, 3]).latent_dist.mode()
    torch.testing.assert_close(z[1:2, :, 3], raw * 0.5, atol=1e-5, rtol=1e-5)
    out = vae.decode(z)
    assert out.shape == x.shape
    ref = vae.autoencoder.decode(z[0:1, :, 2] / 0.5).sample
    torch.testing.assert_close(out[0:1, :, 2], ref, atol=1e-5, rtol=1e-5)


def test_micro_batching_gives_the_same_result(vae: VideoVAE) -> None:
    x = torch.rand(2, 3, 5, 8, 8) * 2 - 1
    full = vae.encode(x, sample=False)
    small = VideoVAE(vae.autoencoder, micro_batch_size=3)
    torch.testing.assert_close(small.encode(x, sample=False), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(small.decode(full), vae.decode(full), atol=1e-5, rtol=1e-5)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(vae.encode(x, generator=g1), vae.encode(x, generator=g2))
    with pytest.raises(UserError):
        VideoVAE(vae.autoencoder, micro_batch_size=0)


def test_latent_size(vae: VideoVAE) -> None:
    assert vae.latent_size(16, 32, 24) == (16, 16, 12)
    with pytest.raises(UserError, match="not divisible"):
        vae.latent_size(16, 33, 32)


def test_build_from_directory(tiny_vae_dir, tmp_path, monkeypatch) -> None:
    vae = build_vae(VAEConfig(type="sd-vae", path=str(tiny_vae_dir), micro_batch_size=4))
    assert vae.micro_batch_size == 4 and vae.downsample_factor == 2
    assert vae.scaling_factor == vae.autoencoder.config.scaling_factor
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="no such directory"):
        build_vae(VAEConfig(path=str(tmp_path / "missing")))
    with pytest.raises(UserError) as info:
        build_vae(VAEConfig(path="sorakit-test-nobody/vae-missing"))
    assert "huggingface-cli download sorakit-test-nobody/vae-missing" in str(info.value)
    assert "--vae" in str(info.value)
