"""Typed configuration: one dataclass per section, TOML presets, dotted overrides, validation.

A config is resolved in three layers: the dataclass defaults, then a preset (a TOML file under
``sorakit/configs/`` named like ``opensora/inference/16x256x256``, or any ``.toml`` path, or an
Open-Sora 1.0 Python config read with ``ast`` -- never executed), then ``key.sub=value`` overrides.
Unknown keys and wrong types raise :class:`ConfigError` naming the key and the closest valid one.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import math
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sorakit.errors import ConfigError
from sorakit.opensora_config import opensora_py_to_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

# STDiT's linear layers (module-name suffixes) that LoRA adapts by default
LORA_TARGETS: tuple[str, ...] = (
    "attn.qkv", "attn.proj", "attn_temp.qkv", "attn_temp.proj",
    "cross_attn.q_linear", "cross_attn.kv_linear", "cross_attn.proj", "mlp.fc1", "mlp.fc2",
)  # fmt: skip
PRESET_DIR = Path(__file__).resolve().parent / "configs"


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Bounds:
    """The values a numeric config field (each item of a list field, each entry of a dict field) may take.

    Every number in a config is checked, with or without bounds: floats must be finite and ints must fit
    in 64 bits. `ge`/`gt`/`le`/`lt`: inclusive / exclusive limits. `length`: the number of items of a
    list. `integer`: floats are refused (dict entries are not converted to a declared type). `keys`: bounds of named entries of a dict field (``model.arch.depth``); `values`: of the others."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    length: int | None = None
    integer: bool = False
    keys: Mapping[str, Bounds] | None = None
    values: Bounds | None = None

    def violation(self, v: float) -> str | None:
        """None when `v` is within the bounds, else the limit it breaks ('positive', '<= 100000', ...)."""
        if (self.ge is not None and v < self.ge) or (self.gt is not None and v <= self.gt):
            if self.ge == 1 or self.gt == 0:
                return "positive"
            return f">= {self.ge}" if self.ge is not None else f"> {self.gt}"
        if self.le is not None and v > self.le:
            return f"<= {self.le}"
        if self.lt is not None and v >= self.lt:
            return f"< {self.lt}"
        return None


POSITIVE = Bounds(ge=1)
NON_NEGATIVE = Bounds(ge=0)
FRACTION = Bounds(ge=0, le=1)
SEED = Bounds(ge=0, le=2**32 - 1)  # numpy (the parity profiles' seeding) takes 32-bit seeds
STEPS = Bounds(ge=1, le=100_000)
# far beyond any model, small enough that a typo (10**12 frames) is an error, not a petabyte allocation
FRAMES = Bounds(ge=1, le=100_000)
IMAGE_SIZE = Bounds(ge=1, le=65_536, length=2)
# the transformers' constructor arguments (model.arch.*) that are sizes, counts or probabilities
_ARCH_SIZES = ("depth", "hidden_size", "num_heads", "in_channels", "caption_channels", "model_max_length",
               "num_classes", "patch_size", "input_size")  # fmt: skip
ARCH = Bounds(keys={**{k: Bounds(ge=1, integer=True) for k in _ARCH_SIZES}, "mlp_ratio": Bounds(gt=0), "class_dropout_prob": FRACTION,
                    "drop_path": Bounds(ge=0, lt=1), "space_scale": Bounds(gt=0), "time_scale": Bounds(gt=0)})  # fmt: skip


