"""`benchmarks/models.py`'s matmul floor: it replays exactly the matrix multiplications a training step runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "models.py"


def _load():
    saved = list(sys.path)
    try:  # the script puts benchmarks/ on sys.path for its stand-ins; keep it off for the other tests
        spec = importlib.util.spec_from_file_location("bench_models", SCRIPT)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path[:] = saved
    return mod


def test_recorder_sees_every_matmul_of_a_training_step_with_its_layout():
    bench = _load()
    lin = torch.nn.Linear(48, 32)
    x = torch.randn(2, 5, 48)
    a, b = torch.randn(3, 4, 6), torch.randn(3, 6, 7, requires_grad=True)

    def step():
        (lin(x).sum() + torch.bmm(a, b).sum()).backward()

    rec = bench._GemmRecorder()
    with rec:
        step()
    ops = {}
    for (func, specs), count in rec.calls.items():
        ops[func.__name__] = ops.get(func.__name__, 0) + count
        assert all(dt == torch.float32 for _, _, dt in specs)
    # forward: one addmm (linear) and one bmm; backward: the weight's mm and b's bmm (x and a need no gradient)
    assert ops == {"addmm.default": 1, "bmm.default": 2, "mm.default": 1}, ops
    shapes = {specs[1][0] for (func, specs) in rec.calls if func.__name__ == "addmm.default"}
    assert shapes == {(10, 48)}  # the input folded to 2-D, as the kernel sees it
    floor = bench.gemm_floor_ms(step, torch.device("cpu"), repeats=3)
    assert 0.0 < floor < 1e3
