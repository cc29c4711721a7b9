"""The same seed gives a byte-identical MP4 from separate processes (issue #14 item 6).

x264's AVX-512 macroblock-tree kernel read uninitialised heap padding, so the H.264 bytes depended on
what the process had allocated before the encode. The two processes here get different glibc
MALLOC_PERTURB_ fill bytes (1: fresh memory reads 0xfe; 255: it reads 0), which made the pre-fix
outputs differ every time on an AVX-512 machine instead of only now and then.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sorakit.data.video import read_video, x264_options


def _generate(out: Path, perturb: str) -> str:
    env = dict(os.environ)
    env["MALLOC_PERTURB_"] = perturb
    cmd = [sys.executable, "-m", "sorakit.cli.main", "generate", "a red circle moving to the right",
           "--output", str(out), "--seed", "3", "--steps", "4", "--threads", "1", "--no-progress"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_same_seed_same_mp4_bytes_across_processes(tmp_path: Path) -> None:
    """The built-in model's 64x64 frames (a size that hit the x264 bug) from two processes."""
    digests = [_generate(tmp_path / f"run{i}.mp4", p) for i, p in enumerate(["1", "255"])]
    assert len(set(digests)) == 1, digests
    frames = read_video(tmp_path / "run0.mp4")
    assert frames.shape[0] == 16 and np.ptp(frames) > 0  # a real video, not an empty/constant file


def test_x264_options_keep_crf() -> None:
    opts = x264_options(23)
    assert opts["crf"] == "23"
    assert set(opts) <= {"crf", "x264-params"}


@pytest.mark.parametrize(
    ("flags", "capped"), [({"avx2", "avx512f", "avx512bw"}, True), ({"sse2", "avx2"}, False)]
)
def test_x264_runs_its_avx2_code_on_avx512_cpus(monkeypatch, flags, capped) -> None:
    import sorakit.data.video as video

    monkeypatch.setattr(video, "cpu_flags", lambda: frozenset(flags))
    assert ("x264-params" in x264_options(23)) == capped
    if capped:
        assert x264_options(23)["x264-params"] == "asm=AVX2"
