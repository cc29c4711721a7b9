"""`sorakit info`: versions, devices, and which optional kernels are importable."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import platform


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("info", help="print versions, devices found and optional kernels")
    parser.set_defaults(func=run)


def collect() -> dict[str, object]:
    import torch

    import sorakit

    info: dict[str, object] = {
        "sorakit": sorakit.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cpu threads": torch.get_num_threads(),
    }
    for name in ("diffusers", "transformers", "safetensors", "av", "scenedetect"):
        try:
            module = importlib.import_module(name)
            info[name] = getattr(module, "__version__", "installed")
        except ImportError:
            info[name] = "not installed"
    devices = ["cpu"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(f"cuda:{i} {props.name} {props.total_memory / 2**30:.1f} GiB")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    info["devices"] = devices
    info["cpu bf16"] = _cpu_bf16_ok(torch)
    kernels = {}
    for name in ("flash_attn", "xformers", "apex"):
        kernels[name] = "importable" if importlib.util.find_spec(name) else "absent (not needed)"
    info["optional kernels"] = kernels
    info["attention"] = "torch.nn.functional.scaled_dot_product_attention"
    return info


def _cpu_bf16_ok(torch) -> str:  # noqa: ANN001 - torch module
    try:
        x = torch.ones(2, 2, dtype=torch.bfloat16)
        return "yes" if bool(((x @ x) == 2).all()) else "wrong results"
    except RuntimeError:
        return "no"


def run(args: argparse.Namespace) -> int:
    for key, value in collect().items():
        if isinstance(value, list):
            print(f"{key}:")
            for item in value:
                print(f"  {item}")
        elif isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
    return 0
