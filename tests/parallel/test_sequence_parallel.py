"""Sequence-parallel STDiT (tokens split along time, all-to-all for temporal attention) on 2 gloo processes
equals the single-process model in forward output and in gradients."""

from __future__ import annotations

import pytest
import torch
from _spawn import run_distributed

pytestmark = pytest.mark.distributed


def _make(seed: int = 0):
    from sorakit.models import build_model

    torch.manual_seed(seed)
    model = build_model(
        "STDiT-tiny", input_size=(4, 8, 8), in_channels=4, caption_channels=16, model_max_length=6,
        hidden_size=32, depth=2, num_heads=4, class_dropout_prob=0.0,
    )  # fmt: skip
    # upstream zero-inits the temporal / cross-attn / final projections; randomise so every path matters
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 4, 8, 8, generator=g)
    t = torch.tensor([3, 700])
    y = torch.randn(2, 1, 6, 16, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    w = torch.randn(2, 8, 4, 8, 8, generator=g)
    return model, (x, t, y, mask), w


# reference frames: sample 0 conditions on frames 0 and 3 (one on each rank), sample 1 on frame 1 only
X_MASK = torch.tensor([[False, True, True, False], [True, False, True, True]])
CASES = (False, True, "x_mask")  # gradient checkpointing off / on, then a per-frame mask


def _forward_backward(model, inputs, w, case=False):
    if case is True:
        model.enable_gradient_checkpointing(True)
    x = inputs[0].clone().requires_grad_(True)
    kw = {"x_mask": X_MASK} if case == "x_mask" else {}
    out = model(x, *inputs[1:], **kw)
    (out * w).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return out.detach(), grads, x.grad.detach()


def _sp_worker(rank: int, world: int):
    import torch.distributed as dist

    from sorakit.models import build_model
    from sorakit.parallel.sequence import apply_sequence_parallel

    results = {}
    for case in CASES:
        model, inputs, w = _make()
        handle = apply_sequence_parallel(model)
        out, grads, xgrad = _forward_backward(model, inputs, w, case)
        # what DDP / FSDP do over the world: average the gradients
        for g in [*grads.values(), xgrad]:
            dist.all_reduce(g)
            g /= world
        handle.remove()
        results[case] = (out, grads, xgrad)
    # 3 latent frames cannot be split over 2 ranks: a clear error, no hang
    model = build_model(
        "STDiT-tiny", input_size=(3, 8, 8), in_channels=4, caption_channels=16, model_max_length=6
    )
    apply_sequence_parallel(model)
    try:
        model(torch.randn(1, 4, 3, 8, 8), torch.tensor([1]), torch.randn(1, 1, 6, 16))
        results["error"] = "no error"
    except ValueError as exc:
        results["error"] = str(exc)
    return results


def test_sequence_parallel_matches_single_process(tmp_path):
    refs = {}
    for case in (False, "x_mask"):
        model, inputs, w = _make()
        refs[case] = _forward_backward(model, inputs, w, case)
    refs[True] = refs[False]
    # the temporal attention really gets gradients (it is not a no-op in this comparison)
    assert refs[False][1]["blocks.0.attn_temp.qkv.weight"].abs().sum() > 0
    # the mask changes the result (so the masked comparison checks the split of x_mask)
    assert not torch.allclose(refs["x_mask"][0], refs[False][0], atol=1e-3)
    for res in run_distributed(_sp_worker, 2, tmp_path):
        for case in CASES:
            ref_out, ref_grads, ref_xgrad = refs[case]
            out, grads, xgrad = res[case]
            torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(xgrad, ref_xgrad, atol=1e-5, rtol=1e-5)
            assert grads.keys() == ref_grads.keys()
            for name, g in grads.items():
                torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)
        assert "do not split over 2 ranks" in res["error"]


# --- a grid the model was not built for (buckets): 6 x 10 x 14 latents on a model built for 4 x 8 x 8 --------


def _unbuilt_grid_inputs():
    from sorakit.models import build_model

    torch.manual_seed(0)
    model = build_model(
        "STDiT-tiny", input_size=(4, 8, 8), in_channels=4, caption_channels=16, model_max_length=6,
        hidden_size=32, depth=2, num_heads=4, class_dropout_prob=0.0, base_size=4,
    )  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 6, 10, 14, generator=g)  # 6 latent frames: 3 per rank; 5 x 7 tokens per frame
    inputs = (
        x,
        torch.tensor([5, 600]),
        torch.randn(2, 1, 6, 16, generator=g),
        torch.ones(2, 6, dtype=torch.long),
    )
    return model, inputs, torch.randn(2, 8, 6, 10, 14, generator=g)


def _sp_unbuilt_worker(rank: int, world: int):
    import torch.distributed as dist

    from sorakit.parallel.sequence import apply_sequence_parallel

    model, inputs, w = _unbuilt_grid_inputs()
    apply_sequence_parallel(model)
    out, grads, xgrad = _forward_backward(model, inputs, w)
    for g in [*grads.values(), xgrad]:
        dist.all_reduce(g)
        g /= world
    return out, grads, xgrad


def test_sequence_parallel_at_an_unbuilt_grid(tmp_path):
    model, inputs, w = _unbuilt_grid_inputs()
    ref_out, ref_grads, ref_xgrad = _forward_backward(model, inputs, w)
    assert ref_out.shape == (2, 8, 6, 10, 14) and ref_grads["blocks.0.attn_temp.qkv.weight"].abs().sum() > 0
    for out, grads, xgrad in run_distributed(_sp_unbuilt_worker, 2, tmp_path):
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(xgrad, ref_xgrad, atol=1e-5, rtol=1e-5)
        for name, g in grads.items():
            torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)
