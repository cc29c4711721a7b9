"""2 gloo processes train like 1 process on the same global batch: DDP, FSDP2 (ZeRO-2-like and ZeRO-3-like)
and sequence parallelism inside the trainer give the losses and weights of a single process (1e-5)."""

from __future__ import annotations

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


def _cfg(cache: Path, batch: int, *extra: str):
    return tiny_config(
        f"data.csv={cache}", f"train.batch_size={batch}", f"train.max_steps={STEPS}", f"train.ckpt_every={STEPS}",
        "train.caption_dropout=0.3", "train.grad_clip=0.5", *extra,
    )  # fmt: skip


def _model(cfg):
    """The tiny STDiT with every weight randomised (upstream zero-inits several outputs)."""
    import sorakit.training.trainer as tr

    data = tr.DataSource(None, None, True, (4, 8, 8), 4, 16, 8, False)  # type: ignore[arg-type]
    model = tr.build_model(cfg, data)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _run(cfg, run_dir: Path):
    from sorakit.training.trainer import Components, train

    res = train(cfg, run_dir, components=Components(model=_model(cfg)))
    return res.losses, (res.checkpoint / "model.safetensors") if res.checkpoint else None


def _worker(rank: int, world: int, cache: str, out: str):
    results = {}
    cases = {
        "ddp": (2, ["parallel.strategy=ddp"]),
        "fsdp": (2, ["parallel.strategy=fsdp"]),
        "fsdp-full": (2, ["parallel.strategy=fsdp-full", "model.grad_checkpoint=true"]),
        "sp": (4, ["parallel.strategy=ddp", "parallel.sp_size=2"]),
    }
    for name, (batch, extra) in cases.items():
        losses, path = _run(_cfg(Path(cache), batch, *extra), Path(out) / name)
        results[name] = (losses, str(path) if rank == 0 else None)
    # FSDP stopped after step 1 (sharded optimizer state gathered into the checkpoint) and resumed
    from sorakit.training.trainer import Components, train

    cfg = _cfg(Path(cache), 2, "parallel.strategy=fsdp")
    cfg.train.max_steps = 1
    first = train(cfg, Path(out) / "fsdp-resume", components=Components(model=_model(cfg)))
    cfg.train.max_steps = STEPS
    rest = train(cfg, Path(out) / "fsdp-resume", resume=True, components=Components(model=_model(cfg)))
    results["fsdp-resume"] = (first.losses + rest.losses, str(rest.checkpoint / "model.safetensors"))
    return results


def test_ddp_fsdp_sp_equal_single_process(tmp_path):
    cache = make_cache(tmp_path / "cache", n=12)
    ref_losses, ref_path = _run(_cfg(cache, 4), tmp_path / "single")
    ref = load_file(str(ref_path))
    results = run_distributed(_worker, 2, tmp_path, str(cache), str(tmp_path / "dist"))
    for name, (losses, path) in results[0].items():
        assert losses == pytest.approx(ref_losses, abs=1e-5), name
        assert results[1][name][0] == pytest.approx(losses, abs=1e-6), name
        got = load_file(path)
        assert got.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-5, msg=f"{name}: {k}")
