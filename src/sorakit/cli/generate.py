"""`sorakit generate`: prompts -> H.264 MP4 videos (GIF on request, PNG for 1-frame images), each with a
JSON sidecar holding everything needed to regenerate it (`sorakit generate --replay FILE.json`).

Where the model comes from (one of):
  --model DIR          a sorakit model directory (sorakit export, or the built-in model's layout)
  --preset NAME        an Open-Sora 1.0 setup (opensora/16x256x256, dit/1x256x256-class, pixart/1x512x512, ...)
                       with --ckpt (path, upstream file name or hub id), --text-encoder DIR, --vae DIR
  (nothing)            the built-in model

Every input is checked (sorakit.pipelines.validate) before any weights load: a bad value is one line, exit 2.
Under torchrun the batches are split across the processes (data parallel), and every video is the same as in
a one-process run (each batch has its own seed). With --sequence-parallel (STDiT models) the N processes make
every batch together, each holding 1/N of the frames (latent frames divide by N); rank 0 writes the videos.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sorakit import __version__
from sorakit.errors import UserError
from sorakit.fileutil import check_writable_file, check_writable_folder, write_text_atomic

# torch, the pipeline and sorakit.parity are imported in the functions that need them: a fast --help
VIDEO_SUFFIXES = (".mp4", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate videos (or images) from text prompts or class labels",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("prompt", nargs="?", help="the text prompt (or use --prompt-file / --class-label)")
    what = p.add_argument_group("what to generate")
    what.add_argument("--prompt-file", metavar="FILE", help="one prompt per line; empty lines are skipped (kept under --parity opensora-1.0)")  # fmt: skip
    what.add_argument("--class-label", metavar="N", type=int, action="append", help="class index for class-conditional presets (repeatable)")  # fmt: skip
    what.add_argument("--replay", metavar="JSON", help="regenerate the video a sidecar JSON describes")
    refs = p.add_argument_group("reference frames (STDiT; docs/masks.md)")
    refs.add_argument("--reference", metavar="PATH", action="append", default=[], help="reference image or video, repeatable (default use: an image is frame 0, a video's last K frames the first K)")  # fmt: skip
    refs.add_argument("--mask-strategy", metavar="STR", help="where references go: loop,ref_idx,ref_start,target_start,length,edit_ratio[;...]")  # fmt: skip
    refs.add_argument("--condition-frames", metavar="K", type=int, default=4, help="frames a video reference / the previous segment conditions on (default 4)")  # fmt: skip
    refs.add_argument("--loop", metavar="N", type=int, default=1, help="N segments in one video, each starting with the previous one's last K frames (per-segment prompts: '|0|text|2|text from segment 2')")  # fmt: skip
    out = p.add_argument_group("output")
    out.add_argument("--output", "-o", metavar="FILE", help="output file (.mp4, .gif, or .png for 1 frame)")
    out.add_argument("--output-dir", metavar="DIR", help="folder for NNNN-<slug>.mp4 (default: inference.save_dir)")  # fmt: skip
    out.add_argument("--gif", action="store_true", help="write GIFs instead of MP4s in --output-dir mode")
    model = p.add_argument_group("model")
    model.add_argument("--model", metavar="DIR", help="sorakit model directory (default: the built-in model)")
    model.add_argument("--preset", metavar="NAME", help="inference preset, e.g. opensora/16x256x256")
    model.add_argument("--ckpt", metavar="PATH", help="diffusion model checkpoint: file, upstream name or hub id")  # fmt: skip
    model.add_argument("--text-encoder", metavar="DIR", help="text encoder directory or hub id")
    model.add_argument("--vae", metavar="DIR", help="VAE directory or hub id")
    model.add_argument("--lora", metavar="DIR[:SCALE]", action="append", default=[], help="LoRA adapter folder (sorakit export of a LoRA run; peft format), merged in with SCALE (default 1); repeatable")  # fmt: skip
    model.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides", help="config override, e.g. vae.micro_batch_size=8 (repeatable)")  # fmt: skip
    samp = p.add_argument_group("sampling (defaults from the model or preset)")
    samp.add_argument("--seed", type=int, help="random seed (batch k starting at prompt i uses seed + i)")
    samp.add_argument("--num-frames", type=int, help="frames per video")
    samp.add_argument("--seconds", type=float, help="video length instead of --num-frames (x fps, rounded to what the model allows)")  # fmt: skip
    samp.add_argument("--resolution", metavar="HxW", help="height x width in pixels, e.g. 256x256")
    samp.add_argument("--resolution-name", metavar="NAME", help="144p, 240p, 360p, 480p, 720p, 1080p or a pixel count, instead of --resolution")  # fmt: skip
    samp.add_argument("--aspect-ratio", metavar="W:H", help="16:9 (widescreen), 9:16 (portrait), 1:1, ... (with --resolution-name)")  # fmt: skip
    samp.add_argument("--steps", type=int, help="sampling steps")
    samp.add_argument("--sampler", help="iddpm, dpm-solver, ddim or rflow")
    samp.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    samp.add_argument("--guidance-interval", metavar="LO,HI", help="guide only at model timesteps LO..HI (0-1000, 1000 = noise); other steps skip the unconditional half")  # fmt: skip
    samp.add_argument("--fps", type=float, help="frames per second of the written video")
    samp.add_argument("--batch-size", type=int, help="videos sampled at once (per process)")
    samp.add_argument("--parity", metavar="NAME",
                      help="reproduce an original's samples: opensora-1.0 (its noise, guidance, precision and "
                           "uint8 conversion; see docs/differences.md)")  # fmt: skip
    run_ = p.add_argument_group("runtime")
    run_.add_argument("--dtype", help="auto, fp32, bf16 or fp16 (default auto: bf16/fp16 on GPU, fp32 on CPU)")  # fmt: skip
    run_.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    run_.add_argument("--threads", type=int, help="CPU threads for torch (default: one per core; use fewer when "
                      "other programs keep the cores busy, or each step waits on descheduled threads)")  # fmt: skip
    run_.add_argument("--no-progress", action="store_true", help="no progress bar")
    run_.add_argument("--force", action="store_true", help="start even when the memory estimate exceeds what is free (or SORAKIT_FORCE_MEMORY=1)")  # fmt: skip
    run_.add_argument("--vae-batch", metavar="N", type=int, help="frames decoded at once (less memory; default all)")  # fmt: skip
    run_.add_argument("--offload", action="store_true", help="keep only the module in use on the accelerator")
    run_.add_argument("--cache", metavar="teacache[:T]", help="step caching (STDiT): skip the transformer's blocks on steps whose input changed less than T (accumulated relative L1, default 0.2; 0 = exact); none = off")  # fmt: skip
    run_.add_argument("--compile", action="store_true", help="torch.compile the transformer (slow first call)")  # fmt: skip
    run_.add_argument("--sequence-parallel", action="store_true",
                      help="under torchrun: split each video's frames over the processes (STDiT models only)")  # fmt: skip
    p.set_defaults(func=run)


# The plan: every output, seed and setting fixed before weights load. FLAG_NAMES: the inputs as errors name them
FLAG_NAMES = {k: "--" + k.replace("_", "-") for k in ("num_frames", "steps", "guidance", "fps", "batch_size",
              "threads", "seed", "seconds", "resolution", "resolution_name", "aspect_ratio")}  # fmt: skip


@dataclass(eq=False)  # batches are told apart by identity (equal prompts and seeds can repeat)
class Batch:
    """Prompts sampled together with one seed; ``outputs[j]`` is where video j goes (None = not written)."""

    prompts: list[str]
    seed: int
    indices: list[int]
    outputs: list[Path | None]


@dataclass
class Plan:
    source: Any  # sorakit.pipelines.validate.ModelSource
    settings: Any  # sorakit.pipelines.validate.Settings
    parity: str | None = None  # the parity profile's name (inference.parity)
    batches: list[Batch] = field(default_factory=list)


def slugify(text: str, max_len: int = 48) -> str:
    """'A cat, playing!' -> 'a-cat-playing' (ASCII letters/digits, at most `max_len` characters)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len].rstrip("-")
    return slug or "video"


