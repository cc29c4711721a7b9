"""`train.compile` under DDP and FSDP2 (2 gloo processes): compiled in place before DDP wraps the model and
per block before `fully_shard`, training gives the losses and weights of a single eager process (1e-5),
with the eager model's parameter names in the checkpoint. Backend `aot_eager` (SORAKIT_COMPILE_BACKEND
picks another, as in tests/training/test_compile_training.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from _spawn import run_distributed
from safetensors.torch import load_file

pytestmark = pytest.mark.distributed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from _train_helpers import make_cache, tiny_config  # noqa: E402

STEPS = 3
BACKEND = os.environ.get("SORAKIT_COMPILE_BACKEND") or "aot_eager"


def _cfg(cache: Path, batch: int, *extra: str):
    return tiny_config(
        f"data.csv={cache}", f"train.batch_size={batch}", f"train.max_steps={STEPS}", f"train.ckpt_every={STEPS}",
        "train.caption_dropout=0.3", "train.ema_decay=0.5", *extra,
    )  # fmt: skip


def _run(cfg, run_dir: Path):
    import sorakit.training.trainer as tr

    model = tr.build_model(cfg, tr.DataSource(None, None, True, (4, 8, 8), 4, 16, 8, False))  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # every weight random (upstream zero-inits several outputs)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    res = tr.train(cfg, run_dir, components=tr.Components(model=model))
    compiled = [m for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    return res.losses, str(res.checkpoint), [type(m).__name__ for m in compiled]


def _worker(rank: int, world: int, cache: str, out: str):
    os.environ["SORAKIT_COMPILE_BACKEND"] = BACKEND
    return {
        name: _run(_cfg(Path(cache), 2, f"parallel.strategy={name}", "train.compile=true"), Path(out) / name)
        for name in ("ddp", "fsdp")
    }


def test_compiled_ddp_and_fsdp_equal_single_eager_process(tmp_path):
    cache = make_cache(tmp_path / "cache", n=12)
    torch.set_num_threads(1)
    ref_losses, ref_ck, none = _run(_cfg(cache, 4), tmp_path / "single")
    assert none == []
    results = run_distributed(_worker, 2, tmp_path, str(cache), str(tmp_path / "dist"))
    assert results[0]["ddp"][2] == ["STDiT"]  # the whole model, inside the DDP wrapper
    assert results[0]["fsdp"][2] == ["FSDPSTDiTBlock"] * 2  # each block (fully_shard renames its class)
    for name, (losses, ck, _) in results[0].items():
        assert losses == pytest.approx(ref_losses, abs=1e-5), name
        assert results[1][name][0] == pytest.approx(losses, abs=1e-6), name
        for file in ("model.safetensors", "ema.safetensors"):
            got, ref = load_file(str(Path(ck) / file)), load_file(str(Path(ref_ck) / file))
            assert got.keys() == ref.keys(), f"{name} {file}: keys differ from the eager model's"
            for k in ref:
                torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-5, msg=f"{name} {file}: {k}")