def _doc(
    text: str,
    default: Any = dataclasses.MISSING,
    factory: Any = dataclasses.MISSING,
    bounds: Bounds | None = None,
) -> Any:
    """A dataclass field with a one-line description and its value `bounds` kept in its metadata."""
    meta = {"doc": text, "bounds": bounds}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    """The diffusion transformer."""

    type: str = _doc("architecture preset name in sorakit.models.MODELS, e.g. 'STDiT-XL/2'", "STDiT-XL/2")
    space_scale: float = _doc(
        "spatial position-embedding scale (0.5 at 256px, 1.0 at 512px)", 1.0, bounds=Bounds(gt=0)
    )
    time_scale: float = _doc(
        "temporal position-embedding scale (1.0 at 16 frames, 2/3 at 64)", 1.0, bounds=Bounds(gt=0)
    )
    from_pretrained: str | None = _doc("checkpoint file or sorakit model directory to load", None)
    grad_checkpoint: bool = _doc("recompute block activations in the backward pass to save memory", False)
    arch: dict[str, Any] = _doc(
        "extra constructor kwargs overriding the preset (depth, hidden_size, ...)", factory=dict, bounds=ARCH
    )


@dataclass
class VAEConfig:
    """The per-frame image autoencoder."""

    type: Literal["sd-vae", "builtin"] = _doc("'sd-vae' (diffusers AutoencoderKL) or 'builtin'", "sd-vae")
    path: str | None = _doc("local directory (or hub id) of the VAE weights", "stabilityai/sd-vae-ft-ema")
    micro_batch_size: int | None = _doc(
        "frames encoded/decoded at once; None = all at once", None, bounds=POSITIVE
    )
    scaling_factor: float | None = _doc(
        "latent scaling; None = read from the VAE's config", None, bounds=Bounds(gt=0)
    )


@dataclass
class TextEncoderConfig:
    """The frozen text encoder."""

    type: Literal["t5", "clip", "minilm", "classes"] = _doc(
        "'t5', 'clip', 'minilm' or 'classes' (class labels, DiT/Latte)", "t5"
    )
    path: str | None = _doc("local directory (or hub id) of the encoder", "DeepFloyd/t5-v1_1-xxl")
    model_max_length: int = _doc("tokens per caption (T5: 120)", 120, bounds=POSITIVE)
    clean_caption: bool = _doc("T5 only: clean prompts as Open-Sora 1.0 did before tokenising", True)
    dtype: str = _doc("'fp32' (T5 misbehaves in half precision), 'bf16', or 'auto' = the model's", "fp32")


@dataclass
class SamplerConfig:
    """The diffusion process and the sampler (Open-Sora's ``scheduler``; the learning-rate schedule is
    ``train.warmup_steps`` / ``train.decay_steps``)."""

    # a str, not a Literal: sampler names and their aliases are defined once, in sorakit.diffusion.SAMPLERS
    type: str = _doc("sampler: 'iddpm', 'dpm-solver', 'ddim' or 'rflow'", "iddpm")
    num_sampling_steps: int = _doc("denoising steps at inference", 100, bounds=STEPS)
    guidance_scale: float = _doc("classifier-free guidance scale (1 = no guidance)", 7.0, bounds=NON_NEGATIVE)
    guidance_channels: int | None = _doc(
        "guide only the first N channels (3 = Open-Sora 1.0 parity); None = all", None, bounds=POSITIVE
    )
    guidance_interval: list[float] | None = _doc(
        "[lo, hi]: apply guidance only at model timesteps lo <= t <= hi (0..num_timesteps, 1000 = noise); "
        "other steps skip the unconditional rows; None = every step",
        None,
        bounds=Bounds(ge=0, length=2),
    )
    horizon_guidance: float = _doc(
        "a model with a horizon embedding (loops): extrapolate the prediction for a segment planned longer than"
        " its frames away from the same segment planned for its own length, by this much (0 = off; costs a"
        " second row per sample on those segments; sorakit.diffusion.guidance.horizon_guided)",
        0.0,
        bounds=NON_NEGATIVE,
    )
    horizon_margin: float = _doc(
        "a model with a horizon embedding (loops): each segment of a loop is told the frames left from its start"
        " times this (>= 1), so that the pace it plans leaves room before the far border instead of arriving"
        " there exactly at the last frame; 1 = the frames left; videos of one segment always get their own length",
        1.0,
        bounds=Bounds(ge=1, le=4),
    )
    cache: str | None = _doc(
        "step caching (STDiT): 'teacache' or 'teacache:THRESHOLD' reuses the block stack's last residual on"
        " steps whose input changed little (sorakit.diffusion.step_cache); None = compute every step",
        None,
    )
    num_timesteps: int = _doc("training diffusion steps", 1000, bounds=STEPS)
    shift: float = _doc(
        "rectified flow only: time shift s (t -> s t / (1 + (s - 1) t)) of training times and sampling steps;"
        " > 1 spends them nearer pure noise; 1 = none",
        1.0,
        bounds=Bounds(gt=0),
    )
    timestep_transform: bool = _doc(
        "rectified flow only: Open-Sora 1.2's resolution-aware shift (ratio sqrt(H*W / base H*W) *"
        " sqrt(frames / base frames) * transform_scale for each batch's or video's shape) instead of `shift`",
        False,
    )
    transform_scale: float = _doc(
        "extra factor on the resolution-aware shift ratio", 1.0, bounds=Bounds(gt=0)
    )
    transform_base: list[int] = _doc(
        "[height, width, frames] at which the resolution-aware shift ratio is 1",
        factory=lambda: [512, 512, 1],
        bounds=Bounds(ge=1, le=100_000, length=3),
    )


