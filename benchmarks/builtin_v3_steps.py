"""The built-in model v3's training step per bucket, against v2's step, and the v3 recipe's projected time.

Every bucket of `builtin/stdit-v3`'s table (about 2048 tokens per micro-batch each) runs the trainer's step
(rectified-flow loss, AdamW, clipping, EMA) of the v2 network on random latents, the buckets interleaved round by
round so that a busy shared machine slows them alike; the median per bucket is divided by the 16x64x64 bucket's
(batch 8 of 16x16x16 latents: exactly a v2 step). v3's data mix (:data:`sorakit.builtin.recipe.V3_SIZES`,
:data:`~sorakit.builtin.recipe.V3_LENGTHS`) then gives the mean step in v2 steps, and with v2's measured
step time (78 min for 18000 steps on this CPU: ``--v2-step 0.26``) the projected training time.

    OMP_NUM_THREADS=1 python benchmarks/builtin_v3_steps.py --rounds 5
    python benchmarks/builtin_v3_steps.py --precisions fp32,bf16   # both, interleaved: bf16's gain on this CPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train import build, trainer_step  # noqa: E402 - benchmarks/train.py, beside this script


def _steps(precision: str, device: torch.device) -> dict[tuple, object]:
    """The trainer's step of every bucket of the v3 preset in `precision` (one model per precision)."""
    from sorakit.builtin.recipe import PRESET_V3
    from sorakit.data.buckets import build_table

    over = [f"train.mixed_precision={precision}"]
    cfg, model, objective, _ = build(PRESET_V3, over, device, text_len=32, caption_channels=384, f=4)
    model.train()
    table = build_table(cfg.data)
    steps = {}
    for b in table.buckets():
        batch = table.batch_size(b)
        latent = (b.num_frames, b.height // 4, b.width // 4)
        steps[(b.num_frames, b.height, b.width, batch)] = trainer_step(
            cfg, model, objective, latent, device, batch, 32, 384, [0]
        )
    return steps


def main() -> None:
    from sorakit.builtin.recipe import V3_LENGTHS, V3_SIZES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="timed steps per bucket (interleaved)")
    p.add_argument(
        "--v2-step", type=float, default=78 * 60 / 18000, help="v2's s/step on this CPU (measured)"
    )
    p.add_argument("--steps", type=int, default=12000, help="v3 training steps to project")
    p.add_argument(
        "--precisions", default="fp32", help="train.mixed_precision values, interleaved (fp32,bf16)"
    )
    args = p.parse_args()
    device = torch.device("cpu")
    precisions = args.precisions.split(",")
    steps = {(prec, *key): step for prec in precisions for key, step in _steps(prec, device).items()}
    for step in steps.values():  # warm-up
        step()
    times: dict[tuple, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for key, step in steps.items():
            t = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - t)
    ref = statistics.median(times[(precisions[0], 16, 64, 64, 8)])
    print(
        f"| precision | bucket (frames x H x W) | batch | tokens | s/step (median) | x v2 step ({precisions[0]}) |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for (prec, t, h, w, b), ts in sorted(times.items()):
        med = statistics.median(ts)
        print(
            f"| {prec} | {t}x{h}x{w} | {b} | {b * (t // 4) * (h // 8) * (w // 8)} | {med:.3f} | {med / ref:.2f} |"
        )
    # micro-batches per clip of each bucket = share of the clips / batch size
    share = Counter((t, h, w) for h, w in V3_SIZES for t in V3_LENGTHS)
    n = sum(share.values())
    print()
    for prec in precisions:
        mine = {k[1:]: statistics.median(v) for k, v in times.items() if k[0] == prec}
        per_clip = {k: share[k[:3]] / n / k[3] for k in mine}
        mean = sum(per_clip[k] * mine[k] for k in mine) / sum(per_clip.values()) / ref
        samples = 1 / sum(per_clip.values())
        print(f"v3 data mix, {prec}: mean step = {mean:.2f} v2 steps, {samples:.2f} clips per step; "
              f"{args.steps} steps at {args.v2_step:.2f} s per v2 step = {args.steps * mean * args.v2_step / 60:.0f} min")  # fmt: skip


if __name__ == "__main__":
    main()
