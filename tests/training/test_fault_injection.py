"""Fault injection: a training run is killed with SIGKILL at 20 seeded random instants -- most of them
inside checkpoint writes -- and resumed after each; it ends with exactly the weights of a run that was never
stopped. After every kill, every checkpoint folder on disk verifies: a kill never leaves a damaged one.

Each instant is drawn from a seeded generator: after 0-2 checkpoints of the attempt, either a random moment
inside the next checkpoint write or a random moment in the next half second. Anchoring instants to events
keeps the run moving on a slow, shared machine. The ``SORAKIT_TEST_CHECKPOINT_DELAY`` hook (a sleep before
each file of a checkpoint, its manifest, its rename and each pruning) stretches a write to about half a
second so the kills spread over all its phases. Each attempt runs in a child forked from a process that
imported torch once (``_fork_runner.py``), so 20 kills cost seconds, not 20 interpreter starts."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _train_helpers import TINY_OVERRIDES, make_cache, tiny_config
from safetensors.torch import load_file

from sorakit.training import checkpoint as ckpt
from sorakit.training.trainer import train

STEPS = 50
KILLS = 20

pytestmark = [pytest.mark.slow, pytest.mark.faults]


class Runner:
    """The fork server: ``start`` a `sorakit` command in a child, ``kill`` it, ``wait`` for it."""

    def __init__(self, env: dict[str, str]) -> None:
        here = Path(__file__).resolve().parent
        self.proc = subprocess.Popen(
            [sys.executable, str(here / "_fork_runner.py")], env={**env, "PYTHONPATH": os.pathsep.join(
                [str(here), env.get("PYTHONPATH", "")])}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def _read(self) -> dict:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert line, "the fork runner died"
        return json.loads(line)

    def start(self, argv: list[str], log: Path, env: dict[str, str]) -> int:
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log), "env": env}) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return int(self._read()["pid"])

    def wait(self) -> int:
        return int(self._read()["status"])

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(timeout=60)


def _argv(cache: Path, run: Path) -> list[str]:
    return ["train", "tiny", *TINY_OVERRIDES, "train.caption_dropout=0.3", "train.keep_last=2", "--data",
            str(cache), "--output", str(run), "--max-steps", str(STEPS), "--ckpt-every", "1", "--resume"]  # fmt: skip


def _wait_for(cond: Callable[[], bool], pid: int, timeout: float = 300.0) -> bool:
    """Until ``cond()`` holds (True) or the child exits (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        try:
            os.kill(pid, 0)  # the runner reaps its children at once: gone means exited
        except ProcessLookupError:
            return False
        time.sleep(0.002)
    raise AssertionError(f"child {pid} stuck")


def _kill_at_random_instant(
    rng: random.Random, run: Path, log: Path, pid: int, started: float, saves: int
) -> None:
    """After ``saves`` checkpoints of this child: either in the middle of writing the next one (60%) or at a
    random moment of the next half second (a step's compute or a write). Instants are defined by events, not
    by wall time alone, so the run makes progress however slow the machine is."""
    inside, pause = rng.random() < 0.6, rng.uniform(0.0, 0.5)

    def text() -> str:
        return log.read_text() if log.is_file() else ""

    def saved() -> bool:
        return "training from step" in text() and text().count("saved checkpoint") >= saves

    if not _wait_for(saved, pid):
        return
    if inside:
        nxt = int(re.search(r"training from step (\d+)", text())[1]) + saves + 1  # type: ignore[index]
        tmp = run / "checkpoints" / f".tmp-step-{nxt:08d}"

        def writing() -> bool:  # this child's write (a folder left by an earlier kill is older)
            try:
                return tmp.stat().st_mtime >= started
            except FileNotFoundError:
                return False

        if not _wait_for(writing, pid):
            return
    time.sleep(pause)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # finished first
        pass


def test_sigkill_at_20_random_instants_then_resume_equals_uninterrupted(tmp_path):
    cache = make_cache(tmp_path / "cache", n=10)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(22)
    runner = Runner(env)
    inside_writes, newest, least = 0, [], 0
    try:
        for k in range(KILLS):
            log = tmp_path / f"attempt-{k:02d}.log"
            started = time.time()
            pid = runner.start(_argv(cache, run), log, {ckpt.DELAY_ENV: "0.05"})
            saves = rng.choice([0, 1, 1, 2])
            least += saves
            _kill_at_random_instant(rng, run, log, pid, started, saves)
            status = runner.wait()
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, log.read_text()[-2000:]
            folders = {p.name for p in (run / "checkpoints").iterdir()}
            inside_writes += any(name.startswith((".tmp-", ".trash-")) for name in folders)
            # a kill never leaves a damaged checkpoint: every step-N folder verifies, byte for byte
            for _, path in ckpt.list_checkpoints(run):
                verdict = ckpt.verify_checkpoint(path)
                assert verdict.status == "verified", (k, path, verdict)
            found = ckpt.list_checkpoints(run)
            newest.append(found[-1][0] if found else 0)
            if k and newest[-2]:
                assert f"resumed from {ckpt.step_dir(run, newest[-2])}" in log.read_text()
        final = runner.start(_argv(cache, run), tmp_path / "final.log", {})
        assert final and runner.wait() == 0, (tmp_path / "final.log").read_text()[-2000:]
    finally:
        runner.close()
    print(f"{inside_writes} of {KILLS} kills inside a checkpoint write; newest step after each: {newest}")
    assert inside_writes >= KILLS // 4, (
        f"only {inside_writes} of {KILLS} kills landed inside a checkpoint write"
    )
    assert newest == sorted(newest) and newest[-1] >= least, (least, newest)  # the run moved on between kills

    torch.set_num_threads(1)
    ref = train(tiny_config("train.caption_dropout=0.3", f"data.csv={cache}", f"train.max_steps={STEPS}",
                            "train.ckpt_every=1000"), tmp_path / "ref")  # fmt: skip
    got = ckpt.step_dir(run, STEPS)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(got / name)), load_file(str(ref.checkpoint / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    oa = torch.load(got / "optimizer.pt", weights_only=True)["state"]
    ob = torch.load(ref.checkpoint / "optimizer.pt", weights_only=True)["state"]
    assert all(torch.equal(v, ob[p][k]) for p, st in oa.items() for k, v in st.items())