@dataclass
class DataConfig:
    """Training data."""

    csv: str | None = _doc("CSV with a header row: path, text[, num_frames, fps, ...]", None)
    data_root: str | None = _doc(
        "folder that relative paths in the CSV resolve against (default: the CSV's)", None
    )
    cache_dir: str | None = _doc("latent/text-embedding cache written by `sorakit data encode`", None)
    num_frames: int = _doc("frames per training clip", 16, bounds=FRAMES)
    frame_interval: int = _doc("take every N-th frame of the source video", 3, bounds=Bounds(ge=1, le=10_000))
    image_size: list[int] = _doc(
        "training resolution [height, width]", factory=lambda: [256, 256], bounds=IMAGE_SIZE
    )
    num_workers: int = _doc("data-loader worker processes", 2, bounds=Bounds(ge=0, le=1024))
    max_bad_fraction: float = _doc(
        "stop with an error when more than this fraction of samples fail", 0.1, bounds=FRACTION
    )
    random_flip: bool = _doc("flip training clips left-right at random (Open-Sora 1.0 does)", True)
    damaged_shards: str = _doc(
        "a latent-cache shard that fails its size / sha256 check: 'refuse' (stop, naming it) or 'skip'",
        "refuse",
    )
    buckets: dict[str, Any] = _doc(
        "resolution ('240p', a pixel count or 'HxW') -> {num_frames: [keep_prob, batch_size]}; empty = one"
        " shape (num_frames x image_size)",
        factory=dict,
    )
    aspect_ratios: list[str] = _doc(
        "W:H ratios of named / pixel-count bucket resolutions",
        factory=lambda: ["9:16", "3:4", "1:1", "4:3", "16:9"],
    )
    bucket_multiple: int = _doc(
        "bucket heights and widths are multiples of this (VAE factor x patch)",
        16,
        bounds=Bounds(ge=1, le=4096),
    )


