"""Training with reference frames (`x_mask`, True = generate): condition frames enter the model clean, the loss
averages generated frames only, so nothing about a condition frame's target reaches the gradient."""

from __future__ import annotations

import pytest
import torch

from sorakit.diffusion import build_objective

B, C, T, H, W = 3, 2, 4, 2, 2
X_MASK = torch.tensor([[True, True, True, True], [False, True, True, False], [True, False, True, False]])


class PerFrame(torch.nn.Module):
    """out = x * w_f + b_f with a weight per frame (and 2C outputs for learned sigma): frames independent."""

    def __init__(self, out_factor: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(0.5, 1.5, T).reshape(1, 1, T, 1, 1).repeat(1, C, 1, 1, 1))
        self.b = torch.nn.Parameter(torch.zeros(1, C * out_factor, T, 1, 1))
        self.out_factor = out_factor
        self.seen: list = []

    def forward(self, x, t, x_mask=None):
        self.seen.append((x.detach().clone(), x_mask))
        return torch.cat([x * self.w] * self.out_factor, dim=1) + self.b


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, T, H, W, generator=g), torch.randn(B, C, T, H, W, generator=g)


OBJECTIVES = [("iddpm", 2), ("iddpm", 1), ("rflow", 1)]


@pytest.mark.parametrize("name,out_factor", OBJECTIVES)
def test_condition_frames_get_no_gradient_and_enter_clean(name, out_factor):
    obj = build_objective(name)
    x0, noise = _data()
    t = torch.tensor([5, 400, 999]) if name == "iddpm" else torch.tensor([5.0, 400.0, 999.0])
    model = PerFrame(out_factor)
    loss = obj.training_losses(model, x0, t, noise, x_mask=X_MASK)["loss"]
    loss.sum().backward()
    x_in, seen_mask = model.seen[0]
    assert torch.equal(seen_mask, X_MASK)
    cond = ~X_MASK
    for b in range(B):
        for f in range(T):
            if cond[b, f]:
                assert torch.equal(x_in[b, :, f], x0[b, :, f])  # clean: t = 0 for condition frames
            else:
                assert not torch.allclose(x_in[b, :, f], x0[b, :, f])
    # frame 3 is a condition frame in samples 1 and 2 and generated in sample 0; frame 0 only in sample 1
    # -> give each sample its own copy of the weights to see per-sample gradients
    grads = []
    for b in range(B):
        m = PerFrame(out_factor)
        obj.training_losses(m, x0[b : b + 1], t[b : b + 1], noise[b : b + 1], x_mask=X_MASK[b : b + 1])[
            "loss"
        ].sum().backward()
        grads.append((m.w.grad[0, :, :, 0, 0], m.b.grad[0, :, :, 0, 0]))
    for b in range(B):
        for f in range(T):
            gw, gb = grads[b][0][:, f], grads[b][1][:, f]
            if cond[b, f]:
                assert torch.count_nonzero(gw) == 0 and torch.count_nonzero(gb) == 0
            else:
                assert gw.abs().sum() > 0


@pytest.mark.parametrize("name,out_factor", OBJECTIVES)
def test_condition_frames_targets_do_not_change_the_loss(name, out_factor):
    """Change x_0 and noise on condition frames: with frames computed independently the loss is unchanged."""
    obj = build_objective(name)
    x0, noise = _data()
    t = torch.tensor([5, 400, 999]) if name == "iddpm" else torch.tensor([5.0, 400.0, 999.0])
    base = obj.training_losses(PerFrame(out_factor), x0, t, noise, x_mask=X_MASK)["loss"]
    x0b, noiseb = x0.clone(), noise.clone()
    sel = (~X_MASK)[:, None, :, None, None].expand_as(x0)
    x0b[sel] = torch.randn(int(sel.sum()))
    noiseb[sel] = 5.0
    changed = obj.training_losses(PerFrame(out_factor), x0b, t, noiseb, x_mask=X_MASK)["loss"]
    torch.testing.assert_close(base, changed, rtol=0, atol=1e-6)
    # and the loss is the mean over generated frames of the unmasked per-frame loss
    plain = obj.training_losses(PerFrame(out_factor), x0, t, noise)["loss"]
    torch.testing.assert_close(plain[0], base[0])  # sample 0 generates every frame


@pytest.mark.parametrize("name,out_factor", OBJECTIVES)
def test_all_true_mask_equals_no_mask(name, out_factor):
    obj = build_objective(name)
    x0, noise = _data()
    t = torch.tensor([0, 400, 999]) if name == "iddpm" else torch.tensor([5.0, 400.0, 999.0])
    a = obj.training_losses(PerFrame(out_factor), x0, t, noise)["loss"]
    b = obj.training_losses(PerFrame(out_factor), x0, t, noise, x_mask=torch.ones(B, T, dtype=torch.bool))[
        "loss"
    ]
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name,out_factor", OBJECTIVES)
def test_channel_weights_scale_each_channels_error(name, out_factor):
    """`channel_weights` (train.loss_channel_weights): the MSE is sum_c w_c / mean(w) * mse_c / C, equal weights
    change nothing, the variational bound (learned sigma) stays unweighted, and masks still apply."""
    obj = build_objective(name)
    x0, noise = _data(1)
    t = torch.tensor([5, 400, 999]) if name == "iddpm" else torch.tensor([5.0, 400.0, 999.0])
    model = PerFrame(out_factor)
    key = "mse" if name == "iddpm" else "loss"
    with torch.no_grad():
        plain = obj.training_losses(model, x0, t, noise)
        equal = obj.training_losses(model, x0, t, noise, channel_weights=torch.full((C,), 3.0))
        assert torch.equal(equal["loss"], plain["loss"])
        # the error of each channel on its own: weights that keep only channel c (in the limit) give C x mse_c
        per_channel = []
        for c in range(C):
            w = torch.full((C,), 1e-9)
            w[c] = 1.0
            per_channel.append(obj.training_losses(model, x0, t, noise, channel_weights=w)[key] / C)
        torch.testing.assert_close(sum(per_channel), plain[key], rtol=1e-6, atol=1e-7)
        weighted = obj.training_losses(model, x0, t, noise, channel_weights=torch.tensor([1.0, 3.0]))
        torch.testing.assert_close(weighted[key], (1.0 * per_channel[0] + 3.0 * per_channel[1]) / 2.0)
        assert not torch.allclose(weighted[key], plain[key])
        if name == "iddpm":
            torch.testing.assert_close(weighted["vb"], plain["vb"])
        masked = obj.training_losses(
            model, x0, t, noise, x_mask=X_MASK, channel_weights=torch.tensor([1.0, 3.0])
        )
        unmasked_frames = obj.training_losses(model, x0, t, noise, x_mask=X_MASK)
        assert not torch.allclose(masked[key], unmasked_frames[key])
    with pytest.raises(ValueError, match="expected 2 values"):
        obj.training_losses(model, x0, t, noise, channel_weights=torch.ones(3))
