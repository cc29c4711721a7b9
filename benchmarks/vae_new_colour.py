"""Can the built-in VAE draw a colour it never saw? Round trip of rendered shapes-world frames per colour,
before and after fine-tuning the decoder (encoder frozen) with a LoRA on its convolutions or as a whole.

    python benchmarks/vae_new_colour.py                      # LoRA rank 4, 100 steps (~70 s on 2 threads)
    python benchmarks/vae_new_colour.py --mode full --lr 1e-4

Prints, per colour, the share of 24 frames that `sorakit eval shapes`' colour rule names right, the
foreground mean and the mean absolute pixel error (docs/training.md, "What fixes it").
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from diffusers import AutoencoderKL

from sorakit.eval.shapes import video_color
from sorakit.modeldir import BUILTIN_MODEL_DIR
from sorakit.shapes_world import ALL_COLORS, ALL_SHAPES, ShapeSpec, render

DECODER_CONVS = r"decoder\..*(conv1|conv2|conv|conv_in|conv_out)"


def frames(n: int, colors: list[str], rng: np.random.Generator) -> np.ndarray:
    """`n` single 64x64 frames: a random colour of `colors`, shape, size and position."""
    out = []
    for _ in range(n):
        side = rng.uniform(14, 22)
        spec = ShapeSpec(colors[rng.integers(len(colors))], ALL_SHAPES[rng.integers(len(ALL_SHAPES))], "right",
                         side, 0.0, rng.uniform(0, 64 - side), rng.uniform(0, 64 - side), "")  # fmt: skip
        out.append(render(spec, 64, 1)[0])
    return np.stack(out)


def to_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).float().permute(0, 3, 1, 2) / 127.5 - 1


def report(vae: AutoencoderKL, tag: str) -> None:
    rng = np.random.default_rng(123)
    parts = []
    for colour in ALL_COLORS:
        x = frames(24, [colour], rng)
        with torch.no_grad():
            y = vae.decode(vae.encode(to_tensor(x)).latent_dist.mean).sample
        y = ((y.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).numpy()
        right = sum(video_color(f.round().astype(np.uint8)[None]) == colour for f in y)
        fg = tuple(int(v) for v in y[x.astype(int).sum(-1) > 60].mean(0).round())
        parts.append(f"{colour} {right}/24 {fg} err {np.abs(y - x).mean():.1f}")
    print(f"{tag}: " + " | ".join(parts), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("lora", "full"), default="lora")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args()
    torch.manual_seed(0)
    vae = AutoencoderKL.from_pretrained(BUILTIN_MODEL_DIR / "vae").eval()
    report(vae, "as shipped")
    vae.requires_grad_(False)
    if args.mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        inject_adapter_in_model(
            LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=DECODER_CONVS), vae
        )
        params = [q for n, q in vae.named_parameters() if "lora_" in n]
    else:
        params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
        for q in params:
            q.requires_grad_(True)
    print(f"{args.mode}: {sum(q.numel() for q in params)} trained parameters")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0)
    rng = np.random.default_rng(0)
    for _ in range(args.steps):
        x = to_tensor(frames(16, list(ALL_COLORS), rng))
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        loss = torch.nn.functional.mse_loss(vae.decode(z).sample, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    report(vae, f"after {args.steps} steps")


if __name__ == "__main__":
    main()