@dataclass
class TrainConfig:
    """The training loop."""

    seed: int = _doc("random seed", 42, bounds=SEED)
    objective: Literal["iddpm", "rflow"] = _doc("'iddpm' or 'rflow'", "iddpm")
    batch_size: int = _doc("samples per process per step", 8, bounds=POSITIVE)
    max_steps: int = _doc("optimizer steps to run", 1000, bounds=NON_NEGATIVE)
    lr: float = _doc("AdamW learning rate", 2e-5, bounds=NON_NEGATIVE)
    weight_decay: float = _doc("AdamW weight decay", 0.0, bounds=NON_NEGATIVE)
    warmup_steps: int = _doc("linear learning-rate warmup steps", 0, bounds=NON_NEGATIVE)
    decay_steps: int = _doc(
        "linear learning-rate cooldown to 0 over the last N of max_steps (0 = constant)",
        0,
        bounds=NON_NEGATIVE,
    )
    grad_clip: float = _doc("gradient norm clipping (0 = off)", 1.0, bounds=NON_NEGATIVE)
    ema_decay: float = _doc("EMA decay of the exported weights", 0.9999, bounds=FRACTION)
    mixed_precision: Literal["bf16", "fp16", "fp32", "auto"] = _doc(
        "'bf16' (autocast, fp32 master weights), 'fp16', 'fp32' or 'auto' (bf16 where the device has native"
        " bf16 -- a CUDA GPU, a CPU with avx512_bf16 / AMX -- else fp32)",
        "bf16",
    )
    caption_dropout: float = _doc(
        "probability of replacing a caption by the null caption", 0.1, bounds=FRACTION
    )
    freeze: Literal["not_temporal", "text"] | None = _doc(
        "None, 'not_temporal' (train temporal layers only) or 'text'", None
    )
    log_every: int = _doc("log every N steps", 10, bounds=POSITIVE)
    ckpt_every: int = _doc("write a checkpoint every N steps", 500, bounds=POSITIVE)
    keep_last: int = _doc("checkpoints kept (newest)", 3, bounds=NON_NEGATIVE)
    init_from: str | None = _doc("weights to start from (PixArt-α / previous stage EMA)", None)
    vae_micro_batch_size: int | None = _doc(
        "frames per VAE encode call during training", None, bounds=POSITIVE
    )
    tensorboard: bool = _doc("write TensorBoard event files to RUN_DIR/tensorboard", True)
    peak_tflops: float | None = _doc(
        "device peak TFLOP/s for MFU; None = the GPU datasheet, else no MFU is reported",
        None,
        bounds=Bounds(gt=0),
    )
    compile: bool = _doc(
        "torch.compile the transformer (in place, before DDP / per block before FSDP2; the first steps compile)",
        False,
    )
    mask_ratios: dict[str, float] = _doc(
        "reference-frame training (STDiT): pattern -> probability, identity takes the rest (docs/masks.md)",
        factory=dict,
        bounds=Bounds(values=FRACTION),
    )
    loss_channel_weights: list[float] = _doc(
        "weights of the latent channels in the diffusion MSE, one per channel, rescaled to a mean of 1; [] = equal",
        factory=list,
        bounds=Bounds(gt=0, le=1000),
    )
    timestep_shift: float | None = _doc(
        "rflow: a fixed time shift of the training timesteps only, in place of sampler.shift and its resolution-aware"
        " transform (None: those); sampling keeps sampler.shift",
        None,
        bounds=Bounds(gt=0, le=1000),
    )


@dataclass
class LoRAConfig:
    """LoRA fine-tuning (sorakit.training.lora, on PEFT): rank 0 trains the whole model as usual."""

    rank: int = _doc(
        "LoRA rank r; 0 = no LoRA (full training); > 0 freezes the base (from --init)", 0, bounds=NON_NEGATIVE
    )
    alpha: float | None = _doc(
        "LoRA alpha (updates are scaled by alpha / rank); None = rank", None, bounds=Bounds(gt=0)
    )
    dropout: float = _doc(
        "dropout on the LoRA branch's input during training", 0.0, bounds=Bounds(ge=0, lt=1)
    )
    target_modules: list[str] = _doc(
        "module-name suffixes that get adapters (STDiT: self-attention, temporal attention, cross-attention, MLP)",
        factory=lambda: list(LORA_TARGETS),
    )
    adaln: bool = _doc(
        "also adapt the adaLN-single projection (t_block.1: timestep -> every block's modulation)", False
    )


@dataclass
class ParallelConfig:
    """Distribution over processes."""

    strategy: Literal["none", "ddp", "fsdp", "fsdp-full"] = _doc(
        "'none', 'ddp', 'fsdp' (ZeRO-2-like) or 'fsdp-full' (ZeRO-3-like)", "ddp"
    )
    sp_size: int = _doc("sequence-parallel group size (STDiT tokens split along time)", 1, bounds=POSITIVE)
    backend: str | None = _doc("torch.distributed backend; None = nccl on GPU, gloo on CPU", None)


