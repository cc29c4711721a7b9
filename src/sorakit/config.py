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
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sorakit.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

PRESET_DIR = Path(__file__).resolve().parent / "configs"


def _doc(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a one-line description kept in its metadata."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass
class ModelConfig:
    """The diffusion transformer."""

    type: str = _doc("architecture preset name in sorakit.models.MODELS, e.g. 'STDiT-XL/2'", "STDiT-XL/2")
    space_scale: float = _doc("spatial position-embedding scale (0.5 at 256px, 1.0 at 512px)", 1.0)
    time_scale: float = _doc("temporal position-embedding scale (1.0 at 16 frames, 2/3 at 64)", 1.0)
    from_pretrained: str | None = _doc("checkpoint file or sorakit model directory to load", None)
    grad_checkpoint: bool = _doc("recompute block activations in the backward pass to save memory", False)
    arch: dict[str, Any] = _doc(
        "extra constructor kwargs overriding the preset (depth, hidden_size, ...)", factory=dict
    )


@dataclass
class VAEConfig:
    """The per-frame image autoencoder."""

    type: str = _doc("'sd-vae' (diffusers AutoencoderKL) or 'builtin'", "sd-vae")
    path: str | None = _doc("local directory (or hub id) of the VAE weights", "stabilityai/sd-vae-ft-ema")
    micro_batch_size: int | None = _doc("frames encoded/decoded at once; None = all at once", None)
    scaling_factor: float | None = _doc("latent scaling; None = read from the VAE's config", None)


@dataclass
class TextEncoderConfig:
    """The frozen text encoder."""

    type: str = _doc("'t5', 'clip', 'minilm' or 'classes' (class labels, DiT/Latte)", "t5")
    path: str | None = _doc("local directory (or hub id) of the encoder", "DeepFloyd/t5-v1_1-xxl")
    model_max_length: int = _doc("tokens per caption (T5: 120)", 120)
    clean_caption: bool = _doc("T5 only: clean prompts as Open-Sora 1.0 did before tokenising", True)
    dtype: str = _doc("'fp32' (T5 misbehaves in half precision), 'bf16', or 'auto' = the model's", "fp32")


@dataclass
class SchedulerConfig:
    """The diffusion process and sampler."""

    type: str = _doc("sampler: 'iddpm', 'dpm-solver', 'ddim' or 'rflow'", "iddpm")
    num_sampling_steps: int = _doc("denoising steps at inference", 100)
    cfg_scale: float = _doc("classifier-free guidance scale (1 = no guidance)", 7.0)
    cfg_channels: int | None = _doc(
        "guide only the first N channels (3 = Open-Sora 1.0 parity); None = all", None
    )
    num_timesteps: int = _doc("training diffusion steps", 1000)
    shift: float = _doc(
        "rectified flow only: time shift s (t -> s t / (1 + (s - 1) t)) of training times and sampling steps;"
        " > 1 spends them nearer pure noise; 1 = none",
        1.0,
    )


@dataclass
class DataConfig:
    """Training data."""

    csv: str | None = _doc("CSV with a header row: path, text[, num_frames, fps, ...]", None)
    data_root: str | None = _doc(
        "folder that relative paths in the CSV resolve against (default: the CSV's)", None
    )
    cache_dir: str | None = _doc("latent/text-embedding cache written by `sorakit data encode`", None)
    num_frames: int = _doc("frames per training clip", 16)
    frame_interval: int = _doc("take every N-th frame of the source video", 3)
    image_size: list[int] = _doc("training resolution [height, width]", factory=lambda: [256, 256])
    num_workers: int = _doc("data-loader worker processes", 2)
    max_bad_fraction: float = _doc("stop with an error when more than this fraction of samples fail", 0.1)
    random_flip: bool = _doc("flip training clips left-right at random (Open-Sora 1.0 does)", True)


@dataclass
class TrainConfig:
    """The training loop."""

    seed: int = _doc("random seed", 42)
    objective: str = _doc("'iddpm' or 'rflow'", "iddpm")
    batch_size: int = _doc("samples per process per step", 8)
    max_steps: int = _doc("optimizer steps to run", 1000)
    lr: float = _doc("AdamW learning rate", 2e-5)
    weight_decay: float = _doc("AdamW weight decay", 0.0)
    warmup_steps: int = _doc("linear learning-rate warmup steps", 0)
    decay_steps: int = _doc(
        "linear learning-rate cooldown to 0 over the last N of max_steps (0 = constant)", 0
    )
    grad_clip: float = _doc("gradient norm clipping (0 = off)", 1.0)
    ema_decay: float = _doc("EMA decay of the exported weights", 0.9999)
    mixed_precision: str = _doc("'bf16' (autocast, fp32 master weights), 'fp16' or 'fp32'", "bf16")
    caption_dropout: float = _doc("probability of replacing a caption by the null caption", 0.1)
    freeze: str | None = _doc("None, 'not_temporal' (train temporal layers only) or 'text'", None)
    log_every: int = _doc("log every N steps", 10)
    ckpt_every: int = _doc("write a checkpoint every N steps", 500)
    keep_last: int = _doc("checkpoints kept (newest)", 3)
    init_from: str | None = _doc("weights to start from (PixArt-α / previous stage EMA)", None)
    vae_micro_batch_size: int | None = _doc("frames per VAE encode call during training", None)
    tensorboard: bool = _doc("write TensorBoard event files to RUN_DIR/tensorboard", True)
    peak_tflops: float | None = _doc(
        "device peak TFLOP/s for MFU; None = the GPU datasheet, else no MFU is reported", None
    )


@dataclass
class ParallelConfig:
    """Distribution over processes."""

    strategy: str = _doc("'none', 'ddp', 'fsdp' (ZeRO-2-like) or 'fsdp-full' (ZeRO-3-like)", "ddp")
    sp_size: int = _doc("sequence-parallel group size (STDiT tokens split along time)", 1)
    backend: str | None = _doc("torch.distributed backend; None = nccl on GPU, gloo on CPU", None)


@dataclass
class InferenceConfig:
    """Generation settings."""

    num_frames: int = _doc("frames per video", 16)
    image_size: list[int] = _doc("[height, width] in pixels", factory=lambda: [256, 256])
    fps: int = _doc("frames per second of the written video", 8)
    batch_size: int = _doc("videos sampled at once", 1)
    seed: int = _doc("random seed", 42)
    dtype: str = _doc("'auto', 'fp32', 'bf16' or 'fp16' (fp16 on GPU only)", "auto")
    device: str = _doc("'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", "auto")
    save_dir: str = _doc("where videos are written", "samples")
    parity: str | None = _doc(
        "reproduce an original's samples exactly: 'opensora-1.0' (docs/differences.md)", None
    )


@dataclass
class Config:
    """A whole sorakit configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dump(self, fmt: str = "toml") -> str:
        """The resolved config as TOML (default) or JSON text."""
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2)
        return dump_toml(self.to_dict())


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
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r}")
    if hint is Any:
        return value
    if origin is list:
        if isinstance(value, str):
            value = _parse_list_string(key, value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = args or (Any,)
        return [_convert(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table/dict, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    names = [getattr(a, "__name__", str(a)) for a in args]
    return " or ".join(names) + " or none"


def _parse_list_string(key: str, text: str) -> list[Any]:
    text = text.strip()
    if text.startswith("["):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError) as exc:
            raise ConfigError(f"{key}: cannot parse list {text!r}") from exc
        return list(value)
    sep = "x" if "x" in text and "," not in text else ","
    return [p.strip() for p in text.split(sep) if p.strip()]


def _section_hints(section: str) -> dict[str, Any]:
    return typing.get_type_hints(_SECTION_TYPES[section])


def apply_dict(cfg: Config, data: dict[str, Any], source: str = "config") -> Config:
    """Apply a nested dict ``{section: {key: value}}`` onto `cfg`, validating every key and type."""
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section '{section}'{_closest(section, list(SECTIONS))}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a table")
        hints = _section_hints(section)
        obj = getattr(cfg, section)
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"{source}: unknown key '{section}.{key}'{_closest(key, list(hints))}")
            setattr(obj, key, _convert(f"{section}.{key}", value, hints[key]))
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
        section, key, rest = parts[0], parts[1], parts[2:]
        if section not in SECTIONS:
            raise ConfigError(
                f"override '{item}': unknown section '{section}'{_closest(section, list(SECTIONS))}"
            )
        hints = _section_hints(section)
        if key not in hints:
            raise ConfigError(f"override '{item}': unknown key '{section}.{key}'{_closest(key, list(hints))}")
        value = (
            raw.strip()
            if _wants_string(hints[key]) and raw.strip().lower() not in ("none", "null")
            else _parse_scalar(raw)
        )
        if rest:
            if typing.get_origin(hints[key]) is not dict:
                raise ConfigError(f"override '{item}': '{section}.{key}' has no sub-keys")
            target = getattr(getattr(cfg, section), key)
            target[".".join(rest)] = value
        else:
            setattr(getattr(cfg, section), key, _convert(f"{section}.{key}", value, hints[key]))
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
    except (ValueError, SyntaxError):
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


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- preset or file (TOML, or Open-Sora 1.0 .py read safely) <- overrides."""
    cfg = Config()
    if name_or_path:
        path = resolve_preset(name_or_path)
        if path.suffix == ".py":
            apply_dict(cfg, opensora_py_to_dict(path), source=str(path))
        else:
            data = load_toml(path)
            base = data.pop("base", None)
            if base is not None:
                cfg = load_config(base)
            apply_dict(cfg, data, source=str(path))
    apply_overrides(cfg, overrides or [])
    return cfg


def dump_toml(data: dict[str, Any]) -> str:
    """Minimal TOML writer for the config's value types (scalars, lists, one level of dicts)."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        if isinstance(v, dict):
            return (
                "{ " + ", ".join(f"{json.dumps(k)} = {fmt(x)}" for k, x in v.items() if x is not None) + " }"
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


# --------------------------------------------------------------------------------------------------
# Open-Sora 1.0 Python configs, read with `ast` and never executed


class _LiteralReader(ast.NodeVisitor):
    """Evaluates literal expressions only: constants, tuples/lists/dicts, dict(k=v), unary minus and
    arithmetic between numbers (Open-Sora writes `fps = 24 // 3`). Anything else is refused."""

    _BINOPS = {
        ast.Add: lambda a, b: a + b,
        ast.Sub: lambda a, b: a - b,
        ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b,
        ast.FloorDiv: lambda a, b: a // b,
    }

    def __init__(self, source: str, names: dict[str, Any]):
        self.source = source
        self.names = names

    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Tuple, ast.List)):
            return [self.value(e) for e in node.elts]
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise self._refuse(node, "dict unpacking")
            return {self.value(k): self.value(v) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
            if node.args or any(kw.arg is None for kw in node.keywords):
                raise self._refuse(node, "dict() with positional or ** arguments")
            return {kw.arg: self.value(kw.value) for kw in node.keywords}
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self.value(node.operand)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise self._refuse(node, "unary operator on a non-number")
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in self._BINOPS:
            a, b = self.value(node.left), self.value(node.right)
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)):
                raise self._refuse(node, "arithmetic on non-numbers")
            return self._BINOPS[type(node.op)](a, b)
        if isinstance(node, ast.Name) and node.id in self.names:
            return self.names[node.id]
        if isinstance(node, ast.Call):
            raise self._refuse(node, "a function call")
        raise self._refuse(node, type(node).__name__)

    def _refuse(self, node: ast.AST, what: str) -> ConfigError:
        line = getattr(node, "lineno", "?")
        return ConfigError(
            f"{self.source}:{line}: refused to read {what}: Open-Sora config files may hold literals only"
        )


def read_python_literals(path: Path) -> dict[str, Any]:
    """Module-level ``name = literal`` assignments of a Python file, without executing it."""
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        raise ConfigError(f"{path}: not valid Python: {exc.msg} (line {exc.lineno})") from exc
    names: dict[str, Any] = {}
    reader = _LiteralReader(str(path), names)
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            raise reader._refuse(node, "an import")
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstring
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            names[node.targets[0].id] = reader.value(node.value)
            continue
        raise reader._refuse(node, f"a {type(node).__name__} statement")
    return names


# Open-Sora 1.0 component type names -> sorakit names
_OS_VAE = {"VideoAutoencoderKL": "sd-vae"}
_OS_TEXT = {"t5": "t5", "clip": "clip", "classes": "classes"}
_OS_SCHED = {"iddpm": "iddpm", "dpm-solver": "dpm-solver", "iddpm-speed": "iddpm"}
_OS_DTYPE = {
    "fp16": "fp16",
    "bf16": "bf16",
    "fp32": "fp32",
    "float16": "fp16",
    "bfloat16": "bf16",
    "float32": "fp32",
}
_OS_PLUGIN = {"zero2": "fsdp", "zero2-seq": "fsdp", "ddp": "ddp"}


def opensora_py_to_dict(path: Path) -> dict[str, Any]:
    """Translate an Open-Sora 1.0 config file (inference or training) into sorakit sections."""
    src = read_python_literals(path)
    out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    unknown: list[str] = []

    model = dict(src.get("model") or {})
    if model:
        out["model"]["type"] = model.pop("type", "STDiT-XL/2")
        for key in ("space_scale", "time_scale", "from_pretrained"):
            if key in model:
                out["model"][key] = model.pop(key)
        if "enable_grad_checkpoint" in model:
            out["model"]["grad_checkpoint"] = model.pop("enable_grad_checkpoint")
        for key in ("enable_flashattn", "enable_layernorm_kernel", "enable_sequence_parallelism"):
            model.pop(key, None)  # kernels are chosen by torch's SDPA; sp comes from parallel.sp_size
        out["model"]["arch"] = model
    vae = dict(src.get("vae") or {})
    if vae:
        vtype = vae.pop("type", "VideoAutoencoderKL")
        out["vae"]["type"] = _OS_VAE.get(vtype, vtype)
        if "from_pretrained" in vae:
            out["vae"]["path"] = vae.pop("from_pretrained")
        if "micro_batch_size" in vae:
            out["vae"]["micro_batch_size"] = vae.pop("micro_batch_size")
        unknown += [f"vae.{k}" for k in vae]
    text = dict(src.get("text_encoder") or {})
    if text:
        ttype = text.pop("type", "t5")
        out["text_encoder"]["type"] = _OS_TEXT.get(ttype, ttype)
        if "from_pretrained" in text:
            out["text_encoder"]["path"] = text.pop("from_pretrained")
        if "model_max_length" in text:
            out["text_encoder"]["model_max_length"] = text.pop("model_max_length")
        text.pop("shardformer", None)
        if ttype == "classes" and "num_classes" in text:
            out["model"].setdefault("arch", {})["num_classes"] = text.pop("num_classes")
        unknown += [f"text_encoder.{k}" for k in text]
    sched = dict(src.get("scheduler") or {})
    if sched:
        stype = sched.pop("type", "iddpm")
        out["scheduler"]["type"] = _OS_SCHED.get(stype, stype)
        if "num_sampling_steps" in sched:
            out["scheduler"]["num_sampling_steps"] = sched.pop("num_sampling_steps")
        if "cfg_scale" in sched:
            out["scheduler"]["cfg_scale"] = sched.pop("cfg_scale")
        sched.pop("timestep_respacing", None)
        unknown += [f"scheduler.{k}" for k in sched]

    is_train = any(k in src for k in ("lr", "epochs", "ckpt_every", "plugin", "dataset", "grad_clip"))
    frames_key = "data" if is_train else "inference"
    if "num_frames" in src:
        out[frames_key]["num_frames"] = src["num_frames"]
    if "image_size" in src:
        out[frames_key]["image_size"] = list(src["image_size"])
    dataset = dict(src.get("dataset") or {})
    for key in ("num_frames", "frame_interval"):
        if key in dataset:
            out["data"][key] = dataset[key]
    if "image_size" in dataset:
        out["data"]["image_size"] = list(dataset["image_size"])
    if dataset.get("data_path") or src.get("data_path"):
        out["data"]["csv"] = dataset.get("data_path") or src.get("data_path")
    if "frame_interval" in src:
        out["data"]["frame_interval"] = src["frame_interval"]
    if "num_workers" in src:
        out["data"]["num_workers"] = src["num_workers"]
    if "fps" in src:
        out["inference"]["fps"] = int(src["fps"])
    if "seed" in src:
        out["train" if is_train else "inference"]["seed"] = src["seed"]
    if "batch_size" in src:
        out["train" if is_train else "inference"]["batch_size"] = src["batch_size"]
    if "dtype" in src:
        dtype = _OS_DTYPE.get(str(src["dtype"]), str(src["dtype"]))
        if is_train:
            out["train"]["mixed_precision"] = dtype
        else:
            out["inference"]["dtype"] = dtype
    if "save_dir" in src:
        out["inference"]["save_dir"] = src["save_dir"]
    for key in ("lr", "grad_clip", "ckpt_every", "log_every"):
        if key in src:
            out["train"][key] = src[key]
    if "grad_checkpoint" in src:
        out["model"]["grad_checkpoint"] = src["grad_checkpoint"]
    if "plugin" in src:
        out["parallel"]["strategy"] = _OS_PLUGIN.get(src["plugin"], src["plugin"])
    if "sp_size" in src:
        out["parallel"]["sp_size"] = src["sp_size"]
    if unknown:
        raise ConfigError(f"{path}: unsupported Open-Sora keys: {', '.join(unknown)}")
    return {k: v for k, v in out.items() if v}
