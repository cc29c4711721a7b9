"""The recipe of sorakit's built-in model, end to end: ``make train-builtin``, i.e.

    python -m sorakit.builtin.recipe --workdir runs/builtin

Stages (each skipped when its output exists, so an interrupted run resumes where it stopped):

1. ``data``   -- ``sorakit data synth``: the synthetic shapes world (videos + ``train.csv``), held-out
   combinations excluded;
2. ``vae``    -- ``sorakit train-vae``: a small AutoencoderKL (4x down, 4 channels) on the frames;
3. ``encode`` -- latents (posterior mean x scaling factor) and MiniLM caption embeddings, written in the
   latent-cache format of :mod:`sorakit.data.cache` (the format ``sorakit data encode`` writes; the posterior
   mean instead of a sample, since this VAE's posterior is nearly a point);
4. ``train``  -- ``sorakit train builtin/stdit --data WORKDIR/cache -o WORKDIR/stdit --resume``: the STDiT
   with rectified flow on the cache, EMA weights, a resumable checkpoint every ``train.ckpt_every`` steps;
5. ``export`` -- ``sorakit export WORKDIR/stdit OUT --bundle-vae --dtype fp16``: EMA transformer + VAE +
   text-encoder reference as a sorakit model directory (default ``src/sorakit/builtin/model``, what
   ``sorakit generate`` loads without ``--model``);
6. ``eval``   -- ``sorakit eval shapes`` on the exported model (train / novel / held-out prompt sets).

Stage wall times go to ``WORKDIR/times.json``. The preset's values can be overridden with ``--set
section.key=value`` (e.g. ``--set train.max_steps=2000 --set train.decay_steps=500``); they are passed on to
``sorakit train``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from sorakit.config import Config, load_config
from sorakit.data.cache import is_cache_dir, shard_name, write_meta, write_shard
from sorakit.data.video import read_video
from sorakit.encoders.text import MiniLMEncoder
from sorakit.encoders.vae import VideoVAE, load_autoencoder
from sorakit.errors import UserError
from sorakit.eval.shapes import PROMPT_SETS, build_prompts, format_table, generate_and_score, summarize
from sorakit.fileutil import write_text_atomic
from sorakit.logging import get_logger
from sorakit.pipelines import TextToVideoPipeline
from sorakit.tools.synth import synthesize
from sorakit.training.vae import VAETrainConfig, train_vae

logger = get_logger("sorakit.builtin.recipe")

PRESET = "builtin/stdit"
DEFAULT_EXPORT = Path(__file__).resolve().parent / "model"
STAGES = ("data", "vae", "encode", "train", "export", "eval")


# --------------------------------------------------------------------------------------------------
# helpers


def _record_time(work: Path, stage: str, seconds: float) -> None:
    path = work / "times.json"
    times = json.loads(path.read_text()) if path.is_file() else {}
    times[stage] = round(times.get(stage, 0.0) + seconds, 1)  # a resumed stage adds up
    write_text_atomic(path, json.dumps(times, indent=2, allow_nan=False))


def load_video_vae(path: str | Path):
    return VideoVAE(load_autoencoder(path), micro_batch_size=64)


# --------------------------------------------------------------------------------------------------
# stages 1-3: data, VAE, cache


def stage_data(work: Path, num_videos: int, seed: int, workers: int) -> Path:
    csv_path = work / "data" / "train.csv"
    if csv_path.is_file() and sum(1 for _ in open(csv_path)) - 1 >= num_videos:
        return csv_path
    return synthesize(work / "data", num_videos, seed=seed, workers=workers)


def stage_vae(work: Path, csv_path: Path, steps: int, seed: int) -> Path:
    out = work / "vae"
    if (out / "config.json").is_file() and (out / "diffusion_pytorch_model.safetensors").is_file():
        return out
    cfg = VAETrainConfig(steps=steps, seed=seed, max_videos=2000)
    return train_vae(csv_path, out, cfg)


@torch.no_grad()
def stage_encode(
    work: Path, csv_path: Path, vae_dir: Path, cfg: Config, num_videos: int, shard_size: int = 500
) -> Path:
    """Latents + caption embeddings of the first `num_videos` rows of the CSV, as a latent cache."""

    out = work / "cache"
    if is_cache_dir(out):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))[:num_videos]
    vae = load_video_vae(vae_dir)
    text = MiniLMEncoder(model_max_length=cfg.text_encoder.model_max_length)
    latent_shape = None
    for k, start in enumerate(range(0, len(rows), shard_size)):
        path = out / shard_name(k)
        part = rows[start : start + shard_size]
        if path.is_file():
            continue
        lat, ys, masks = [], [], []
        for i in range(0, len(part), 16):
            chunk = part[i : i + 16]
            frames = np.stack(
                [read_video(Path(csv_path).parent / r["path"]) for r in chunk]
            )  # [b, T, H, W, 3]
            x = torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)
            lat.append(vae.encode(x, sample=False))
            y, m = text.encode([r["text"] for r in chunk])
            ys.append(y[:, 0].half())
            masks.append(m.to(torch.uint8))
        y, m = torch.cat(ys), torch.cat(masks)
        length = int(m.sum(dim=1).max())
        write_shard(
            path,
            {
                "latents": torch.cat(lat).float(),
                "y": y[:, :length].contiguous(),
                "mask": m[:, :length].contiguous(),
                "row": torch.arange(start, start + len(part)),
            },
        )
        logger.info("encode: shard %d (%d/%d videos)", k, start + len(part), len(rows))

    with safe_open(str(out / shard_name(0)), "pt") as fh:
        latent_shape = list(fh.get_slice("latents").get_shape()[1:])
    write_meta(
        out,
        {
            "csv": str(csv_path.resolve()),
            "latent_shape": latent_shape,
            "model_max_length": cfg.text_encoder.model_max_length,
            "text_dim": text.output_dim,
            "text_encoder": {"type": "minilm", "path": "builtin:minilm"},
            "vae": {"type": "builtin", "path": str(vae_dir.resolve()), "scaling_factor": vae.scaling_factor},
            "num_frames": int(rows[0]["num_frames"]),
            "image_size": [int(rows[0]["height"]), int(rows[0]["width"])],
        },
    )
    return out


# --------------------------------------------------------------------------------------------------
# stages 4-5: `sorakit train` on the cache, `sorakit export`


def _sorakit(*args: str) -> None:
    """Run a sorakit command in a child process (what a user would type); its failure stops the recipe."""
    cmd = [sys.executable, "-m", "sorakit.cli.main", *args]
    logger.info("recipe: %s", " ".join(["sorakit", *args]))
    rc = subprocess.call(cmd)
    if rc in (130, -2):  # the child was stopped by Ctrl-C (SIGINT) too: the recipe stops the same way
        raise KeyboardInterrupt
    if rc != 0:
        raise UserError(f"`sorakit {' '.join(args)}` failed with exit status {rc}")


def stage_train(work: Path, cache: Path, overrides: list[str]) -> Path:
    """`sorakit train builtin/stdit --data CACHE -o WORK/stdit --resume`: resumes from the newest checkpoint
    when the run was interrupted; returns the run directory."""
    run = work / "stdit"
    _sorakit("train", PRESET, *overrides, "--data", str(cache), "--output", str(run), "--resume")
    return run


def stage_export(run: Path, out: Path) -> Path:
    """`sorakit export RUN OUT --bundle-vae --dtype fp16`: the EMA weights plus the VAE, self-contained."""
    _sorakit("export", str(run), str(out), "--bundle-vae", "--dtype", "fp16")
    return out


def stage_eval(work: Path, model_dir: Path, n: int, seed: int = 0) -> dict[str, Any]:

    pipe = TextToVideoPipeline.from_pretrained(model_dir, device="cpu")
    t = time.perf_counter()
    pipe("a red circle moving to the right", progress=False)
    one_video = time.perf_counter() - t
    scores = generate_and_score(pipe, build_prompts(PROMPT_SETS, n, seed), batch_size=8, seed=seed)
    summary = summarize(scores)
    table = format_table(summary)
    print(table)
    result = {"summary": summary, "one_video_s": round(one_video, 2), "threads": torch.get_num_threads()}
    write_text_atomic(work / "eval.json", json.dumps(result, indent=2, allow_nan=False))
    write_text_atomic(work / "eval.md", table + "\n")
    return result


# --------------------------------------------------------------------------------------------------


def run_recipe(args: argparse.Namespace, valid: tuple[str, ...], run: Callable[[list[str]], None]) -> int:
    """The recipes' shared `main` frame: check ``--stages`` against `valid`, apply ``--threads``, call
    ``run(stages)``; a UserError is one line (exit 2), Ctrl-C a hint to resume (exit 130)."""
    try:
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        bad = [s for s in stages if s not in valid]
        if bad:
            raise UserError(f"unknown stage(s) {bad} (valid: {', '.join(valid)})")
        if args.threads:
            torch.set_num_threads(args.threads)
        run(stages)
    except UserError as exc:
        print(f"sorakit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "sorakit: interrupted; run the same command again to resume (every stage resumes)",
            file=sys.stderr,
        )
        return 130
    return 0


def _run_stages(args: argparse.Namespace, stages: list[str]) -> None:
    """The recipe's stages in order, each timed into ``times.json``."""
    cfg = load_config(PRESET, args.set)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    write_text_atomic(work / "config.toml", cfg.dump())
    csv_path = work / "data" / "train.csv"
    vae_dir = work / "vae"
    cache = work / "cache"
    run = work / "stdit"
    out = Path(args.export)
    for stage in stages:
        t = time.perf_counter()
        logger.info("recipe: stage %s", stage)
        if stage == "data":
            csv_path = stage_data(work, args.num_videos, cfg.train.seed, args.workers)
        elif stage == "vae":
            vae_dir = stage_vae(work, csv_path, args.vae_steps, cfg.train.seed)
        elif stage == "encode":
            cache = stage_encode(work, csv_path, vae_dir, cfg, args.num_videos)
        elif stage == "train":
            run = stage_train(work, cache, args.set)
        elif stage == "export":
            stage_export(run, out)
        elif stage == "eval":
            stage_eval(work, out, args.eval_prompts)
        _record_time(work, stage, time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sorakit.builtin.recipe", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="runs/builtin", help="where data, caches and checkpoints go")
    p.add_argument(
        "--export", default=str(DEFAULT_EXPORT), help="model directory to write (default: the package's)"
    )
    p.add_argument("--num-videos", type=int, default=4000, help="synthetic training videos (default 4000)")
    p.add_argument("--vae-steps", type=int, default=1200, help="autoencoder training steps (default 1200)")
    p.add_argument("--eval-prompts", type=int, default=24, help="prompts per set in the final evaluation")
    p.add_argument("--stages", default=",".join(STAGES), help=f"stages to run (default {','.join(STAGES)})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the preset")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--workers", type=int, default=1, help="processes for data synthesis")
    args = p.parse_args(argv)
    if (code := run_recipe(args, STAGES, lambda stages: _run_stages(args, stages))) != 0:
        return code
    logger.info("recipe: done; stage times in %s", Path(args.workdir) / "times.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
