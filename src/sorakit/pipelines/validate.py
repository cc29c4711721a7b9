"""Everything about a generation request that can be decided without loading weights, in one place.

    source = ModelSource.choose(model="path/to/model_dir")               # or preset=..., ckpt=..., nothing
    cfg = source.config()                                                # config files only
    settings = validate(cfg, source, num_frames=16, height=256, width=256, sampler="iddpm")
    pipe = TextToVideoPipeline.load(source, settings.device, settings.dtype)
    frames = pipe(prompts, **settings.call_kwargs(), seed=settings.seed)

`validate` owns the geometry (the VAE's downsampling factor and the transformer's patch size, read from
config files), the sampler names (through `sorakit.diffusion.sampler_name`) and every input check, so a bad
request fails in milliseconds with one `UserError` line, before gigabytes of weights are read.
Messages name the inputs as the caller calls them (`names`, e.g. the CLI's "--steps").
"""

from __future__ import annotations

import inspect
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sorakit import parity
from sorakit.config import (
    IMAGE_SIZE,
    Bounds,
    Config,
    apply_overrides,
    check_field,
    check_value,
    load_config,
    preset_name,
)
from sorakit.data.buckets import parse_ratio, resolution_pixels, shape_for
from sorakit.diffusion import build_sampler, sampler_name
from sorakit.diffusion.step_cache import CacheSpec, parse_cache
from sorakit.encoders.text import CLASS_DATASETS
from sorakit.encoders.vae import peek_downsample_factor
from sorakit.errors import ConfigError, UserError
from sorakit.hub import download_hint, names_local_path
from sorakit.jsonutil import read_json
from sorakit.lora import parse_lora_arg, sampler_overrides
from sorakit.modeldir import builtin_model_dir, read_model_dir
from sorakit.models import MODELS, read_model_config
from sorakit.pipelines.memory import check_memory
from sorakit.pipelines.reference import file_sha256, load_references, plan_references
from sorakit.runtime import dtype_name, resolve_device, resolve_dtype


def parse_resolution(text: str, name: str = "resolution") -> tuple[int, int]:
    """'256x256' (or '256,256', '256*256') -> (height, width); `name` is how the caller calls the input."""
    # at most 9 digits each: int() of thousands of digits is slow (and refused past 4300)
    m = re.fullmatch(r"\s*(-?\d{1,9})\s*[x,X*]\s*(-?\d{1,9})\s*", text)
    if not m:
        raise UserError(f"{name} must look like HxW (e.g. 256x256), got {text[:40]!r}")
    h, w = int(m.group(1)), int(m.group(2))
    if h < 1 or w < 1:
        raise UserError(f"{name} must be positive, got {h}x{w}")
    check_value(name, [h, w], IMAGE_SIZE)
    return h, w


