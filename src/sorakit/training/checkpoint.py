"""Training checkpoints: one directory per step, written atomically, the newest K kept.

``RUN_DIR/checkpoints/step-NNNNNNNN/``::

    model.safetensors      full model state dict (float32)
    ema.safetensors        EMA weights + buffers: what `sorakit export` writes out
    optimizer.pt           optimizer state (torch.save of tensors / numbers only; weights_only=True loads it)
    scheduler.pt           LR scheduler state (same)
    rng/rank-NNNNN.pt      every rank's RNG states (torch, CUDA, numpy, python, the trainer's generators)
    config.toml            the resolved config
    state.json             step, data position (epoch, batch), skipped-file report -- written last

Everything is written into ``checkpoints/.tmp-step-NNNNNNNN`` and renamed when complete: a crash or a
``kill -9`` during a write leaves a ``.tmp-*`` folder that is never taken for a checkpoint (and is
removed by the next save).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sorakit.errors import UserError
from sorakit.logging import get_logger
from sorakit.parallel.mesh import ParallelState

log = get_logger(__name__)

CHECKPOINTS = "checkpoints"
STATE = "state.json"


def step_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, path)``, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    out = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith("step-") and (p / STATE).is_file():
                try:
                    out.append((int(p.name[5:]), p))
                except ValueError:
                    continue
    return sorted(out)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


# --------------------------------------------------------------------------------------------------
# RNG states as tensors (so that weights_only=True loads them)


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, torch.Tensor]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out: dict[str, torch.Tensor] = {
        "torch": torch.get_rng_state(),
        "numpy.keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy.meta": torch.tensor([np_state[2], np_state[3], np_state[4]], dtype=torch.float64),
        "python.state": torch.tensor(py_state[1], dtype=torch.int64),
        "python.meta": torch.tensor(
            [py_state[0], float("nan") if py_state[2] is None else py_state[2]], dtype=torch.float64
        ),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    for name, g in (generators or {}).items():
        out[f"gen.{name}"] = g.get_state()
    return out


def restore_rng(state: dict[str, torch.Tensor], generators: dict[str, torch.Generator] | None = None) -> None:
    torch.set_rng_state(state["torch"])
    meta = state["numpy.meta"].tolist()
    np.random.set_state(
        ("MT19937", state["numpy.keys"].numpy().astype(np.uint32), int(meta[0]), int(meta[1]), meta[2])
    )
    pmeta = state["python.meta"].tolist()
    gauss = None if np.isnan(pmeta[1]) else pmeta[1]
    random.setstate((int(pmeta[0]), tuple(int(v) for v in state["python.state"].tolist()), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    for name, g in (generators or {}).items():
        key = f"gen.{name}"
        if key in state:
            g.set_state(state[key])


# --------------------------------------------------------------------------------------------------
# save / load


def _save_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from sorakit.fileutil import save_safetensors

    # clone: safetensors refuses tensors that share storage
    save_safetensors({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, path)


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    state: ParallelState,
    *,
    model_state: dict[str, torch.Tensor] | None,
    ema_state: dict[str, torch.Tensor] | None,
    optimizer_state: dict[str, Any] | None,
    scheduler_state: dict[str, Any] | None,
    rng_state: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    config_text: str,
    keep_last: int = 3,
) -> Path:
    """Write a checkpoint collectively. Rank 0 passes the full model / EMA / optimizer state (other
    ranks may pass None); every rank passes its RNG state."""
    root = Path(run_dir) / CHECKPOINTS
    final = step_dir(run_dir, step)
    tmp = root / f".tmp-step-{step:08d}"
    if state.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    state.barrier()
    torch.save(rng_state, tmp / "rng" / f"rank-{state.rank:05d}.pt")
    state.barrier()
    if state.is_main:
        assert model_state is not None and ema_state is not None
        _save_safetensors(tmp / "model.safetensors", model_state)
        _save_safetensors(tmp / "ema.safetensors", ema_state)
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler_state, tmp / "scheduler.pt")
        (tmp / "config.toml").write_text(config_text)
        info = {
            "step": step,
            "world_size": state.world_size,
            "dp_size": state.dp_size,
            "sp_size": state.sp_size,
        }
        (tmp / STATE).write_text(json.dumps({**info, **train_state}, indent=2))
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        prune_checkpoints(run_dir, keep_last)
    state.barrier()
    return final


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for _, path in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def load_train_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / STATE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"checkpoint {path} is unreadable: {exc}") from None


def load_tensors(path: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    file = path / name
    if not file.is_file():
        raise UserError(f"checkpoint {path} lacks {name}")
    return load_file(str(file))


def load_pickled(path: Path, name: str) -> Any:
    file = path / name
    if not file.is_file():
        raise UserError(f"checkpoint {path} lacks {name}")
    return torch.load(file, map_location="cpu", weights_only=True)


def load_rng(path: Path, rank: int) -> dict[str, torch.Tensor] | None:
    file = path / "rng" / f"rank-{rank:05d}.pt"
    if not file.is_file():
        return None
    return torch.load(file, map_location="cpu", weights_only=True)
