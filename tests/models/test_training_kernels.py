"""The training-only kernels of the STDiT step: the explicit CPU attention (recomputes its probabilities in the
backward), the modulated LayerNorm (keeps only its output), and cutting caption padding nobody attends to. Each
computes what the plain ops compute: forward, gradients, and the whole model's training step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import sorakit.models.layers.attention as attention_mod
import sorakit.models.layers.blocks as blocks_mod
import sorakit.models.stdit as stdit_mod
from sorakit.models import build_model
from sorakit.models.layers import (
    Attention,
    Mlp,
    MultiHeadCrossAttention,
    explicit_attention,
    layer_norm,
    modulated_layer_norm,
    t2i_modulate,
    trimmed_caption_mask,
)


def _qkv(dtype=torch.float32, B=3, N=10, L=7, H=2, hd=8):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, n, H, hd, generator=g, dtype=dtype).requires_grad_() for n in (N, L, L)]


def _sdpa(q, k, v, key_mask=None):
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2)


@pytest.mark.parametrize("masked", [False, True])
def test_explicit_attention_matches_sdpa_forward_and_backward(masked):
    q, k, v = _qkv()
    key_mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1] * 7, [0, 1, 0, 1, 1, 0, 0]], dtype=torch.bool)
    key_mask = key_mask if masked else None
    out = explicit_attention(q, k, v, key_mask)
    ref = _sdpa(q, k, v, key_mask)
    assert out.is_contiguous() and out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_explicit_attention_gradcheck_float64():
    q, k, v = _qkv(torch.float64, B=2, N=5, L=4)
    key_mask = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda *a: explicit_attention(*a, key_mask, torch.float64), (q, k, v))


def _graph_nodes(out: torch.Tensor) -> set[str]:
    """Names of every autograd node behind `out`."""
    seen, todo = {}, [out.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and id(fn) not in seen:
            seen[id(fn)] = type(fn).__name__
            todo.extend(f for f, _ in fn.next_functions)
    return set(seen.values())


def test_attention_modules_train_and_infer_the_same():
    """bf16 training on CPU goes through the explicit attention, inference through SDPA: the same numbers."""
    torch.manual_seed(0)
    attn, cross = Attention(32, 4).bfloat16(), MultiHeadCrossAttention(32, 4).bfloat16()
    x = torch.randn(2, 12, 32, dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn(2, 5, 32, dtype=torch.bfloat16)
    key_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    for fn in (lambda: attn(x), lambda: cross(x, y, key_mask)):
        trained = fn()  # x requires grad: explicit path
        assert "_ExplicitAttentionBackward" in _graph_nodes(trained)
        with torch.no_grad():
            inferred = fn()  # SDPA
        torch.testing.assert_close(trained, inferred, atol=2e-2, rtol=2e-2)


def test_modulated_layer_norm_forward_is_bitwise_and_backward_close():
    g = torch.Generator().manual_seed(0)
    for x_shape, mod_shape in (((2, 12, 16), (2, 1, 16)), ((2, 3, 4, 16), (2, 3, 1, 16))):
        x = (torch.randn(x_shape, generator=g) * 3 + 1).requires_grad_()
        shift, scale = (torch.randn(mod_shape, generator=g).requires_grad_() for _ in range(2))
        out = modulated_layer_norm(x, shift, scale)
        ref = t2i_modulate(layer_norm(x), shift, scale)
        assert torch.equal(out, ref)  # inference is unchanged bit for bit
        grad = torch.randn_like(out)
        got = torch.autograd.grad(out, (x, shift, scale), grad)
        want = torch.autograd.grad(ref, (x, shift, scale), grad)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    x64 = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    mods = [torch.randn(2, 1, 8, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    assert torch.autograd.gradcheck(modulated_layer_norm, (x64, *mods))


def test_modulated_layer_norm_low_precision_input_under_autocast():
    """A bfloat16 residual (block 0 under autocast) with float32 modulation: gradients as plain autograd's."""
    x = torch.randn(2, 8, 16).bfloat16().requires_grad_()
    shift, scale = (torch.randn(2, 1, 16, requires_grad=True) for _ in range(2))
    out = modulated_layer_norm(x, shift, scale)
    ref = t2i_modulate(layer_norm(x), shift, scale)
    assert out.dtype == ref.dtype == torch.float32 and torch.equal(out, ref)
    grad = torch.randn_like(out)
    for a, b in zip(
        torch.autograd.grad(out, (x, shift, scale), grad), torch.autograd.grad(ref, (x, shift, scale), grad)
    ):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("autocast", [False, True])
