"""The recipe of sorakit's built-in model, end to end: ``make train-builtin``, i.e.

    python -m sorakit.builtin.recipe --workdir runs/builtin

Stages (each skipped when its output exists, so an interrupted run resumes where it stopped):

1. ``data``   -- ``sorakit data synth``: the synthetic shapes world (videos + ``train.csv``), held-out
   combinations excluded;
2. ``vae``    -- ``sorakit train-vae``: a small AutoencoderKL (4x down, 4 channels) on the frames;
3. ``encode`` -- latents (posterior mean x scaling factor) and MiniLM caption embeddings, written in the
   latent-cache format of :mod:`sorakit.data.cache` (what ``sorakit data encode`` writes);
4. ``train``  -- the STDiT of the preset ``builtin/stdit`` with rectified flow on the cache, EMA weights,
   a resumable checkpoint every ``train.ckpt_every`` steps and a quick shapes evaluation every
   ``--eval-every`` steps (``WORKDIR/stdit/evals.jsonl``);
5. ``export`` -- EMA transformer + VAE + text-encoder reference as a sorakit model directory
   (default ``src/sorakit/builtin/model``, what ``sorakit generate`` loads without ``--model``);
6. ``eval``   -- ``sorakit eval shapes`` on the exported model (train / novel / held-out prompt sets).

Stage wall times go to ``WORKDIR/times.json``. The preset's values can be overridden with ``--set
section.key=value`` (e.g. ``--set train.max_steps=2000``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sorakit.config import Config, load_config
from sorakit.errors import UserError
from sorakit.logging import get_logger

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
    path.write_text(json.dumps(times, indent=2))


def _atomic_dir(target: Path, write) -> None:
    """Write a directory through `write(tmp_dir)`, then swap it in place of `target`."""
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    old = target.with_name(target.name + ".old")
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)


def build_transformer(cfg: Config, latent_shape: list[int], caption_channels: int) -> torch.nn.Module:
    """The preset's STDiT for latents ``[C, T, h, w]``."""
    from sorakit.models import build_model

    c, t, h, w = latent_shape
    return build_model(
        cfg.model.type,
        input_size=(t, h, w),
        in_channels=c,
        caption_channels=caption_channels,
        model_max_length=cfg.text_encoder.model_max_length,
        **{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.model.arch.items()},
    )


def load_video_vae(path: str | Path):
    from sorakit.encoders.vae import VideoVAE, load_autoencoder

    return VideoVAE(load_autoencoder(path), micro_batch_size=64)


# --------------------------------------------------------------------------------------------------
# stages 1-3: data, VAE, cache


def stage_data(work: Path, num_videos: int, seed: int, workers: int) -> Path:
    from sorakit.tools.synth import synthesize

    csv_path = work / "data" / "train.csv"
    if csv_path.is_file() and sum(1 for _ in open(csv_path)) - 1 >= num_videos:
        return csv_path
    return synthesize(work / "data", num_videos, seed=seed, workers=workers)


def stage_vae(work: Path, csv_path: Path, steps: int, seed: int) -> Path:
    from sorakit.training.vae import VAETrainConfig, train_vae

    out = work / "vae"
    if (out / "config.json").is_file() and (out / "diffusion_pytorch_model.safetensors").is_file():
        return out
    cfg = VAETrainConfig(steps=steps, seed=seed, max_videos=2000)
    return train_vae(csv_path, out, cfg)


@torch.no_grad()
def stage_encode(work: Path, csv_path: Path, vae_dir: Path, cfg: Config, num_videos: int, shard_size: int = 500) -> Path:
    """Latents + caption embeddings of the first `num_videos` rows of the CSV, as a latent cache."""
    import csv

    from sorakit.data.cache import is_cache_dir, shard_name, write_meta, write_shard
    from sorakit.data.video import read_video
    from sorakit.encoders.text import MiniLMEncoder

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
            frames = np.stack([read_video(r["path"]) for r in chunk])  # [b, T, H, W, 3]
            x = torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)
            lat.append(vae.encode(x, sample=False))
            y, m = text.encode([r["text"] for r in chunk])
            ys.append(y[:, 0].half())
            masks.append(m.to(torch.uint8))
        y, m = torch.cat(ys), torch.cat(masks)
        length = int(m.sum(dim=1).max())
        write_shard(path, {
            "latents": torch.cat(lat).float(),
            "y": y[:, :length].contiguous(),
            "mask": m[:, :length].contiguous(),
            "row": torch.arange(start, start + len(part)),
        })
        logger.info("encode: shard %d (%d/%d videos)", k, start + len(part), len(rows))
    from safetensors import safe_open

    with safe_open(str(out / shard_name(0)), "pt") as fh:
        latent_shape = list(fh.get_slice("latents").get_shape()[1:])
    write_meta(out, {
        "csv": str(csv_path.resolve()),
        "latent_shape": latent_shape,
        "model_max_length": cfg.text_encoder.model_max_length,
        "text_dim": text.output_dim,
        "text_encoder": {"type": "minilm", "path": "builtin:minilm"},
        "vae": {"path": str(vae_dir.resolve()), "scaling_factor": vae.scaling_factor, "sample": False},
        "num_frames": int(rows[0]["num_frames"]),
        "image_size": [int(rows[0]["height"]), int(rows[0]["width"])],
    })
    return out


