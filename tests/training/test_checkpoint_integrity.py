"""Checkpoints that check themselves: a damaged newest checkpoint is skipped (and kept), a full disk stops
the run with one line and leaves it resumable, `keep_last` keeps the last verified checkpoint, and
`sorakit checkpoints` reports what is damaged and why."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_helpers import make_cache, tiny_config
from safetensors.torch import load_file

from sorakit.training import checkpoint as ckpt
from sorakit.training.trainer import train

STEPS = 6


def _cfg(cache: Path, *extra: str):
    return tiny_config(
        f"data.csv={cache}", "train.caption_dropout=0.3", f"train.max_steps={STEPS}", "train.ckpt_every=2",
        "train.keep_last=0", *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A cache and the weights of one uninterrupted run over it."""
    root = tmp_path_factory.mktemp("ref")
    cache = make_cache(root / "cache", n=10)
    result = train(_cfg(cache, "train.ckpt_every=100"), root / "run")
    return cache, load_file(str(result.checkpoint / "model.safetensors"))


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def warnings_logged():
    handler = _Lines()
    logging.getLogger("sorakit").addHandler(handler)
    yield handler.lines
    logging.getLogger("sorakit").removeHandler(handler)


def _same_weights(run: Path, ref: dict[str, torch.Tensor]) -> bool:
    final = load_file(str(ckpt.step_dir(run, STEPS) / "model.safetensors"))
    return final.keys() == ref.keys() and all(torch.equal(final[k], ref[k]) for k in ref)


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def _flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - 7] ^= 0x10  # inside the tensor data, past every header
    path.write_bytes(bytes(data))


def _garble(path: Path) -> None:
    path.write_text(path.read_text().replace('"step"', '"stpe"', 1))


@pytest.mark.parametrize(
    "damage, file, why",
    [
        (_truncate, "model.safetensors", "model.safetensors has"),
        (_flip_bit, "optimizer.pt", "optimizer.pt does not match its sha256"),
        (_flip_bit, "rng/rank-00000.pt", "rng/rank-00000.pt does not match its sha256"),
        (_garble, "state.json", "state.json does not match its sha256"),
    ],
)
def test_damaged_newest_checkpoint_is_skipped_and_kept(
    tmp_path, reference, warnings_logged, damage, file, why
):
    cache, ref = reference
    run = tmp_path / "run"
    train(_cfg(cache, "train.max_steps=4"), run)
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2, 4]
    damage(ckpt.step_dir(run, 4) / file)
    assert ckpt.verify_checkpoint(ckpt.step_dir(run, 2)).status == "verified"
    assert ckpt.verify_checkpoint(ckpt.step_dir(run, 4), deep=file != "model.safetensors").status == "damaged"

    result = train(_cfg(cache), run, resume=True)
    assert result.step == STEPS and len(result.losses) == STEPS - 2  # resumed from step 2, not 4
    skipped = [x for x in warnings_logged if x.startswith("skipping checkpoint")]
    assert len(skipped) == 1 and "step-00000004" in skipped[0] and why in skipped[0], warnings_logged
    assert _same_weights(run, ref)
    # the damaged checkpoint was set aside when step 4 was written again, never deleted
    aside = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("step-00000004.damaged-")]
    assert len(aside) == 1 and ckpt.verify_checkpoint(aside[0]).status == "damaged"
    assert ckpt.verify_checkpoint(ckpt.step_dir(run, 4)).status == "verified"


def test_disk_full_mid_write_is_one_line_and_resumable(tmp_path, reference, monkeypatch, capsys):
    cache, ref = reference
    run = tmp_path / "run"
    real_write = ckpt._write_file

    def disk_fills_at_step_4(path: Path, data: bytes) -> None:
        if path.parent.name == ".tmp-step-00000004" and path.name == "optimizer.pt":
            with open(path, "wb") as fh:  # half the bytes reach the disk, then it is full
                fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, data)

    monkeypatch.setattr(ckpt, "_write_file", disk_fills_at_step_4)
    from sorakit.cli.main import main

    code = main(["train", "tiny", *_cfg_overrides(cache), "--output", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) >= 1
    line = err[-1]
    assert line.startswith("sorakit: error: checkpoint for step 4 not written: No space left on device: "), (
        line
    )
    assert str(run / "checkpoints" / ".tmp-step-00000004" / "optimizer.pt") in line and "--resume" in line
    assert not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())  # partial write gone
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2]
    assert ckpt.verify_checkpoint(ckpt.step_dir(run, 2)).status == "verified"

    monkeypatch.setattr(ckpt, "_write_file", real_write)  # space freed
    assert main(["train", "tiny", *_cfg_overrides(cache), "--output", str(run), "--resume"]) == 0
    assert _same_weights(run, ref)


