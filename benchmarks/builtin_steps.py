"""Built-in model: shapes accuracy and seconds per video versus sampling steps.

    python benchmarks/builtin_steps.py                    # rflow at 10 and 20 steps, 4 prompts per set (~1 min)
    python benchmarks/builtin_steps.py --steps 5 10 20 30 --num-prompts 24 --model DIR

The built-in model is trained with rectified flow (velocity prediction), so its sampler is rflow (Euler);
IDDPM, DDIM and DPM-Solver assume a noise-predicting VP-diffusion model and do not apply to it.
"""

from __future__ import annotations

import argparse
import time

import torch

from sorakit.eval.shapes import PROMPT_SETS, build_prompts, generate_and_score, summarize
from sorakit.pipelines import TextToVideoPipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: the built-in model)")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20])
    p.add_argument("--num-prompts", type=int, default=4, help="prompts per set")
    p.add_argument("--sampler", default="rflow")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = TextToVideoPipeline.from_pretrained(args.model, device="cpu")
    prompts = build_prompts(PROMPT_SETS, args.num_prompts, seed=0)
    print(f"threads {args.threads}, {len(prompts)} prompts ({args.num_prompts} per set), guidance "
          f"{pipe.config.scheduler.cfg_scale}")
    print("| sampler | steps | s/video (batch 1) | colour % | shape % | direction % | all three % | consistent % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for steps in args.steps:
        t = time.perf_counter()
        pipe("a red circle moving to the right", num_inference_steps=steps, sampler=args.sampler, progress=False)
        one = time.perf_counter() - t
        scores = generate_and_score(pipe, prompts, batch_size=8, seed=0, num_inference_steps=steps,
                                    sampler=args.sampler)
        m = summarize(scores)["overall"]
        print(f"| {args.sampler} | {steps} | {one:.2f} | {m['color']:.1f} | {m['shape']:.1f} | "
              f"{m['direction']:.1f} | {m['all']:.1f} | {m['consistent']:.1f} |")


if __name__ == "__main__":
    main()