# --------------------------------------------------------------------------------------------------
# stage 4: training


def _save_train_state(ckpt: Path, model, ema, opt, step: int, gen: np.random.Generator) -> None:
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(tmp / "ema.safetensors"))
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        torch.save({"torch_rng": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "numpy_rng": gen.bit_generator.state}))

    _atomic_dir(ckpt, write)


def _load_train_state(ckpt: Path, model, ema, opt) -> tuple[int, dict[str, Any]]:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=True)
    ema.load_state_dict(load_file(str(ckpt / "ema.safetensors")), strict=True)
    opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    torch.set_rng_state(torch.load(ckpt / "rng.pt", weights_only=True)["torch_rng"])
    state = json.loads((ckpt / "state.json").read_text())
    return int(state["step"]), state["numpy_rng"]


def quick_eval(ema, vae, text_encoder, cfg: Config, n: int = 8, steps: int | None = None) -> dict[str, Any]:
    """Shapes accuracy of the current EMA weights on `n` train + `n` held-out prompts."""
    from sorakit.eval.shapes import build_prompts, generate_and_score, summarize
    from sorakit.pipelines import TextToVideoPipeline

    model = copy.deepcopy(ema)
    pipe = TextToVideoPipeline(model, vae, text_encoder, cfg, device="cpu", dtype="fp32")
    scores = generate_and_score(pipe, build_prompts(["train", "heldout"], n, seed=1), batch_size=n, seed=1,
                                num_inference_steps=steps)
    return summarize(scores)