def _cfg_overrides(cache: Path) -> list[str]:
    from _train_helpers import TINY_OVERRIDES

    return [*TINY_OVERRIDES, "train.caption_dropout=0.3", "train.keep_last=0", "--data", str(cache),
            "--max-steps", str(STEPS), "--ckpt-every", "2"]  # fmt: skip


def test_keep_last_never_removes_the_last_verified_checkpoint(tmp_path, reference):
    cache, _ = reference
    run = tmp_path / "run"
    train(_cfg(cache, "train.max_steps=4", "train.ckpt_every=1", "train.keep_last=0"), run)
    # a damaged checkpoint newer than anything that will be written, and a damaged older one
    shutil.copytree(ckpt.step_dir(run, 4), ckpt.step_dir(run, 9))
    _truncate(ckpt.step_dir(run, 9) / "ema.safetensors")
    _truncate(ckpt.step_dir(run, 1) / "model.safetensors")
    shutil.rmtree(ckpt.step_dir(run, 4))
    train(_cfg(cache, "train.max_steps=6", "train.ckpt_every=1", "train.keep_last=1"), run, resume=True)
    # counting damaged folders, keep_last=1 would have kept only step 9 and deleted step 6
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [1, 6, 9]
    assert ckpt.verify_checkpoint(ckpt.step_dir(run, 6)).status == "verified"
    assert ckpt.resume_checkpoint(run) == ckpt.step_dir(run, 6)


def test_checkpoint_without_manifest_is_accepted_unverified(tmp_path, reference, warnings_logged):
    cache, ref = reference
    run = tmp_path / "run"
    train(_cfg(cache, "train.max_steps=4"), run)
    for step in (2, 4):  # as an older sorakit wrote them
        (ckpt.step_dir(run, step) / "manifest.json").unlink()
    _truncate(ckpt.step_dir(run, 4) / "ema.safetensors")
    assert ckpt.verify_checkpoint(ckpt.step_dir(run, 2)).status == "unverified"
    verdict = ckpt.verify_checkpoint(ckpt.step_dir(run, 4))
    assert verdict.status == "damaged" and "ema.safetensors does not load" in verdict.reason
    train(_cfg(cache), run, resume=True)
    assert any("step-00000002 is unverified" in x for x in warnings_logged), warnings_logged
    assert _same_weights(run, ref)


def test_checkpoints_listing_reports_damage(tmp_path, reference):
    cache, _ = reference
    run = tmp_path / "run"
    train(_cfg(cache, "train.max_steps=4", "train.ckpt_every=1"), run)
    _truncate(ckpt.step_dir(run, 3) / "model.safetensors")
    _flip_bit(ckpt.step_dir(run, 4) / "ema.safetensors")
    (ckpt.step_dir(run, 1) / "manifest.json").unlink()
    (run / "checkpoints" / ".tmp-step-00000005" / "rng").mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sorakit.cli.main", "checkpoints", str(run)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert rows.keys() == {"1", "2", "3", "4", "5"}, out.stdout
    assert "unverified: no manifest.json (written by an older sorakit); every file loads" in rows["1"]
    assert rows["2"].rstrip().endswith("verified") and "unverified" not in rows["2"]
    assert "damaged: model.safetensors has" in rows["3"] and "truncated" in rows["3"]
    assert "damaged: ema.safetensors does not match its sha256" in rows["4"]
    assert "incomplete" in rows["5"] and ".tmp-step-00000005" in rows["5"]
    assert " MB " in rows["2"] and rows["2"].split()[1].startswith("20")  # size and a date
    quick = subprocess.run([*cmd, "--quick"], env=env, capture_output=True, text=True, timeout=120)
    assert "damaged" in quick.stdout.splitlines()[3] and "damaged" not in quick.stdout.splitlines()[4]
    missing = subprocess.run(cmd[:-1] + [str(tmp_path / "nope")], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.startswith("sorakit: error: no such run directory")


def test_export_takes_the_newest_verified_checkpoint(tmp_path, reference):
    from sorakit.errors import UserError
    from sorakit.training.export import resolve_checkpoint

    cache, _ = reference
    run = tmp_path / "run"
    train(_cfg(cache, "train.max_steps=4"), run)
    _flip_bit(ckpt.step_dir(run, 4) / "ema.safetensors")
    assert resolve_checkpoint(run) == ckpt.step_dir(run, 2)
    with pytest.raises(UserError, match="step-00000004 is damaged: ema.safetensors does not match"):
        resolve_checkpoint(run, 4)
