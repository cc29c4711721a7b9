"""sorakit's `Linear`: float32 CPU products through oneDNN (forward and the two backward GEMMs), everything else
PyTorch's own `F.linear` bit for bit."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from sorakit.models.layers import Linear, linear, use_onednn
from sorakit.models.layers.linear import MIN_ROWS, mm, onednn_available

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear")


class _Ops(TorchDispatchMode):
    """Names of the ops that ran."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _layer(in_f=48, out_f=40, seed=0):
    torch.manual_seed(seed)
    return Linear(in_f, out_f)


def _run(layer, x, grad_out):
    """Output and the three gradients of one forward + backward."""
    x = x.detach().clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    out = layer(x)
    out.backward(grad_out)
    return out.detach(), x.grad, layer.weight.grad, layer.bias.grad


@needs_onednn
def test_float32_products_run_on_onednn_and_match_the_float64_truth():
    layer = _layer()
    x = torch.randn(2, 24, 48)  # 48 rows
    g = torch.randn(2, 24, 40)
    with _Ops() as ops:
        out, gx, gw, gb = _run(layer, x, g)
    # the forward and both backward GEMMs are oneDNN's; no MKL (aten) matmul ran
    assert ops.names.count("mkldnn._linear_pointwise") == 3
    assert not {"aten.mm", "aten.addmm", "aten.bmm"} & set(ops.names)
    truth = _run(_layer().double(), x.double(), g.double())
    for mine, exact in zip((out, gx, gw, gb), truth):
        assert mine.dtype == torch.float32 and mine.shape == exact.shape
        torch.testing.assert_close(mine.double(), exact, rtol=1e-5, atol=1e-5)
    # as close to the truth as MKL's float32 (float32 arithmetic, not a lower precision)
    with use_onednn(False):
        mkl = _run(layer, x, g)
    for mine, theirs, exact in zip((out, gx, gw, gb), mkl, truth):
        assert (mine.double() - exact).abs().max() <= 4 * (theirs.double() - exact).abs().max() + 1e-7


@needs_onednn
def test_forward_with_and_without_gradient_is_the_same_bits():
    layer = _layer()
    x = torch.randn(64, 48)
    with torch.no_grad():
        plain = layer(x)
    assert torch.equal(plain, layer(x.requires_grad_(True)).detach())
    assert torch.equal(plain, linear(x.detach(), layer.weight.detach(), layer.bias.detach()))


def test_other_cases_are_pytorchs_own_linear_bit_for_bit():
    layer = _layer()
    w, b = layer.weight, layer.bias
    few = torch.randn(MIN_ROWS - 1, 48)
    with torch.no_grad():
        assert torch.equal(layer(few), F.linear(few, w, b))  # too few rows for oneDNN to pay
        x64 = torch.randn(32, 48, dtype=torch.float64)
        assert torch.equal(layer.double()(x64), F.linear(x64, layer.weight, layer.bias))
        layer.float()
        x = torch.randn(32, 48)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own bfloat16 linear
            assert torch.equal(layer(x), F.linear(x, w, b))
        with use_onednn(False):
            assert torch.equal(layer(x), F.linear(x, w, b))


@needs_onednn
def test_frozen_weight_and_input_without_gradient_skip_their_gemms():
    layer = _layer()
    layer.weight.requires_grad_(False)
    x = torch.randn(32, 48, requires_grad=True)
    with _Ops() as ops:
        layer(x).sum().backward()
    assert ops.names.count("mkldnn._linear_pointwise") == 2  # forward + input gradient only
    assert layer.weight.grad is None and layer.bias.grad is not None and x.grad is not None
    layer.weight.requires_grad_(True)
    with _Ops() as ops:
        layer(torch.randn(32, 48)).sum().backward()  # a first layer: no input gradient
    assert ops.names.count("mkldnn._linear_pointwise") == 2
    assert layer.weight.grad is not None


def test_linear_is_an_nn_linear_with_the_same_keys_and_flops():
    layer = _layer()
    ref = nn.Linear(48, 40)
    assert isinstance(layer, nn.Linear) and layer.state_dict().keys() == ref.state_dict().keys()
    ref.load_state_dict(layer.state_dict())
    with FlopCounterMode(display=False) as counter:
        layer(torch.randn(64, 48))
    assert counter.get_total_flops() == 2 * 64 * 48 * 40  # counted whichever kernel ran


@needs_onednn
def test_mm_helper_matches_matmul():
    a, b = torch.randn(40, 96), torch.randn(96, 24)
    torch.testing.assert_close(mm(a, b), a @ b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mm(a.t().contiguous().t(), b), a @ b, rtol=1e-5, atol=1e-5)  # any strides


def test_environment_switch_turns_onednn_off():
    code = (
        "import torch; from sorakit.models.layers import linear; from torch.utils._python_dispatch import "
        "TorchDispatchMode as M\n"
        "class R(M):\n"
        "    def __torch_dispatch__(s, f, t, a=(), k=None):\n"
        "        print(f.overloadpacket); return f(*a, **(k or {}))\n"
        "with R(): linear(torch.randn(32, 8), torch.randn(4, 8))\n"
    )
    env = dict(os.environ, SORAKIT_ONEDNN="0")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "aten." in out and "mkldnn" not in out


class _Backend:
    """A torch.compile backend that records the ops of the forward and backward graphs, then runs them eagerly."""

    def __init__(self):
        self.targets = []

    def __call__(self, gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        def record(g, _inputs):
            self.targets += [str(n.target) for n in g.graph.nodes if n.op == "call_function"]
            return make_boxed_func(g.forward)

        return aot_autograd(fw_compiler=record, bw_compiler=record)(gm, example_inputs)


@needs_onednn
def test_compiled_graphs_keep_the_onednn_products():
    """Under torch.compile the float32 products are sorakit's operator (a compiler keeps it as a call): forward and
    both backward GEMMs, the same values as eager; under autocast the graph has aten's linear."""
    layer, x, g = _layer(), torch.randn(2, 24, 48), torch.randn(2, 24, 40)
    backend = _Backend()
    compiled = torch.compile(layer, backend=backend, fullgraph=True)
    out, gx, gw, gb = _run(compiled, x, g)
    assert sum("sorakit.onednn_linear" in t for t in backend.targets) == 3, backend.targets
    assert not any(t.startswith(("aten.mm", "aten.addmm")) for t in backend.targets), backend.targets
    for mine, ref in zip((out, gx, gw, gb), _run(layer, x, g)):
        torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-6)
    torch._dynamo.reset()
    backend = _Backend()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.compile(layer, backend=backend)(x)
    assert not any("sorakit.onednn_linear" in t for t in backend.targets), backend.targets