@dataclass
class InferenceConfig:
    """Generation settings."""

    num_frames: int = _doc("frames per video", 16, bounds=FRAMES)
    image_size: list[int] = _doc("[height, width] in pixels", factory=lambda: [256, 256], bounds=IMAGE_SIZE)
    fps: int = _doc("frames per second of the written video", 8, bounds=Bounds(ge=1, le=1000))
    batch_size: int = _doc("videos sampled at once", 1, bounds=POSITIVE)
    seed: int = _doc("random seed", 42, bounds=SEED)
    dtype: str = _doc("'auto', 'fp32', 'bf16' or 'fp16' (fp16 on GPU only)", "auto")
    device: str = _doc("'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", "auto")
    save_dir: str = _doc("where videos are written", "samples")
    offload: bool = _doc(
        "keep only the module in use on the accelerator (text encoder, transformer, VAE), the rest on the CPU",
        False,
    )
    compile: bool = _doc("torch.compile the transformer for sampling (first call compiles: slow)", False)
    parity: str | None = _doc(
        "reproduce an original's samples exactly: 'opensora-1.0' (docs/differences.md)", None
    )


@dataclass
class Config:
    """A whole sorakit configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dump(self, fmt: str = "toml") -> str:
        """The resolved config as TOML (default) or JSON text."""
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2, allow_nan=False)
        return dump_toml(self.to_dict())


# Names from before the renames of issue #13, still read from older presets, config files and model
# folders: the section ``scheduler`` (now ``sampler``) and its ``cfg_*`` keys (now ``guidance_*``).
RENAMED_SECTIONS = {"scheduler": "sampler"}
RENAMED_KEYS = {("sampler", "cfg_scale"): "guidance_scale", ("sampler", "cfg_channels"): "guidance_channels"}


def canonical_key(section: str, key: str | None = None) -> tuple[str, str | None]:
    """``(section, key)`` under today's names: ``("scheduler", "cfg_scale")`` -> ``("sampler", "guidance_scale")``."""
    section = RENAMED_SECTIONS.get(section, section)
    return section, None if key is None else RENAMED_KEYS.get((section, key), key)


SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(Config)}  # type: ignore[misc]
_SECTION_TYPES = {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}


# --------------------------------------------------------------------------------------------------
# Validation and type conversion


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else f" (valid: {', '.join(sorted(options))})"