def check_guidance_interval(value: Any, name: str = "guidance interval") -> tuple[float, float] | None:
    """A guidance interval ``[lo, hi]`` (list, tuple or the text "LO,HI") -> ``(lo, hi)`` model timesteps,
    finite with ``0 <= lo <= hi``; None stays None. Anything else is one UserError naming `name`."""
    if value is None:
        return None
    usage = f"{name} must be LO,HI: model timesteps with 0 <= LO <= HI (e.g. 0,700)"
    parts = value.split(",") if isinstance(value, str) else value
    try:
        lo, hi = (float(v) for v in parts)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{usage}, got {str(value)[:40]!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi < lo:
        raise UserError(f"{usage}, got {lo:g},{hi:g}")
    return lo, hi


def check_cache(value: Any, name: str = "the step cache") -> CacheSpec | None:
    """A step cache setting (``teacache[:THRESHOLD]``, ``none``) -> CacheSpec or None; anything else is one
    UserError naming `name`."""
    try:
        return parse_cache(value)
    except ValueError as exc:
        raise UserError(f"{name} {exc}") from exc


def _check_cache_model(cfg: Config) -> None:
    """``sampler.cache`` checked, and refused for a model without a block stack to cache (not STDiT)."""
    cache = check_cache(cfg.sampler.cache, "sampler.cache")
    model_cls = MODELS[cfg.model.type][0] if cfg.model.type in MODELS else None
    if (
        cache is not None
        and model_cls is not None
        and "step_cache" not in inspect.signature(model_cls.forward).parameters
    ):
        raise UserError(f"step caching (--cache) needs an STDiT model, not {cfg.model.type}")


def flag_overrides(
    overrides: list[str],
    parity_name: str | None = None,
    guidance_interval: str | None = None,
    vae_batch: int | None = None,
    offload: bool = False,
    compile: bool = False,
    cache: str | None = None,
) -> list[str]:
    """`sorakit generate`'s setting flags as config overrides after the user's own (`--set`), so that
    the sidecar's model source records them and `--replay` repeats them; each value is checked here."""
    out = list(overrides) + ([f"inference.parity={parity_name}"] if parity_name else [])
    interval = check_guidance_interval(guidance_interval, "--guidance-interval")
    if interval is not None:
        out.append(f"sampler.guidance_interval=[{interval[0]!r}, {interval[1]!r}]")
    if vae_batch is not None:
        out.append(f"vae.micro_batch_size={check_field('vae', 'micro_batch_size', vae_batch, '--vae-batch')}")
    if cache is not None:
        spec = check_cache(cache, "--cache")
        out.append(f"sampler.cache={spec or 'none'}")  # none: off, over the model's default
    return out + ["inference.offload=true"] * bool(offload) + ["inference.compile=true"] * bool(compile)


def read_prompt_file(path: str, keep_empty: bool = False) -> list[tuple[int, str]]:
    """(number, stripped prompt) per non-empty line of a UTF-8 file; with `keep_empty` (line index, line)
    for every line, as
    Open-Sora 1.0 read its prompt files (``readlines``: no extra prompt after a final newline)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--prompt-file: no such file: {path}")
    try:
        lines = p.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise UserError(f"--prompt-file {path} is not UTF-8 text") from exc
    lines = lines[:-1] if lines and lines[-1] == "" else lines
    if keep_empty:
        items = [(i, line.strip()) for i, line in enumerate(lines)]
    else:  # numbered by prompt, not by line: blank lines do not use up output numbers
        items = list(enumerate(line.strip() for line in lines if line.strip()))
    if not items:
        raise UserError(f"--prompt-file {path} has no prompts (all lines are empty)")
    return items


def _check_exists(name: str | None, flag: str, want_dir: bool) -> None:
    """A local-looking path must exist now (hub ids are fetched later)."""
    if not name or not names_local_path(name):
        return
    path = Path(os.path.expanduser(name))
    if want_dir and not path.is_dir():
        raise UserError(f"{flag}: no such directory: {name}{download_hint(name)}")
    if not want_dir and not path.exists():
        raise UserError(f"{flag}: no such file: {name}{download_hint(name)}")


@dataclass
class ModelSource:
    """Where the model comes from: the built-in model, a model directory, or a preset (with `ckpt`).
    `text_encoder` / `vae` replace the config's references; `overrides` are `section.key=value`."""

    kind: str  # "builtin" | "model" | "preset"
    model: str | None = None
    preset: str | None = None
    ckpt: str | None = None
    text_encoder: str | None = None
    vae: str | None = None
    overrides: list[str] = field(default_factory=list)
    loras: list[str] = field(default_factory=list)  # LoRA adapter folders, "DIR:SCALE" (absolute DIR)

    @classmethod
    def choose(
        cls,
        model: str | None = None,
        preset: str | None = None,
        ckpt: str | None = None,
        text_encoder: str | None = None,
        vae: str | None = None,
        overrides: list[str] | tuple[str, ...] = (),
        loras: list[str] | tuple[str, ...] = (),
    ) -> ModelSource:
        """The source these arguments name; local paths must exist (hub ids are fetched when loading).
        `loras`: adapter folders, each ``DIR`` or ``DIR:SCALE`` (checked now; the base is checked at load)."""
        if model and preset:
            raise UserError("use either --model or --preset, not both")
        if model and not Path(model).is_dir():
            raise UserError(f"--model: no such directory: {model}")
        _check_exists(ckpt, "--ckpt", want_dir=False)
        _check_exists(text_encoder, "--text-encoder", want_dir=True)
        _check_exists(vae, "--vae", want_dir=True)
        adapters = [parse_lora_arg(text) for text in loras]
        return cls(
            kind="preset" if preset else ("model" if model else "builtin"),
            model=str(Path(model).resolve()) if model else None,
            preset=preset_name(preset) if preset else None,
            ckpt=ckpt, text_encoder=text_encoder, vae=vae, overrides=list(overrides),
            loras=[f"{Path(d).resolve()}:{s!r}" for d, s in adapters],
        )  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSource:
        """The inverse of `to_dict` (a sidecar's "model" entry)."""
        return cls(**{k: data.get(k) for k in ("kind", "model", "preset", "ckpt", "text_encoder", "vae")},
                   overrides=list(data.get("overrides") or []), loras=list(data.get("loras") or []))  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def model_dir(self) -> Path | None:
        """The model directory (the built-in one for "builtin"); None for a preset."""
        if self.kind == "preset":
            return None
        return builtin_model_dir() if self.kind == "builtin" else Path(self.model)

    def all_overrides(self) -> list[str]:
        """The adapters' sampler settings (their ``sampler.json``, in order), then the user's `overrides`."""
        return [o for text in self.loras for o in sampler_overrides(parse_lora_arg(text)[0])] + self.overrides

    def config(self) -> Config:
        """The (light) config of the chosen model: no weights are read."""
        if self.kind == "preset":
            cfg = load_config(self.preset, self.all_overrides())
        else:
            _, cfg = read_model_dir(self.model_dir)
            apply_overrides(cfg, self.all_overrides())
        if self.text_encoder:
            cfg.text_encoder.path = self.text_encoder
        if self.vae:
            cfg.vae.path = self.vae
        return cfg

    def geometry(self, cfg: Config) -> tuple[int, tuple[int, int, int]]:
        """(VAE downsampling factor, transformer patch size `(t, h, w)`), read from config files only."""
        factor = peek_downsample_factor(cfg.vae.path)
        if self.kind == "preset":
            if cfg.model.type not in MODELS:
                raise UserError(f"unknown model '{cfg.model.type}' (valid: {', '.join(sorted(MODELS))})")
            patch = cfg.model.arch.get("patch_size", MODELS[cfg.model.type][1].get("patch_size"))
        else:
            transformer_dir, _ = read_model_dir(self.model_dir)
            patch = read_model_config(transformer_dir)["config"].get("patch_size")
        return factor, tuple(int(v) for v in (patch or (1, 2, 2)))  # type: ignore[return-value]


@dataclass
class Settings:
    """A validated generation request (every default filled in from the model's config)."""

    num_frames: int
    height: int
    width: int
    steps: int
    sampler: str
    guidance: float
    fps: float
    batch_size: int
    seed: int
    device: str
    dtype: str
    references: Any = None  # a pipelines.reference.ReferencePlan, or None for plain text-to-video

    def call_kwargs(self) -> dict[str, Any]:
        """The `TextToVideoPipeline.__call__` arguments these settings fix."""
        return dict(num_frames=self.num_frames, height=self.height, width=self.width,
                    num_inference_steps=self.steps, guidance_scale=self.guidance, sampler=self.sampler,
                    **self._reference_kwargs("reference", "references"))  # fmt: skip

    def reference_record(self) -> dict[str, Any]:
        """Sidecar keys of reference frames: each reference's path and sha256, the strategy, K, the loop count."""
        return self._reference_kwargs("references", "records")

    def _reference_kwargs(self, key: str, attr: str) -> dict[str, Any]:
        rp = self.references
        if rp is None:
            return {}
        return {key: getattr(rp, attr), "mask_strategy": rp.strategy, "condition_frames": rp.condition_frames,
                "loop": rp.loops}  # fmt: skip


@dataclass
class Sidecar:
    """What `sorakit generate --replay` reads from a video's sidecar JSON (written next to each video)."""

    meta: dict[str, Any]
    source: ModelSource
    prompts: list[str]  # the video's batch
    index: int  # the video's place in it
    indices: list[int]
    previous: list[list[str]]  # the batches sampled before it from the same RNG stream (--parity)
    settings: dict[str, Any]  # num_frames, height, width, steps, sampler, guidance, fps as recorded
    output: Path  # where the video was written


def read_sidecar(path: Path) -> Sidecar:
    """A sidecar checked to have every field replay needs: a one-line UserError naming the file otherwise."""
    meta = read_json(path)  # strict: invalid JSON, NaN or 1e400 is a UserError naming the file
    try:
        batch = meta["batch"]
        side = Sidecar(
            meta, ModelSource.from_dict(meta["model"]), list(batch["prompts"]), int(batch["index"]),
            list(batch["indices"]), list(batch.get("previous", [])),
            {k: meta[k] for k in ("num_frames", "height", "width", "steps", "sampler", "guidance", "fps")},
            Path(meta["output"]),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"--replay {path}: not a sorakit sidecar ({type(exc).__name__}: {exc})") from None
    if not 0 <= side.index < len(side.prompts):
        raise UserError(
            f"--replay {path}: batch index {side.index} is outside its batch of {len(side.prompts)} prompt(s)"
        )
    return side


def replay_references(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A sidecar's reference arguments for `validate` (each file must still have its recorded sha256)."""
    paths = []
    for rec in meta.get("references") or []:
        path = Path(rec["path"])
        if not path.is_file():
            raise UserError(f"--replay: the reference {path} is gone")
        if file_sha256(path) != rec["sha256"]:
            raise UserError(f"--replay: the reference {path} has changed since (sha256 differs)")
        paths.append(str(path))
    return {"reference": paths, "mask_strategy": meta.get("mask_strategy"),
            "condition_frames": int(meta.get("condition_frames", 4)), "loop": int(meta.get("loop", 1))}  # fmt: skip


def check_references(
    cfg: Config,
    reference: Any,
    mask_strategy: str | None,
    num_frames: int,
    height: int,
    width: int,
    condition_frames: int = 4,
    loop: int = 1,
) -> Any:
    """References read and resized, the mask strategy checked (`sorakit.pipelines.reference`), before any
    weights load -> a ReferencePlan, or None for plain text-to-video."""
    if not reference and mask_strategy is None and loop == 1:
        return None
    if not str(cfg.model.type).lower().startswith("stdit"):
        raise UserError(f"reference frames (--reference, --mask-strategy, --loop) need an STDiT model, not "
                        f"{cfg.model.type}")  # fmt: skip
    refs = load_references(list(reference or []), height, width)
    return plan_references(refs, mask_strategy, num_frames, condition_frames, loop)


def check_prompts(cfg: Config, prompts: list[str], class_labels: bool = False) -> None:
    """Prompts fit the model: text for a text model (empty lines allowed under a parity profile that keeps
    them), in-range class indices for a class-conditional one."""
    if not prompts:
        raise UserError("no prompts given")
    if cfg.text_encoder.type != "classes":
        if class_labels:
            raise UserError(
                "--class-label is for class-conditional models (dit/..-class, latte/..-class): give a prompt"
            )
        profile = parity.get_profile(cfg.inference.parity)
        allow_empty = profile is not None and profile.keep_empty_prompts
        if any(not isinstance(p, str) or not (p.strip() or allow_empty) for p in prompts):
            raise UserError("empty prompt: every prompt must contain text")
        return
    name = (cfg.text_encoder.path or "").lower()
    num = int(name) if name.isdigit() else CLASS_DATASETS.get(name)
    for p in prompts:
        if not p.lstrip("-").isdigit():
            raise UserError(f"this model is class-conditional: give --class-label N, not the text {p[:40]!r}")
        if num is not None and not 0 <= int(p) < num:
            raise UserError(f"class label {p} out of range 0..{num - 1}")


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


# How `validate` names its inputs in messages unless the caller says otherwise (the CLI: "--num-frames", ...)
NAMES = {k: k for k in ("num_frames", "steps", "guidance", "fps", "batch_size", "threads", "seed", "seconds",
                        "resolution", "resolution_name", "aspect_ratio")}  # fmt: skip


def resolve_shape(
    cfg: Config,
    source: ModelSource,
    num_frames: int | None,
    height: int | None,
    width: int | None,
    seconds: float | None = None,
    resolution_name: str | None = None,
    aspect_ratio: str | None = None,
    fps: float | None = None,
    name: Mapping[str, str] = NAMES,
) -> tuple[int, int, int]:
    """(frames, height, width) of a request over the model's defaults: `num_frames` or `seconds` (x `fps`,
    rounded to the model's frame multiple), and `height` x `width` or `resolution_name` (``240p``, a pixel
    count) with `aspect_ratio` (``W:H``), rounded to the model's pixel multiples. Raises `UserError`."""
    factor, patch = source.geometry(cfg)
    if num_frames is not None and seconds is not None:
        raise UserError(f"give {name['num_frames']} or {name['seconds']}, not both")
    if seconds is not None:
        check_value(name["seconds"], float(seconds), Bounds(gt=0, le=100_000))
        fps = cfg.inference.fps if fps is None else fps
        num_frames = max(patch[0], round(seconds * fps / patch[0]) * patch[0])
    num_frames = check_field(
        "inference", "num_frames", _pick(num_frames, cfg.inference.num_frames), name["num_frames"]
    )
    named = resolution_name is not None or aspect_ratio is not None
    if named and (height is not None or width is not None):
        raise UserError(
            f"give {name['resolution']}, or {name['resolution_name']} / {name['aspect_ratio']}, not both"
        )
    dh, dw = cfg.inference.image_size
    if not named:
        size = check_field(
            "inference", "image_size", [_pick(height, dh), _pick(width, dw)], name["resolution"]
        )
        return num_frames, size[0], size[1]
    try:
        pixels = resolution_pixels(resolution_name) if resolution_name else dh * dw
        ratio = parse_ratio(aspect_ratio) if aspect_ratio else dh / dw
    except ConfigError as exc:
        raise UserError(str(exc).replace("data.buckets: ", f"{name['resolution_name']}: ")) from None
    if isinstance(pixels, tuple):
        raise UserError(
            f"{name['resolution_name']} {resolution_name}: for an exact size use {name['resolution']}"
        )
    return (num_frames, *shape_for(pixels, ratio, math.lcm(factor * patch[1], factor * patch[2])))


def _positive(value: Any, name: str, strict: bool = True) -> None:
    if value is not None and (value <= 0 if strict else value < 0):
        raise UserError(f"{name} must be {'positive' if strict else '>= 0'}, got {value}")


def validate(
    cfg: Config,
    source: ModelSource,
    *,
    prompts: list[str] | None = None,
    class_labels: bool = False,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    guidance: float | None = None,
    fps: float | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    world_size: int = 1,
    sequence_parallel: bool = False,
    names: Mapping[str, str] | None = None,
    reference: Any = None,
    mask_strategy: str | None = None,
    condition_frames: int = 4,
    loop: int = 1,
    force_memory: bool = False,
    seconds: float | None = None,
    resolution_name: str | None = None,
    aspect_ratio: str | None = None,
) -> Settings:
    """Check a request against the model `source` names (config files only) and fill in its defaults.

    `world_size`: the processes that will run the request (torchrun); they share out the batches, or with
    `sequence_parallel` split every video's frames. `reference` .. `loop`: reference frames (STDiT; see
    `TextToVideoPipeline.__call__`), read and checked here. `seconds` (instead of `num_frames`) and
    `resolution_name` / `aspect_ratio` (instead of `height` / `width`) pick a shape the model allows
    (:func:`resolve_shape`). `force_memory`: skip the memory estimate's refusal (`sorakit.pipelines.memory`).
    Raises `UserError` (one line) for the first problem."""
    name = dict(NAMES) | dict(names or {})
    inf, sch = cfg.inference, cfg.sampler
    # each input is checked with the bounds of the config field it stands for (sorakit.config.check_field)
    fps = check_field("inference", "fps", _pick(fps, inf.fps), name["fps"], hint=float)
    num_frames, height, width = resolve_shape(
        cfg, source, num_frames, height, width, seconds, resolution_name, aspect_ratio, fps, name
    )
    steps = check_field("sampler", "num_sampling_steps", _pick(steps, sch.num_sampling_steps), name["steps"])
    sampler = sampler_name(sampler or sch.type)
    build_sampler(
        sampler, steps, num_timesteps=sch.num_timesteps
    )  # the sampler's own checks (e.g. DPM order)
    guidance = check_field("sampler", "guidance_scale", _pick(guidance, sch.guidance_scale), name["guidance"])
    check_guidance_interval(sch.guidance_interval, "sampler.guidance_interval")
    _check_cache_model(cfg)
    batch_size = check_field("inference", "batch_size", _pick(batch_size, inf.batch_size), name["batch_size"])
    seed = check_field("inference", "seed", _pick(seed, inf.seed), name["seed"])
    _positive(threads, name["threads"])
    dev = resolve_device(device or inf.device)
    profile = parity.get_profile(inf.parity)
    dt = resolve_dtype(dtype or (profile and parity.runtime_dtype(profile, dev)) or inf.dtype, dev)
    _check_geometry(source, cfg, num_frames, height, width, world_size if sequence_parallel else None, name)
    if profile is not None and world_size > 1 and not sequence_parallel:
        raise UserError(
            f"--parity {profile.name} runs every batch in one RNG stream: use one process or --sequence-parallel"
        )
    if prompts is not None:
        check_prompts(cfg, prompts, class_labels)
    refs = check_references(cfg, reference, mask_strategy, num_frames, height, width, condition_frames, loop)
    settings = Settings(
        num_frames=num_frames, height=height, width=width, steps=steps, sampler=sampler, guidance=float(guidance),
        fps=float(fps), batch_size=batch_size, seed=seed, device=str(dev),
        dtype=dtype_name(dt), references=refs,
    )  # fmt: skip
    check_memory(
        cfg, source.model_dir, settings, *source.geometry(cfg), force=force_memory
    )  # before any load
    return settings


def _check_geometry(
    source: ModelSource,
    cfg: Config,
    num_frames: int,
    height: int,
    width: int,
    sp_world: int | None,
    name: Mapping[str, str] = NAMES,
) -> None:
    """The video splits into the model's patches (and, with sequence parallelism, over the processes);
    if not, the message names the nearest shape that does."""
    factor, patch = source.geometry(cfg)
    multiples = (patch[0], factor * patch[1], factor * patch[2])
    if height % multiples[1] or width % multiples[2] or num_frames % multiples[0]:
        t, h, w = (max(m, round(v / m) * m) for v, m in zip((num_frames, height, width), multiples))
        raise UserError(
            f"{num_frames}x{height}x{width} does not fit the model: height and width must be multiples of "
            f"{multiples[1]}x{multiples[2]} (VAE /{factor}, patch {patch[1]}x{patch[2]})"
            + (f" and frames a multiple of {patch[0]}" if patch[0] > 1 else "")
            + f"; nearest allowed: {name['num_frames']} {t} {name['resolution']} {h}x{w}"
        )
    if sp_world is None:
        return
    if sp_world < 2:
        raise UserError(
            "--sequence-parallel needs several processes: launch with torchrun --nproc_per_node N (N > 1)"
        )
    if not str(cfg.model.type).lower().startswith("stdit"):
        raise UserError(f"--sequence-parallel works with STDiT models only, not {cfg.model.type}")
    latent_frames = num_frames // patch[0]
    if latent_frames % sp_world:
        raise UserError(
            f"--sequence-parallel: {num_frames} frames give {latent_frames} latent frames, "
            f"which do not split over {sp_world} processes"
        )
