"""Open-Sora 1.0 Python config files -> sorakit config sections, read with `ast` and never executed.

`opensora_py_to_dict(path)` returns ``{section: {key: value}}`` for `sorakit.config.apply_dict`; keys this
translator does not know are an error naming them (nothing is dropped silently).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import Any

from sorakit.errors import ConfigError


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
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    unknown = _model(src, out) + _vae(src, out) + _text_encoder(src, out) + _scheduler(src, out)
    _run_settings(src, out)
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


def _vae(src: dict[str, Any], out: dict[str, dict[str, Any]]) -> list[str]:
    vae = dict(src.get("vae") or {})
    if not vae:
        return []
    vtype = vae.pop("type", "VideoAutoencoderKL")
    out["vae"]["type"] = _OS_VAE.get(vtype, vtype)
    if "from_pretrained" in vae:
        out["vae"]["path"] = vae.pop("from_pretrained")
    if "micro_batch_size" in vae:
        out["vae"]["micro_batch_size"] = vae.pop("micro_batch_size")
    return [f"vae.{k}" for k in vae]


def _text_encoder(src: dict[str, Any], out: dict[str, dict[str, Any]]) -> list[str]:
    text = dict(src.get("text_encoder") or {})
    if not text:
        return []
    ttype = text.pop("type", "t5")
    out["text_encoder"]["type"] = _OS_TEXT.get(ttype, ttype)
    if "from_pretrained" in text:
        out["text_encoder"]["path"] = text.pop("from_pretrained")
    if "model_max_length" in text:
        out["text_encoder"]["model_max_length"] = text.pop("model_max_length")
    text.pop("shardformer", None)
    if ttype == "classes" and "num_classes" in text:
        out["model"].setdefault("arch", {})["num_classes"] = text.pop("num_classes")
    return [f"text_encoder.{k}" for k in text]


def _scheduler(src: dict[str, Any], out: dict[str, dict[str, Any]]) -> list[str]:
    sched = dict(src.get("scheduler") or {})
    if not sched:
        return []
    stype = sched.pop("type", "iddpm")
    out["scheduler"]["type"] = _OS_SCHED.get(stype, stype)
    if "num_sampling_steps" in sched:
        out["scheduler"]["num_sampling_steps"] = sched.pop("num_sampling_steps")
    if "cfg_scale" in sched:
        out["scheduler"]["cfg_scale"] = sched.pop("cfg_scale")
    sched.pop("timestep_respacing", None)
    return [f"scheduler.{k}" for k in sched]


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
