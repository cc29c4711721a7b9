"""Can the built-in VAE draw a colour and a shape it never saw? Round trip of rendered shapes-world frames per
colour and per shape, before and after fine-tuning the decoder (encoder frozen): with sorakit's decoder LoRA
(``sorakit train-vae --decoder-lora``, the code the LoRA recipe runs) or as a whole.

    python benchmarks/vae_new_colour.py                      # LoRA rank 4, 400 steps at 2e-3 (~5 min, 2 threads)
    python benchmarks/vae_new_colour.py --steps 100 --lr 1e-3
    python benchmarks/vae_new_colour.py --mode full --lr 1e-4 --steps 100

Training frames are rendered single frames of the 7 colours x 4 shapes at random sizes and positions. Prints,
per colour and per shape, how many of 24 frames `sorakit eval shapes`' rules name right, and the mean absolute
pixel error (docs/training.md, "What fixes it").
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sorakit.encoders.vae import load_autoencoder
from sorakit.eval.shapes import analyze_video, video_color
from sorakit.lora import AdapterSpec, inject, is_adapter_key
from sorakit.modeldir import BUILTIN_MODEL_DIR
from sorakit.shapes_world import ALL_COLORS, ALL_SHAPES, ShapeSpec, render
from sorakit.training.vae import to_tensor, to_uint8
from sorakit.training.vae_lora import decoder_loss, decoder_targets

COLOURS, SHAPES = list(ALL_COLORS), list(ALL_SHAPES)


def frames(n: int, colours: list[str], shapes: list[str], rng: np.random.Generator) -> np.ndarray:
    """`n` single 64x64 frames: a random colour of `colours` and shape of `shapes`, size and position."""
    out = []
    for _ in range(n):
        side = rng.uniform(14, 22)
        spec = ShapeSpec(colours[rng.integers(len(colours))], shapes[rng.integers(len(shapes))], "right", side,
                         0.0, rng.uniform(0, 64 - side), rng.uniform(0, 64 - side), "")  # fmt: skip
        out.append(render(spec, 64, 1)[0])
    return np.stack(out)


@torch.no_grad()
def report(vae: torch.nn.Module, tag: str) -> None:
    rng = np.random.default_rng(123)
    parts = []
    for kind, items in (("colour", COLOURS), ("shape", SHAPES)):
        for item in items:
            x = frames(24, [item], SHAPES, rng) if kind == "colour" else frames(24, COLOURS, [item], rng)
            y = to_uint8(vae.decode(vae.encode(to_tensor(x)).latent_dist.mean).sample)
            judge = video_color if kind == "colour" else (lambda f: analyze_video(f).shape)
            right = sum(judge(f[None]) == item for f in y)
            parts.append(f"{item} {right}/24 err {np.abs(y.astype(float) - x).mean():.1f}")
    print(f"{tag}: " + " | ".join(parts), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("lora", "full"), default="lora")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--steps", type=int, default=400)
    args = p.parse_args()
    torch.manual_seed(0)
    vae = load_autoencoder(BUILTIN_MODEL_DIR / "vae").eval().requires_grad_(False)
    report(vae, "as shipped")
    if args.mode == "lora":
        inject(vae, AdapterSpec(args.rank, args.rank, 0.0, decoder_targets(vae), "builtin", ""))
        params = [q for n, q in vae.named_parameters() if is_adapter_key(n)]
    else:
        params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
        for q in params:
            q.requires_grad_(True)
    print(f"{args.mode}: {sum(q.numel() for q in params)} trained parameters")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for _ in range(args.steps):
        loss = decoder_loss(vae, to_tensor(frames(16, COLOURS, SHAPES, rng)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    report(vae, f"after {args.steps} steps ({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
