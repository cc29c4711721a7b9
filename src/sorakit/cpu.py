"""This CPU's instruction-set flags, read once from the operating system (no torch import): what the video
encoder's options (:func:`sorakit.data.video.x264_options`) and the trainer's precision choice
(:func:`sorakit.runtime.resolve_mixed_precision`) depend on."""

from __future__ import annotations

import functools
import platform
import subprocess


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags in Linux ``/proc/cpuinfo`` text: every processor's ``flags`` line, united."""
    return frozenset(
        flag
        for line in cpuinfo.splitlines()
        if line.startswith("flags")
        for flag in line.partition(":")[2].split()
    )


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's x86 feature flags in Linux's spelling ("avx2", "avx512f", "avx512_bf16", "amx_bf16", ...);
    empty off x86-64 or where the system does not say. On macOS, sysctl's ``machdep.cpu`` feature lists in lower
    case ("avx2", "avx512f"; Intel Macs have no bf16 units, which that list would spell differently)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return frozenset()
    try:
        if platform.system() == "Darwin":
            keys = ["machdep.cpu.features", "machdep.cpu.leaf7_features"]
            out = subprocess.run(["sysctl", "-n", *keys], capture_output=True, text=True, timeout=10)
            return frozenset(out.stdout.lower().split())
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return parse_cpu_flags(f.read())
    except (OSError, subprocess.SubprocessError):
        return frozenset()
