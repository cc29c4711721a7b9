"""`train.compile` / `sorakit train --compile`: the torch.compile'd transformer trains what eager does.

The compiled runs use the `aot_eager` backend (TorchDynamo graph capture + AOTAutograd's joint forward /
backward graph, run by eager kernels: seconds, no C compiler); ``SORAKIT_COMPILE_BACKEND=inductor`` runs
the same tests with the backend `--compile` uses by default (minutes on a 2-core CPU). Compilation is in
place, so checkpoints carry the eager model's names: a compiled run's checkpoint resumes eagerly and the
other way round, and both end where an uninterrupted eager run does. DDP / FSDP2: tests/parallel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo
from _train_helpers import TINY_OVERRIDES, make_cache, tiny_config
from safetensors.torch import load_file

from sorakit.errors import UserError
from sorakit.models import save_pretrained
from sorakit.training.trainer import Components, DataSource, build_model, train

BACKEND = os.environ.get("SORAKIT_COMPILE_BACKEND") or "aot_eager"
STEPS = 4


@pytest.fixture(autouse=True)
def _backend(monkeypatch):
    monkeypatch.setenv("SORAKIT_COMPILE_BACKEND", BACKEND)
    torch._dynamo.reset()  # every run compiles afresh (no recompile limit carried over from other tests)
    torch.set_num_threads(1)


def _model(cfg) -> torch.nn.Module:
    """The tiny STDiT with every weight random (upstream zero-inits several outputs: no gradient through)."""
    model = build_model(cfg, DataSource(None, None, True, (4, 8, 8), 4, 16, 8, False))  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _cfg(cache: Path, *extra: str):
    return tiny_config(f"data.csv={cache}", "train.batch_size=2", f"train.max_steps={STEPS}", "train.lr=1e-3",
                       "train.ema_decay=0.5", "train.caption_dropout=0.3", "train.mask_ratios={'random': 0.5}",
                       *extra)  # fmt: skip


def _weights(result) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    ck = result.checkpoint
    return load_file(str(ck / "model.safetensors")), load_file(str(ck / "ema.safetensors"))


def _assert_same_weights(a, b, what: str) -> None:
    for x, y, name in zip(a, b, ("model", "ema")):
        assert x.keys() == y.keys(), f"{what}: {name} keys differ"
        assert not any("_orig_mod" in k for k in x), f"{what}: compiled names leaked into the checkpoint"
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=1e-5, atol=1e-6, msg=f"{what}: {name} {k}")


@pytest.mark.parametrize("extra", [[], ["model.grad_checkpoint=true"]], ids=["plain", "grad-ckpt"])
def test_compiled_training_matches_eager(tmp_path, extra):
    cache = make_cache(tmp_path / "cache", n=8)
    eager = train(_cfg(cache, *extra), tmp_path / "eager", components=Components(model=_model(_cfg(cache))))
    model = _model(_cfg(cache))
    compiled = train(_cfg(cache, "train.compile=true", *extra), tmp_path / "compiled",
                     components=Components(model=model))  # fmt: skip
    assert model._compiled_call_impl is not None  # compiled in place: the trainer's calls went through it
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-5, abs=1e-6)
    _assert_same_weights(_weights(compiled), _weights(eager), "compiled vs eager")


def test_checkpoints_cross_between_compiled_and_eager(tmp_path):
    """Stop after 2 steps and resume with the other setting: both end where 4 uninterrupted eager steps do."""
    cache = make_cache(tmp_path / "cache", n=8)
    ref = train(_cfg(cache), tmp_path / "ref", components=Components(model=_model(_cfg(cache))))
    for first, then in (("true", "false"), ("false", "true")):
        run = tmp_path / f"{first}-then-{then}"
        cfg = _cfg(cache, f"train.compile={first}", "train.max_steps=2")
        train(cfg, run, components=Components(model=_model(cfg)))
        cfg = _cfg(cache, f"train.compile={then}")
        rest = train(cfg, run, resume=True, components=Components(model=_model(cfg)))
        assert rest.losses == pytest.approx(ref.losses[2:], rel=1e-5, abs=1e-6)
        _assert_same_weights(_weights(rest), _weights(ref), f"compile {first} then {then}")


def test_compiled_lora_matches_eager(tmp_path):
    """LoRA: adapters are injected first, then the adapted model is compiled; only adapters are saved."""
    cache = make_cache(tmp_path / "cache", n=8)
    base = save_pretrained(_model(_cfg(cache)), tmp_path / "base")
    lora = ["lora.rank=4", "lora.alpha=8", f"train.init_from={base}", "train.lr=1e-2"]
    eager = train(_cfg(cache, *lora), tmp_path / "eager")
    compiled = train(_cfg(cache, *lora, "train.compile=true"), tmp_path / "compiled")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-5, abs=1e-6)
    a, b = _weights(compiled), _weights(eager)
    assert a[0] and all(".lora_" in k for k in a[0])
    _assert_same_weights(a, b, "lora")


def test_bad_compile_settings_are_one_line_errors(tmp_path, monkeypatch):
    cache = make_cache(tmp_path / "cache", n=4)
    monkeypatch.setenv("SORAKIT_COMPILE_BACKEND", "no-such-backend")
    with pytest.raises(
        UserError, match="SORAKIT_COMPILE_BACKEND=no-such-backend: unknown torch.compile backend"
    ):
        train(_cfg(cache, "train.compile=true"), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written
    env = {**os.environ, "SORAKIT_COMPILE_BACKEND": "no-such-backend"}
    cli = [sys.executable, "-m", "sorakit.cli.main", "train", "tiny", *TINY_OVERRIDES, "--data", str(cache)]
    for args in (
        ["--output", str(tmp_path / "a"), "--compile"],
        ["--output", str(tmp_path / "b"), "train.compile=maybe"],
    ):
        out = subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stderr[-1000:]
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sorakit: error:"), out.stderr
        assert ("no-such-backend" if "--compile" in args else "train.compile") in lines[0]


def test_compiled_bfloat16_training_matches_eager(tmp_path):
    """bf16 autocast on CPU goes through sorakit's training kernels (explicit attention, the chunked GELU); compiled,
    each hands its work to the compiler's graph instead (a layout trick of the attention's once failed there)."""
    cache = make_cache(tmp_path / "cache", n=8)
    bf16 = "train.mixed_precision=bf16"
    eager = train(_cfg(cache, bf16), tmp_path / "eager", components=Components(model=_model(_cfg(cache))))
    compiled = train(_cfg(cache, bf16, "train.compile=true"), tmp_path / "compiled",
                     components=Components(model=_model(_cfg(cache))))  # fmt: skip
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-3)