def _convert(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the type `hint`, converting where it is lossless (int -> float, str -> number)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {_short(value)}")
    if hint is Any:
        return value
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: expected one of {', '.join(map(repr, args))}, got {_short(value)}")
    if origin is list:
        if isinstance(value, str):
            value = _parse_list_string(key, value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_short(value)}")
        (item,) = args or (Any,)
        return [_convert(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table/dict, got {_short(value)}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}: expected true/false, got {_short(value)}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {_short(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {_short(value)}")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {_short(value)}")
        try:
            if isinstance(value, (int, float, str)):
                return float(value)
        except (ValueError, OverflowError):  # OverflowError: an int beyond float range (10**400)
            pass
        raise ConfigError(f"{key}: expected a number, got {_short(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {_short(value)}")
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    names = [" or ".join(map(repr, typing.get_args(a))) if typing.get_origin(a) is Literal
             else getattr(a, "__name__", str(a)) for a in args]  # fmt: skip
    return " or ".join(names) + " or none"


def _parse_list_string(key: str, text: str) -> list[Any]:
    text = text.strip()
    if text.startswith("["):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
            raise ConfigError(f"{key}: cannot parse list {_short(text)}") from exc
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_short(text)}")
        return list(value)
    sep = "x" if "x" in text and "," not in text else ","
    return [p.strip() for p in text.split(sep) if p.strip()]


def _section_hints(section: str) -> dict[str, Any]:
    return typing.get_type_hints(_SECTION_TYPES[section])


def _short(value: Any) -> str:
    """repr of a value for a message, at most ~40 characters (a 10**100 stays one short line)."""
    if isinstance(value, int) and value.bit_length() > 100:  # repr of a 10**5000 would raise
        return f"{'-' if value < 0 else ''}an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_value(key: str, value: Any, bounds: Bounds | None = None) -> None:
    """Raise ConfigError naming `key` unless every number in `value` (a scalar, list or dict) is finite,
    fits in 64 bits and lies within `bounds`. The one check of numbers for config fields and the flags
    that map onto them (see `check_field`)."""
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
        if bounds is not None and (limit := bounds.violation(value)) is not None:
            raise ConfigError(f"{key} must be {limit}, got {_short(value)}")
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            raise ConfigError(f"{key} must fit in 64 bits, got {_short(value)}")
        if bounds is not None and bounds.integer and isinstance(value, float):
            raise ConfigError(f"{key} must be an integer, got {value}")
        return
    if isinstance(value, (list, tuple)):
        if bounds is not None and bounds.length is not None and len(value) != bounds.length:
            raise ConfigError(f"{key} must hold {bounds.length} values, got {len(value)}: {_short(value)}")
        for i, v in enumerate(value):
            check_value(f"{key}[{i}]", v, bounds)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            check_value(f"{key}.{k}", v, (bounds.keys or {}).get(k, bounds.values) if bounds else None)


def _field(section: str, key: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(_SECTION_TYPES[section]) if f.name == key)


def check_field(section: str, key: str, value: Any, name: str | None = None, hint: Any = None) -> Any:
    """`value` converted to the type of config field ``section.key`` (or `hint`) and checked against its
    bounds; errors name the input `name` (a CLI flag such as "--num-frames"), else the field."""
    label = name or f"{section}.{key}"
    converted = _convert(label, value, _section_hints(section)[key] if hint is None else hint)
    check_value(label, converted, _field(section, key).metadata.get("bounds"))
    return converted


def validate_config(cfg: Config) -> Config:
    """Check every field of `cfg` against its type's number rules and bounds (for configs built in code)."""
    for section in SECTIONS:
        for f in dataclasses.fields(_SECTION_TYPES[section]):
            check_value(
                f"{section}.{f.name}", getattr(getattr(cfg, section), f.name), f.metadata.get("bounds")
            )
    return cfg


def apply_dict(cfg: Config, data: dict[str, Any], source: str = "config") -> Config:
    """Apply a nested dict ``{section: {key: value}}`` onto `cfg`, validating every key, type and bound."""
    for section, values in data.items():
        section, _ = canonical_key(section)
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section '{section}'{_closest(section, list(SECTIONS))}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a table")
        hints = _section_hints(section)
        obj = getattr(cfg, section)
        for key, value in values.items():
            _, key = canonical_key(section, key)
            if key not in hints:
                raise ConfigError(f"{source}: unknown key '{section}.{key}'{_closest(key, list(hints))}")
            setattr(obj, key, check_field(section, key, value))
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings (``model.arch.depth=4`` sets a key inside a dict field)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.sub=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) < 2:
            raise ConfigError(
                f"override '{item}': key must be section.key{_closest(parts[0], list(SECTIONS))}"
            )
        (section, key), rest = canonical_key(parts[0], parts[1]), parts[2:]
        if section not in SECTIONS:
            raise ConfigError(
                f"override '{item}': unknown section '{section}'{_closest(section, list(SECTIONS))}"
            )
        hints = _section_hints(section)
        if key not in hints:
            raise ConfigError(f"override '{item}': unknown key '{section}.{key}'{_closest(key, list(hints))}")
        text = raw.strip()
        # a choice among names is a name even when it reads like a literal (parallel.strategy=none)
        literal = typing.get_origin(hints[key]) is Literal and text in typing.get_args(hints[key])
        wants_text = _wants_string(hints[key]) and text.lower() not in ("none", "null")
        value = text if literal or wants_text else _parse_scalar(raw)
        if rest:
            if typing.get_origin(hints[key]) is not dict:
                raise ConfigError(f"override '{item}': '{section}.{key}' has no sub-keys")
            value = {**getattr(getattr(cfg, section), key), ".".join(rest): value}
        setattr(getattr(cfg, section), key, check_field(section, key, value))
    return cfg


def _wants_string(hint: Any) -> bool:
    """True for `str` and `str | None` fields: their override values are taken as text (`path=5` is "5")."""
    return hint is str or (
        typing.get_origin(hint) in (typing.Union, types.UnionType)
        and set(typing.get_args(hint)) == {str, type(None)}
    )


def _parse_scalar(raw: str) -> Any:
    """Read an override value: TOML-ish literals (numbers, true/false, none, lists), else a string."""
    text = raw.strip()
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return ast.literal_eval(text)
    # MemoryError / RecursionError: deeply nested brackets; TypeError: e.g. {[]: 1}
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


# --------------------------------------------------------------------------------------------------
# Presets and files


def list_presets() -> list[str]:
    """Names of the shipped presets, e.g. 'opensora/inference/16x256x256'."""
    return sorted(p.relative_to(PRESET_DIR).with_suffix("").as_posix() for p in PRESET_DIR.rglob("*.toml"))


def resolve_preset(name_or_path: str) -> Path:
    """A preset name or a file path -> the file. Raises ConfigError naming close presets."""
    path = Path(name_or_path)
    if path.suffix in (".toml", ".py"):
        if path.is_file():
            return path
        raise ConfigError(f"config file not found: {name_or_path}")
    candidate = PRESET_DIR / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    presets = list_presets()
    raise ConfigError(f"unknown preset '{name_or_path}'{_closest(name_or_path, presets)}")


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KB; refuse to parse megabytes of anything


def load_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; ConfigError for anything that is not (small, UTF-8) TOML."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes is too large for a config file")
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except RecursionError as exc:  # tomllib parses nested arrays / inline tables recursively
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc


