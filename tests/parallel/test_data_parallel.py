"""2 gloo processes train like 1 process on the same global batch: DDP, FSDP2 (ZeRO-2-like and ZeRO-3-like)
and sequence parallelism inside the trainer give the losses and weights of a single process (1e-5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _spawn import run_distributed
from safetensors.torch import load_file

pytestmark = pytest.mark.distributed

from _tiny_runs import STEPS, random_stdit, run, run_config  # noqa: E402  (puts tests/training on the path)
from _train_helpers import make_cache  # noqa: E402

from sorakit.training.trainer import Components, train  # noqa: E402


def _worker(rank: int, world: int, cache: str, out: str):
    results = {}
    cases = {
        "ddp": (2, ["parallel.strategy=ddp"]),
        "fsdp": (2, ["parallel.strategy=fsdp"]),
        "fsdp-full": (2, ["parallel.strategy=fsdp-full", "model.grad_checkpoint=true"]),
        "sp": (4, ["parallel.strategy=ddp", "parallel.sp_size=2"]),
    }
    for name, (batch, extra) in cases.items():
        losses, path = run(run_config(Path(cache), batch, *extra), Path(out) / name)
        results[name] = (losses, str(path) if rank == 0 else None)
    # FSDP stopped after step 1 (sharded optimizer state gathered into the checkpoint) and resumed
    cfg = run_config(Path(cache), 2, "parallel.strategy=fsdp")
    cfg.train.max_steps = 1
    first = train(cfg, Path(out) / "fsdp-resume", components=Components(model=random_stdit(cfg)))
    cfg.train.max_steps = STEPS
    rest = train(cfg, Path(out) / "fsdp-resume", resume=True, components=Components(model=random_stdit(cfg)))
    results["fsdp-resume"] = (first.losses + rest.losses, str(rest.checkpoint / "model.safetensors"))
    return results


def test_ddp_fsdp_sp_equal_single_process(tmp_path):
    cache = make_cache(tmp_path / "cache", n=12)
    ref_losses, ref_path = run(run_config(cache, 4), tmp_path / "single")
    ref = load_file(str(ref_path))
    results = run_distributed(_worker, 2, tmp_path, str(cache), str(tmp_path / "dist"))
    for name, (losses, path) in results[0].items():
        assert losses == pytest.approx(ref_losses, abs=1e-5), name
        assert results[1][name][0] == pytest.approx(losses, abs=1e-6), name
        got = load_file(path)
        assert got.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-5, msg=f"{name}: {k}")


def _auto_worker(rank: int, world: int, cache: str, out: str, native_ranks: tuple[int, ...]):
    """`train.mixed_precision = "auto"` where only `native_ranks` have bf16 units: the autocast dtype each step
    of this rank ran under, and the precision its saved config records."""
    import sorakit.runtime as runtime
    import sorakit.training.trainer as trainer_mod

    runtime.cpu_has_native_bf16 = lambda flags=None: rank in native_ranks
    seen, model_fn = [], trainer_mod._model_fn

    def spy(*args, **kwargs):
        seen.append(args[5])
        return model_fn(*args, **kwargs)

    trainer_mod._model_fn = spy
    cfg = run_config(Path(cache), 2, "parallel.strategy=ddp", "train.mixed_precision=auto")
    cfg.train.max_steps = 2
    res = train(cfg, Path(out), components=Components(model=random_stdit(cfg)))
    saved = (res.checkpoint / "config.toml").read_text() if rank == 0 else ""
    return seen, saved


@pytest.mark.parametrize(("native_ranks", "want"), [((0,), None), ((1,), None), ((0, 1), torch.bfloat16)])
def test_mixed_precision_auto_is_one_choice_for_all_ranks(tmp_path, native_ranks, want):
    """bf16 only where every rank has bf16 units; a rank without them makes all of them train in float32."""
    cache = make_cache(tmp_path / "cache", n=8)
    results = run_distributed(_auto_worker, 2, tmp_path, str(cache), str(tmp_path / "run"), native_ranks)
    assert results[0][0] == results[1][0] == [want] * 2
    assert f'mixed_precision = "{"bf16" if want else "fp32"}"' in results[0][1]
