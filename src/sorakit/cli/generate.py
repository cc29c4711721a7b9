"""`sorakit generate`: prompts -> H.264 MP4 videos (GIF on request, PNG for 1-frame images), each with a
JSON sidecar holding everything needed to regenerate it (`sorakit generate --replay FILE.json`).

Where the model comes from (one of):
  --model DIR          a sorakit model directory (sorakit export, or the built-in model's layout)
  --preset NAME        an Open-Sora 1.0 setup (opensora/16x256x256, dit/1x256x256-class, pixart/1x512x512, ...)
                       with --ckpt (path, upstream file name or hub id), --text-encoder DIR, --vae DIR
  (nothing)            the built-in model

Every input is checked before any weights are loaded: a bad value is one line and exit status 2.
Under torchrun the batches are split across the processes (data parallel): N GPUs make N batches at
once, and every video is the same as in a one-process run (each batch has its own seed).
With --sequence-parallel (STDiT models) the N processes instead make every batch together, each holding
1/N of the frames (latent frames must divide by N); rank 0 writes the videos.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sorakit import parity
from sorakit.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate videos (or images) from text prompts or class labels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", nargs="?", help="the text prompt (or use --prompt-file / --class-label)")
    what = p.add_argument_group("what to generate")
    what.add_argument("--prompt-file", metavar="FILE",
                      help="one prompt per line; empty lines are skipped (kept under --parity opensora-1.0)")  # fmt: skip
    what.add_argument("--class-label", metavar="N", type=int, action="append",
                      help="class index for class-conditional presets (repeatable)")  # fmt: skip
    what.add_argument("--replay", metavar="JSON", help="regenerate the video a sidecar JSON describes")
    out = p.add_argument_group("output")
    out.add_argument("--output", "-o", metavar="FILE", help="output file (.mp4, .gif, or .png for 1 frame)")
    out.add_argument(
        "--output-dir", metavar="DIR", help="folder for DIR/NNNN-<slug>.mp4 (default: inference.save_dir)"
    )
    out.add_argument("--gif", action="store_true", help="write GIFs instead of MP4s in --output-dir mode")
    model = p.add_argument_group("model")
    model.add_argument("--model", metavar="DIR", help="sorakit model directory (default: the built-in model)")
    model.add_argument("--preset", metavar="NAME", help="inference preset, e.g. opensora/16x256x256")
    model.add_argument(
        "--ckpt", metavar="PATH", help="diffusion model checkpoint: file, upstream name or hub id"
    )
    model.add_argument("--text-encoder", metavar="DIR", help="text encoder directory or hub id")
    model.add_argument("--vae", metavar="DIR", help="VAE directory or hub id")
    model.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                       help="config override, e.g. vae.micro_batch_size=8 (repeatable)")  # fmt: skip
    samp = p.add_argument_group("sampling (defaults from the model or preset)")
    samp.add_argument("--seed", type=int, help="random seed (batch k starting at prompt i uses seed + i)")
    samp.add_argument("--num-frames", type=int, help="frames per video")
    samp.add_argument("--resolution", metavar="HxW", help="height x width in pixels, e.g. 256x256")
    samp.add_argument("--steps", type=int, help="sampling steps")
    samp.add_argument("--sampler", help="iddpm, dpm-solver, ddim or rflow")
    samp.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    samp.add_argument("--fps", type=float, help="frames per second of the written video")
    samp.add_argument("--batch-size", type=int, help="videos sampled at once (per process)")
    samp.add_argument("--parity", metavar="NAME",
                      help="reproduce an original's samples: opensora-1.0 (its noise, guidance, precision and "
                           "uint8 conversion; see docs/differences.md)")  # fmt: skip
    run_ = p.add_argument_group("runtime")
    run_.add_argument(
        "--dtype", help="auto, fp32, bf16 or fp16 (default auto: bf16/fp16 on GPU, fp32 on CPU)"
    )
    run_.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    run_.add_argument("--threads", type=int,
                      help="CPU threads for torch (default: torch's choice, one per core; use fewer when other "
                           "programs keep the cores busy, or each step waits on descheduled threads)")  # fmt: skip
    run_.add_argument("--no-progress", action="store_true", help="no progress bar")
    run_.add_argument("--sequence-parallel", action="store_true",
                      help="under torchrun: split each video's frames over the processes (STDiT models only)")  # fmt: skip
    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------------
# The plan: everything decided and validated before any weights are loaded


@dataclass
class Batch:
    """Prompts sampled together with one seed; ``outputs[j]`` is where video j goes (None = not written)."""

    prompts: list[str]
    seed: int
    indices: list[int]
    outputs: list[Path | None]


@dataclass
class Plan:
    source: dict[str, Any]
    cfg: Any
    num_frames: int
    height: int
    width: int
    steps: int
    sampler: str
    guidance: float
    fps: float
    batch_size: int
    seed: int
    dtype: str
    device: str
    batches: list[Batch] = field(default_factory=list)


def slugify(text: str, max_len: int = 48) -> str:
    """'A cat, playing!' -> 'a-cat-playing' (ASCII letters/digits, at most `max_len` characters)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    slug = slug[:max_len].rstrip("-")
    return slug or "video"


