"""Open-Sora 1.0 Python config files -> sorakit config sections, read with `ast` and never executed.

`opensora_py_to_dict(path)` returns ``{section: {key: value}}`` for `sorakit.config.apply_dict`; keys this
translator does not know are an error naming them (nothing is dropped silently).
"""

from __future__ import annotations

import ast
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sorakit.errors import ConfigError

# Limits on what reading one file may cost: an Open-Sora config is a few KB of small literals, so these
# are far above any real file and far below what hurts (`a1 = a0*a0` forty times is a 2**40-digit number).
MAX_BYTES = 1 << 20  # file size
MAX_NODES = 100_000  # syntax-tree nodes
MAX_DEPTH = 64  # nesting of expressions
MAX_ITEMS = 100_000  # values built, counting each use of a name as a copy of its value
MAX_STRING = 65_536  # characters of one string
MAX_INT = 2**64  # |int| after every operation
TIME_BUDGET_S = 10.0  # wall time of the whole read (a backstop: the limits above bound it already)


class _LiteralReader(ast.NodeVisitor):
    """Evaluates literal expressions only: constants, tuples/lists/dicts, dict(k=v), unary minus and
    arithmetic between numbers (Open-Sora writes `fps = 24 // 3`). Anything else is refused, and so is any
    value beyond the limits above."""

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
        self.sizes: dict[str, int] = {}  # name -> values its value holds (a reference costs as much)
        self.items = 0
        self.deadline = time.monotonic() + TIME_BUDGET_S

    def value(self, node: ast.AST, depth: int = 0) -> Any:
        self.items += 1
        if depth > MAX_DEPTH or self.items > MAX_ITEMS or time.monotonic() > self.deadline:
            what = "nesting" if depth > MAX_DEPTH else ("values" if self.items > MAX_ITEMS else "time")
            raise self._limit(node, f"beyond the reader's limit on {what}")
        return self._checked(node, self._value(node, depth + 1))

    def _value(self, node: ast.AST, depth: int) -> Any:
        if isinstance(node, ast.Constant):
            if node.value is not None and not isinstance(node.value, (bool, int, float, str)):
                raise self._refuse(node, f"a {type(node.value).__name__} constant")
            return node.value
        if isinstance(node, (ast.Tuple, ast.List)):
            return [self.value(e, depth) for e in node.elts]
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise self._refuse(node, "dict unpacking")
            pairs = [(self.value(k, depth), self.value(v, depth)) for k, v in zip(node.keys, node.values)]
            if any(isinstance(k, list) for k, _ in pairs):
                raise self._refuse(node, "a list as a dict key")
            return dict(pairs)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
            if node.args or any(kw.arg is None for kw in node.keywords):
                raise self._refuse(node, "dict() with positional or ** arguments")
            return {kw.arg: self.value(kw.value, depth) for kw in node.keywords}
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self.value(node.operand, depth)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise self._refuse(node, "unary operator on a non-number")
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in self._BINOPS:
            a, b = self.value(node.left, depth), self.value(node.right, depth)
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)):
                raise self._refuse(node, "arithmetic on non-numbers")
            try:  # both operands are within MAX_INT / finite, so this is one cheap operation
                return self._BINOPS[type(node.op)](a, b)
            except (ZeroDivisionError, OverflowError) as exc:
                raise self._limit(node, f"arithmetic fails ({exc})") from exc
        if isinstance(node, ast.Name) and node.id in self.names:
            self.items += self.sizes.get(node.id, 1)
            return self.names[node.id]
        if isinstance(node, ast.Call):
            raise self._refuse(node, "a function call")
        raise self._refuse(node, type(node).__name__)

    def _checked(self, node: ast.AST, v: Any) -> Any:
        """`v` unless it is a number or string beyond the limits."""
        if isinstance(v, float) and not math.isfinite(v):
            raise self._limit(node, f"a non-finite number ({v})")
        if isinstance(v, int) and abs(v) > MAX_INT:
            raise self._limit(node, f"an integer beyond 64 bits ({v.bit_length()} bits)")
        if isinstance(v, str) and len(v) > MAX_STRING:
            raise self._limit(node, f"a string of {len(v)} characters (at most {MAX_STRING})")
        return v

    def assign(self, name: str, node: ast.AST) -> None:
        before = self.items
        self.names[name] = self.value(node)
        self.sizes[name] = self.items - before

    def _limit(self, node: ast.AST, what: str) -> ConfigError:
        return ConfigError(f"{self.source}:{getattr(node, 'lineno', '?')}: {what}")

    def _refuse(self, node: ast.AST, what: str) -> ConfigError:
        line = getattr(node, "lineno", "?")
        return ConfigError(
            f"{self.source}:{line}: refused to read {what}: Open-Sora config files may hold literals only"
        )


