"""Item 11 (and 2, 10) of issue #24: numbers a config must never accept, bad TOML / Open-Sora .py files.

Every numeric field of the typed config gets the same checks (finite floats, ints within 64 bits, the
field's declared bounds) wherever a value comes from: presets, TOML files, .py files, overrides."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from sorakit.config import Config, ConfigError, apply_dict, load_config, validate_config

TRAIN = "opensora/train/16x256x256"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.lr=nan", "train.lr must be a finite number"),
        ("train.lr=-1", "train.lr must be >= 0"),
        ("train.lr=inf", "train.lr must be a finite number"),
        ("train.ema_decay=2", "train.ema_decay must be <= 1"),
        ("model.arch.hidden_size=0", "model.arch.hidden_size must be positive"),
        ("model.arch.depth=-3", "model.arch.depth must be positive"),
        ("model.arch.depth=1.5", "model.arch.depth must be an integer"),
        ("model.arch.patch_size=[1,2,0]", "model.arch.patch_size[2] must be positive"),
        ("data.frame_interval=0", "data.frame_interval must be positive"),
        ("data.num_workers=-1", "data.num_workers must be >= 0"),
        ("data.image_size=[]", "data.image_size must hold 2 values, got 0"),
        ("data.image_size=[256,256,3]", "data.image_size must hold 2 values, got 3"),
        ("data.num_frames=1000000000000", "data.num_frames must be <= 100000"),
        (f"train.seed={2**70}", "train.seed must be <= 4294967295"),
        ("train.seed=2**70", "train.seed: expected an integer"),
        ("inference.seed=-1", "inference.seed must be >= 0"),
        ("train.mask_ratios.mask_random=1.5", "train.mask_ratios.mask_random must be <= 1"),
        (
            "train.max_steps=" + "9" * 4000,
            "train.max_steps must fit in 64 bits, got an integer of 13288 bits",
        ),
        ("train.lr=" + "[" * 500 + "]" * 500, "train.lr: expected a number"),
        ("sampler.num_sampling_steps=0", "sampler.num_sampling_steps must be positive"),
    ],
)
def test_bad_override_is_one_line(refused, override: str, needle: str) -> None:
    assert needle in refused("config", TRAIN, override)


@pytest.mark.parametrize(
    "override",
    ["train.ema_decay=1", "train.lr=0", "data.num_workers=0", "train.keep_last=0", "inference.seed=4294967295",
     "model.arch.depth=1", "data.image_size=128x64", "train.mask_ratios.mask_random=0.25"],
)  # fmt: skip
def test_values_at_the_bounds_are_accepted(override: str) -> None:
    load_config(TRAIN, [override])


def _numeric_fields() -> list[tuple[str, str, type]]:
    out = []
    for section, cls in typing.get_type_hints(Config).items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if typing.get_origin(hint) in (list, dict):
                continue
            kinds = {a for a in (typing.get_args(hint) or (hint,)) if a in (int, float)}
            if kinds:
                out.append((section, f.name, float if float in kinds else int))
    return out


@pytest.mark.parametrize(("section", "key", "kind"), _numeric_fields())
def test_every_numeric_field_refuses_non_finite_and_huge(section: str, key: str, kind: type) -> None:
    """Not a list of cases: every int/float field of every section, present and future."""
    bad = [float("nan"), float("inf"), -float("inf")] if kind is float else [2**64, -(2**64)]
    for value in bad:
        with pytest.raises(ConfigError, match=rf"^{section}\.{key} must "):
            apply_dict(Config(), {section: {key: value}})
        with pytest.raises(ConfigError, match=rf"^{section}\.{key} must "):
            load_config(None, [f"{section}.{key}={value}"])


def test_validate_config_checks_configs_built_in_code() -> None:
    cfg = Config()
    validate_config(cfg)  # the defaults are valid
    cfg.train.ema_decay = 2.0
    with pytest.raises(ConfigError, match="train.ema_decay must be <= 1"):
        validate_config(cfg)


# TOML files -------------------------------------------------------------------------------------------


def test_toml_base_cycle_is_refused(refused, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("a.toml").write_text('base = "b.toml"\n')
    Path("b.toml").write_text('base = "a.toml"\n')
    Path("self.toml").write_text('base = "self.toml"\n')
    assert "'base' cycle" in refused("config", "a.toml")
    assert "'base' cycle" in refused("config", "self.toml")


def test_toml_base_must_be_a_string(refused, tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("base = 5\n")
    assert "'base' must be a preset name or file path" in refused("config", str(tmp_path / "c.toml"))


def test_toml_non_utf8_and_deep_nesting_are_refused(refused, tmp_path: Path) -> None:
    (tmp_path / "d.toml").write_bytes(b"[train]\nlr = 1e-3 # \xff\xfe\n")
    assert "not UTF-8" in refused("config", str(tmp_path / "d.toml"))
    (tmp_path / "e.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    assert "invalid TOML" in refused("config", str(tmp_path / "e.toml"))


def test_toml_with_a_bad_number_names_the_file_key(refused, tmp_path: Path) -> None:
    (tmp_path / "f.toml").write_text("[train]\nlr = nan\n")
    assert "train.lr must be a finite number" in refused("config", str(tmp_path / "f.toml"))


# Open-Sora 1.0 .py files (item 2, and `1/0` of item 10) -------------------------------------------------


def _squaring_bomb() -> str:
    return "a0 = 10000000000\n" + "".join(f"a{i} = a{i - 1}*a{i - 1}\n" for i in range(1, 40))


def test_squaring_bomb_is_refused_quickly(tmp_path: Path) -> None:
    """The issue's hang: 40 squarings of 10**10. A subprocess with a generous limit, so that a regression
    fails instead of hanging the suite (the refusal itself takes milliseconds)."""
    path = tmp_path / "bomb.py"
    path.write_text(_squaring_bomb())
    proc = subprocess.run([sys.executable, "-m", "sorakit.cli.main", "config", str(path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"sorakit: error: {path}:2: an integer beyond 64 bits (67 bits)\n"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("fps = 1/0\n", ":1: arithmetic fails (division by zero)"),
        ("fps = 24 // 0\n", "arithmetic fails"),
        ("lr = 1e308 * 10\n", "a non-finite number (inf)"),
        ("x = 'a' * 3\n", "arithmetic on non-numbers"),
        ("a0 = [1, 2, 3, 4, 5, 6, 7, 8]\n" + "".join(f"a{i} = [a{i-1}, a{i-1}]\n" for i in range(1, 40)),
         "limit on values"),
        ("x = '" + "y" * 70_000 + "'\n", "a string of 70000 characters"),
        ("x = " + "(" * 300 + "1" + ")" * 300 + "\n", "not valid Python"),
        ("x = " + "-" * 100_000 + "1\n", "not a readable Python file"),
        ("x = {[1]: 2}\n", "a list as a dict key"),
        ("x = b'abc'\n", "a bytes constant"),
        ("model = 5\n", "a value of an unexpected type"),
        ("fps = 'x'\n", "a value of an unexpected type"),
        ("plugin = [1]\n", "a value of an unexpected type"),
        ("x = 1\0\n", "not valid Python"),
        ("x = [" + "1," * 120_000 + "]\n", "more than 100000 syntax nodes"),
    ],
)  # fmt: skip
def test_hostile_python_config_is_one_line(refused, tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "evil.py"
    path.write_text(text)
    assert needle in refused("config", str(path))


def test_python_config_non_utf8_and_huge_file(refused, tmp_path: Path) -> None:
    (tmp_path / "a.py").write_bytes(b"fps = 8  # \xff\n")
    assert "not UTF-8" in refused("config", str(tmp_path / "a.py"))
    (tmp_path / "b.py").write_text("# " + "x" * (1 << 20) + "\n")
    assert "too large for a config file" in refused("config", str(tmp_path / "b.py"))


def test_train_checks_a_config_built_in_python(tmp_path: Path) -> None:
    """The Python API gets the same checks: `train` refuses before it starts anything."""
    from sorakit.training.trainer import train

    cfg = load_config("tiny")
    cfg.model.arch["depth"] = -3
    with pytest.raises(ConfigError, match="model.arch.depth must be positive"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
