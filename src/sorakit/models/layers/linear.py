"""float32 linear layers through oneDNN on CPU.

PyTorch runs a CPU float32 `F.linear` / `mm` through MKL's sgemm, but a bfloat16 one through oneDNN. On AMD
CPUs MKL does not use its AVX-512 kernels: on this project's machine (AMD EPYC, Zen 5, one thread) sgemm
reaches ~100 GFLOP/s at a transformer's shapes where oneDNN's float32 kernel reaches ~230, with float32
arithmetic throughout (docs/benchmarks.md, "float32 GEMMs on oneDNN"). The GEMMs are three quarters of a
float32 training step, so `Linear` (an `nn.Linear`: same parameters, state-dict keys and `isinstance`) sends
its float32 CPU products to oneDNN, forward and backward (`torch.ops.mkldnn._linear_pointwise`, the op
inductor itself uses).

Everything else keeps PyTorch's own path, bit for bit: other dtypes and devices, autocast (its bfloat16 linear
already runs on oneDNN), products of fewer than `MIN_ROWS` rows (where oneDNN's call costs more than it
saves), tensor subclasses (FSDP's DTensor). Inside `torch.compile` the same products call oneDNN through the
operator `sorakit::onednn_linear` (with its backward), which a compiler keeps as a call: inductor does not
lower oneDNN's op itself and would otherwise swap in MKL's GEMMs. `SORAKIT_ONEDNN=0` in the environment, or
`use_onednn(False)`, turns the oneDNN path off. Results agree with MKL's to float32 rounding (the sums run in
another order), not bit for bit; a forward with and without a gradient takes the same path.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

MIN_ROWS = 16  # below this many rows (tokens) MKL's call is the cheaper one
_PLAIN = (torch.Tensor, nn.Parameter)
_enabled = os.environ.get("SORAKIT_ONEDNN", "1").strip().lower() not in ("0", "false", "no", "off")


def _linear_op():
    """oneDNN's linear op (an OpOverloadPacket), or None in a build without it."""
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


@functools.cache
def onednn_available() -> bool:
    """This torch build has oneDNN and its float32 linear op, and the op runs (the x86 CPU wheels have it)."""
    op = _linear_op()
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.ones(MIN_ROWS, 4)
        return bool(
            torch.equal(op(x, torch.ones(3, 4), None, "none", [], ""), torch.full((MIN_ROWS, 3), 4.0))
        )
    except RuntimeError:
        return False


def _register_flops() -> None:
    """Teach `torch.utils.flop_counter` oneDNN's linear (2 M N K, as aten's addmm), so that FLOP counts of a
    sorakit model do not depend on the kernel that ran."""
    op = _linear_op()
    if op is None:
        return

    @register_flop_formula(op)
    def _linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        rows = 1
        for n in x_shape[:-1]:
            rows *= n
        return 2 * rows * w_shape[0] * w_shape[1]


_register_flops()
_ONEDNN = onednn_available()


@contextlib.contextmanager
def use_onednn(enabled: bool) -> Iterator[None]:
    """Turn the oneDNN float32 path on or off inside the block (benchmarks compare both; tests check both)."""
    global _enabled
    before, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = before


def _onednn_eligible(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    return (
        _enabled
        and (bias is None or (bias.dtype == torch.float32 and type(bias) in _PLAIN))
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() >= 2
        and x.numel() >= MIN_ROWS * x.shape[-1]
        and type(x) in _PLAIN
        and type(weight) in _PLAIN
        and not torch.is_autocast_enabled("cpu")
        and _ONEDNN
    )


def _dnnl_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x `[..., K]` @ weight `[N, K]`^T (+ bias `[N]`) by oneDNN; any strides (it reorders what it needs)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@torch.library.custom_op("sorakit::onednn_linear", mutates_args=())
def _onednn_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`_dnnl_linear` as an operator a compiled graph calls as it is (inductor does not lower the mkldnn op)."""
    return _dnnl_linear(x, weight, bias)


@_onednn_linear_op.register_fake
def _(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _linear_backward(ctx, grad, gemm):
    """The gradients of x, weight and bias from the tensors `ctx` saved (x only for a weight gradient, the weight
    only for an input gradient, as aten's linear keeps them), the products by `gemm` (`_dnnl_linear`'s call)."""
    x, weight = ctx.saved_tensors
    g2 = grad.reshape(-1, grad.shape[-1])
    g_x = g_w = g_b = None
    if ctx.needs_input_grad[0]:
        g_x = gemm(grad, weight.t(), None)  # grad @ weight
    if ctx.needs_input_grad[1]:
        g_w = gemm(g2.t(), x.reshape(-1, x.shape[-1]).t(), None)  # grad^T @ x
    if ctx.has_bias and ctx.needs_input_grad[2]:
        g_b = g2.sum(0)
    return g_x, g_w, g_b


def _op_setup(ctx, inputs, output) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x if weight.requires_grad else None, weight if x.requires_grad else None)
    ctx.has_bias = bias is not None


_onednn_linear_op.register_autograd(
    lambda ctx, grad: _linear_backward(ctx, grad, _onednn_linear_op), setup_context=_op_setup
)


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b` for 2-D tensors, through oneDNN when `a` is a float32 CPU product that `linear` would send there."""
    if b.dim() == 2 and not torch.compiler.is_compiling() and _onednn_eligible(a, b):  # compiled: aten's
        return _dnnl_linear(a, b.t(), None)
    return a @ b


class _OneDnnLinear(torch.autograd.Function):
    """`F.linear` with all three GEMMs by oneDNN (eager; `_onednn_linear_op` is the compiled graphs' form)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        need_x, need_w = ctx.needs_input_grad[:2]
        ctx.save_for_backward(x if need_w else None, weight if need_x else None)
        ctx.has_bias = bias is not None
        return _dnnl_linear(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return _linear_backward(ctx, grad, _dnnl_linear)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`; float32 products on CPU through oneDNN (module docstring)."""
    if not _onednn_eligible(x, weight, bias):
        return F.linear(x, weight, bias)
    if torch.compiler.is_compiling():  # the graph calls oneDNN through the operator (inductor keeps it)
        return _onednn_linear_op(x, weight, bias)
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return _OneDnnLinear.apply(x, weight, bias)
    return _dnnl_linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, keys and init) whose float32 CPU products run on oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def onednn_linears(module: nn.Module) -> None:
    """Make every plain `nn.Linear` inside `module` (a transformers text encoder, say) a `Linear`, in place: the
    class changes, the parameters and keys stay. A T5-large-sized encoder (24 layers, width 1024) encodes
    2 x 120 tokens in 0.61 s instead of 0.91 s here (float32, 2 threads)."""
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = Linear
