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

``--version 3`` (``make train-builtin``; ``--version 2``, the default of this module, reproduces v2's recipe
above) builds the shipped model, v3.6 (2026-12-05): one model for text-to-video, image-to-video, extension and
loops at several sizes, from v2's weights in one run. Its stages have the same names:

1. ``data``   -- ``sorakit data synth`` of 64x64 (half), 64x96 and 96x64 frames, 8, 16 (half) or 32 frames,
   the object at a constant speed (:data:`V3_SIZES`, :data:`V3_LENGTHS`), 7000 videos; 70% of them on a path
   planned for up to 3x their length (``--long-paths``, the CSV's ``horizon`` column: what the model's horizon
   embedding learns from, so a loop's first segment paces the object for the whole loop), half of those shown
   from a later frame of that path (``--path-windows``: what a loop's later segments see);
2. ``vae``    -- no training: the model directory of ``--base`` (default v2's, unpacked from this checkout's
   git history at :data:`V2_REVISION`) becomes ``WORKDIR/base``, so v3 keeps v2's latent space and starts
   from its weights (the horizon embedding, new, at zero);
3. ``encode`` -- ``sorakit data encode`` with the preset's bucket table: each clip's latents at its bucket;
4. ``train``  -- ``sorakit train builtin/stdit-v3 --init WORKDIR/base --resume``: buckets (one shape per
   micro-batch, ~2048 tokens each) and ``train.mask_ratios`` (image-to-video and extension masks among them),
   18000 steps (200 warm-up, a linear cooldown over the last 6000), bf16 autocast where the CPU has bf16 units;
5. ``export`` -- as v2;
6. ``decoder`` -- the exported model generates 640 videos for 64x64 16-frame training captions, and the VAE's
   decoder is tuned to decode their latents into clean renderings of the objects they show
   (:mod:`sorakit.builtin.decoder`; the encoder, hence the latent space, unchanged), then installed into the
   model directory (``WORKDIR/decoder/vae``; ``--decoder-videos``, ``--decoder-steps``);
7. ``eval``   -- ``sorakit eval shapes`` for each task of the issue: text-to-video with shape fidelity,
   ``--task i2v``, ``--task extend``, 64x96 / 96x64, 32 frames and ``--loop 3`` (``WORKDIR/eval.md``).

The shipped v3.6's run on the 2-core AMD EPYC (Zen 5, bf16 units): data 1.9 min, encode 26 min, train 88 min
(0.23 s/step alone; ~15 min of it beside another job), export 8 s, decoder 30 min, eval 11 min: 2.6 h of the
3 h budget. Without bf16 units training runs in float32 (``train.mixed_precision = "auto"``), on this CPU at
1/0.61 of the step time: about 3 h in all (an estimate, not a measured run). v3 to v3.5
were a chain of fine-tunes of this recipe (``--base`` the previous model, other data mixes and schedules) that
this one run replaced; docs/benchmarks.md ("Built-in model v3.6" and below) has their commands and tables.
On a CPU shared with other jobs, run it with ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from sorakit.builtin.decoder import refine_decoder
from sorakit.config import Config, load_config
from sorakit.data.cache import is_cache_dir, shard_name, write_meta, write_shard
from sorakit.data.transforms import clips_to_tensor
from sorakit.data.video import read_video
from sorakit.encoders.text import MiniLMEncoder
from sorakit.encoders.vae import VideoVAE, load_autoencoder
from sorakit.errors import UserError
from sorakit.eval.shape_tasks import TaskSpec, generate_task
from sorakit.eval.shapes import PROMPT_SETS, build_prompts, format_table, generate_and_score, summarize
from sorakit.fileutil import write_bytes_atomic, write_text_atomic
from sorakit.jsonutil import dumps
from sorakit.logging import get_logger
from sorakit.manifest import sha256_file, write_manifest
from sorakit.modeldir import is_model_dir
from sorakit.pipelines import TextToVideoPipeline
from sorakit.tools.synth import synthesize
from sorakit.training.vae import DecoderTuneConfig, VAETrainConfig, train_vae

logger = get_logger("sorakit.builtin.recipe")

PRESET = "builtin/stdit"
PRESET_V3 = "builtin/stdit-v3"
DEFAULT_EXPORT = Path(__file__).resolve().parent / "model"
STAGES = ("data", "vae", "encode", "train", "export", "eval")
# v3 adds `decoder` (sorakit.builtin.decoder): the exported model's VAE decoder tuned on the model's own latents
STAGES_V3 = ("data", "vae", "encode", "train", "export", "decoder", "eval")
# generated 64x64 16-frame videos the decoder stage learns from (~0.5 s each on the 2-core CPU)
V3_DECODER_VIDEOS = 640
# v3's data: sizes (H, W) and lengths drawn uniformly from these lists, so 64x64 and 16 frames are half of it
V3_SIZES = ((64, 64), (64, 64), (64, 96), (96, 64))
V3_LENGTHS = (8, 16, 16, 32)
# v3's share of clips that open a longer path (``synth --long-paths``): the horizon embedding's training data
V3_LONG_PATHS = 0.7
# the share of those long paths shown from a later frame (``synth --path-windows``): a loop's later segments
V3_PATH_WINDOWS = 0.5
# the model v3 starts from: v2 as committed (the package holds the newest model only)
V2_REVISION = "6a1edf8"
V2_PATH = "src/sorakit/builtin/model"
# the largest margin a slowed-down path leaves (``synth --path-slack``); 0 = border to border, as v3-v3.2 trained
V3_PATH_SLACK = 0.0


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
            lat.append(vae.encode(clips_to_tensor(frames), sample=False))
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


# --------------------------------------------------------------------------------------------------
# v3: buckets and reference-frame masks, fine-tuned from v2


def unpack_v2_model(dest: Path, revision: str = V2_REVISION) -> None:
    """v2's model directory as committed at `revision` (``git archive REV src/sorakit/builtin/model`` of the
    checkout this package runs from), its regular files written under `dest`: v3's start since v2 left the
    package."""
    repo = Path(__file__).resolve().parents[3]
    cmd = ["git", "-C", str(repo), "archive", "--format=tar", revision, V2_PATH]
    try:
        archive = subprocess.run(cmd, capture_output=True, check=True).stdout
    except subprocess.CalledProcessError as exc:
        why = exc.stderr.decode(errors="replace").strip()
    except OSError as exc:  # no git
        why = str(exc)
    else:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            for (
                member
            ) in tar.getmembers():  # regular files under V2_PATH only (relative_to refuses any other)
                if member.isfile():
                    target = dest / Path(member.name).relative_to(V2_PATH)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    write_bytes_atomic(target, tar.extractfile(member).read())
        return
    raise UserError(
        f"v2's weights come from git history (revision {revision} of a sorakit checkout), not found from "
        f"{repo}: {why}; in a shallow clone `git fetch --unshallow`, or pass --base MODEL_DIR"
    )


def stage_base_v3(work: Path, source: Path | None = None) -> Path:
    """The model directory `source` (default v2's, :func:`unpack_v2_model`) as ``WORK/base``, once: v3's
    autoencoder and initial weights, kept apart from the package directory that the export stage overwrites."""
    base = work / "base"
    if is_model_dir(base):
        return base
    tmp = work / "base.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    if source is None:
        unpack_v2_model(tmp)
    else:
        shutil.copytree(source, tmp)
    tmp.rename(base)
    return base


def stage_encode_v3(work: Path, csv_path: Path, base: Path) -> Path:
    """`sorakit data encode` with v3's bucket table: every clip's latents at its bucket's shape (resumable)."""
    cache = work / "cache"
    if is_cache_dir(cache):
        return cache
    _sorakit("data", "encode", str(csv_path), "--output", str(cache), "--config", PRESET_V3,
             f"vae.path={base / 'vae'}", "--batch-size", "16", "--shard-size", "1000")  # fmt: skip
    return cache


def stage_train_v3(work: Path, cache: Path, base: Path, overrides: list[str]) -> Path:
    """`sorakit train builtin/stdit-v3 --init WORK/base --resume`: v2's weights on a fresh run, the newest
    checkpoint after an interruption."""
    run = work / "stdit"
    _sorakit("train", PRESET_V3, *overrides, f"vae.path={base / 'vae'}", "--data", str(cache),
             "--output", str(run), "--init", str(base), "--resume")  # fmt: skip
    return run


def v3_eval_tasks() -> dict[str, TaskSpec]:
    """The evaluations of the issue's target table, by name."""
    return {
        "t2v 16x64x64": TaskSpec("t2v"),
        "i2v": TaskSpec("i2v"),
        "extend": TaskSpec("extend"),
        "t2v 16x64x96": TaskSpec("t2v", 16, 64, 96),
        "t2v 16x96x64": TaskSpec("t2v", 16, 96, 64),
        "t2v 32x64x64": TaskSpec("t2v", 32),
        "loop 3": TaskSpec("t2v", loop=3),
    }


def stage_eval_v3(
    work: Path, model_dir: Path, n: int, seed: int = 0, steps: int | None = None
) -> dict[str, Any]:
    """Every task of :func:`v3_eval_tasks` on `n` prompts per set (train / novel / heldout), sampling with
    `steps` (default: the model's): ``eval.json`` ({task: summary}) and ``eval.md`` (a table per task)."""
    pipe = TextToVideoPipeline.from_pretrained(model_dir, device="cpu")
    t = time.perf_counter()
    pipe("a red circle moving to the right", progress=False)
    result: dict[str, Any] = {
        "one_video_s": round(time.perf_counter() - t, 2),
        "threads": torch.get_num_threads(),
    }
    prompts = build_prompts(("train", "novel", "heldout"), n, seed)
    parts = []
    for name, task in v3_eval_tasks().items():
        summary = summarize(
            generate_task(pipe, prompts, task, batch_size=8, seed=seed, num_inference_steps=steps)
        )
        result[name] = summary
        parts.append(f"### {name}\n\n{format_table(summary)}\n")
        logger.info("eval %s:\n%s", name, format_table(summary))
    write_text_atomic(work / "eval.json", dumps(result, indent=2))
    write_text_atomic(work / "eval.md", "\n".join(parts))
    return result


def stage_decoder_v3(work: Path, csv_path: Path, out: Path, num_videos: int, steps: int) -> Path:
    """The exported model's decoder tuned on its own latents (:mod:`sorakit.builtin.decoder`) into
    ``WORK/decoder/vae``, then installed into the model directory `out`: its VAE files replaced and its manifest
    rewritten (nothing is written when they are the same already). ``WORK/decoder`` records the transformer it
    was made for: the stage is skipped for that transformer and starts again for another (a retrained one)."""
    folder, tuned = work / "decoder", work / "decoder" / "vae"
    weights = "diffusion_pytorch_model.safetensors"
    made_for = sha256_file(out / "transformer" / "model.safetensors")
    record = folder / "transformer.sha256"
    if folder.is_dir() and not (record.is_file() and record.read_text().strip() == made_for):
        shutil.rmtree(folder)  # pairs and decoder of another transformer
    if not (tuned / weights).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(record, made_for + "\n")
        pipe = TextToVideoPipeline.from_pretrained(out, device="cpu", dtype="float32")
        refine_decoder(pipe, csv_path, tuned, num_videos, DecoderTuneConfig(steps=steps), progress=True)
    if all(
        (out / "vae" / name).is_file() and sha256_file(out / "vae" / name) == sha256_file(tuned / name)
        for name in ("config.json", weights)
    ):
        return tuned
    for name in ("config.json", weights):
        write_bytes_atomic(out / "vae" / name, (tuned / name).read_bytes())
    write_manifest(out)
    logger.info("decoder: installed %s into %s", tuned, out / "vae")
    return tuned


def _run_stages_v3(args: argparse.Namespace, stages: list[str]) -> None:
    """v3's stages in order, each timed into ``times.json`` (the module doc)."""
    cfg = load_config(PRESET_V3, args.set)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    write_text_atomic(work / "config.toml", cfg.dump())
    csv_path, base, cache, run = work / "data" / "train.csv", work / "base", work / "cache", work / "stdit"
    out = Path(args.export)
    for stage in stages:
        t = time.perf_counter()
        logger.info("recipe v3: stage %s", stage)
        if stage == "data":
            if not (csv_path.is_file() and sum(1 for _ in open(csv_path)) - 1 >= args.num_videos):
                synthesize(work / "data", args.num_videos, seed=cfg.train.seed, workers=args.workers,
                           size=list(V3_SIZES), frames=list(V3_LENGTHS), long_paths=args.long_paths,
                           windows=args.path_windows, slack=args.path_slack)  # fmt: skip
        elif stage == "vae":
            base = stage_base_v3(work, Path(args.base) if args.base else None)
        elif stage == "encode":
            cache = stage_encode_v3(work, csv_path, base)
        elif stage == "train":
            run = stage_train_v3(work, cache, base, args.set)
        elif stage == "export":
            stage_export(run, out)
        elif stage == "decoder":
            stage_decoder_v3(work, csv_path, out, args.decoder_videos, args.decoder_steps)
        elif stage == "eval":
            stage_eval_v3(work, out, args.eval_prompts, steps=args.eval_steps)
        _record_time(work, stage, time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sorakit.builtin.recipe", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="runs/builtin", help="where data, caches and checkpoints go")
    p.add_argument(
        "--export", default=str(DEFAULT_EXPORT), help="model directory to write (default: the package's)"
    )
    p.add_argument("--version", type=int, choices=(2, 3), default=2,
                   help="2: the shipped model's recipe (default); 3: buckets + reference masks from v2's weights")  # fmt: skip
    p.add_argument(
        "--num-videos", type=int, default=None, help="synthetic training videos (default 4000; v3 7000)"
    )
    p.add_argument(
        "--base",
        default=None,
        help=f"v3: the model directory to start from (default: v2's, from this checkout's git history at {V2_REVISION}; "
        "src/sorakit/builtin/model fine-tunes the shipped model)",
    )
    p.add_argument("--long-paths", type=float, default=V3_LONG_PATHS,
                   help=f"v3: share of clips that open a longer path (default {V3_LONG_PATHS})")  # fmt: skip
    p.add_argument("--path-windows", type=float, default=V3_PATH_WINDOWS,
                   help=f"v3: share of the long paths shown from a later frame (default {V3_PATH_WINDOWS})")  # fmt: skip
    p.add_argument("--path-slack", type=float, default=V3_PATH_SLACK,
                   help=f"v3: a path slowed down to fit spans 1 - U(0, S) of the free width (default {V3_PATH_SLACK})")  # fmt: skip
    p.add_argument("--decoder-videos", type=int, default=V3_DECODER_VIDEOS,
                   help=f"v3: generated videos the decoder stage learns from (default {V3_DECODER_VIDEOS})")  # fmt: skip
    p.add_argument("--decoder-steps", type=int, default=DecoderTuneConfig.steps,
                   help=f"v3: decoder tuning steps (default {DecoderTuneConfig.steps})")  # fmt: skip
    p.add_argument("--vae-steps", type=int, default=1200, help="autoencoder training steps (default 1200)")
    p.add_argument("--eval-prompts", type=int, default=24, help="prompts per set in the final evaluation")
    p.add_argument(
        "--eval-steps",
        type=int,
        default=None,
        help="v3: sampling steps of the evaluation (default: the model's)",
    )
    p.add_argument("--stages", default=None,
                   help=f"stages to run (default {','.join(STAGES)}; v3 {','.join(STAGES_V3)})")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the preset")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--workers", type=int, default=1, help="processes for data synthesis")
    args = p.parse_args(argv)
    if args.num_videos is None:
        args.num_videos = 7000 if args.version == 3 else 4000
    run = _run_stages_v3 if args.version == 3 else _run_stages
    valid = STAGES_V3 if args.version == 3 else STAGES
    args.stages = args.stages or ",".join(valid)
    if (code := run_recipe(args, valid, lambda stages: run(args, stages))) != 0:
        return code
    logger.info("recipe: done; stage times in %s", Path(args.workdir) / "times.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
