"""Models at any token grid: the native grid is unchanged (bit for bit), other grids get sin-cos position
embeddings computed for them (optionally rescaled to the trained extent with `base_size`), odd grids run
forward and backward."""

from __future__ import annotations

import pytest
import torch

from sorakit.models import build_model
from sorakit.models.layers import get_2d_sincos_pos_embed

TEXT = dict(caption_channels=16, model_max_length=6)


def _randomized(name, seed=0, **kw):
    extra = TEXT if name.startswith(("STDiT", "PixArt")) else {"caption_channels": 16}
    torch.manual_seed(seed)
    m = build_model(name, **extra, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m


def _cond(name, b):
    if name.startswith(("STDiT", "PixArt")):
        return torch.randn(b, 1, 6, 16), torch.ones(b, 6, dtype=torch.long)
    return torch.randn(b, 1, 1, 16), None


def test_base_size_at_native_grid_is_bit_identical():
    plain = _randomized("STDiT-tiny", input_size=(2, 8, 8))
    based = _randomized("STDiT-tiny", input_size=(2, 8, 8), base_size=4)
    assert torch.equal(plain.pos_embed, based.pos_embed)
    assert based.config["base_size"] == 4 and "base_size" not in plain.config  # upstream configs unchanged
    x, t = torch.randn(2, 4, 2, 8, 8), torch.tensor([10, 900])
    y, mask = _cond("STDiT", 2)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x, t, y, mask), based.eval()(x, t, y, mask))


def test_base_size_keeps_the_trained_extent_at_other_grids():
    # built 8x8 latents -> 4x4 tokens; at 8x8 tokens every second token sits on a trained position
    m = _randomized("STDiT-tiny", input_size=(1, 8, 8), base_size=4)
    ref = torch.zeros(1, 64, m.hidden_size)
    pe = m._spatial_pos_embed(m.pos_embed, 8, 8, m.space_scale, m.base_size, ref)
    d = m.hidden_size
    assert torch.equal(pe.reshape(8, 8, d)[::2, ::2], m.pos_embed.reshape(4, 4, d))
    # a wide grid spans the same extent on both axes (STDiT2 / PixArt rescaling)
    wide = m._spatial_pos_embed(m.pos_embed, 4, 8, m.space_scale, m.base_size, ref)
    assert torch.equal(wide, get_2d_sincos_pos_embed(d, 4, 8, 1.0, 4))
    assert torch.equal(wide.reshape(4, 8, d)[:, ::2], m.pos_embed.reshape(4, 4, d))
    # without base_size (Open-Sora 1.0) the positions just continue: the top-left 4x4 block is the buffer
    plain = _randomized("STDiT-tiny", input_size=(1, 8, 8))
    pe = plain._spatial_pos_embed(plain.pos_embed, 8, 8, 1.0, None, ref)
    assert torch.equal(pe.reshape(8, 8, d)[:4, :4], plain.pos_embed.reshape(4, 4, d))


@pytest.mark.parametrize("name", ["STDiT-tiny", "PixArt-tiny", "DiT-tiny", "Latte-tiny"])
def test_odd_grid_forward_and_backward(name):
    kw = {"base_size": 4} if name == "STDiT-tiny" else {}
    m = _randomized(name, input_size=(4, 8, 8), **kw).train()
    x = torch.randn(2, 4, 3, 10, 14, requires_grad=True)  # 3 x 5 x 7 tokens, built for 4 x 4 x 4
    y, mask = _cond(name, 2)
    out = m(x, torch.tensor([3, 700]), y, mask)
    assert out.shape == (2, m.out_channels, 3, 10, 14) and torch.isfinite(out).all()
    (out**2).mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    g = m.x_embedder.proj.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # a token grid the patch does not divide is refused with the sizes named
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        m(torch.randn(1, 4, 3, 9, 14), torch.tensor([1]), y[:1], None if mask is None else mask[:1])
