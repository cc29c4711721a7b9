"""Sampling cost per sampler: model calls and wall time with a stand-in model.

    python benchmarks/samplers.py                      # default: < 1 min on a laptop CPU
    python benchmarks/samplers.py --device cuda --latent 4 16 32 32 --batch 2 --width 256

The stand-in is a small 3-D conv net with the STDiT call signature (x, t, y, mask) and learned
sigma (2C output channels), wrapped in classifier-free guidance (one 2n-row call per step), so the
numbers show how many model evaluations each sampler needs and how much the sampler itself costs
on top of them (the "overhead" column: wall time minus the same number of bare model calls).
The quality-vs-steps comparison needs a trained model and lives with the built-in model.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from sorakit.diffusion import build_sampler, guidance_model_fn

DEFAULT_STEPS = {"iddpm": 100, "ddim": 50, "dpm-solver": 20, "rflow": 30}


class StandIn(nn.Module):
    """Conv3d stack; the timestep and caption enter as per-sample biases. Output [B, 2C, T, H, W]."""

    def __init__(self, channels: int = 4, width: int = 64, caption_dim: int = 32) -> None:
        super().__init__()
        self.inp = nn.Conv3d(channels, width, 3, padding=1)
        self.mid = nn.Conv3d(width, width, 3, padding=1)
        self.out = nn.Conv3d(width, 2 * channels, 3, padding=1)
        self.t_proj = nn.Linear(1, width)
        self.y_proj = nn.Linear(caption_dim, width)

    def forward(self, x, t, y, mask=None):
        cond = self.t_proj(t.float()[:, None] / 1000) + self.y_proj(y.mean(dim=(1, 2)))
        h = torch.nn.functional.silu(self.inp(x) + cond[:, :, None, None, None])
        h = torch.nn.functional.silu(self.mid(h))
        return self.out(h)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--latent", type=int, nargs=4, default=[4, 4, 16, 16], metavar=("C", "T", "H", "W"))
    p.add_argument("--batch", type=int, default=2, help="prompts per batch (the model sees 2x rows with CFG)")
    p.add_argument("--width", type=int, default=32, help="stand-in model width")
    p.add_argument("--samplers", nargs="+", default=list(DEFAULT_STEPS))
    p.add_argument("--steps", type=int, default=None, help="same step count for every sampler")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    c, t, h, w = args.latent
    model = StandIn(c, args.width).to(device).eval()
    y = torch.randn(args.batch, 1, 8, 32, device=device)
    fn = guidance_model_fn(
        model, y, torch.zeros_like(y), scale=7.0, mask=torch.ones(args.batch, 8, device=device)
    )
    z = torch.randn(args.batch, c, t, h, w, device=device)

    # Cost of one bare guided model call, to separate the sampler's own overhead.
    with torch.no_grad():
        for _ in range(3):
            fn(z, torch.full((args.batch,), 500, device=device))
        sync(device)
        start = time.perf_counter()
        for _ in range(10):
            fn(z, torch.full((args.batch,), 500, device=device))
        sync(device)
    per_call = (time.perf_counter() - start) / 10

    print(
        f"device={device} latent={args.batch}x{c}x{t}x{h}x{w} model width={args.width} CFG batch={2 * args.batch}"
    )
    print(f"bare guided model call: {per_call * 1e3:.2f} ms\n")
    print("| sampler | steps | model calls | wall time (s) | per step (ms) | overhead per step (ms) |")
    print("|---|---|---|---|---|---|")
    for name in args.samplers:
        steps = args.steps or DEFAULT_STEPS[name]
        sampler = build_sampler(name, steps)
        gen = torch.Generator(device=device).manual_seed(0)
        times = []
        for _ in range(args.repeats):
            sync(device)
            start = time.perf_counter()
            sampler.sample(fn, z, generator=gen)
            sync(device)
            times.append(time.perf_counter() - start)
        best = min(times)
        calls = sampler.num_model_calls
        overhead = (best - calls * per_call) / max(calls, 1)
        print(
            f"| {name} | {steps} | {calls} | {best:.3f} | {best / max(calls, 1) * 1e3:.2f} | {overhead * 1e3:.2f} |"
        )


if __name__ == "__main__":
    main()
