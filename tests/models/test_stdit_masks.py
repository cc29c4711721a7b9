"""STDiT's per-frame mask of reference frames (`x_mask [B, T]`, True = generate): without it the model is
Open-Sora 1.0's (the fixture still matches), all-True equals no mask bit for bit, and a condition frame is
modulated exactly as timestep 0 (Open-Sora 1.2's t0 modulation)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sorakit.models import STDiT, build_model


def _tiny(patch_t: int = 1, seed: int = 0) -> STDiT:
    torch.manual_seed(seed)
    model = build_model(
        "STDiT-tiny", input_size=(4, 8, 8), in_channels=4, caption_channels=16, model_max_length=6,
        hidden_size=32, depth=2, num_heads=4, class_dropout_prob=0.0, patch_size=(patch_t, 2, 2),
    )  # fmt: skip
    with torch.no_grad():  # upstream zero-inits the output projections; randomise so every path matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 4, 8, 8, generator=g)
    t = torch.tensor([3, 700])
    y = torch.randn(2, 1, 6, 16, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    return x, t, y, mask


def test_fixture_parity_without_and_with_all_true_mask(fixtures):
    meta = json.loads((fixtures / "stdit_small.json").read_text())
    ref = load_file(str(fixtures / "stdit_small.safetensors"))
    model = STDiT(**meta["config"]).double().eval()
    model.load_state_dict(
        {k: v.double() for k, v in load_file(str(fixtures / "stdit_small.weights.safetensors")).items()},
        strict=True,
    )
    x = ref["x"]
    with torch.no_grad():
        plain = model(x, ref["timestep"], ref["y"], ref["mask"])
        ones = model(
            x,
            ref["timestep"],
            ref["y"],
            ref["mask"],
            x_mask=torch.ones(x.shape[0], x.shape[2], dtype=torch.bool),
        )
    assert (plain - ref["output_f64"]).abs().max().item() < 5e-6
    assert torch.equal(plain, ones)


@pytest.mark.parametrize("patch_t", [1, 2])
def test_all_true_mask_is_bit_identical(patch_t):
    model = _tiny(patch_t)
    x, t, y, mask = _inputs()
    with torch.no_grad():
        a = model(x, t, y, mask)
        b = model(x, t, y, mask, x_mask=torch.ones(2, 4, dtype=torch.bool))
    assert torch.equal(a, b)


def test_all_false_mask_equals_timestep_zero():
    """Every frame a condition frame: every modulation is timestep 0's, i.e. the model called at t = 0."""
    model = _tiny()
    x, t, y, mask = _inputs()
    with torch.no_grad():
        cond = model(x, t, y, mask, x_mask=torch.zeros(2, 4, dtype=torch.bool))
        at_zero = model(x, torch.zeros_like(t), y, mask)
    torch.testing.assert_close(cond, at_zero, rtol=0, atol=1e-6)


def test_mixed_mask_modulates_per_frame():
    """Frame 0 condition, others generated. Equivalent reference: the same model where timestep is a per-frame
    value, built by running the blocks by hand with the two modulations selected per frame."""
    model = _tiny()
    x, t, y, mask = _inputs()
    x_mask = torch.tensor([[False, True, True, True], [True, True, False, True]])
    with torch.no_grad():
        out = model(x, t, y, mask, x_mask=x_mask)
        plain = model(x, t, y, mask)
        zero = model(x, torch.zeros_like(t), y, mask)
    # the mask matters, and it matters to every frame (temporal attention mixes frames)
    assert not torch.allclose(out, plain, atol=1e-4)
    assert not torch.allclose(out, zero, atol=1e-4)
    # a model without temporal mixing makes frames independent: then each frame equals the all-t or all-0 run
    for block in model.blocks:
        torch.nn.init.zeros_(block.attn_temp.proj.weight)
        torch.nn.init.zeros_(block.attn_temp.proj.bias)
    with torch.no_grad():
        out = model(x, t, y, mask, x_mask=x_mask)
        plain = model(x, t, y, mask)
        zero = model(x, torch.zeros_like(t), y, mask)
    for b in range(2):
        for f in range(4):
            want = plain if x_mask[b, f] else zero
            torch.testing.assert_close(out[b, :, f], want[b, :, f], rtol=0, atol=1e-6)


def test_temporal_patch_token_is_generated_if_any_frame_is():
    """Temporal patch 2: frames (0, 1) share a token. Condition frame 0 alone leaves the token generated."""
    model = _tiny(patch_t=2)
    x, t, y, mask = _inputs()
    with torch.no_grad():
        plain = model(x, t, y, mask)
        half = model(x, t, y, mask, x_mask=torch.tensor([[False, True, True, True]] * 2))
        both = model(x, t, y, mask, x_mask=torch.tensor([[False, False, True, True]] * 2))
    assert torch.equal(plain, half)
    assert not torch.allclose(plain, both, atol=1e-4)


def test_bad_mask_shape_is_an_error():
    model = _tiny()
    x, t, y, mask = _inputs()
    with pytest.raises(ValueError, match=r"x_mask must have shape \[B, T\] = \[2, 4\]"):
        model(x, t, y, mask, x_mask=torch.ones(2, 3, dtype=torch.bool))


def test_gradient_checkpointing_with_mask_same_grads():
    x, t, y, mask = _inputs()
    x_mask = torch.tensor([[False, True, True, True], [True, True, True, False]])
    grads = []
    for ckpt in (False, True):
        model = _tiny().train()
        model.enable_gradient_checkpointing(ckpt)
        model(x, t, y, mask, x_mask=x_mask).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], msg=n)