def stage_train(work: Path, cache: Path, vae_dir: Path, cfg: Config, eval_every: int) -> Path:
    from sorakit.data.cache import LatentCacheDataset
    from sorakit.diffusion import build_objective
    from sorakit.encoders.text import MiniLMEncoder

    tc = cfg.train
    run = work / "stdit"
    ckpt = run / "checkpoint"
    done = run / "final"
    if (done / "ema.safetensors").is_file():
        return done
    run.mkdir(parents=True, exist_ok=True)
    ds = LatentCacheDataset(cache, in_memory=True)
    torch.manual_seed(tc.seed)
    model = build_transformer(cfg, ds.latent_shape, int(ds.meta["text_dim"]))
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.999))
    objective = build_objective(tc.objective)
    step, gen = 0, np.random.default_rng(tc.seed)
    if (ckpt / "state.json").is_file():
        step, rng_state = _load_train_state(ckpt, model, ema, opt)
        gen.bit_generator.state = rng_state
        logger.info("train: resumed at step %d", step)
    logger.info("train: %s, %.2fM parameters, %d cached samples, %d steps of %d",
                cfg.model.type, model.num_params() / 1e6, len(ds), tc.max_steps, tc.batch_size)
    vae = text = None
    log = open(run / "log.jsonl", "a")
    model.train()
    t0, losses = time.perf_counter(), []
    start_step = step
    while step < tc.max_steps:
        lr = tc.lr * min(1.0, (step + 1) / max(1, tc.warmup_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = ds.get_batch(gen.integers(0, len(ds), tc.batch_size).tolist())
        out = objective.training_losses(model, batch["latent"], y=batch["y"], mask=batch["mask"])
        loss = out["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        with torch.no_grad():
            decay = min(tc.ema_decay, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.lerp_(p, 1 - decay)
        step += 1
        losses.append(loss.item())
        if step % tc.log_every == 0:
            rate = (step - start_step) / (time.perf_counter() - t0)
            rec = {"step": step, "loss": float(np.mean(losses)), "lr": lr, "steps_per_s": round(rate, 3)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            logger.info("train step %d/%d loss %.4f (%.2f steps/s)", step, tc.max_steps, rec["loss"], rate)
            losses = []
        if step % tc.ckpt_every == 0 or step == tc.max_steps:
            _save_train_state(ckpt, model, ema, opt, step, gen)
        if eval_every and (step % eval_every == 0 or step == tc.max_steps):
            if vae is None:
                vae = load_video_vae(vae_dir)
                text = MiniLMEncoder(model_max_length=cfg.text_encoder.model_max_length)
            te = time.perf_counter()
            summary = quick_eval(ema, vae, text, cfg)
            rec = {"step": step, "eval": summary, "eval_s": round(time.perf_counter() - te, 1)}
            with open(run / "evals.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            logger.info("eval step %d: %s", step, {g: (round(m["color"]), round(m["shape"]), round(m["direction"]),
                                                       round(m["all"])) for g, m in summary.items()})
    log.close()

    def write(tmp: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(tmp / "ema.safetensors"))
        (tmp / "config.json").write_text(json.dumps({"latent_shape": ds.latent_shape,
                                                     "text_dim": int(ds.meta["text_dim"]), "steps": step}))

    _atomic_dir(done, write)
    return done


# --------------------------------------------------------------------------------------------------
# stages 5-6: export, evaluation


def stage_export(work: Path, final: Path, vae_dir: Path, cfg: Config, out: Path) -> Path:
    from safetensors.torch import load_file

    from sorakit.pipelines import save_model_dir

    meta = json.loads((final / "config.json").read_text())
    model = build_transformer(cfg, meta["latent_shape"], meta["text_dim"])
    model.load_state_dict(load_file(str(final / "ema.safetensors")), strict=True)
    export_cfg = copy.deepcopy(cfg)
    export_cfg.data.csv = export_cfg.data.cache_dir = None
    save_model_dir(
        out, model.eval(), export_cfg, vae=load_video_vae(vae_dir),
        text_encoder_spec={"type": "minilm", "path": "builtin:minilm",
                           "model_max_length": cfg.text_encoder.model_max_length},
        dtype=torch.float16,
    )
    return out


def stage_eval(work: Path, model_dir: Path, n: int, seed: int = 0) -> dict[str, Any]:
    from sorakit.eval.shapes import PROMPT_SETS, build_prompts, format_table, generate_and_score, summarize
    from sorakit.pipelines import TextToVideoPipeline

    pipe = TextToVideoPipeline.from_pretrained(model_dir, device="cpu")
    t = time.perf_counter()
    pipe("a red circle moving to the right", progress=False)
    one_video = time.perf_counter() - t
    scores = generate_and_score(pipe, build_prompts(PROMPT_SETS, n, seed), batch_size=8, seed=seed)
    summary = summarize(scores)
    table = format_table(summary)
    print(table)
    result = {"summary": summary, "one_video_s": round(one_video, 2), "threads": torch.get_num_threads()}
    (work / "eval.json").write_text(json.dumps(result, indent=2))
    (work / "eval.md").write_text(table + "\n")
    return result


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sorakit.builtin.recipe", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="runs/builtin", help="where data, caches and checkpoints go")
    p.add_argument("--export", default=str(DEFAULT_EXPORT), help="model directory to write (default: the package's)")
    p.add_argument("--num-videos", type=int, default=6000, help="synthetic training videos (default 6000)")
    p.add_argument("--vae-steps", type=int, default=1200, help="autoencoder training steps (default 1200)")
    p.add_argument("--eval-every", type=int, default=1000, help="quick evaluation every N steps (0 = never)")
    p.add_argument("--eval-prompts", type=int, default=24, help="prompts per set in the final evaluation")
    p.add_argument("--stages", default=",".join(STAGES), help=f"stages to run (default {','.join(STAGES)})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the preset")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--workers", type=int, default=1, help="processes for data synthesis")
    args = p.parse_args(argv)
    try:
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        bad = [s for s in stages if s not in STAGES]
        if bad:
            raise UserError(f"unknown stage(s) {bad} (valid: {', '.join(STAGES)})")
        cfg = load_config(PRESET, args.set)
        if args.threads:
            torch.set_num_threads(args.threads)
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        (work / "config.toml").write_text(cfg.dump())
        csv_path = work / "data" / "train.csv"
        vae_dir = work / "vae"
        cache = work / "cache"
        final = work / "stdit" / "final"
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
                final = stage_train(work, cache, vae_dir, cfg, args.eval_every)
            elif stage == "export":
                stage_export(work, final, vae_dir, cfg, out)
            elif stage == "eval":
                stage_eval(work, out, args.eval_prompts)
            _record_time(work, stage, time.perf_counter() - t)
    except UserError as exc:
        print(f"sorakit: error: {exc}", file=sys.stderr)
        return 2
    logger.info("recipe: done; stage times in %s", Path(args.workdir) / "times.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
