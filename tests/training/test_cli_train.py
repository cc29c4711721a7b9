"""`sorakit train` / `sorakit export` as a user runs them: a run killed with SIGKILL and resumed ends with
exactly the weights of a run that was never stopped; the export loads as a model directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from _train_helpers import TINY_OVERRIDES, kill_after_checkpoint, make_cache, tiny_config
from safetensors.torch import load_file

from sorakit.training.checkpoint import list_checkpoints
from sorakit.training.trainer import train

STEPS = 16


def _cmd(cache: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sorakit.cli.main", "train", "tiny", *TINY_OVERRIDES, "train.caption_dropout=0.3",
            "--data", str(cache), "--output", str(run), "--max-steps", str(STEPS), "--ckpt-every", "1", *extra]  # fmt: skip


def test_kill9_then_resume_equals_uninterrupted(tmp_path):
    cache = make_cache(tmp_path / "cache", n=10)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "killed"
    killed_at = kill_after_checkpoint(_cmd(cache, run), run, env)
    assert 3 <= killed_at < STEPS, f"the run was not interrupted (last checkpoint {killed_at})"

    out = subprocess.run(_cmd(cache, run, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from" in out.stderr

    # the reference: one uninterrupted run (in this process, same config and thread count)
    torch.set_num_threads(1)
    ref = train(tiny_config("train.caption_dropout=0.3", f"data.csv={cache}", f"train.max_steps={STEPS}",
                            "train.ckpt_every=100"), tmp_path / "ref")  # fmt: skip
    final = list_checkpoints(run)[-1][1]
    assert final.name == f"step-{STEPS:08d}"
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(final / name)), load_file(str(ref.checkpoint / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name

    # export the EMA weights as a model directory that the generation side reads
    exp = subprocess.run([sys.executable, "-m", "sorakit.cli.main", "export", str(run), str(tmp_path / "model")],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert exp.returncode == 0, exp.stderr[-2000:]
    from sorakit.modeldir import read_model_dir
    from sorakit.models import from_pretrained

    model = from_pretrained(tmp_path / "model" / "transformer")
    ema = load_file(str(final / "ema.safetensors"))
    assert all(torch.equal(model.state_dict()[k], ema[k]) for k in ema)
    _, cfg = read_model_dir(tmp_path / "model")
    assert cfg.inference.num_frames == 4 and cfg.model.type == "STDiT-tiny"
    # --bundle-vae needs a local VAE folder; this run's cache names none, so it is a one-line error
    bundled = subprocess.run([sys.executable, "-m", "sorakit.cli.main", "export", str(run), str(tmp_path / "m2"),
                              "--bundle-vae"], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bundled.returncode == 2 and "--bundle-vae needs a local VAE directory" in bundled.stderr, (
        bundled.stderr
    )
    assert "Traceback" not in bundled.stderr and not (tmp_path / "m2").exists()


def test_cli_errors_are_one_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("path,caption\na.mp4,hello\n")
    for data, msg in (
        (tmp_path / "nope.csv", "no such file"),
        (empty, "empty file"),
        (nocol, "missing column(s) text"),
    ):
        out = subprocess.run([sys.executable, "-m", "sorakit.cli.main", "train", "tiny", "--data", str(data), "--output",
                              str(tmp_path / "r")], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr and msg in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-m", "sorakit.cli.main", "export", str(tmp_path), str(tmp_path / "m")],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and "no complete checkpoint" in out.stderr


def test_threads_flag_and_no_mfu_without_a_known_peak(tmp_path, monkeypatch):
    """--threads sets torch's threads; on a CPU with no train.peak_tflops the run reports no MFU instead
    of one against a start-up matmul measurement (which gave 'MFU against 0.0 TFLOP/s', 'mfu 3.356')."""
    import json

    from sorakit.cli.main import main

    cache = make_cache(tmp_path / "cache", n=8)
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("train.peak_tflops")]
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    args = [
        "train",
        "tiny",
        *overrides,
        "--data",
        str(cache),
        "--output",
        str(tmp_path / "run"),
        "--max-steps",
        "2",
    ]
    assert main([*args, "--threads", "1"]) == 0
    assert seen == [1]
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all("mfu" not in m and m["samples_per_s"] > 0 for m in metrics)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "MFU not reported: no known peak for cpu" in log and "MFU against" not in log
    assert main([*args, "--threads", "0"]) == 2


def test_export_stores_absolute_local_component_paths(tmp_path, monkeypatch):
    """`vae.path=vae` given relative to where training ran: the run config and the exported model keep an
    absolute path, so `generate --model /abs/model` works from another folder (issue #14 item 7)."""
    import json

    from sorakit.cli.main import main
    from sorakit.config import load_config
    from sorakit.encoders.vae import build_vae
    from sorakit.pipelines.tiny import make_tiny_vae

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    make_tiny_vae(work / "vae")
    cache = make_cache(work / "cache", n=8)
    monkeypatch.chdir(work)
    args = [
        "train",
        "tiny",
        *TINY_OVERRIDES,
        "vae.path=vae",
        "--data",
        "cache",
        "--output",
        "runs/r",
        "--max-steps",
        "1",
    ]
    assert main(args) == 0
    assert load_config(str(next((work / "runs/r/checkpoints").iterdir()) / "config.toml")).vae.path == str(
        work / "vae"
    )
    assert main(["export", "runs/r", str(tmp_path / "models/m")]) == 0
    monkeypatch.chdir(elsewhere)
    spec = json.loads((tmp_path / "models/m/sorakit_pipeline.json").read_text())
    assert spec["config"]["vae"]["path"] == str(work / "vae")
    cfg = load_config("tiny", ["vae.path=" + spec["config"]["vae"]["path"]])
    assert build_vae(cfg.vae, root=tmp_path / "models/m").scaling_factor > 0
    assert cache.is_dir()


def test_overrides_after_options_and_short_runs_shorten_the_cooldown(tmp_path, caplog):
    """`key=value` after the options is an override, not 'unrecognized arguments'; --max-steps shorter than
    the preset's cooldown keeps the cooldown's share of the run (30 of 100 -> 3 of 10) with a log line,
    while a decay_steps given on the command line that does not fit is still an error (item 2)."""
    import logging

    from sorakit.cli.main import main
    from sorakit.config import load_config

    preset = tmp_path / "p.toml"
    preset.write_text('base = "tiny"\n[train]\nmax_steps = 100\ndecay_steps = 30\n')
    cache = make_cache(tmp_path / "cache", n=8)
    run = tmp_path / "run"
    args = [
        "train",
        str(preset),
        "--data",
        str(cache),
        "--output",
        str(run),
        "--max-steps",
        "10",
        *TINY_OVERRIDES,
    ]
    with caplog.at_level(logging.INFO, logger="sorakit"):
        assert main([*args, "train.ckpt_every=10"]) == 0
    assert "cooldown shortened to the last 3 steps" in caplog.text
    saved = load_config(str(next((run / "checkpoints").iterdir()) / "config.toml"))
    assert (saved.train.max_steps, saved.train.decay_steps, saved.train.ckpt_every) == (10, 3, 10)
    assert main([*args, "train.decay_steps=50", "--output", str(tmp_path / "run2")]) == 2
