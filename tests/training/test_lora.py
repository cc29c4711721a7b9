"""LoRA fine-tuning (``[lora] rank > 0``): a zero-initialised adapter changes nothing, only adapter tensors
train and reach the optimizer and the checkpoints, the base stays bit for bit what ``--init`` gave, and a
run killed with SIGKILL and resumed ends with exactly the adapter of an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_helpers import TINY_OVERRIDES, kill_after_checkpoint, make_cache, random_stdit, tiny_config
from safetensors.torch import load_file

from sorakit.errors import ConfigError, UserError
from sorakit.lora import base_fingerprint, is_adapter_key
from sorakit.models import save_pretrained
from sorakit.training import lora
from sorakit.training.checkpoint import list_checkpoints
from sorakit.training.trainer import train

STEPS = 12
LORA = ["lora.rank=4", "lora.alpha=8", "train.lr=1e-2"]


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    return save_pretrained(random_stdit(tiny_config()), tmp_path / "base")


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 4, 8, 8, generator=g)
    y = torch.randn(2, 1, 8, 16, generator=g)
    return x, torch.tensor([10.0, 500.0]), y, torch.ones(2, 8, dtype=torch.long)


def test_zero_initialised_adapter_leaves_outputs_bit_identical():
    cfg = tiny_config(*LORA, "lora.adaln=true")
    model = random_stdit(cfg).eval()
    x, t, y, mask = _inputs()
    before = model(x, t, y, mask)
    fingerprint = base_fingerprint(model)
    spec = lora.attach(cfg, model, None)
    assert (
        spec.base_fingerprint == fingerprint == base_fingerprint(model)
    )  # adapters are not part of the base
    model.eval()
    assert torch.equal(model(x, t, y, mask), before)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert (
        "t_block.1" in adapted
        and "blocks.1.cross_attn.kv_linear" in adapted
        and "blocks.0.mlp.fc2" in adapted
    )
    assert len(adapted) == 2 * 9 + 1  # 9 linear layers per block, depth 2, plus the adaLN projection
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(is_adapter_key(n) for n in trainable)
    # B is zero, A is not: the first step moves B, and then the output changes
    assert all(p.abs().sum() == 0 for n, p in model.named_parameters() if ".lora_B." in n)
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if ".lora_A." in n)


def test_only_adapter_tensors_train_and_are_saved(tmp_path, base_dir):
    cache = make_cache(tmp_path / "cache", n=8)
    cfg = tiny_config(*LORA, f"data.csv={cache}", f"train.init_from={base_dir}", "train.max_steps=4",
                      "train.ckpt_every=4")  # fmt: skip
    result = train(cfg, tmp_path / "run")
    ck = result.checkpoint
    model_sd, ema_sd = load_file(str(ck / "model.safetensors")), load_file(str(ck / "ema.safetensors"))
    assert model_sd and all(is_adapter_key(k) for k in model_sd)
    assert set(ema_sd) == set(model_sd)
    assert sum(".lora_B." in k for k in model_sd) == 2 * 9
    assert any(v.abs().sum() > 0 for k, v in model_sd.items() if ".lora_B." in k)  # it trained
    optimizer = torch.load(ck / "optimizer.pt", weights_only=True)
    names = [n for group in optimizer["param_groups"] for n in group["params"]]
    assert names and all(is_adapter_key(n) for n in names), names[:4]
    assert set(optimizer["state"]) == set(names)
    state = json.loads((ck / "state.json").read_text())
    base = load_file(str(base_dir / "model.safetensors"))
    assert state["lora"]["rank"] == 4 and state["lora"]["alpha"] == 8.0
    assert state["lora"]["base_path"] == str(base_dir.resolve())
    fresh = random_stdit(cfg)
    assert state["lora"]["base_fingerprint"] == base_fingerprint(fresh)
    # the checkpoint is small: an adapter, not the model
    assert (ck / "model.safetensors").stat().st_size * 5 < (base_dir / "model.safetensors").stat().st_size
    assert set(base) == set(fresh.state_dict())


def test_lora_config_errors(tmp_path, base_dir):
    cache = make_cache(tmp_path / "cache", n=4)
    for bad, words in (("lora.rank=-1", "lora.rank"), ("lora.dropout=1.5", "lora.dropout"),
                       ("lora.alpha=0", "lora.alpha"), ("train.freeze=text", "train.freeze")):  # fmt: skip
        with pytest.raises(ConfigError, match=words):
            train(tiny_config(*LORA, bad, f"data.csv={cache}", f"train.init_from={base_dir}"), tmp_path / bad)
    with pytest.raises(UserError, match="lora.target_modules"):
        train(tiny_config(*LORA, "lora.target_modules=[no_such_layer]", f"data.csv={cache}",
                          f"train.init_from={base_dir}"), tmp_path / "targets")  # fmt: skip


def test_resume_with_another_base_is_refused(tmp_path, base_dir):
    cache = make_cache(tmp_path / "cache", n=8)
    cfg = tiny_config(*LORA, f"data.csv={cache}", f"train.init_from={base_dir}", "train.max_steps=2",
                      "train.ckpt_every=2")  # fmt: skip
    train(cfg, tmp_path / "run")
    other = random_stdit(cfg)
    with torch.no_grad():
        other.blocks[0].attn.qkv.weight.add_(1.0)
    cfg.train.init_from = str(save_pretrained(other, tmp_path / "other"))
    cfg.train.max_steps = 4
    with pytest.raises(UserError, match="resume with the same --init"):
        train(cfg, tmp_path / "run", resume=True)


def _cmd(cache: Path, base: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sorakit.cli.main", "train", "tiny", *TINY_OVERRIDES, *LORA, "train.caption_dropout=0.3",
            "lora.dropout=0.1", "--init", str(base), "--data", str(cache), "--output", str(run), "--max-steps",
            str(STEPS), "--ckpt-every", "1", *extra]  # fmt: skip


def test_kill9_then_resume_equals_uninterrupted_lora(tmp_path, base_dir):
    cache = make_cache(tmp_path / "cache", n=10)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "killed"
    killed_at = kill_after_checkpoint(_cmd(cache, base_dir, run), run, env)
    assert 3 <= killed_at < STEPS, f"the run was not interrupted (last checkpoint {killed_at})"
    out = subprocess.run(
        _cmd(cache, base_dir, run, "--resume"), env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from" in out.stderr

    torch.set_num_threads(1)
    ref = train(tiny_config(*LORA, "train.caption_dropout=0.3", "lora.dropout=0.1", f"data.csv={cache}",
                            f"train.init_from={base_dir}", f"train.max_steps={STEPS}", "train.ckpt_every=100"),
                tmp_path / "ref")  # fmt: skip
    final = list_checkpoints(run)[-1][1]
    assert final.name == f"step-{STEPS:08d}"
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(final / name)), load_file(str(ref.checkpoint / name))
        assert set(a) == set(b) and all(is_adapter_key(k) for k in a)
        assert all(torch.equal(a[k], b[k]) for k in a), name
