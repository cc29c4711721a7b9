"""Training with reference-frame masks (`train.mask_ratios`): 2 gloo processes (DDP, FSDP2, and sequence parallel
which splits the masks with the frames) train like 1 process on the same global batch, a resumed run ends with the
weights of an uninterrupted one, and the masks really change training."""

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
MASKS = ["train.mask_ratios={'image_head': 0.3, 'quarter_random': 0.2, 'intepolate': 0.2, 'random': 0.2}"]


def _cfg(cache: Path, batch: int, *extra: str):
    return tiny_config(
        f"data.csv={cache}", f"train.batch_size={batch}", f"train.max_steps={STEPS}", f"train.ckpt_every={STEPS}",
        "train.caption_dropout=0.3", "train.grad_clip=0.5", *extra,
    )  # fmt: skip


def _model(cfg):
    import sorakit.training.trainer as tr

    data = tr.DataSource(None, None, True, (4, 8, 8), 4, 16, 8, False)  # type: ignore[arg-type]
    model = tr.build_model(cfg, data)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _run(cfg, run_dir: Path, resume: bool = False):
    from sorakit.training.trainer import Components, train

    res = train(cfg, run_dir, resume=resume, components=Components(model=_model(cfg)))
    return res.losses, (res.checkpoint / "model.safetensors") if res.checkpoint else None


def _worker(rank: int, world: int, cache: str, out: str):
    results = {}
    cases = {
        "ddp": (2, ["parallel.strategy=ddp", *MASKS]),
        "fsdp": (2, ["parallel.strategy=fsdp", *MASKS]),
        "sp": (4, ["parallel.strategy=ddp", "parallel.sp_size=2", *MASKS]),
        "ddp-rflow": (2, ["parallel.strategy=ddp", "train.objective=rflow", *MASKS]),
    }
    for name, (batch, extra) in cases.items():
        losses, path = _run(_cfg(Path(cache), batch, *extra), Path(out) / name)
        results[name] = (losses, str(path) if rank == 0 else None)
    return results


def test_masked_training_2_processes_equal_1_and_resume_is_exact(tmp_path):
    cache = make_cache(tmp_path / "cache", n=12)
    refs = {}
    for name, extra in (("iddpm", []), ("rflow", ["train.objective=rflow"])):
        refs[name] = _run(_cfg(cache, 4, *MASKS, *extra), tmp_path / f"single-{name}")
    plain_losses, _ = _run(_cfg(cache, 4), tmp_path / "plain")
    assert plain_losses != pytest.approx(refs["iddpm"][0], abs=1e-4)  # the masks take part

    # stopped after step 1 and resumed: the uninterrupted run's losses and weights, bit for bit on CPU
    cfg = _cfg(cache, 4, *MASKS)
    cfg.train.max_steps = 1
    first, _ = _run(cfg, tmp_path / "resumed")
    cfg.train.max_steps = STEPS
    rest, path = _run(cfg, tmp_path / "resumed", resume=True)
    assert first + rest == refs["iddpm"][0]
    resumed, ref = load_file(str(path)), load_file(str(refs["iddpm"][1]))
    assert all(torch.equal(resumed[k], ref[k]) for k in ref)

    results = run_distributed(_worker, 2, tmp_path, str(cache), str(tmp_path / "dist"))
    for name, (losses, path) in results[0].items():
        ref_losses, ref_path = refs["rflow" if "rflow" in name else "iddpm"]
        assert losses == pytest.approx(ref_losses, abs=1e-5), name
        assert results[1][name][0] == pytest.approx(losses, abs=1e-6), name
        got, ref = load_file(path), load_file(str(ref_path))
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-5, msg=f"{name}: {k}")
