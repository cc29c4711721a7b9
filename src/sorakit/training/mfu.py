"""Model FLOPs utilisation: useful training FLOPs per second / the device's peak.

Training FLOPs per sample = 3 x the forward FLOPs (``sorakit.models.flops_per_sample``); recomputation
under gradient checkpointing is not useful work and is not counted (as in PaLM's MFU definition).
"""

from __future__ import annotations

import time

import torch

# dense peak TFLOP/s by GPU name fragment: (bf16/fp16 tensor cores, fp32 incl. TF32 off)
GPU_PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "H200": (989.0, 67.0),
    "H100": (989.0, 67.0),  # SXM; the PCIe card is lower (756)
    "H800": (989.0, 67.0),
    "A100": (312.0, 19.5),
    "A800": (312.0, 19.5),
    "L40S": (362.0, 91.6),
    "L4": (121.0, 30.3),
    "A10": (125.0, 31.2),
    "4090": (165.0, 82.6),
    "V100": (125.0, 15.7),
}


def gpu_peak_tflops(name: str, low_precision: bool) -> float | None:
    upper = name.upper()
    for key, (lp, fp32) in GPU_PEAK_TFLOPS.items():
        if key in upper:
            return lp if low_precision else fp32
    return None


def measure_matmul_tflops(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int = 512, seconds: float = 0.2
) -> float:
    """Achieved TFLOP/s of square matmuls: the practical peak on CPUs, whose theoretical one is unknown."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    (a @ b).sum().item()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e12


def peak_tflops(
    device: torch.device, low_precision: bool, override: float | None = None
) -> tuple[float, str]:
    """The peak used for MFU and where it comes from."""
    if override:
        return float(override), "config"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_tflops(name, low_precision)
        if peak:
            return peak, f"{name} datasheet"
    dtype = torch.bfloat16 if low_precision else torch.float32
    return measure_matmul_tflops(device, dtype), f"measured {dtype} matmul on {device.type}"


def known_peak_tflops(
    device: torch.device, low_precision: bool, override: float | None = None
) -> tuple[float | None, str]:
    """The peak the trainer reports MFU against: `override` (train.peak_tflops) or a GPU datasheet.

    None where neither exists (a CPU, an unlisted GPU): a matmul measured at start-up is not a peak -- on
    a CPU shared with other work it came out far below what the run later achieved (MFU 3.4).
    """
    if override:
        return float(override), "train.peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_tflops(name, low_precision)
        if peak:
            return peak, f"{name} datasheet"
        return None, f"no datasheet peak for {name}"
    return None, f"no known peak for {device.type}"


def training_flops_per_sample(
    model: torch.nn.Module, latent_size: tuple[int, int, int], text_len: int | None
) -> int | None:
    """3 x forward FLOPs of one sample, or None when the model has no FLOPs formula."""
    try:
        from sorakit.models import flops_per_sample
    except ImportError:  # pragma: no cover
        return None
    try:
        return int(flops_per_sample(model, latent_size, text_len, training=True))
    except (TypeError, AttributeError):
        return None


def tokens_per_sample(model: torch.nn.Module, latent_size: tuple[int, int, int]) -> int:
    patch = getattr(model, "patch_size", (1, 1, 1))
    n = 1
    for s, p in zip(latent_size, patch):
        n *= s // p
    return n