def parse_resolution(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(-?\d+)\s*[x,X*]\s*(-?\d+)\s*", text)
    if not m:
        raise UserError(f"--resolution must look like HxW (e.g. 256x256), got {text!r}")
    h, w = int(m.group(1)), int(m.group(2))
    if h < 1 or w < 1:
        raise UserError(f"--resolution must be positive, got {h}x{w}")
    return h, w


def preset_name(name: str) -> str:
    """'opensora/16x256x256' -> 'opensora/inference/16x256x256' (the inference preset of that family)."""
    from sorakit.config import PRESET_DIR

    if name.endswith((".toml", ".py")) or "/inference/" in name:
        return name
    family, _, rest = name.partition("/")
    if rest and (PRESET_DIR / family / "inference" / f"{rest}.toml").is_file():
        return f"{family}/inference/{rest}"
    return name


def _looks_local(name: str) -> bool:
    from sorakit.hub import _HUB_FILE, _HUB_ID, KNOWN_CHECKPOINTS

    return not (
        _HUB_ID.match(name)
        or _HUB_FILE.match(name)
        or name in KNOWN_CHECKPOINTS
        or name.startswith("builtin:")
    )


def _check_exists(name: str | None, what: str, flag: str, want_dir: bool) -> None:
    """A local-looking path must exist now (hub ids are fetched later)."""
    if not name or not _looks_local(name):
        return
    path = Path(os.path.expanduser(name))
    from sorakit.hub import download_hint

    if want_dir and not path.is_dir():
        raise UserError(f"{flag}: no such directory: {name}{download_hint(name)}")
    if not want_dir and not path.exists():
        raise UserError(f"{flag}: no such file: {name}{download_hint(name)}")


def _source_config(source: dict[str, Any]):  # noqa: ANN202 - Config
    """The (light) config of the chosen model: no weights are read."""
    from sorakit.config import apply_overrides, load_config
    from sorakit.modeldir import builtin_model_dir, read_model_dir

    if source["kind"] == "preset":
        cfg = load_config(source["preset"], source["overrides"])
    else:
        root = builtin_model_dir() if source["kind"] == "builtin" else source["model"]
        _, cfg = read_model_dir(root)
        apply_overrides(cfg, source["overrides"])
    if source.get("text_encoder"):
        cfg.text_encoder.path = source["text_encoder"]
    if source.get("vae"):
        cfg.vae.path = source["vae"]
    return cfg


def _geometry(source: dict[str, Any], cfg: Any) -> tuple[int, tuple[int, int, int]]:
    """(VAE downsampling factor, transformer patch size) read from config files only."""
    factor = 8  # the Stable Diffusion VAE, when its config is not on disk yet
    from sorakit.encoders.vae import BUILTIN_VAE, BUILTIN_VAE_DIR

    vae_path = str(BUILTIN_VAE_DIR) if cfg.vae.path == BUILTIN_VAE else cfg.vae.path
    if vae_path and Path(vae_path).is_dir():
        for cand in (Path(vae_path) / "config.json", Path(vae_path) / "vae" / "config.json"):
            if cand.is_file():
                try:
                    factor = 2 ** (len(json.loads(cand.read_text())["block_out_channels"]) - 1)
                except (KeyError, ValueError, TypeError) as exc:
                    raise UserError(f"{cand}: not a diffusers AutoencoderKL config ({exc})") from exc
                break
    patch: Any = None
    if source["kind"] in ("model", "builtin"):
        from sorakit.modeldir import read_model_dir
        from sorakit.models import read_model_config

        root = source["model"] if source["kind"] == "model" else None
        if root is None:
            from sorakit.modeldir import builtin_model_dir

            root = builtin_model_dir()
        transformer_dir, _ = read_model_dir(root)
        patch = read_model_config(transformer_dir)["config"].get("patch_size")
    else:
        from sorakit.models import MODELS

        if cfg.model.type not in MODELS:
            raise UserError(f"unknown model '{cfg.model.type}' (valid: {', '.join(sorted(MODELS))})")
        patch = cfg.model.arch.get("patch_size", MODELS[cfg.model.type][1].get("patch_size"))
    patch = tuple(int(v) for v in (patch or (1, 2, 2)))
    return factor, patch  # type: ignore[return-value]


def _check_writable(path: Path) -> None:
    """The output file `path` is not a folder, and its folder can be written."""
    if path.is_dir():
        raise UserError(f"output {path} is a directory")
    _check_folder_writable(path.parent)


def _check_folder_writable(folder: Path) -> None:
    """Create `folder` and prove a file can be written there (works as root too)."""
    for ancestor in (folder, *folder.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise UserError(f"cannot write to {folder}: {ancestor} is a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".sorakit-write-test.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UserError(f"cannot write to {folder}: {exc.strerror or exc}") from exc


def _read_prompt_file(path: str, keep_empty: bool = False) -> list[tuple[int, str]]:
    """(number, stripped prompt) per non-empty line; with ``keep_empty`` (line index, line) for every line, as Open-Sora 1.0
    read its prompt files (``readlines``: no extra prompt after a final newline)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--prompt-file: no such file: {path}")
    try:
        lines = p.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise UserError(f"--prompt-file {path} is not UTF-8 text") from exc
    if lines and lines[-1] == "":
        lines.pop()
    if keep_empty:
        items = [(i, line.strip()) for i, line in enumerate(lines)]
    else:  # numbered by prompt, not by line: blank lines do not use up output numbers
        items = list(enumerate(line.strip() for line in lines if line.strip()))
    if not items:
        raise UserError(f"--prompt-file {path} has no prompts (all lines are empty)")
    return items


def make_plan(args: argparse.Namespace) -> Plan:
    """Validate the arguments and decide every output, seed and setting; raises UserError."""
    if args.replay:
        return _replay_plan(args)
    sources = [s for s in (args.prompt is not None, bool(args.prompt_file), bool(args.class_label)) if s]
    if len(sources) != 1:
        raise UserError("give exactly one of: a PROMPT, --prompt-file FILE, --class-label N")
    if args.model and args.preset:
        raise UserError("use either --model or --preset, not both")

    source: dict[str, Any] = {
        "kind": "preset" if args.preset else ("model" if args.model else "builtin"),
        "model": str(Path(args.model).resolve()) if args.model else None,
        "preset": preset_name(args.preset) if args.preset else None,
        "ckpt": args.ckpt,
        "text_encoder": args.text_encoder,
        "vae": args.vae,
        "overrides": list(args.overrides) + ([f"inference.parity={args.parity}"] if args.parity else []),
    }
    parity.get_profile(args.parity)  # a bad name fails before anything is read
    if args.prompt is not None:
        if not args.prompt.strip():
            raise UserError("the prompt is empty")
        items = [(0, args.prompt.strip())]
    elif args.prompt_file:
        items = _read_prompt_file(args.prompt_file)
    else:
        items = [(i, str(label)) for i, label in enumerate(args.class_label)]

    if args.model and not Path(args.model).is_dir():
        raise UserError(f"--model: no such directory: {args.model}")
    _check_exists(args.ckpt, "checkpoint", "--ckpt", want_dir=False)
    _check_exists(args.text_encoder, "text encoder", "--text-encoder", want_dir=True)
    _check_exists(args.vae, "VAE", "--vae", want_dir=True)
    cfg = _source_config(source)
    if args.prompt_file and (profile := parity.get_profile(cfg.inference.parity)) is not None:
        items = _read_prompt_file(args.prompt_file, keep_empty=profile.keep_empty_prompts)  # as it read them

    plan = _settings(args, source, cfg)
    if args.class_label and cfg.text_encoder.type != "classes":
        raise UserError(
            "--class-label is for class-conditional models (dit/..-class, latte/..-class): give a prompt"
        )
    _check_prompts(cfg, items)

    # outputs
    single_suffix = ".png" if plan.num_frames == 1 else (".gif" if args.gif else ".mp4")
    if args.output:
        if len(items) > 1:
            raise UserError("--output names one file: use --output-dir for several prompts or labels")
        if args.output_dir:
            raise UserError("use either --output or --output-dir")
        out = Path(args.output)
        _check_suffix(out, plan.num_frames)
        paths = [out]
    else:
        folder = Path(args.output_dir or cfg.inference.save_dir)
        paths = []
        for index, prompt in items:
            label = f"class-{prompt}" if args.class_label else prompt
            paths.append(folder / f"{index:04d}-{slugify(label)}{single_suffix}")
    for folder in dict.fromkeys(p.parent for p in paths):
        _check_folder_writable(folder)
    for path in paths:
        if path.is_dir():
            raise UserError(f"output {path} is a directory")

    # batches, each with its own seed (seed + position of its first prompt): the same videos come out
    # however the batches are spread over processes (under --parity: one seed, one RNG stream for all)
    bs = plan.batch_size
    step = 0 if cfg.inference.parity else 1
    for start in range(0, len(items), bs):
        chunk = items[start : start + bs]
        plan.batches.append(Batch(
            prompts=[p for _, p in chunk], seed=plan.seed + step * start, indices=[i for i, _ in chunk],
            outputs=paths[start : start + bs],
        ))  # fmt: skip
    return plan


def _check_suffix(path: Path, num_frames: int) -> None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        if num_frames != 1:
            raise UserError(
                f"--output {path}: an image file holds 1 frame, but {num_frames} frames are requested"
            )
    elif suffix not in VIDEO_SUFFIXES:
        raise UserError(f"--output {path}: unsupported file type (use .mp4, .gif, or .png for 1 frame)")


def _check_prompts(cfg: Any, items: list[tuple[int, str]]) -> None:
    if cfg.text_encoder.type == "classes":
        from sorakit.encoders.text import CLASS_DATASETS

        name = (cfg.text_encoder.path or "").lower()
        num = int(name) if name.isdigit() else CLASS_DATASETS.get(name)
        for _, p in items:
            if not p.lstrip("-").isdigit():
                raise UserError(
                    f"this model is class-conditional: give --class-label N, not the text {p[:40]!r}"
                )
            if num is not None and not 0 <= int(p) < num:
                raise UserError(f"class label {p} out of range 0..{num - 1}")


def _settings(args: argparse.Namespace, source: dict[str, Any], cfg: Any) -> Plan:
    """Sampling settings: flags over the model's/preset's defaults, validated."""
    from sorakit.diffusion import build_sampler
    from sorakit.pipelines.text_to_video import SAMPLERS
    from sorakit.runtime import resolve_device, resolve_dtype

    num_frames = cfg.inference.num_frames if args.num_frames is None else args.num_frames
    if num_frames < 1:
        raise UserError(f"--num-frames must be positive, got {num_frames}")
    height, width = parse_resolution(args.resolution) if args.resolution else tuple(cfg.inference.image_size)
    steps = cfg.scheduler.num_sampling_steps if args.steps is None else args.steps
    if steps < 1:
        raise UserError(f"--steps must be positive, got {steps}")
    sampler = (args.sampler or cfg.scheduler.type).lower()
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler '{sampler}' (valid: {', '.join(SAMPLERS)})")
    build_sampler(
        sampler, steps, num_timesteps=cfg.scheduler.num_timesteps
    )  # its own checks (e.g. DPM order)
    guidance = cfg.scheduler.cfg_scale if args.guidance is None else args.guidance
    if guidance < 0:
        raise UserError(f"--guidance must be >= 0, got {guidance}")
    fps = cfg.inference.fps if args.fps is None else args.fps
    if fps <= 0:
        raise UserError(f"--fps must be positive, got {fps}")
    batch_size = cfg.inference.batch_size if args.batch_size is None else args.batch_size
    if batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be positive, got {threads}")
    device = resolve_device(args.device or cfg.inference.device)
    profile = parity.get_profile(cfg.inference.parity)
    dtype = resolve_dtype(
        args.dtype or (profile and parity.runtime_dtype(profile, device)) or cfg.inference.dtype, device
    )
    factor, patch = _geometry(source, cfg)
    if height % (factor * patch[1]) or width % (factor * patch[2]) or num_frames % patch[0]:
        raise UserError(
            f"{num_frames}x{height}x{width} does not fit the model: height and width must be multiples of "
            f"{factor * patch[1]}x{factor * patch[2]} (VAE /{factor}, patch {patch[1]}x{patch[2]})"
            + (f" and frames a multiple of {patch[0]}" if patch[0] > 1 else "")
        )
    from sorakit.runtime import dtype_name

    return Plan(
        source=source, cfg=cfg, num_frames=num_frames, height=height, width=width, steps=steps, sampler=sampler,
        guidance=float(guidance), fps=float(fps), batch_size=batch_size,
        seed=cfg.inference.seed if args.seed is None else args.seed, dtype=dtype_name(dtype), device=str(device),
    )  # fmt: skip


def _replay_plan(args: argparse.Namespace) -> Plan:
    """Rebuild the plan of one video from its sidecar."""
    if args.prompt is not None or args.prompt_file or args.class_label:
        raise UserError("--replay takes its prompt from the sidecar: give no prompt")
    path = Path(args.replay)
    if not path.is_file():
        raise UserError(f"--replay: no such file: {path}")
    try:
        meta = json.loads(path.read_text())
        source = meta["model"]
        batch = meta["batch"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"--replay {path}: not a sorakit sidecar ({exc})") from exc
    out = (
        Path(args.output)
        if args.output
        else path.with_name(f"{path.stem}-replay{Path(meta['output']).suffix}")
    )
    ns = argparse.Namespace(
        num_frames=meta["num_frames"], resolution=f"{meta['height']}x{meta['width']}", steps=meta["steps"],
        sampler=meta["sampler"], guidance=meta["guidance"], fps=meta["fps"], batch_size=len(batch["prompts"]),
        seed=batch["seed"], device=args.device or str(meta.get("device", "auto")).split(":")[0],
        dtype=args.dtype or meta.get("dtype"),
    )  # fmt: skip
    if source["kind"] == "model" and not Path(source["model"]).is_dir():
        raise UserError(f"--replay: the model directory {source['model']} is gone")
    cfg = _source_config(source)
    plan = _settings(ns, source, cfg)
    _check_suffix(out, plan.num_frames)
    _check_writable(out)
    outputs: list[Path | None] = [None] * len(batch["prompts"])
    outputs[batch["index"]] = out
    # under --parity the batches before this one drew from the same RNG stream: run them again, unwritten
    plan.batches = [
        Batch(list(p), int(batch["seed"]), [], [None] * len(p)) for p in batch.get("previous", [])
    ]
    plan.batches.append(Batch(list(batch["prompts"]), int(batch["seed"]), list(batch["indices"]), outputs))
    return plan


# --------------------------------------------------------------------------------------------------
# Running it


def load_pipeline(plan: Plan, device: Any):  # noqa: ANN201 - TextToVideoPipeline
    from sorakit.pipelines import TextToVideoPipeline

    src = plan.source
    if src["kind"] == "preset":
        return TextToVideoPipeline.from_config(plan.cfg, ckpt=src["ckpt"], device=device, dtype=plan.dtype)
    pipe = TextToVideoPipeline.from_pretrained(
        src["model"] if src["kind"] == "model" else None, device=device, dtype=plan.dtype,
        text_encoder=src["text_encoder"], vae=src["vae"], overrides=src["overrides"], ckpt=src["ckpt"],
    )  # fmt: skip
    return pipe


def sidecar(plan: Plan, batch: Batch, j: int, pipe: Any) -> dict[str, Any]:
    from sorakit import __version__

    out = batch.outputs[j]
    return {
        "sorakit_version": __version__,
        "prompt": batch.prompts[j],
        "index": batch.indices[j],
        "output": out.name if out is not None else None,
        "seed": batch.seed,
        "num_frames": plan.num_frames,
        "height": plan.height,
        "width": plan.width,
        "fps": plan.fps,
        "steps": plan.steps,
        "sampler": plan.sampler,
        "guidance": plan.guidance,
        "model": plan.source,
        "parity": plan.cfg.inference.parity,
        "encoded_prompt": _encoded_prompt(pipe, batch.prompts[j]),
        "dtype": plan.dtype,
        "device": str(pipe.device),
        "batch": {
            "prompts": batch.prompts,
            "indices": batch.indices,
            "index": j,
            "seed": batch.seed,
            **_previous_batches(plan, batch),
        },  # fmt: skip
        "regenerate": "sorakit generate --replay THIS.json --output OUT",
    }


def _encoded_prompt(pipe: Any, prompt: str) -> str:
    """The text the encoder tokenised for ``prompt`` (T5: the cleaned caption)."""
    preprocess = getattr(pipe.text_encoder, "preprocess", None)
    return preprocess([prompt])[0] if preprocess is not None else prompt


def _previous_batches(plan: Plan, batch: Batch) -> dict[str, Any]:
    """Under --parity, the prompts of the batches sampled before ``batch`` (they moved the RNG stream)."""
    if not plan.cfg.inference.parity:
        return {}
    position = next(i for i, b in enumerate(plan.batches) if b is batch)
    return {"previous": [b.prompts for b in plan.batches[:position]]}


def write_output(path: Path, frames: Any, fps: float, crf: int | None = None) -> None:
    """uint8 ``[T, H, W, 3]`` -> MP4/GIF (``crf``: H.264 quality, default the writer's), or an image for
    1 frame."""
    from sorakit.data.video import write_image, write_video

    if path.suffix.lower() in IMAGE_SUFFIXES:
        write_image(path, frames[0])
    else:
        write_video(path, frames, fps=fps, **({} if crf is None else {"crf": crf}))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _check_sequence_parallel(plan: Plan, world: int) -> None:
    """--sequence-parallel needs torchrun with >1 process, an STDiT model and latent frames that split."""
    if world < 2:
        raise UserError(
            "--sequence-parallel needs several processes: launch with torchrun --nproc_per_node N (N > 1)"
        )
    model_type = str(plan.cfg.model.type)
    if not model_type.lower().startswith("stdit"):
        raise UserError(f"--sequence-parallel works with STDiT models only, not {model_type}")
    _, patch = _geometry(plan.source, plan.cfg)
    latent_frames = plan.num_frames // patch[0]
    if latent_frames % world:
        raise UserError(
            f"--sequence-parallel: {plan.num_frames} frames give {latent_frames} latent frames, "
            f"which do not split over {world} processes"
        )


def run(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    sp = bool(getattr(args, "sequence_parallel", False))
    if sp:
        _check_sequence_parallel(plan, world)
    profile = parity.get_profile(plan.cfg.inference.parity)
    if profile is not None and world > 1 and not sp:
        raise UserError(
            f"--parity {profile.name} runs every batch in one RNG stream: use one process or --sequence-parallel"
        )

    import torch

    from sorakit.logging import get_logger

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    log = get_logger("sorakit.generate")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device: Any = plan.device
    if world > 1:
        import torch.distributed as dist

        if device.startswith("cuda"):
            device = f"cuda:{local_rank % torch.cuda.device_count()}"
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    try:
        # sequence parallel: every rank samples every batch with the same seed; data parallel: a share each
        mine = plan.batches if sp else plan.batches[rank::world]
        writes = rank == 0 or not sp
        if mine:
            if profile is not None:  # upstream seeds once, before building (model init consumes the RNG)
                parity.apply_runtime(profile)
                parity.seed_everything(plan.seed)
            pipe = load_pipeline(plan, device)
            if sp:
                from sorakit.parallel import apply_sequence_parallel

                # the process group is already up (world group = the sequence-parallel group), so this is
                # what setup_inference_sequence_parallel does, without it picking a device of its own
                apply_sequence_parallel(pipe.transformer)
            log.info("model ready on %s (%s); %d batch(es) to sample%s", pipe.device, plan.dtype, len(plan.batches),
                     f", sequence parallel over {world} processes" if sp else "")  # fmt: skip
        for batch in mine:
            frames = pipe(
                batch.prompts, num_frames=plan.num_frames, height=plan.height, width=plan.width,
                num_inference_steps=plan.steps, guidance_scale=plan.guidance, sampler=plan.sampler,
                seed=None if profile else batch.seed, output_type="np", progress=not args.no_progress and rank == 0,
            )  # fmt: skip
            for j, out in enumerate(batch.outputs):
                if out is None or not writes:
                    continue
                write_output(out, frames[j], plan.fps, crf=profile.crf if profile else None)
                _write_json(out.with_suffix(".json"), sidecar(plan, batch, j, pipe))
                print(out, flush=True)
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()
                dist.destroy_process_group()
    return 0
