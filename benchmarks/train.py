"""Training throughput: samples/s, tokens/s, memory and MFU of the trainer's step (IDDPM loss, AdamW,
gradient clipping, EMA) for the `tiny` preset on CPU -- fp32 / bf16 autocast, with and without gradient
checkpointing -- and, when a GPU is present (or with --xl), STDiT-XL/2 at 16x256x256 next to Open-Sora 1.0's
published 7.0 samples/s per H800.

    python benchmarks/train.py                 # tiny preset on CPU, < 1 min
    python benchmarks/train.py --xl --steps 20 # STDiT-XL/2 16x256x256, batch 8, on the GPU
    python benchmarks/train.py --only-xl --steps 10   # only that table (make gpu-check; --dry-run: tiny, CPU)
    python benchmarks/train.py --compile       # eager vs train.compile (inductor), built-in model, CPU

Memory: on a GPU the peak allocated CUDA memory; on CPU the weights + gradients + AdamW state + EMA plus the
activations saved for the backward (measured with saved-tensor hooks; a deterministic figure, unlike RSS).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

OPEN_SORA_H800 = 7.0  # samples/s/GPU, STDiT-XL/2 16x256x256 training (Open-Sora 1.0 report)


def build(preset: str, overrides: list[str], device: torch.device, text_len: int, caption_channels: int,
          f: int = 8):  # fmt: skip
    """`f`: the VAE's downsampling (8: SD-VAE; 4: the built-in model's VAE)."""
    from sorakit.config import load_config
    from sorakit.training.trainer import DataSource, build_model, build_objective

    cfg = load_config(preset, overrides)
    latent = (cfg.data.num_frames, cfg.data.image_size[0] // f, cfg.data.image_size[1] // f)
    data = DataSource(None, None, True, latent, 4, caption_channels, text_len, False)  # type: ignore[arg-type]
    model = build_model(cfg, data)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # upstream init zeroes output layers; random weights make every path do work
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return cfg, model.to(device), build_objective(cfg), latent


def trainer_step(cfg, model, objective, latent, device: torch.device, batch: int, text_len: int,
                 caption_channels: int, saved: list[int]):  # fmt: skip
    """The trainer's step on fixed random latents / captions: `step(count_saved=False)`; saved-tensor bytes
    of the forward are added to `saved[0]` when counted."""
    from sorakit.runtime import autocast_dtype, resolve_mixed_precision
    from sorakit.training.ema import EMA
    from sorakit.training.optim import build_optimizer
    from sorakit.training.trainer import _model_fn

    opt = build_optimizer(model, cfg.train.lr)
    ema = EMA(model, cfg.train.ema_decay)
    dtype = autocast_dtype(resolve_mixed_precision(cfg.train.mixed_precision, device))
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(batch, 4, *latent, generator=g).to(device)
    y = torch.randn(batch, 1, text_len, caption_channels, generator=g).to(device)
    mask = torch.ones(batch, text_len, dtype=torch.long, device=device)
    mask[:, text_len // 2 :] = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    def step(count_saved: bool = False) -> None:
        t = objective.sample_timesteps(batch, g, "cpu").to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        fn = _model_fn(model, y, mask, None, device.type, dtype)
        if count_saved:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = objective.training_losses(fn, x0, t, noise)["loss"].mean()
        else:
            loss = objective.training_losses(fn, x0, t, noise)["loss"].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model)

    return step


def measure(preset: str, overrides: list[str], device: torch.device, batch: int, steps: int, warmup: int,
            text_len: int = 16, caption_channels: int = 384, peak: float | None = None) -> dict[str, float]:  # fmt: skip
    from sorakit.parallel.parallelize import apply_activation_checkpointing
    from sorakit.runtime import autocast_dtype, resolve_mixed_precision
    from sorakit.training.mfu import peak_tflops, tokens_per_sample, training_flops_per_sample

    cfg, model, objective, latent = build(preset, overrides, device, text_len, caption_channels)
    if cfg.model.grad_checkpoint:
        apply_activation_checkpointing(model)
    dtype = autocast_dtype(resolve_mixed_precision(cfg.train.mixed_precision, device))
    saved = [0]
    step = trainer_step(cfg, model, objective, latent, device, batch, text_len, caption_channels, saved)
    model.train()
    step(count_saved=True)
    for _ in range(max(0, warmup - 1)):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    sps = batch * steps / elapsed
    n_params = sum(p.numel() for p in model.parameters())
    if device.type == "cuda":
        mem = torch.cuda.max_memory_allocated() / 2**20
    else:
        mem = (
            n_params * 4 * 5 + saved[0]
        ) / 2**20  # weights, grads, 2 Adam moments, EMA (fp32) + activations
    flops = training_flops_per_sample(model, latent, text_len) or 0
    if peak is None:
        peak, _ = peak_tflops(device, dtype is not None)
    return {
        "samples_per_s": sps,
        "tokens_per_s": sps * tokens_per_sample(model, latent),
        "mem_mib": mem,
        "act_mib": saved[0] / 2**20,
        "mfu": sps * flops / (peak * 1e12) if peak else float("nan"),
        "peak_tflops": peak,
        "params_m": n_params / 1e6,
    }


# preset -> (VAE downsampling, text tokens, caption channels) of the data it trains on
DATA_SHAPES = {"builtin/stdit": (4, 32, 384), "tiny": (8, 16, 384)}


def compare_compile(preset: str, overrides: list[str], device: torch.device, batch: int, steps: int,
                    rounds: int, backend: str) -> dict[str, dict[str, float]]:  # fmt: skip
    """Eager vs ``train.compile`` (the model compiled in place, as the trainer does) on the same step, timed
    in alternating rounds of `steps` steps (the order flips every round, so load drifts hit both alike).
    Returns per setting: median samples/s over the rounds, and the seconds of the first two steps (compile)."""
    import statistics

    from sorakit.parallel.parallelize import apply_activation_checkpointing, apply_compile

    f, text_len, channels = DATA_SHAPES.get(preset, (8, 16, 384))
    steps_of = {}
    first: dict[str, float] = {}
    for name in ("eager", "compiled"):
        cfg, model, objective, latent = build(preset, overrides, device, text_len, channels, f)
        if cfg.model.grad_checkpoint:
            apply_activation_checkpointing(model)
        if name == "compiled":
            apply_compile(model, per_block=False, backend=backend)
        model.train()
        steps_of[name] = trainer_step(cfg, model, objective, latent, device, batch, text_len, channels, [0])
        first[name] = _timed(steps_of[name], 2, device)
    speeds: dict[str, list[float]] = {name: [] for name in steps_of}
    for r in range(rounds):
        for name in ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager"):
            speeds[name].append(batch * steps / _timed(steps_of[name], steps, device))
    return {
        name: {"samples_per_s": statistics.median(v), "first_steps_s": first[name]}
        for name, v in speeds.items()
    }


def _timed(step, n: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def compile_table(args: argparse.Namespace, device: torch.device) -> None:
    """``--compile``: eager vs compiled step of `args.preset`, per precision, as a markdown table."""
    f, text_len, _ = DATA_SHAPES.get(args.preset, (8, 16, 384))
    print(f"# {args.preset}: eager vs train.compile (backend {args.compile_backend}), batch {args.batch_size}, "
          f"{args.rounds} alternating rounds of {args.steps} steps, {device} "
          f"({torch.get_num_threads()} thread(s)), torch {torch.__version__}")  # fmt: skip
    print("| precision | eager samples/s | compiled samples/s | compiled / eager | first 2 steps eager s | "
          "first 2 steps compiled s (compile) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for prec in args.precisions:
        r = compare_compile(args.preset, [f"train.mixed_precision={prec}"], device, args.batch_size, args.steps,
                            args.rounds, args.compile_backend)  # fmt: skip
        e, c = r["eager"], r["compiled"]
        print(f"| {prec} | {e['samples_per_s']:.2f} | {c['samples_per_s']:.2f} | "
              f"{c['samples_per_s'] / e['samples_per_s']:.2f}x | {e['first_steps_s']:.1f} | "
              f"{c['first_steps_s']:.1f} |", flush=True)  # fmt: skip


def xl_table(device: torch.device, steps: int, warmup: int, dry_run: bool = False) -> None:
    """STDiT-XL/2 at Open-Sora 1.0's 16x256x256 training setup next to its published 7.0 samples/s per H800
    (`dry_run`: the same code path with the tiny preset, batch 2, on `device`, e.g. the CPU)."""
    preset, batch, text_len, channels = (
        ("tiny", 2, 16, 384) if dry_run else ("opensora/train/16x256x256", 8, 120, 4096)
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    what = (
        "tiny preset (--dry-run)"
        if dry_run
        else "STDiT-XL/2 16x256x256 (latents 16x32x32, T5-sized text 120x4096)"
    )
    print(f"\n# {what}, batch {batch}, bf16, grad ckpt, {steps} timed steps after {warmup} warm-up, {name}, "
          f"torch {torch.__version__}")  # fmt: skip
    over = ["train.mixed_precision=bf16", "model.grad_checkpoint=true"]
    r = measure(preset, over, device, batch, steps, warmup, text_len=text_len, caption_channels=channels)
    mem = "peak MiB" if device.type == "cuda" else "MiB (CPU estimate)"
    print(f"| what | samples/s | tokens/s | {mem} | MFU | vs published samples/s |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| sorakit | {r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | {r['mem_mib']:.0f} | "
          f"{100 * r['mfu']:.1f}% | {r['samples_per_s'] / OPEN_SORA_H800:.2f}x |")  # fmt: skip
    print(f"| Open-Sora 1.0, H800 (published) | {OPEN_SORA_H800:.1f} | 28k | - | - | 1.00x |")
    print(
        f"MFU against {r['peak_tflops']:.4g} TFLOP/s (bf16 dense peak of the device; measured matmul on CPU)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--xl", action="store_true", help="also STDiT-XL/2 16x256x256 (needs a GPU)")
    parser.add_argument("--compile", action="store_true",
                        help="instead: eager vs train.compile, alternating rounds (see --preset, --rounds)")  # fmt: skip
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend for --compile")
    parser.add_argument("--preset", default="builtin/stdit", help="--compile: the model preset")
    parser.add_argument("--rounds", type=int, default=5, help="--compile: alternating timed rounds")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu", help="--compile: cpu or cuda")
    parser.add_argument("--only-xl", action="store_true", help="only the STDiT-XL/2 table (make gpu-check)")
    parser.add_argument("--dry-run", action="store_true",
                        help="with --only-xl: the XL table's code path with the tiny preset on the CPU (seconds)")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only_xl:
        if not (args.dry_run or torch.cuda.is_available()):
            print("--only-xl: no CUDA GPU found (use --dry-run for the CPU code path)", file=sys.stderr)
            return 2
        xl_table(torch.device("cpu" if args.dry_run else "cuda"), args.steps, args.warmup, args.dry_run)
        return 0
    if args.compile:
        compile_table(args, torch.device(args.device))
        return 0
    cpu = torch.device("cpu")
    print(f"# tiny preset (STDiT-tiny, 4x64x64 -> 4x8x8 latents, MiniLM-sized text 16 tokens), batch {args.batch_size}, "
          f"CPU {torch.get_num_threads()} thread(s), torch {torch.__version__}")  # fmt: skip
    print("| precision | grad ckpt | samples/s | tokens/s | memory MiB | saved act MiB | MFU |")
    print("|---|---|---:|---:|---:|---:|---:|")
    from sorakit.training.mfu import measure_matmul_tflops

    peaks = {
        p: measure_matmul_tflops(cpu, d, seconds=0.5)
        for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    for prec in ("fp32", "bf16"):
        for ckpt in (False, True):
            over = [f"train.mixed_precision={prec}", f"model.grad_checkpoint={str(ckpt).lower()}"]
            r = measure("tiny", over, cpu, args.batch_size, args.steps, args.warmup, peak=peaks[prec])
            print(f"| {prec} | {'on' if ckpt else 'off'} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
                  f"{r['mem_mib']:.1f} | {r['act_mib']:.1f} | {100 * r['mfu']:.2f}% |")  # fmt: skip
    print(f"\nMFU against measured 512x512 matmul throughput (fp32 {peaks['fp32']:.3f}, bf16 {peaks['bf16']:.3f} "
          "TFLOP/s): CPUs publish no peak.")  # fmt: skip
    if args.xl or torch.cuda.is_available():
        if not torch.cuda.is_available():
            print("\n--xl: no GPU found, skipped")
            return 0
        xl_table(torch.device("cuda"), args.steps, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
