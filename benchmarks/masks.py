"""What reference frames cost: STDiT forward (and forward+backward) without `x_mask`, with an all-True mask and
with a mixed mask (timestep-0 modulation on some frames), at the same size.

Prints one row per case: median time over repeats and the ratio to the unmasked forward.

    python benchmarks/masks.py                   # CPU, a small STDiT (seconds)
    python benchmarks/masks.py --full            # GPU, STDiT-XL/2 at 16x32x32 latents, bf16
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from sorakit.models import build_model


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="STDiT-XL/2 on a GPU in bf16")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = torch.device("cuda" if args.full and torch.cuda.is_available() else "cpu")
    if args.full:
        name, kw, size, dtype = "STDiT-XL/2", dict(caption_channels=4096), (16, 32, 32), torch.bfloat16
    else:
        name, kw, size, dtype = "STDiT-tiny", dict(hidden_size=128, depth=4, num_heads=4, caption_channels=64,
                                                   model_max_length=16), (16, 16, 16), torch.float32  # fmt: skip
    model = build_model(name, input_size=size, **kw).to(device, dtype)
    b, t = 2, size[0]
    x = torch.randn(b, 4, *size, device=device, dtype=dtype)
    ts = torch.tensor([500, 20], device=device)
    y = torch.randn(b, 1, model.model_max_length, model.caption_channels, device=device, dtype=dtype)
    masks = {
        "no x_mask": None,
        "all-True x_mask": torch.ones(b, t, dtype=torch.bool, device=device),
        "first frame a condition": torch.ones(b, t, dtype=torch.bool, device=device).index_fill_(1, torch.tensor([0], device=device), False),
    }  # fmt: skip
    print(
        f"{name} {list(size)} latents, batch {b}, {dtype}, {device} ({platform.processor() or platform.machine()})"
    )
    print(f"{'case':<26} {'forward ms':>11} {'ratio':>6} {'fwd+bwd ms':>11} {'ratio':>6}")
    base = {}
    for label, m in masks.items():
        kw_m = {} if m is None else {"x_mask": m}
        with torch.no_grad():
            fwd = _time(lambda kw_m=kw_m: model(x, ts, y, **kw_m), device, args.repeats)

        def step(kw_m=kw_m):
            model.zero_grad(set_to_none=True)
            model(x, ts, y, **kw_m).float().square().mean().backward()

        both = _time(step, device, args.repeats)
        base.setdefault("fwd", fwd)
        base.setdefault("both", both)
        print(
            f"{label:<26} {fwd * 1e3:>11.1f} {fwd / base['fwd']:>6.2f} {both * 1e3:>11.1f} {both / base['both']:>6.2f}"
        )


if __name__ == "__main__":
    main()
