"""Where and in which precision things run: the one place that turns "auto", "cuda:1", "bf16", ... into
torch devices and dtypes, for the pipeline, the CLI, the trainer and the exporter alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from sorakit.cpu import cpu_flags
from sorakit.errors import UserError

# The precision names sorakit's flags and configs accept.
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float": "fp32"}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def local_rank() -> int:
    """This process's index on its machine under torchrun (0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(
    name: str | torch.device | None = "auto", accelerators: tuple[str, ...] = ("cuda", "mps")
) -> torch.device:
    """'auto' -> the first available of `accelerators` (CUDA: this process's local-rank GPU), else CPU.

    The trainer passes `accelerators=("cuda",)` (it does not train on MPS). An unavailable explicit
    device is a UserError."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if "cuda" in accelerators and torch.cuda.is_available():
            return torch.device("cuda", local_rank() % torch.cuda.device_count())
        if "mps" in accelerators and _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown device '{name}' (valid: auto, cpu, cuda, cuda:N, mps)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{name}' requested but CUDA is not available (use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device '{name}' does not exist ({torch.cuda.device_count()} CUDA device(s))")
    if device.type == "mps" and not _mps_available():
        raise UserError("device 'mps' requested but MPS is not available")
    return device


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 on CUDA with bf16 support (else fp16), fp16 on MPS, fp32 on CPU.

    fp16 on CPU is refused (slow and lossy there); bf16 on CPU is allowed."""
    if isinstance(name, torch.dtype):
        return name
    name = (name or "auto").lower()
    name = _DTYPE_ALIASES.get(name, name)
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}' (valid: auto, fp32, bf16, fp16)")
    if name == "fp16" and device.type == "cpu":
        raise UserError("fp16 is not supported on CPU: use --dtype fp32 or bf16")
    return DTYPES[name]


def cpu_has_native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (x86 ``avx512_bf16`` or ``amx_bf16`` among `flags`,
    default :func:`sorakit.cpu.cpu_flags`). Without them oneDNN emulates bf16 matmuls at about half the float32
    rate, so bf16 autocast only pays where this is True."""
    return bool(set(cpu_flags() if flags is None else flags) & {"avx512_bf16", "amx_bf16"})


def resolve_mixed_precision(setting: str, device: torch.device) -> str:
    """`train.mixed_precision`: "auto" -> "bf16" where the device computes bf16 natively (a CUDA GPU with bf16,
    a CPU with avx512_bf16 / AMX), else "fp32"; any other setting is returned as it is."""
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bf16" (the name flags and sidecars use)."""
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))


def autocast_dtype(mixed_precision: str) -> torch.dtype | None:
    """The autocast dtype of a `train.mixed_precision` setting; None for "fp32" (no autocast)."""
    return None if mixed_precision == "fp32" else DTYPES[mixed_precision]


def set_threads(threads: int | None) -> None:
    """`--threads N`: torch's CPU threads (None keeps torch's default, one per core)."""
    if threads:
        torch.set_num_threads(threads)