def test_mlp_recomputed_gelu_matches_plain_ops(autocast):
    torch.manual_seed(0)
    mlp = Mlp(16, 64)
    x = torch.randn(2, 5, 16, requires_grad=True)

    def run(fused: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = mlp(x) if fused else mlp.fc2(mlp.act(mlp.fc1(x)))
        grads = torch.autograd.grad(out.float().square().sum(), (x, *mlp.parameters()))
        return out, grads

    (out, grads), (ref, ref_grads) = run(True), run(False)
    assert "_GeluLinearBackward" in _graph_nodes(out)
    # the forward's GELU is Mlp.act's, bit for bit; the backward's is the chunked kernel tested below
    assert out.dtype == ref.dtype and torch.equal(out, ref)
    for a, b in zip(grads, ref_grads):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def _gelu_inputs(dtype):
    """[2, 600, 40] (not contiguous; 1200 rows) with the tails (|x| up to 12), and a gradient."""
    g = torch.Generator().manual_seed(0)
    h = torch.cat(
        [torch.randn(300, 2, 40, generator=g), torch.linspace(-12, 12, 2 * 300 * 40).view(300, 2, 40)]
    )
    return h.to(dtype).transpose(0, 1), torch.randn(2, 600, 40, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_gelu_backward_matches_aten_and_the_truth(monkeypatch, dtype):
    """The CPU training backward's GELU (sigmoid form, float32 chunks) against aten's tanh-GELU, its gradient
    and their float64 values: over chunk boundaries (1200 rows in chunks of 64), strided inputs and the tails."""
    monkeypatch.setattr(blocks_mod, "_GELU_CHUNK", 64 * 40)
    h, grad = _gelu_inputs(dtype)
    ref = F.gelu(h, approximate="tanh")
    ref_g = torch.ops.aten.gelu_backward(grad, h, approximate="tanh")
    scratch = grad.clone()
    out, g_h = blocks_mod.gelu_tanh_backward(scratch, h)  # the recomputed activation and the input gradient
    assert out.dtype == g_h.dtype == dtype and out.shape == g_h.shape == h.shape
    assert g_h.data_ptr() == scratch.data_ptr()  # written over the caller's temporary, no new buffer
    # float64 truth of the tanh-GELU and its derivative (at the inputs as stored)
    x = h.double()
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
    du = math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x**2)
    truth = 0.5 * x * (1 + torch.tanh(u))
    truth_g = grad.double() * (0.5 * (1 + torch.tanh(u)) + 0.5 * x * (1 - torch.tanh(u) ** 2) * du)
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, atol=5e-6, rtol=1e-6)  # aten loses the far tails to 1 + tanh
        torch.testing.assert_close(g_h, ref_g, atol=5e-6, rtol=1e-5)
        torch.testing.assert_close(out.double(), truth, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(g_h.double(), truth_g, atol=1e-6, rtol=1e-5)
    else:  # one rounding of a float32 result: within a bfloat16 unit of the truth, and mostly aten's values
        for mine, theirs, exact in ((out, ref, truth), (g_h, ref_g, truth_g)):
            assert ((mine.double() - exact).abs() <= exact.abs() * 2.0**-8 + 1e-6).all()
            core = x.abs() < 3  # where aten's 1 + tanh(u) still has its digits
            assert (mine == theirs)[core].double().mean() > 0.99


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_chunked_gelu_forward_in_16_bit_floats(monkeypatch, dtype):
    """`gelu_tanh` on CPU in 16-bit floats: one rounding of the float64 truth, aten's values where aten keeps its
    digits, the training backward's recomputed activation bit for bit, and a gradient when one is needed."""
    monkeypatch.setattr(blocks_mod, "_GELU_CHUNK", 64 * 40)  # several chunks and a short last one
    h, grad = _gelu_inputs(dtype)
    out = blocks_mod.gelu_tanh(h)
    assert out.dtype == dtype and out.shape == h.shape
    x = h.double()
    truth = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    unit = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    assert ((out.double() - truth).abs() <= truth.abs() * unit + 1e-6).all()
    core = x.abs() < 3
    assert (out == F.gelu(h, approximate="tanh"))[core].double().mean() > 0.99
    recomputed, g_ref = blocks_mod.gelu_tanh_backward(grad.clone(), h)
    assert torch.equal(recomputed, out)
    h_req = h.detach().requires_grad_()
    (g_h,) = torch.autograd.grad(blocks_mod.gelu_tanh(h_req), h_req, grad)
    assert torch.equal(g_h, g_ref)


def test_gelu_float32_and_compiled_graphs_keep_atens(monkeypatch):
    h = torch.randn(4, 300, 16)
    assert torch.equal(blocks_mod.gelu_tanh(h), F.gelu(h, approximate="tanh"))
    h16 = h.bfloat16()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert torch.equal(blocks_mod.gelu_tanh(h16), F.gelu(h16, approximate="tanh"))


def test_trimmed_caption_mask():
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0]])
    key_mask, length = trimmed_caption_mask(mask, 4)  # tiled for a guided batch, cut after column 2
    assert length == 3
    assert key_mask.tolist() == [[True, True, False], [True, False, True]] * 2
    assert trimmed_caption_mask(torch.tensor([[1, 1, 0], [1, 1, 0]]), 2) == (None, 2)  # no mask left
    assert trimmed_caption_mask(torch.ones(2, 4), 2) == (None, None)
    assert trimmed_caption_mask(None, 2) == (None, None)
    with pytest.raises(ValueError, match="no valid token"):
        trimmed_caption_mask(torch.tensor([[1, 0], [0, 0]]), 2)