def _check_suffix(path: Path, num_frames: int) -> None:
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
        raise UserError(f"--output {path}: unsupported file type (use .mp4, .gif, or .png for 1 frame)")
    if suffix in IMAGE_SUFFIXES and num_frames != 1:
        raise UserError(f"--output {path}: an image file holds 1 frame, but {num_frames} frames are requested")  # fmt: skip


def _read_prompts(args: argparse.Namespace, keep_empty: bool = False) -> list[tuple[int, str]]:
    """(line or label index, prompt) from the one prompt source given (`keep_empty`: see read_prompt_file)."""
    sources = [s for s in (args.prompt is not None, bool(args.prompt_file), bool(args.class_label)) if s]
    if len(sources) != 1:
        raise UserError("give exactly one of: a PROMPT, --prompt-file FILE, --class-label N")
    if args.prompt is not None:
        if not args.prompt.strip():
            raise UserError("the prompt is empty")
        return [(0, args.prompt.strip())]
    if args.class_label:
        return [(i, str(label)) for i, label in enumerate(args.class_label)]
    from sorakit.pipelines.validate import read_prompt_file

    return read_prompt_file(args.prompt_file, keep_empty)


def _output_paths(
    args: argparse.Namespace, items: list[tuple[int, str]], num_frames: int, save_dir: str
) -> list[Path]:
    """One output file per prompt (--output, or DIR/NNNN-<slug>.mp4), its folder proven writable."""
    if args.output:
        if len(items) > 1:
            raise UserError("--output names one file: use --output-dir for several prompts or labels")
        if args.output_dir:
            raise UserError("use either --output or --output-dir")
        _check_suffix(Path(args.output), num_frames)
        paths = [Path(args.output)]
    else:
        suffix = ".png" if num_frames == 1 else (".gif" if args.gif else ".mp4")
        folder = Path(args.output_dir or save_dir)
        labels = [f"class-{p}" if args.class_label else p for _, p in items]
        paths = [folder / f"{i:04d}-{slugify(label)}{suffix}" for (i, _), label in zip(items, labels)]
    for folder in dict.fromkeys(p.parent for p in paths):
        check_writable_folder(folder)
    for path in paths:
        if path.is_dir():
            raise UserError(f"output {path} is a directory")
    return paths