def preset_name(name: str) -> str:
    """'opensora/16x256x256' -> 'opensora/inference/16x256x256' (the inference preset of that family)."""
    if name.endswith((".toml", ".py")) or "/inference/" in name:
        return name
    family, _, rest = name.partition("/")
    if rest and (PRESET_DIR / family / "inference" / f"{rest}.toml").is_file():
        return f"{family}/inference/{rest}"
    return name


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- preset or file (TOML, or Open-Sora 1.0 .py read safely) <- overrides."""
    cfg = _load_file(name_or_path, ()) if name_or_path else Config()
    apply_overrides(cfg, overrides or [])
    return cfg


def _load_file(name_or_path: str, chain: tuple[Path, ...]) -> Config:
    """The config a preset / file describes; `chain`: the files whose ``base`` led here (a cycle is an error)."""
    path = resolve_preset(name_or_path)
    if path.suffix == ".py":
        return apply_dict(Config(), opensora_py_to_dict(path), source=str(path))
    if path.resolve() in chain:
        raise ConfigError(f"{path}: 'base' cycle: {' -> '.join(map(str, (*chain, path.resolve())))}")
    data = load_toml(path)
    base = data.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a preset name or file path (a string), got {_short(base)}")
    cfg = _load_file(base, (*chain, path.resolve())) if base is not None else Config()
    return apply_dict(cfg, data, source=str(path))


def dump_toml(data: dict[str, Any]) -> str:
    """Minimal TOML writer for the config's value types (scalars, lists, one level of dicts)."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v, allow_nan=False)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        if isinstance(v, dict):
            return (
                "{ "
                + ", ".join(
                    f"{json.dumps(k, allow_nan=False)} = {fmt(x)}" for k, x in v.items() if x is not None
                )
                + " }"
            )
        raise TypeError(f"cannot write {type(v)} to TOML")

    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                lines.append(f"# {key} = (none)")
            else:
                lines.append(f"{key} = {fmt(value)}")
        lines.append("")
    return "\n".join(lines)
