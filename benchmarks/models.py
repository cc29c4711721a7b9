"""STDiT vs full-attention DiT at the same width and depth as the number of frames grows.

Prints, per model and frame count: forward time, forward+backward time, tokens/s (training step),
memory, forward FLOPs per sample (analytic, `sorakit.models.flops_per_sample`) and achieved TFLOP/s.

Memory: peak CUDA memory of the forward+backward on GPU; on CPU the bytes of activations saved for the
backward (counted with saved-tensor hooks), a deterministic proxy.

Default: a small config on CPU (< 1 min). `--full` runs the STDiT-XL/2 / DiT-XL/2 sizes (GPU, bf16).

    python benchmarks/models.py                      # CPU, small
    python benchmarks/models.py --full               # GPU: XL sizes, 32x32 latents (256px), 1..64 frames
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from sorakit.models import build_model, flops_per_sample


def saved_activation_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


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
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--text-len", type=int, default=None)
    p.add_argument("--caption-channels", type=int, default=None)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing on")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--flops-only", action="store_true",
                   help="only the analytic FLOPs table (no timing; models built on the meta device)")  # fmt: skip
    args = p.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.full:
        defaults = dict(frames=[1, 4, 16, 32, 64], latent=[32, 32], depth=28, hidden=1152, heads=16, text_len=120,
                        caption_channels=4096, dtype="bfloat16")  # fmt: skip
    else:
        defaults = dict(frames=[1, 4, 16, 32], latent=[16, 16], depth=2, hidden=128, heads=4, text_len=16,
                        caption_channels=64, dtype="float32")  # fmt: skip
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    dtype = getattr(torch, args.dtype)
    if args.flops_only:
        flops_table(args)
        return
    torch.manual_seed(0)
    if device.type == "cpu":
        machine = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    else:
        machine = torch.cuda.get_device_name(device)
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


if __name__ == "__main__":
    main()
