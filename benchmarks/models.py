"""STDiT vs full-attention DiT at the same width and depth as the number of frames grows.

Prints, per model and frame count: forward time, forward+backward time, tokens/s (training step),
memory, forward FLOPs per sample (analytic, `sorakit.models.flops_per_sample`) and achieved TFLOP/s.

Memory: peak CUDA memory of the forward+backward on GPU; on CPU the bytes of activations saved for the
backward (counted with saved-tensor hooks), a deterministic proxy.

Default: a small config on CPU (< 1 min). `--full` runs the STDiT-XL/2 / DiT-XL/2 sizes (GPU, bf16).

`--upstream DIR` instead compares sorakit's STDiT with Open-Sora 1.0's own (hpcaitech/Open-Sora at v1.0.0, read
from a checkout or a git directory, imported with the stand-ins of `benchmarks/upstream_stub.py`): same config,
same weights (checked: outputs and gradients match before timing), forward+backward of both interleaved in one
run (ABBA rounds, medians), in float32 and bfloat16 autocast; it prints ratios sorakit / upstream. Memory there
is the peak of bytes held by the CPU allocator during the step (torch.profiler's allocation events; on GPU the
peak CUDA memory) and, as a second figure, the bytes saved for the backward. "matmul ms" is the time of each
side's matrix multiplications replayed on their own (`gemm_floor_ms`), and "floor" sorakit's over upstream's
step time: changes to the other ops alone cannot bring the time ratio below it. With `--compile` sorakit's STDiT
is torch.compile'd as `train.compile` does it (inductor, or $SORAKIT_COMPILE_BACKEND); upstream stays eager, the
compile time is printed, and the matmul / saved-activation columns (hooks the compiled graph does not run) are "-".

    python benchmarks/models.py                      # CPU, small
    python benchmarks/models.py --full               # GPU: XL sizes, 32x32 latents (256px), 1..64 frames
    python benchmarks/models.py --upstream ~/Open-Sora  # vs upstream v1.0: hidden 384, depth 4, 8 and 32 frames
    python benchmarks/models.py --upstream ~/Open-Sora --compile --dtype bfloat16  # sorakit compiled, minutes
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from sorakit.models import build_model, flops_per_sample
from sorakit.models.layers.linear import onednn_available
from sorakit.parallel.parallelize import compile_backend

sys.path.insert(0, str(Path(__file__).resolve().parent))
from upstream_stub import HOW_TO_GET, UPSTREAM_REF, UpstreamMissing, load_upstream_stdit  # noqa: E402


def saved_activation_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def peak_allocated_bytes(fn, device: torch.device) -> int:
    """Peak bytes allocated during `fn()` above what was allocated before it. CUDA: the allocator's peak; CPU:
    replayed from torch.profiler's allocation/free events (deterministic, unlike RSS)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_one(name: str, frames: int, args, device: torch.device, dtype: torch.dtype) -> dict:
    h, w = args.latent
    kw = dict(input_size=(frames, h, w), depth=args.depth, hidden_size=args.hidden, num_heads=args.heads)
    if name.startswith("STDiT"):
        kw.update(caption_channels=args.caption_channels, model_max_length=args.text_len)
    else:
        kw.update(caption_channels=args.caption_channels)
    model = build_model(name, **kw).to(device)
    if args.grad_ckpt:
        model.enable_gradient_checkpointing()
    B = args.batch
    x = torch.randn(B, 4, frames, h, w, device=device)
    t = torch.randint(0, 1000, (B,), device=device)
    if name.startswith("STDiT"):
        y = torch.randn(B, 1, args.text_len, args.caption_channels, device=device)
        mask = torch.ones(B, args.text_len, dtype=torch.long, device=device)
        mask[:, args.text_len // 2 :] = 0  # realistic padding: half the caption tokens valid
    else:
        y = torch.randn(B, 1, 1, args.caption_channels, device=device)
        mask = None
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def fwd():
        with torch.no_grad(), autocast:
            model(x, t, y, mask)

    def fwd_bwd():
        with autocast:
            out = model(x, t, y, mask)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    fwd_s = timed(fwd, device, args.repeats)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        train_s = timed(fwd_bwd, device, args.repeats)
        mem = torch.cuda.max_memory_allocated(device) - base
    else:
        train_s = timed(fwd_bwd, device, args.repeats)
        mem = saved_activation_bytes(fwd_bwd)
    tokens = B * frames * (h // 2) * (w // 2)
    flops = flops_per_sample(model, (frames, h, w), text_len=args.text_len)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(model=name, frames=frames, tokens=tokens // B, fwd_ms=fwd_s * 1e3, train_ms=train_s * 1e3,
                tok_s=tokens / train_s, mem_mb=mem / 2**20, gflops=flops / 1e9,
                tflops_s=3 * flops * B / train_s / 1e12)  # fmt: skip


def flops_table(args) -> None:
    """Forward FLOPs per sample of STDiT vs DiT (and Latte, PixArt) as frames grow; no weights allocated."""
    h, w = args.latent
    names = ("STDiT-XL/2", "DiT-XL/2", "Latte-XL/2", "PixArt-XL/2")
    print(f"# forward GFLOP per sample: depth {args.depth}, hidden {args.hidden}, latent {h}x{w}, "
          f"text {args.text_len} tokens (x3 for a training step)")  # fmt: skip
    print("| frames | tokens | " + " | ".join(n.split("-")[0] for n in names) + " | DiT / STDiT |")
    print("|---:|---:|" + "---:|" * (len(names) + 1))
    for frames in args.frames:
        row = []
        for name in names:
            kw = dict(input_size=(frames, h, w), depth=args.depth, hidden_size=args.hidden, num_heads=args.heads,
                      caption_channels=args.caption_channels)  # fmt: skip
            if name.startswith(("STDiT", "PixArt")):
                kw["model_max_length"] = args.text_len
            with torch.device("meta"):
                model = build_model(name, **kw)
            row.append(flops_per_sample(model, (frames, h, w), text_len=args.text_len) / 1e9)
        tokens = frames * (h // 2) * (w // 2)
        print(
            f"| {frames} | {tokens} | " + " | ".join(f"{v:,.0f}" for v in row) + f" | {row[1] / row[0]:.2f} |"
        )


def upstream_pair(upstream_cls, frames: int, args, device: torch.device):
    """sorakit's and upstream's STDiT with the same config and the same (random, non-zero) weights, and inputs."""
    h, w = args.latent
    kw = dict(
        input_size=(frames, h, w),
        depth=args.depth,
        hidden_size=args.hidden,
        num_heads=args.heads,
        caption_channels=args.caption_channels,
        model_max_length=args.text_len,
        class_dropout_prob=0.0,
    )  # caption dropout is data randomness (and .cuda() upstream): off in both
    torch.manual_seed(0)
    ours = build_model("STDiT-XL/2", **kw).to(device)
    with torch.no_grad():  # the upstream init zeroes output layers; random weights make every path do work
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    theirs = upstream_cls(**kw).to(device)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    B, L = args.batch, args.text_len
    x = torch.randn(B, 4, frames, h, w, device=device)
    t = torch.randint(0, 1000, (B,), device=device)
    y = torch.randn(B, 1, L, args.caption_channels, device=device)
    mask = torch.zeros(B, L, dtype=torch.long, device=device)
    for b in range(B):  # realistic padding: L/2, L/4, ... valid caption tokens
        mask[b, : max(1, L * (B - b) // (2 * B))] = 1
    return ours, theirs, (x, t, y, mask)  # fmt: skip


def train_step(model, inputs, dtype: torch.dtype, device: torch.device):
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step():
        with autocast:
            out = model(*inputs)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    return step


def max_rel_diff(ours, theirs, inputs, dtype: torch.dtype, device: torch.device) -> tuple[float, float]:
    """Max |difference| / max |upstream| of the output and of every parameter gradient, one training step."""
    res = []
    for model in (ours, theirs):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = model(*inputs)
        out.float().square().mean().backward()
        res.append((out.detach().float(), {n: p.grad.float() for n, p in model.named_parameters()}))
        model.zero_grad(set_to_none=True)
    (o1, g1), (o2, g2) = res
    out_rel = ((o1 - o2).abs().max() / o2.abs().max()).item()
    grad_rel = max(((g1[n] - g2[n]).abs().max() / g2[n].abs().max().clamp_min(1e-30)).item() for n in g2)
    return out_rel, grad_rel


_GEMMS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
          torch.ops.aten.baddbmm.default}  # fmt: skip
if onednn_available():  # sorakit's float32 CPU linears (sorakit.models.layers.linear)
    _GEMMS.add(torch.ops.mkldnn._linear_pointwise.default)


class _TensorSpec(tuple):
    """(shape, stride, dtype) of a recorded tensor argument."""


class _GemmRecorder(TorchDispatchMode):
    """Records (op, arguments) of every matrix multiplication that runs under it, each tensor argument as its
    (shape, strides, dtype) (`_TensorSpec`), the others as they are (oneDNN's linear takes strings and lists)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[tuple, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _GEMMS:
            spec = tuple(
                _TensorSpec((tuple(a.shape), tuple(a.stride()), a.dtype)) if torch.is_tensor(a)
                else tuple(a) if isinstance(a, list) else a
                for a in args
            )  # fmt: skip
            key = (func, spec)
            self.calls[key] = self.calls.get(key, 0) + 1
        return func(*args, **(kwargs or {}))


def _random_strided(shape, stride, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Random values in exactly this layout (broadcast strides of 0 included)."""
    size = 1 + sum((n - 1) * st for n, st in zip(shape, stride) if n > 0)
    return torch.randn(size, dtype=dtype, device=device).as_strided(shape, stride)


def _replay_arg(a, device: torch.device):
    """A recorded argument made callable again: a random tensor of the recorded layout, a list, or the value."""
    if isinstance(a, _TensorSpec):
        return _random_strided(*a, device)
    return list(a) if isinstance(a, tuple) else a


def gemm_floor_ms(step, device: torch.device, repeats: int = 5) -> float:
    """Milliseconds that the matrix multiplications of one `step()` take on their own: every mm/addmm/bmm (and
    oneDNN linear) the step runs is recorded (shapes, strides, dtype), replayed on random tensors of that layout
    and timed (median of `repeats`), times its count. A floor under the step time that no change to the other ops can go below;
    kernels that do their own matmuls inside (SDPA) are not in it."""
    rec = _GemmRecorder()
    with rec:
        step()
    total = 0.0
    for (func, specs), count in rec.calls.items():
        ins = [_replay_arg(a, device) for a in specs]
        times = []
        for _ in range(repeats + 1):
            sync(device)
            t0 = time.perf_counter()
            func(*ins)
            sync(device)
            times.append(time.perf_counter() - t0)
        total += statistics.median(times[1:]) * count
    return total * 1e3


def compare_upstream(args, device: torch.device, machine: str) -> None:
    """The table sorakit vs Open-Sora 1.0's STDiT (ratios; < 1 = sorakit faster / lighter)."""
    try:
        upstream_cls = load_upstream_stdit(args.upstream, args.upstream_ref)
    except UpstreamMissing as e:
        print(f"# upstream comparison skipped: {e}\n# to get it: {HOW_TO_GET}")
        return
    load = "/".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"# sorakit STDiT / Open-Sora {args.upstream_ref} STDiT: depth {args.depth}, hidden {args.hidden}, heads "
        f"{args.heads}, latent {args.latent[0]}x{args.latent[1]} (patch 1x2x2), batch {args.batch}, text "
        f"{args.text_len} tokens (caption channels {args.caption_channels}, half/quarter valid); forward+backward, "
        f"{args.rounds} interleaved rounds (medians); {machine}; torch {torch.__version__}; load {load}"
    )
    mem_label = "peak CUDA mem" if device.type == "cuda" else "peak alloc"
    print(
        f"| precision | frames | sorakit ms | upstream ms | time ratio | round ratios (min-max) | {mem_label} MB "
        f"(ours / up) | {mem_label} ratio | saved act ratio | matmul ms (ours / up) | floor | max rel diff out / grad |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|")  # fmt: skip
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for frames in args.frames:
            ours, theirs, inputs = upstream_pair(upstream_cls, frames, args, device)
            t0 = time.perf_counter()
            if args.compile:
                ours.compile(backend=compile_backend(device))
            out_rel, grad_rel = max_rel_diff(ours, theirs, inputs, dtype, device)  # compiles, if asked
            if args.compile:
                print(
                    f"# {dtype_name}, {frames} frames: compiled in {time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
            tol = 1e-3 if dtype == torch.float32 else 0.1
            if out_rel > tol:  # a comparison between two different computations means nothing
                print(
                    f"| {dtype_name} | {frames} | outputs differ: {out_rel:.2e} > {tol} | | | | | | | | | |"
                )
                continue
            steps = [train_step(m, inputs, dtype, device) for m in (ours, theirs)]
            for step in steps:
                step()  # warm-up
            times = ([], [])
            for r in range(args.rounds):  # ABBA: neither side always runs first
                for i in (0, 1) if r % 2 == 0 else (1, 0):
                    sync(device)
                    t0 = time.perf_counter()
                    steps[i]()
                    sync(device)
                    times[i].append(time.perf_counter() - t0)
            ratios = [a / b for a, b in zip(*times)]
            mem = [peak_allocated_bytes(step, device) for step in steps]
            med = [statistics.median(t) * 1e3 for t in times]
            if args.compile:
                label, act_col, gemm_cols = f"{dtype_name} (sorakit compiled)", "-", "- | -"
            else:
                act = [saved_activation_bytes(step) for step in steps]
                gemm = [gemm_floor_ms(step, device) for step in steps]
                label, act_col = dtype_name, f"{act[0] / act[1]:.2f}"
                gemm_cols = f"{gemm[0]:.0f} / {gemm[1]:.0f} | {gemm[0] / med[1]:.2f}"
            print(f"| {label} | {frames} | {med[0]:.0f} | {med[1]:.0f} | **{med[0] / med[1]:.2f}** | "
                  f"{min(ratios):.2f}-{max(ratios):.2f} | {mem[0] / 2**20:.0f} / {mem[1] / 2**20:.0f} | "
                  f"**{mem[0] / mem[1]:.2f}** | {act_col} | {gemm_cols} | {out_rel:.1e} / {grad_rel:.1e} |",
                  flush=True)  # fmt: skip
            del ours, theirs, steps
            if device.type == "cuda":
                torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--full", action="store_true", help="XL sizes (depth 28, hidden 1152, 16 heads), 32x32 latents, bf16"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--frames", type=int, nargs="+", default=None)
    p.add_argument("--latent", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="default 1 (2 with --upstream)")
    p.add_argument("--text-len", type=int, default=None)
    p.add_argument("--caption-channels", type=int, default=None)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing on")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--upstream",
        metavar="DIR",
        default=None,
        help="compare with Open-Sora 1.0's STDiT read from DIR (a checkout or git directory)",
    )
    p.add_argument("--upstream-ref", default=UPSTREAM_REF, help="git tag/commit read from a git DIR")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the upstream comparison")
    p.add_argument("--compile", action="store_true", help="with --upstream: torch.compile sorakit's STDiT")
    p.add_argument("--flops-only", action="store_true",
                   help="only the analytic FLOPs table (no timing; models built on the meta device)")  # fmt: skip
    args = p.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.upstream:
        defaults = dict(frames=[8, 32], latent=[16, 16], depth=4, hidden=384, heads=6, text_len=120,
                        caption_channels=4096, batch=2, dtype=None)  # fmt: skip
    elif args.full:
        defaults = dict(frames=[1, 4, 16, 32, 64], latent=[32, 32], depth=28, hidden=1152, heads=16, text_len=120,
                        caption_channels=4096, batch=1, dtype="bfloat16")  # fmt: skip
    else:
        defaults = dict(frames=[1, 4, 16, 32], latent=[16, 16], depth=2, hidden=128, heads=4, text_len=16,
                        caption_channels=64, batch=1, dtype="float32")  # fmt: skip
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.flops_only:
        flops_table(args)
        return
    torch.manual_seed(0)
    if device.type == "cpu":
        machine = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    else:
        machine = torch.cuda.get_device_name(device)
    if args.upstream:
        args.dtypes = [args.dtype] if args.dtype else ["float32", "bfloat16"]
        compare_upstream(args, device, machine)
        return
    dtype = getattr(torch, args.dtype)
    print(f"# models: depth {args.depth}, hidden {args.hidden}, heads {args.heads}, latent {args.latent[0]}x"
          f"{args.latent[1]} (patch 1x2x2), batch {args.batch}, text {args.text_len} tokens, {args.dtype}"
          f"{', grad ckpt' if args.grad_ckpt else ''}; {machine}; torch {torch.__version__}")  # fmt: skip
    warm = argparse.Namespace(**{**vars(args), "depth": 1, "repeats": 1})
    for name in ("STDiT-XL/2", "DiT-XL/2"):  # one-time start-up costs (thread pools, kernels) off the table
        bench_one(name, 1, warm, device, dtype)
    mem_label = "peak MB" if device.type == "cuda" else "saved act MB"
    print(
        f"| model | frames | tokens | fwd ms | fwd+bwd ms | train tokens/s | {mem_label} | fwd GFLOP/sample | TFLOP/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for frames in args.frames:
        for name in ("STDiT-XL/2", "DiT-XL/2"):
            label = name.split("-")[0]
            try:
                r = bench_one(name, frames, args, device, dtype)
            except torch.OutOfMemoryError:
                print(f"| {label} | {frames} | | OOM | | | | | |")
                torch.cuda.empty_cache()
                continue
            print(f"| {label} | {r['frames']} | {r['tokens']} | {r['fwd_ms']:.1f} | {r['train_ms']:.1f} | "
                  f"{r['tok_s']:.0f} | {r['mem_mb']:.0f} | {r['gflops']:.1f} | {r['tflops_s']:.3f} |")  # fmt: skip
    print(f"# side by side with Open-Sora 1.0's own STDiT: --upstream DIR ({HOW_TO_GET})")


if __name__ == "__main__":
    main()
