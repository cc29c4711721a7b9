"""Items 11 and 12 of issue #24: `generate` / `data caption` flags refused before any work, and JSON
written by sorakit never holds bare NaN / Infinity."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sorakit.cli.main import main

SRC = Path(__file__).resolve().parents[2] / "src" / "sorakit"


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--guidance", "nan"], "--guidance must be a finite number, got nan"),
        (["--guidance", "inf"], "--guidance must be a finite number, got inf"),
        (["--guidance", "-1"], "--guidance must be >= 0"),
        (["--seed", str(2**70)], "--seed must be <= 4294967295"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--num-frames", "1000000000000"], "--num-frames must be <= 100000"),
        (["--fps", "nan"], "--fps must be a finite number, got nan"),
        (["--fps", "0"], "--fps must be positive"),
        (["--steps", "10000000"], "--steps must be <= 100000"),
        (["--resolution", "1" * 5000 + "x64"], "--resolution must look like HxW"),
        (["--resolution", "100000x64"], "--resolution[0] must be <= 65536"),
        (["--batch-size", str(2**64)], "--batch-size must fit in 64 bits"),
        (["--loop", "1000000000000"], "--loop must be <= 1000"),
    ],
)
def test_bad_generate_flag_is_one_line(refused, tmp_path: Path, flags: list[str], needle: str) -> None:
    out = tmp_path / "v.mp4"
    assert needle in refused("generate", "a cat", "-o", str(out), "--no-progress", *flags)
    assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--timeout", "-1"], "--timeout must be positive"),
        (["--timeout", "nan"], "--timeout must be a finite number"),
        (["--retry-backoff", "inf"], "--retry-backoff must be a finite number"),
        (["--image-size", "0"], "--image-size must be positive"),
    ],
)
def test_bad_caption_flag_is_one_line(refused, tmp_path: Path, flags: list[str], needle: str) -> None:
    csv = tmp_path / "in.csv"
    csv.write_text("path\nx.mp4\n")
    out = tmp_path / "out.csv"
    assert needle in refused(
        "data", "caption", str(csv), "-o", str(out), "--base-url", "http://127.0.0.1:9", *flags
    )
    assert not out.exists()


def _no_nan(text: str) -> object:
    def refuse(name: str) -> None:
        raise AssertionError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_sidecar_is_strict_json(tmp_path: Path) -> None:
    """The built-in model end to end (tiny): the sidecar parses with NaN / Infinity refused."""
    out = tmp_path / "v.mp4"
    code = main(["generate", "a red ball", "-o", str(out), "--steps", "2", "--num-frames", "4", "--no-progress",
                 "--guidance", "7.5", "--fps", "8"])  # fmt: skip
    assert code == 0
    meta = _no_nan(out.with_suffix(".json").read_text())
    assert meta["guidance"] == 7.5 and meta["fps"] == 8.0


def test_metrics_with_non_finite_values_are_strict_json() -> None:
    from sorakit.jsonutil import dumps

    text = dumps({"step": 3, "loss": float("nan"), "grad_norm": float("inf"), "lr": [1e-4, -float("inf")]})
    assert _no_nan(text) == {"step": 3, "loss": None, "grad_norm": None, "lr": [1e-4, None]}


# writers of network request bodies / worker messages (not files a user reads), in tools/
_NOT_FILE_WRITERS = {"tools/caption.py", "tools/executor.py"}


def test_every_json_writer_refuses_nan() -> None:
    """Every `json.dump(s)` call under src/ passes allow_nan=False (or goes through sorakit.jsonutil)."""
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel in _NOT_FILE_WRITERS:
            continue
        text = path.read_text()
        for m in re.finditer(r"json\.dumps?\(", text):
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            if "allow_nan=False" not in text[m.end() : i]:
                offenders.append(f"{rel}:{text.count(chr(10), 0, m.start()) + 1}")
    assert not offenders, offenders
