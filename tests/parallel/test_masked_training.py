"""Training with reference-frame masks (`train.mask_ratios`): 2 gloo processes (DDP, FSDP2, and sequence parallel
which splits the masks with the frames) train like 1 process on the same global batch, a resumed run ends with the
weights of an uninterrupted one, and the masks really change training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _spawn import run_distributed
from safetensors.torch import load_file

pytestmark = pytest.mark.distributed

from _tiny_runs import STEPS, run, run_config  # noqa: E402  (puts tests/training on the path)
from _train_helpers import make_cache  # noqa: E402

MASKS = ["train.mask_ratios={'image_head': 0.3, 'quarter_random': 0.2, 'intepolate': 0.2, 'random': 0.2}"]


def _worker(rank: int, world: int, cache: str, out: str):
    results = {}
    cases = {
        "ddp": (2, ["parallel.strategy=ddp", *MASKS]),
        "fsdp": (2, ["parallel.strategy=fsdp", *MASKS]),
        "sp": (4, ["parallel.strategy=ddp", "parallel.sp_size=2", *MASKS]),
        "ddp-rflow": (2, ["parallel.strategy=ddp", "train.objective=rflow", *MASKS]),
    }
    for name, (batch, extra) in cases.items():
        losses, path = run(run_config(Path(cache), batch, *extra), Path(out) / name)
        results[name] = (losses, str(path) if rank == 0 else None)
    return results


def test_masked_training_2_processes_equal_1_and_resume_is_exact(tmp_path):
    cache = make_cache(tmp_path / "cache", n=12)
    refs = {}
    for name, extra in (("iddpm", []), ("rflow", ["train.objective=rflow"])):
        refs[name] = run(run_config(cache, 4, *MASKS, *extra), tmp_path / f"single-{name}")
    plain_losses, _ = run(run_config(cache, 4), tmp_path / "plain")
    assert plain_losses != pytest.approx(refs["iddpm"][0], abs=1e-4)  # the masks take part

    # stopped after step 1 and resumed: the uninterrupted run's losses and weights, bit for bit on CPU
    cfg = run_config(cache, 4, *MASKS)
    cfg.train.max_steps = 1
    first, _ = run(cfg, tmp_path / "resumed")
    cfg.train.max_steps = STEPS
    rest, path = run(cfg, tmp_path / "resumed", resume=True)
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
