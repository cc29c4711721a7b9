"""Built-in model: shapes accuracy and seconds per video versus sampler and sampling steps.

    python benchmarks/builtin_steps.py                    # rflow at 10 and 20 steps, 4 prompts per set (~1 min)
    python benchmarks/builtin_steps.py --samplers rflow dpm-solver ddim iddpm --steps 5 10 20 50 --num-prompts 16

The built-in model is trained with rectified flow (it predicts the velocity x0 - noise). rflow integrates
that ODE with Euler steps (with the model's time shift); IDDPM, DDIM and DPM-Solver run on the
variance-preserving path and call the model through the exact velocity -> noise map
(`sorakit.diffusion.rflow.velocity_as_eps`), so every sampler sees the same model.
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
    p.add_argument("--samplers", nargs="+", default=["rflow"], help="rflow, dpm-solver, ddim, iddpm")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = TextToVideoPipeline.from_pretrained(args.model, device="cpu")
    prompts = build_prompts(PROMPT_SETS, args.num_prompts, seed=0)
    print(
        f"threads {args.threads}, {len(prompts)} prompts ({args.num_prompts} per set), guidance "
        f"{pipe.config.sampler.guidance_scale}"
    )
    print(
        "| sampler | steps | s/video (batch 1) | colour % | shape % | direction % | all three % | consistent % |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for sampler in args.samplers:
        for steps in args.steps:
            t = time.perf_counter()
            pipe(
                "a red circle moving to the right", num_inference_steps=steps, sampler=sampler, progress=False
            )
            one = time.perf_counter() - t
            scores = generate_and_score(
                pipe, prompts, batch_size=8, seed=0, num_inference_steps=steps, sampler=sampler
            )
            m = summarize(scores)["overall"]
            print(
                f"| {sampler} | {steps} | {one:.2f} | {m['color']:.1f} | {m['shape']:.1f} | "
                f"{m['direction']:.1f} | {m['all']:.1f} | {m['consistent']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