def make_plan(args: argparse.Namespace) -> Plan:
    """Validate the arguments and decide every output, seed and setting; raises UserError."""
    from sorakit import parity
    from sorakit.pipelines import TextToVideoPipeline
    from sorakit.pipelines.validate import ModelSource, flag_overrides, parse_resolution

    if args.replay:
        return _replay_plan(args)
    parity.get_profile(args.parity)  # a bad name fails before anything is read
    items = _read_prompts(args)
    overrides = flag_overrides(args.overrides, args.parity, args.guidance_interval, args.vae_batch, args.offload, args.compile, args.cache)  # fmt: skip
    source = ModelSource.choose(args.model, args.preset, args.ckpt, args.text_encoder, args.vae, overrides, args.lora)  # fmt: skip
    cfg = source.config()
    if args.prompt_file and (profile := parity.get_profile(cfg.inference.parity)) is not None:
        items = _read_prompts(args, keep_empty=profile.keep_empty_prompts)  # as the original read them
    height, width = parse_resolution(args.resolution, "--resolution") if args.resolution else (None, None)
    settings = TextToVideoPipeline.validate(
        cfg, source, prompts=[p for _, p in items], class_labels=bool(args.class_label),
        num_frames=args.num_frames, height=height, width=width, steps=args.steps, sampler=args.sampler,
        guidance=args.guidance, fps=args.fps, batch_size=args.batch_size, seed=args.seed, device=args.device,
        dtype=args.dtype, threads=args.threads, names=FLAG_NAMES, world_size=int(os.environ.get("WORLD_SIZE", "1")),
        sequence_parallel=args.sequence_parallel, reference=args.reference, mask_strategy=args.mask_strategy,
        condition_frames=args.condition_frames, loop=args.loop, force_memory=args.force, seconds=args.seconds, resolution_name=args.resolution_name, aspect_ratio=args.aspect_ratio,
    )  # fmt: skip
    paths = _output_paths(args, items, settings.num_frames, cfg.inference.save_dir)
    # batches, each with its own seed (seed + position of its first prompt): the same videos come out
    # however the batches are spread over processes (under --parity: one seed, one RNG stream for all)
    plan, bs = Plan(source, settings, cfg.inference.parity), settings.batch_size
    step = 0 if cfg.inference.parity else 1
    for start in range(0, len(items), bs):
        chunk = items[start : start + bs]
        plan.batches.append(Batch(
            prompts=[p for _, p in chunk], seed=settings.seed + step * start, indices=[i for i, _ in chunk],
            outputs=paths[start : start + bs],
        ))  # fmt: skip
    return plan