def _tiny_stdit():
    torch.manual_seed(0)
    model = build_model(
        "STDiT-tiny", input_size=(4, 8, 8), caption_channels=16, model_max_length=10, hidden_size=32, depth=2,
        num_heads=4, class_dropout_prob=0.0,
    )  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_stdit_training_step_matches_plain_ops(monkeypatch):
    """The whole STDiT step with the training kernels against the same model on plain autograd ops (SDPA
    attention, separate LayerNorm and modulation, padded captions): outputs and every gradient agree."""
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 4, 8, 8, generator=g), torch.tensor([10, 900])
    y = torch.randn(2, 1, 10, 16, generator=g)
    mask = torch.zeros(2, 10, dtype=torch.long)
    mask[0, :6], mask[1, :3] = 1, 1

    def step(model):
        out = model(x, t, y, mask)
        out.square().mean().backward()
        return out.detach(), {n: p.grad for n, p in model.named_parameters()}

    model = _tiny_stdit().train()
    out, grads = step(model)
    plain = _tiny_stdit().train()
    monkeypatch.setattr(attention_mod, "_cpu_training", lambda *t: False)
    monkeypatch.setattr(stdit_mod, "modulated_layer_norm", lambda x, s, c: t2i_modulate(layer_norm(x), s, c))
    monkeypatch.setattr(blocks_mod.Mlp, "_fused_backward", lambda self, h: False)
    monkeypatch.setattr(
        stdit_mod, "trimmed_caption_mask", lambda m, b: (attention_mod.caption_key_mask(m, b), None)
    )
    ref, ref_grads = step(plain)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