def _parse(path: Path) -> ast.Module:
    """The syntax tree of a small UTF-8 Python file; ConfigError for anything else."""
    try:
        size = path.stat().st_size
        text = "" if size > MAX_BYTES else path.read_bytes().decode("utf-8")
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        where = f" (line {exc.lineno})" if exc.lineno else ""
        raise ConfigError(f"{path}: not valid Python: {exc.msg}{where}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    # ValueError: null bytes, an int literal past Python's 4300 digits; Recursion/MemoryError: deep nesting
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ConfigError(
            f"{path}: not a readable Python file (nested too deeply, or {type(exc).__name__})"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    if size > MAX_BYTES:
        raise ConfigError(f"{path}: {size} bytes is too large for a config file (at most {MAX_BYTES})")
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ConfigError(f"{path}: more than {MAX_NODES} syntax nodes: too large for a config file")
    return tree


def read_python_literals(path: Path) -> dict[str, Any]:
    """Module-level ``name = literal`` assignments of a Python file, without executing it."""
    tree = _parse(path)
    names: dict[str, Any] = {}
    reader = _LiteralReader(str(path), names)
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            raise reader._refuse(node, "an import")
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstring
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            reader.assign(node.targets[0].id, node.value)
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
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    try:
        unknown = _model(src, out) + _components(src, out)
        _run_settings(src, out)
    except ConfigError:
        raise
    # the file's values are untrusted: a wrong shape (model = 5, fps = "x", plugin = [1]) fails in here
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path}: a value of an unexpected type ({exc})") from exc
    if unknown:
        raise ConfigError(f"{path}: unsupported Open-Sora keys: {', '.join(unknown)}")
    return {k: v for k, v in out.items() if v}


def _model(src: dict[str, Any], out: dict[str, dict[str, Any]]) -> list[str]:
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
    return []  # every other model key is a constructor argument (checked when the model is built)


# upstream section -> (sorakit section, default type, type names, {upstream key: sorakit key}, keys dropped)
_OS_SECTIONS: dict[str, tuple[str, str, dict[str, str], dict[str, str], tuple[str, ...]]] = {
    "vae": ("vae", "VideoAutoencoderKL", _OS_VAE,
            {"from_pretrained": "path", "micro_batch_size": "micro_batch_size"}, ()),
    "text_encoder": ("text_encoder", "t5", _OS_TEXT,
                     {"from_pretrained": "path", "model_max_length": "model_max_length"}, ("shardformer",)),
    # Open-Sora calls the sampler its ``scheduler``
    "scheduler": ("sampler", "iddpm", _OS_SCHED,
                  {"num_sampling_steps": "num_sampling_steps", "cfg_scale": "guidance_scale"},
                  ("timestep_respacing",)),
}  # fmt: skip


def _section(name: str, values: dict[str, Any], out: dict[str, dict[str, Any]]) -> list[str]:
    """One upstream component dict (``vae``, ``text_encoder``, ``scheduler``) -> its sorakit section, by
    the table above; returns the keys it does not know."""
    if not values:
        return []
    section, default, types, renames, dropped = _OS_SECTIONS[name]
    kind = values.pop("type", default)
    out[section]["type"] = types.get(kind, kind)
    for theirs, ours in renames.items():
        if theirs in values:
            out[section][ours] = values.pop(theirs)
    for key in dropped:
        values.pop(key, None)
    return [f"{name}.{k}" for k in values]


def _components(src: dict[str, Any], out: dict[str, dict[str, Any]]) -> list[str]:
    """The vae, text encoder and sampler dicts; a class-label encoder's ``num_classes`` is a model argument."""
    text = dict(src.get("text_encoder") or {})
    if text.get("type") == "classes" and "num_classes" in text:
        out["model"].setdefault("arch", {})["num_classes"] = text.pop("num_classes")
    return (
        _section("vae", dict(src.get("vae") or {}), out)
        + _section("text_encoder", text, out)
        + _section("scheduler", dict(src.get("scheduler") or {}), out)
    )


def _run_settings(src: dict[str, Any], out: dict[str, dict[str, Any]]) -> None:
    """Top-level settings: sizes, data, seeds, precision, optimisation, parallelism. A training file
    (it has lr, epochs, a dataset, ...) puts sizes and seeds into data/train, an inference file into inference."""
    is_train = any(k in src for k in ("lr", "epochs", "ckpt_every", "plugin", "dataset", "grad_clip"))
    run = "train" if is_train else "inference"
    frames_key = "data" if is_train else "inference"
    if "num_frames" in src:
        out[frames_key]["num_frames"] = src["num_frames"]
    if "image_size" in src:
        out[frames_key]["image_size"] = list(src["image_size"])
    _data(src, out)
    if "fps" in src:
        out["inference"]["fps"] = int(src["fps"])
    for key in ("seed", "batch_size"):
        if key in src:
            out[run][key] = src[key]
    if "dtype" in src:
        dtype = _OS_DTYPE.get(str(src["dtype"]), str(src["dtype"]))
        out["train" if is_train else "inference"]["mixed_precision" if is_train else "dtype"] = dtype
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


def _data(src: dict[str, Any], out: dict[str, dict[str, Any]]) -> None:
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
