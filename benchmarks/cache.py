"""Step caching (TeaCache, `--cache teacache:T`) on the built-in model: speed and accuracy, sampler x threshold.

    python benchmarks/cache.py                                   # rflow 20 steps; 0.1 0.15 0.2 0.3; 48 prompts
    python benchmarks/cache.py --samplers rflow:20,dpm-solver:20,iddpm:50 --thresholds 0.1,0.2,0.3 -n 16

The prompts and seeds are those of `sorakit eval shapes` (`-n` prompts from each of the train, novel and
heldout sets; batch k of `--batch-size` prompts seeded `seed + k`), and every video is scored with its
scorer. For each sampler, every batch is generated with no cache and then with each threshold in turn,
interleaved batch by batch so that a change of machine load hits every setting alike.

Columns:
  sample s/video  the sampling stage (`TextToVideoPipeline._denoise`: captions, starting noise, every
                  sampler step) per video; text encoding is negligible, VAE decoding is not included
  ratio           that time / no cache's, over the same batches
  blocks ran      fraction of model calls that ran the block stack (the rest reused its residual)
  all three, consistent   `sorakit eval shapes` scores in percent, (difference to no cache in points)
  same verdict    videos whose all-three verdict equals the uncached video's (a paired measure: the
                  accuracy difference alone hides flips that cancel)
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from sorakit.eval import shapes as ev
from sorakit.pipelines import TextToVideoPipeline


def _parse_samplers(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        name, _, steps = item.strip().partition(":")
        out.append((name, int(steps or 20)))
    return out


def _timed_denoise(pipe: TextToVideoPipeline, clock: list[float]) -> None:
    """Make `pipe` add the seconds of each sampling stage (`_denoise`) to clock[0]."""
    real = pipe._denoise

    def timed(*a, **k):
        start = time.perf_counter()
        out = real(*a, **k)
        clock[0] += time.perf_counter() - start
        return out

    pipe._denoise = timed


def run_sampler(
    pipe: TextToVideoPipeline, prompts, sampler: str, steps: int, settings: list[str], args
) -> dict:
    """{setting: dict(seconds, calls, computed, scores)} over all batches, settings interleaved per batch."""
    clock = [0.0]
    _timed_denoise(pipe, clock)
    res = {s: dict(seconds=0.0, calls=0, computed=0, scores=[]) for s in settings}
    for k, start in enumerate(range(0, len(prompts), args.batch_size)):
        part = prompts[start : start + args.batch_size]
        for setting in settings:
            gen = torch.Generator("cpu").manual_seed(args.seed + k)  # as `sorakit eval shapes`
            clock[0] = 0.0
            videos = pipe([p for _, p in part], generator=gen, progress=False, output_type="np", sampler=sampler,
                          num_inference_steps=steps, cache=setting)  # fmt: skip
            r = res[setting]
            r["seconds"] += clock[0]
            caches = pipe.last_step_caches
            r["calls"] += sum(c.calls for c in caches) if caches else steps
            r["computed"] += sum(c.computed for c in caches) if caches else steps
            r["scores"] += [ev.score_video(v, text, group) for (group, text), v in zip(part, videos)]
        print(f"  {sampler}: batch {k + 1}/{-(-len(prompts) // args.batch_size)} done", flush=True)
    return res


def table(rows: list[tuple[str, int, str, dict, dict]], n_videos: int) -> str:
    head = ("| sampler | cache | sample s/video | ratio | blocks ran | all three % | consistent % | same verdict |\n"
            "|---|---|---|---|---|---|---|---|")  # fmt: skip
    lines = [head]
    for sampler, steps, setting, r, base in rows:
        s, b = ev.summarize(r["scores"])["overall"], ev.summarize(base["scores"])["overall"]
        same = sum(x.all_ok == y.all_ok for x, y in zip(r["scores"], base["scores"]))
        d_all, d_con = s["all"] - b["all"], s["consistent"] - b["consistent"]
        delta = "" if setting == "none" else f" ({d_all:+.1f})"
        delta_c = "" if setting == "none" else f" ({d_con:+.1f})"
        lines.append(
            f"| {sampler} {steps} | {setting} | {r['seconds'] / n_videos:.3f} | {r['seconds'] / base['seconds']:.2f}"
            f" | {r['computed'] / r['calls']:.2f} | {s['all']:.1f}{delta} | {s['consistent']:.1f}{delta_c}"
            f" | {same}/{len(r['scores'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samplers", default="rflow:20", help="NAME:STEPS,... (default rflow:20)")
    ap.add_argument("--thresholds", default="0.1,0.15,0.2,0.3", help="TeaCache thresholds (default 0.1,0.15,0.2,0.3)")  # fmt: skip
    ap.add_argument("-n", "--num-prompts", type=int, default=16, help="prompts per set (3 sets; default 16)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = ["none"] + [f"teacache:{float(t):g}" for t in args.thresholds.split(",") if t.strip()]
    prompts = ev.build_prompts(["train", "novel", "heldout"], args.num_prompts, args.seed)
    pipe = TextToVideoPipeline.from_pretrained(None, device="cpu", dtype="fp32")
    load0, t0 = os.getloadavg(), time.perf_counter()
    rows = []
    for sampler, steps in _parse_samplers(args.samplers):
        res = run_sampler(pipe, prompts, sampler, steps, settings, args)
        rows += [(sampler, steps, s, res[s], res["none"]) for s in settings]
    load1 = os.getloadavg()
    print(f"\n{len(prompts)} prompts ({args.num_prompts} per set), batch {args.batch_size}, seed {args.seed}, "
          f"{args.threads} thread(s); load average {load0[0]:.2f} at start, {load1[0]:.2f} at end; "
          f"{time.perf_counter() - t0:.0f} s in all")  # fmt: skip
    print(table(rows, len(prompts)))


if __name__ == "__main__":
    main()
