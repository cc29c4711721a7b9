"""STDiT against the Open-Sora 1.0 reference outputs (`stdit_small` fixture): strict keys, float64, float32,
and the classifier-free-guidance batch."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sorakit.models import STDiT, load_checkpoint
from sorakit.models.layers import timestep_features


@pytest.fixture(scope="module")
def fx(fixtures):
    meta = json.loads((fixtures / "stdit_small.json").read_text())
    return {
        "meta": meta,
        "weights": load_file(str(fixtures / "stdit_small.weights.safetensors")),
        "t": load_file(str(fixtures / "stdit_small.safetensors")),
        "weights_path": fixtures / "stdit_small.weights.safetensors",
    }


def build(fx) -> STDiT:
    # the upstream config as stored, including its no-op keys (dtype, enable_flashattn, ...)
    return STDiT(**fx["meta"]["config"])


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


@pytest.fixture(scope="module")
def model64(fx):
    model = build(fx).double().eval()
    model.load_state_dict({k: v.double() for k, v in fx["weights"].items()}, strict=True)
    return model


def test_state_dict_keys_and_buffers(fx):
    model = build(fx)
    sd = model.state_dict()
    assert list(sd) == fx["meta"]["state_dict_keys_in_order"]
    for k, v in fx["weights"].items():
        assert sd[k].shape == v.shape, k
    # the sin-cos buffers the model computes are bitwise the upstream ones
    for k in fx["meta"]["non_learned_buffers"]:
        assert torch.equal(sd[k], fx["weights"][k].float()), k
    # y_embedding is a buffer (not a parameter), as upstream
    assert "y_embedder.y_embedding" not in dict(model.named_parameters())


def test_timestep_features_close(fx):
    t = fx["t"]
    feats = timestep_features(t["timestep"])
    assert feats.dtype == torch.float32
    # float32 features; the CPU's exp may differ in the last bit of a frequency (~3e-5 after *603)
    torch.testing.assert_close(feats, t["debug_t_freq"], rtol=0, atol=1e-4)


def test_float64_parity(fx, model64):
    t = fx["t"]
    with torch.no_grad():
        out = model64(t["x"], t["timestep"], t["y"], t["mask"])
    assert out.dtype == torch.float64 and out.shape == t["output_f64"].shape
    assert rel_err(out, t["output_f64"]) < 1e-5
    # stronger than the requirement: the only float32 steps left are the softmax and timestep features
    assert (out - t["output_f64"]).abs().max().item() < 5e-6


def test_float64_parity_guided_batch(fx, model64):
    t = fx["t"]
    x = torch.cat([t["x"], t["x"]])
    ts = torch.cat([t["timestep"], t["timestep"]])
    with torch.no_grad():
        out = model64(x, ts, t["cfg_y"], t["mask"])  # [B, L] mask for a 2B batch: tiled like upstream
    assert rel_err(out, t["cfg_model_output_f64"]) < 1e-5
    # upstream forward_with_cfg: channels 0..2 guided in both halves, the rest raw
    n = t["x"].shape[0]
    cond, uncond = out[:n, :3], out[n:, :3]
    half = uncond + 7.0 * (cond - uncond)
    guided = out.clone()
    guided[:, :3] = torch.cat([half, half])
    assert rel_err(guided, t["cfg_guided_output"]) < 1e-5
    # the null caption rows really are y_embedding
    torch.testing.assert_close(
        t["cfg_y"][n:, 0], model64.y_embedder.y_embedding.expand(n, -1, -1), rtol=0, atol=0
    )


def test_float32_parity(fx):
    t = fx["t"]
    model = build(fx).eval()
    report = load_checkpoint(model, fx["weights_path"])
    assert report.file_format == "safetensors" and not report.adapted and not report.created
    assert report.recomputed == ["pos_embed", "pos_embed_temporal"]
    with torch.no_grad():
        out = model(t["x"].float(), t["timestep"].float(), t["y"].float(), t["mask"])
        out_cfg = model(torch.cat([t["x"]] * 2).float(), torch.cat([t["timestep"]] * 2).float(),
                        t["cfg_y"].float(), t["mask"])  # fmt: skip
    assert out.dtype == torch.float32
    assert rel_err(out, t["output"]) < 1e-4
    assert rel_err(out_cfg, t["cfg_model_output"]) < 1e-4


def test_mask_tokens_outside_mask_are_ignored(fx, model64):
    t = fx["t"]
    y = t["y"].clone()
    y[0, 0, 5:] = 123.0  # sample 0 has 5 valid tokens
    with torch.no_grad():
        out = model64(t["x"], t["timestep"], y, t["mask"])
    assert rel_err(out, t["output_f64"]) < 1e-5