def _replay_plan(args: argparse.Namespace) -> Plan:
    """Rebuild the plan of one video from its sidecar."""
    from sorakit.pipelines import TextToVideoPipeline
    from sorakit.pipelines.validate import read_sidecar, replay_references

    if args.prompt is not None or args.prompt_file or args.class_label:
        raise UserError("--replay takes its prompt from the sidecar: give no prompt")
    path = Path(args.replay)
    if not path.is_file():
        raise UserError(f"--replay: no such file: {path}")
    side = read_sidecar(path)
    meta, source = side.meta, side.source
    out = Path(args.output) if args.output else path.with_name(f"{path.stem}-replay{side.output.suffix}")
    if source.kind == "model" and not Path(source.model).is_dir():
        raise UserError(f"--replay: the model directory {source.model} is gone")
    settings = TextToVideoPipeline.validate(
        source.config(), source, **side.settings, batch_size=len(side.prompts), seed=meta["batch"]["seed"],
        names=FLAG_NAMES,
        device=args.device or str(meta.get("device", "auto")).split(":")[0], dtype=args.dtype or meta.get("dtype"),
        **replay_references(meta),
    )  # fmt: skip
    _check_suffix(out, settings.num_frames)
    check_writable_file(out)
    outputs = [out if k == side.index else None for k in range(len(side.prompts))]
    # under --parity the batches before this one drew from the same RNG stream: run them again, unwritten
    batches = [Batch(list(p), settings.seed, [], [None] * len(p)) for p in side.previous]
    batches.append(Batch(side.prompts, settings.seed, side.indices, outputs))
    return Plan(source, settings, meta.get("parity"), batches)


def sidecar(plan: Plan, batch: Batch, j: int, device: Any, encoded_prompt: str) -> dict[str, Any]:
    out, s = batch.outputs[j], plan.settings
    return {
        "sorakit_version": __version__, "prompt": batch.prompts[j], "index": batch.indices[j],
        "output": out.name if out is not None else None, "seed": batch.seed, "num_frames": s.num_frames,
        "height": s.height, "width": s.width, "fps": s.fps, "steps": s.steps, "sampler": s.sampler,
        "guidance": s.guidance, "model": plan.source.to_dict(), "parity": plan.parity,
        "encoded_prompt": encoded_prompt, "dtype": s.dtype, "device": str(device),
        "batch": {"prompts": batch.prompts, "indices": batch.indices, "index": j, "seed": batch.seed,
                  **({"previous": [b.prompts for b in plan.batches[: plan.batches.index(batch)]]}
                     if plan.parity else {})},
        "regenerate": "sorakit generate --replay THIS.json --output OUT", **s.reference_record(),
    }  # fmt: skip


def write_output(path: Path, frames: Any, fps: float, crf: int | None = None) -> None:
    """uint8 ``[T, H, W, 3]`` -> MP4/GIF (H.264 quality `crf`, default the writer's), or an image for 1 frame."""
    from sorakit.data.video import write_image, write_video

    if path.suffix.lower() in IMAGE_SUFFIXES:
        write_image(path, frames[0])
    else:
        write_video(path, frames, fps=fps, **({} if crf is None else {"crf": crf}))


def run(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    from sorakit import parity
    from sorakit.logging import get_logger
    from sorakit.parallel import apply_sequence_parallel, inference_processes
    from sorakit.pipelines import TextToVideoPipeline
    from sorakit.runtime import set_threads

    set_threads(args.threads)
    log, s, sp = get_logger("sorakit.generate"), plan.settings, bool(args.sequence_parallel)
    profile = parity.get_profile(plan.parity)
    with inference_processes(s.device, sequence_parallel=sp) as state:
        # sequence parallel: every rank samples every batch with the same seed; data parallel: a share each
        mine = plan.batches if sp else plan.batches[state.rank :: state.world_size]
        if mine:
            if profile is not None:  # upstream seeds once, before building (model init consumes the RNG)
                parity.apply_runtime(profile)
                parity.seed_everything(s.seed)
            pipe = TextToVideoPipeline.load(plan.source, device=state.device, dtype=s.dtype)
            if sp:
                apply_sequence_parallel(pipe.transformer, state.sp_group)
            log.info("model ready on %s (%s); %d batch(es) to sample%s", pipe.device, s.dtype, len(plan.batches),
                     f", sequence parallel over {state.world_size} processes" if sp else "")  # fmt: skip
        for batch in mine:
            frames = pipe(batch.prompts, **s.call_kwargs(), seed=None if profile else batch.seed, output_type="np",
                          progress=not args.no_progress and state.is_main)  # fmt: skip
            for j, out in enumerate(batch.outputs):
                if out is not None and (state.is_main or not sp):
                    write_output(out, frames[j], s.fps, crf=profile.crf if profile else None)
                    meta = sidecar(plan, batch, j, pipe.device, pipe.encoded_prompt(batch.prompts[j]))
                    write_text_atomic(out.with_suffix(".json"), json.dumps(meta, indent=2, allow_nan=False) + "\n")  # fmt: skip
                    print(out, flush=True)
    return 0
