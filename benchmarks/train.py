"""Training throughput: samples/s, tokens/s, memory and MFU of the trainer's step (IDDPM loss, AdamW,
gradient clipping, EMA) for the `tiny` preset on CPU -- fp32 / bf16 autocast, with and without gradient
checkpointing -- and, when a GPU is present (or with --xl), STDiT-XL/2 at 16x256x256 next to Open-Sora 1.0's
published 7.0 samples/s per H800.

    python benchmarks/train.py                 # tiny preset on CPU, < 1 min
    python benchmarks/train.py --xl --steps 20 # STDiT-XL/2 16x256x256, batch 8, on the GPU

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


def build(preset: str, overrides: list[str], device: torch.device, text_len: int, caption_channels: int):
    from sorakit.config import load_config
    from sorakit.training.trainer import DataSource, build_model, build_objective

    cfg = load_config(preset, overrides)
    f = 8
    latent = (cfg.data.num_frames, cfg.data.image_size[0] // f, cfg.data.image_size[1] // f)
    data = DataSource(None, None, True, latent, 4, caption_channels, text_len, False)  # type: ignore[arg-type]
    model = build_model(cfg, data)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # upstream init zeroes output layers; random weights make every path do work
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return cfg, model.to(device), build_objective(cfg), latent


def measure(preset: str, overrides: list[str], device: torch.device, batch: int, steps: int, warmup: int,
            text_len: int = 16, caption_channels: int = 384, peak: float | None = None) -> dict[str, float]:  # fmt: skip
    from sorakit.parallel.parallelize import apply_activation_checkpointing
    from sorakit.training.ema import EMA
    from sorakit.training.mfu import peak_tflops, tokens_per_sample, training_flops_per_sample
    from sorakit.training.optim import build_optimizer
    from sorakit.training.trainer import _model_fn

    cfg, model, objective, latent = build(preset, overrides, device, text_len, caption_channels)
    if cfg.model.grad_checkpoint:
        apply_activation_checkpointing(model)
    opt = build_optimizer(model, cfg.train.lr)
    ema = EMA(model, cfg.train.ema_decay)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.mixed_precision)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(batch, 4, *latent, generator=g).to(device)
    y = torch.randn(batch, 1, text_len, caption_channels, generator=g).to(device)
    mask = torch.ones(batch, text_len, dtype=torch.long, device=device)
    mask[:, text_len // 2 :] = 0
    saved = [0]

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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--xl", action="store_true", help="also STDiT-XL/2 16x256x256 (needs a GPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
        gpu = torch.device("cuda")
        print(f"\n# STDiT-XL/2 16x256x256 (latents 16x32x32, T5-sized text 120x4096), batch 8, bf16, grad ckpt, "
              f"{torch.cuda.get_device_name(gpu)}")  # fmt: skip
        over = ["train.mixed_precision=bf16", "model.grad_checkpoint=true"]
        r = measure(
            "opensora/train/16x256x256",
            over,
            gpu,
            8,
            args.steps,
            args.warmup,
            text_len=120,
            caption_channels=4096,
        )
        print("| what | samples/s | tokens/s | peak MiB | MFU |")
        print("|---|---:|---:|---:|---:|")
        print(
            f"| sorakit | {r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | {r['mem_mib']:.0f} | {100 * r['mfu']:.1f}% |"
        )
        print(f"| Open-Sora 1.0, H800 (published) | {OPEN_SORA_H800:.1f} | 28k | - | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
