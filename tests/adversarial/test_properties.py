"""Property-based tests (Hypothesis) of the parsers that read user text: config overrides, Open-Sora .py
config files, the mask-strategy syntax and the resolution syntax. Whatever the input: a value, or one
`UserError`; never another exception, never a hang (a generous bound per example, far above the
milliseconds each takes), never a file written in the working folder."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
import typing
from collections.abc import Iterator
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sorakit.config import Config, load_config, validate_config
from sorakit.errors import UserError
from sorakit.masks import check_strategy, format_mask_strategy, parse_mask_strategy
from sorakit.pipelines.validate import parse_resolution

BOUND_S = 60.0  # per example; each takes milliseconds -- this only turns a hang into a failure
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = [f"{s}.{f.name}" for s, cls in typing.get_type_hints(Config).items() for f in dataclasses.fields(cls)]
KEYS += [
    "model.arch.depth",
    "model.arch.hidden_size",
    "model.arch.patch_size",
    "train.mask_ratios.mask_random",
]

NUMBERISH = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "2**70", "[]", "[1]", "[0,0]", "[256,256,3]", "{}", "none",
                     "true", "128x64", "0x0", "[" * 300 + "]" * 300, "1_000", "0b101", "'x'", "(1,2)"]),
)  # fmt: skip


@contextlib.contextmanager
def _in_empty_folder() -> Iterator[Path]:
    """Run in a fresh working folder and check nothing was written into it."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
            assert os.listdir(tmp) == [], os.listdir(tmp)
        finally:
            os.chdir(old)


def _value_or_user_error(fn, *args):  # noqa: ANN001, ANN202
    start = time.monotonic()
    try:
        return fn(*args)
    except UserError as exc:
        assert str(exc).strip(), "an empty error message"
        return None
    finally:
        assert time.monotonic() - start < BOUND_S


@SETTINGS
@given(key=st.sampled_from(KEYS) | st.text(max_size=30), value=NUMBERISH | st.text(max_size=60))
def test_any_override_gives_a_valid_config_or_one_error(key: str, value: str) -> None:
    with _in_empty_folder():
        cfg = _value_or_user_error(load_config, None, [f"{key}={value}"])
    if cfg is not None:
        validate_config(cfg)  # whatever was accepted is within every field's bounds
        cfg.dump("json")  # and can be written (no NaN, nothing unserialisable)


# Open-Sora .py configs: text from the reader's own grammar (so most of it parses), and raw text

_NAMES = st.sampled_from(["a0", "a1", "a2", "fps", "num_frames", "image_size", "lr", "seed", "model", "dataset",
                          "scheduler", "vae", "plugin", "dtype", "batch_size", "frame_interval"])  # fmt: skip
_LEAVES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=False).map(repr),
    st.text(max_size=20).map(repr),
    st.sampled_from(["None", "True", "a0", "a1", "1/0", "10000000000", "'STDiT-XL/2'", "(256, 256)"]),
)


def _exprs(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(children, st.sampled_from(["+", "-", "*", "/", "//", "**", "%"]), children).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        st.lists(children, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(st.tuples(_NAMES, children), max_size=3).map(
            lambda kv: "dict(" + ", ".join(f"{k}={v}" for k, v in kv) + ")"
        ),
        children.map(lambda x: f"-{x}"),
    )


PY_LINES = st.lists(st.tuples(_NAMES, st.recursive(_LEAVES, _exprs, max_leaves=12)), max_size=12).map(
    lambda lines: "".join(f"{name} = {expr}\n" for name, expr in lines)
)


def _read_py(text: str | bytes) -> object:
    with _in_empty_folder() as tmp:
        path = tmp / "cfg.py"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        try:
            return _value_or_user_error(load_config, str(path))
        finally:
            path.unlink()


@SETTINGS
@given(text=PY_LINES)
def test_py_config_from_the_grammar(text: str) -> None:
    _read_py(text)


@SETTINGS
@given(text=st.text(max_size=300) | st.binary(max_size=300))
def test_py_config_raw_text(text: str | bytes) -> None:
    _read_py(text)


@SETTINGS
@given(text=st.text(alphabet="0123456789-,;. e+xinaf", max_size=80) | st.text(max_size=80))
def test_mask_strategy(text: str) -> None:
    entries = _value_or_user_error(parse_mask_strategy, text)
    if entries:
        assert parse_mask_strategy(format_mask_strategy(entries)) == entries
        _value_or_user_error(check_strategy, entries, [4], 16, 2)


@SETTINGS
@given(text=st.text(alphabet="0123456789-xX*, \t", max_size=40) | st.text(max_size=40))
def test_resolution(text: str) -> None:
    hw = _value_or_user_error(parse_resolution, text, "--resolution")
    if hw is not None:
        assert all(1 <= v <= 65_536 for v in hw)
