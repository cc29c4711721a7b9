"""Training checkpoints: one directory per step, verified by a manifest, the newest K kept.

``RUN_DIR/checkpoints/step-NNNNNNNN/``::

    model.safetensors      full model state dict (float32)
    ema.safetensors        EMA weights + buffers: what `sorakit export` writes out
    optimizer.pt           optimizer state (torch.save of tensors / numbers only; weights_only=True loads it)
    scheduler.pt           learning-rate schedule state (same; the file keeps its first name)
    rng/rank-NNNNN.pt      every rank's RNG states (torch, CUDA, numpy, python, the trainer's generators)
    config.toml            the resolved config
    state.json             step, data position (epoch, batch), skipped-file report
    manifest.json          every file above with its size and sha256 -- written last (sorakit.manifest)

The guarantee: a crash at any instant (``kill -9``, a dead node, a full disk) leaves a run that ``--resume``
continues, ending with exactly the weights of an uninterrupted run. How it holds:

- everything is written into ``checkpoints/.tmp-step-NNNNNNNN``, the manifest last, then the folder is
  renamed: a crash leaves a ``.tmp-*`` folder that is never taken for a checkpoint (the next save removes it);
- a checkpoint counts only if its manifest verifies (sizes and sha256): ``--resume`` takes the newest that
  does, logs one line for each newer one it skips and why, and never deletes a damaged one;
- pruning to ``train.keep_last`` counts intact checkpoints only and never touches damaged ones or ones newer
  than the checkpoint just written, so the last verified checkpoint always survives;
- an I/O error while writing (disk full, ...) removes the partial write and stops with one line naming the
  file and the cause (:class:`CheckpointWriteError`); earlier checkpoints are untouched.

Checkpoints written before manifests existed (no ``manifest.json``) are accepted when every file loads
(state.json parses, safetensors and ``.pt`` files deserialise) and are flagged "unverified": truncation shows
up, a flipped bit inside a tensor cannot.
"""

from __future__ import annotations

import calendar
import hashlib
import io
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save

from sorakit.errors import UserError
from sorakit.fileutil import open_new
from sorakit.logging import get_logger
from sorakit.manifest import MANIFEST, Verdict, read_manifest, verify_folder, write_manifest
from sorakit.parallel.mesh import ParallelState, all_reduce_sum
from sorakit.safeload import load_safetensors, load_torch

log = get_logger(__name__)

CHECKPOINTS = "checkpoints"
STATE = "state.json"
# Testing hook: seconds to sleep before each file of a checkpoint is written (and before its rename), so
# that the fault-injection test's SIGKILLs land inside checkpoint writes. Never set in normal use.
DELAY_ENV = "SORAKIT_TEST_CHECKPOINT_DELAY"


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, I/O error): the partial write is gone, earlier
    checkpoints are untouched, ``--resume`` continues from the newest good one."""


def step_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Every ``step-NNNNNNNN`` folder ``(step, path)``, oldest first, intact or not (see
    :func:`verify_checkpoint`); temporary ``.tmp-*`` folders and set-aside damaged ones are not listed."""
    root = Path(run_dir) / CHECKPOINTS
    out = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith("step-"):
                try:
                    out.append((int(p.name[5:]), p))
                except ValueError:
                    continue
    return sorted(out)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint that verifies (skipped newer ones are logged); None when there is none."""
    return resume_checkpoint(run_dir)


# --------------------------------------------------------------------------------------------------
# Verification


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _loads_cleanly(path: Path) -> str:
    """For checkpoints without a manifest: why some file does not load ("" when all do)."""
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        try:
            if f.suffix == ".safetensors":
                load_file(str(f))
            elif f.suffix == ".pt":
                torch.load(f, map_location="cpu", weights_only=True)
            elif f.name == STATE:
                json.loads(f.read_text())
        except Exception as exc:  # noqa: BLE001 - a damaged file can fail inside any deserialiser
            return f"{rel} does not load ({_first_line(exc)})"
    return ""


def verify_checkpoint(path: str | os.PathLike, deep: bool = True) -> Verdict:
    """Check a checkpoint folder against its manifest (sizes; and sha256 with ``deep``).

    Without a manifest (an older sorakit) the folder is "unverified" when ``state.json`` exists and, with
    ``deep``, every file loads; "damaged" otherwise."""
    p = Path(path)
    verdict = verify_folder(p, deep)
    if verdict.status != "unverified":
        return verdict
    if not (p / STATE).is_file():
        return Verdict("damaged", f"no {MANIFEST} and no {STATE} (an interrupted write?)")
    if deep:
        why = _loads_cleanly(p)
        if why:
            return Verdict("damaged", why)
        return Verdict("unverified", f"no {MANIFEST} (written by an older sorakit); every file loads")
    return Verdict("unverified", f"no {MANIFEST} (written by an older sorakit)")


def resume_checkpoint(run_dir: str | os.PathLike, state: ParallelState | None = None) -> Path | None:
    """The newest checkpoint that verifies, for ``--resume``; None when none does.

    Logs one warning line for every newer checkpoint it skips, with the reason; damaged checkpoints stay
    where they are (the user may want to look at them). Under torchrun rank 0 checks and tells the others."""
    chosen: Path | None = None
    if state is None or state.is_main:
        for _, path in reversed(list_checkpoints(run_dir)):
            verdict = verify_checkpoint(path)
            if verdict.ok:
                if verdict.status == "unverified":
                    log.warning("checkpoint %s is unverified: %s", path, verdict.reason)
                chosen = path
                break
            log.warning("skipping checkpoint %s: damaged: %s (left in place)", path, verdict.reason)
    if state is not None and state.distributed:
        box = [str(chosen) if chosen is not None else None]
        dist.broadcast_object_list(box, src=0)
        chosen = Path(box[0]) if box[0] else None
    return chosen


@dataclass
class CheckpointInfo:
    """One entry of ``sorakit checkpoints RUN``."""

    name: str
    step: int | None
    time: float
    size: int
    verdict: Verdict


def _written_at(path: Path) -> float:
    try:
        manifest = read_manifest(path)
    except ValueError:
        manifest = None
    if manifest and isinstance(manifest.get("created"), str):
        try:
            return float(calendar.timegm(time.strptime(manifest["created"], "%Y-%m-%dT%H:%M:%SZ")))
        except ValueError:
            pass
    return (path / STATE).stat().st_mtime if (path / STATE).is_file() else path.stat().st_mtime


def describe_checkpoints(run_dir: str | os.PathLike, deep: bool = True) -> list[CheckpointInfo]:
    """Every folder under ``RUN_DIR/checkpoints``, oldest first: checkpoints with their verdict, damaged ones
    set aside by a later save of the same step, and interrupted ``.tmp-*`` writes."""
    root = Path(run_dir) / CHECKPOINTS
    out = []
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if not p.is_dir() or p.name.startswith(".trash-"):
            continue
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        step_text = p.name.removeprefix(".tmp-").removeprefix("step-").split(".")[0]
        step = int(step_text) if step_text.isdigit() else None
        if p.name.startswith(".tmp-"):
            verdict = Verdict(
                "incomplete", "an interrupted write: never resumed from, removed by the next save"
            )
        else:
            verdict = verify_checkpoint(p, deep)
        out.append(CheckpointInfo(p.name, step, _written_at(p), size, verdict))
    return sorted(out, key=lambda c: (c.step if c.step is not None else -1, c.name))


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
# save


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    # clone: safetensors refuses tensors that share storage
    return save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})


def _torch_bytes(obj: Any) -> bytes:
    # serialised in memory, then written by _write_file: torch.save into a file turns an OSError (disk
    # full) into an opaque RuntimeError, and the sha256 comes for free from the bytes
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _write_file(path: Path, data: bytes) -> None:
    """The one place checkpoint bytes reach the disk (tests replace it to simulate a full disk)."""
    with open_new(path) as fh:  # inside the fresh temporary folder: never an existing file or a link
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fault_delay() -> None:
    delay = float(os.environ.get(DELAY_ENV) or 0)
    if delay > 0:
        time.sleep(delay)


def _put(folder: Path, rel: str, data: bytes, entries: dict[str, dict[str, Any]]) -> None:
    """Write ``folder/rel`` and record its manifest entry (hashed from the bytes written)."""
    path = folder / rel
    _fault_delay()
    try:
        _write_file(path, data)
    except OSError as exc:
        if exc.filename is None:  # write() errors do not say which file
            exc.filename = str(path)
        raise
    entries[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


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


def _discard(path: Path) -> None:
    """Remove a folder by renaming it out of the way first: a crash mid-removal leaves a ``.trash-*``
    folder (removed by the next save), never a half-deleted checkpoint that would look damaged."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.replace(path, trash)
    _fault_delay()
    shutil.rmtree(trash, ignore_errors=True)


def _prepare(root: Path, tmp: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for stale in [*root.glob(".tmp-*"), *root.glob(".trash-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    (tmp / "rng").mkdir(parents=True)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` to ``final``. A damaged checkpoint already there (a resume fell back past
    it) is set aside as ``step-N.damaged-TIME``, never deleted; an intact one is replaced."""
    _fault_delay()
    if final.exists():
        verdict = verify_checkpoint(final)
        if verdict.ok:
            _discard(final)
        else:
            aside = final.with_name(f"{final.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
            os.replace(final, aside)
            log.warning("kept damaged checkpoint as %s (%s)", aside, verdict.reason)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _all_ok(error: OSError | None, state: ParallelState, step: int, tmp: Path) -> None:
    """Every rank learns whether any rank failed (this is also the barrier between the write phases); on a
    failure rank 0 removes the partial write and every rank raises :class:`CheckpointWriteError`."""
    failed = error is not None
    if state.distributed:
        failed = all_reduce_sum([float(failed)], state)[0] > 0
    if not failed:
        return
    if state.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    if error is None:
        raise CheckpointWriteError(
            f"checkpoint for step {step} not written: another rank failed (see its error)"
        )
    where = error.filename or tmp
    cause = error.strerror or _first_line(error)
    raise CheckpointWriteError(
        f"checkpoint for step {step} not written: {cause}: {where} (partial write removed; earlier "
        "checkpoints are untouched: fix the cause and continue with --resume)"
    ) from None


def _attempt(fn: Any, *args: Any) -> OSError | None:
    try:
        fn(*args)
    except OSError as exc:
        return exc
    return None


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    state: ParallelState,
    *,
    model_state: dict[str, torch.Tensor] | None,
    ema_state: dict[str, torch.Tensor] | None,
    optimizer_state: dict[str, Any] | None,
    lr_schedule_state: dict[str, Any] | None,
    rng_state: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    config_text: str,
    keep_last: int = 3,
) -> Path:
    """Write a checkpoint collectively. Rank 0 passes the full model / EMA / optimizer state (other
    ranks may pass None); every rank passes its RNG state.

    Raises :class:`CheckpointWriteError` (on every rank) when a file cannot be written."""
    root = Path(run_dir) / CHECKPOINTS
    final = step_dir(run_dir, step)
    tmp = root / f".tmp-step-{step:08d}"
    _all_ok(_attempt(_prepare, root, tmp) if state.is_main else None, state, step, tmp)
    entries: dict[str, dict[str, Any]] = {}
    rng = _torch_bytes(rng_state)
    _all_ok(_attempt(_put, tmp, f"rng/rank-{state.rank:05d}.pt", rng, entries), state, step, tmp)
    error = None
    if state.is_main:
        assert model_state is not None and ema_state is not None
        info = {
            "step": step,
            "world_size": state.world_size,
            "dp_size": state.dp_size,
            "sp_size": state.sp_size,
        }
        files = {
            "model.safetensors": lambda: _safetensors_bytes(model_state),
            "ema.safetensors": lambda: _safetensors_bytes(ema_state),
            "optimizer.pt": lambda: _torch_bytes(optimizer_state),
            "scheduler.pt": lambda: _torch_bytes(lr_schedule_state),
            "config.toml": lambda: config_text.encode(),
            STATE: lambda: json.dumps({**info, **train_state}, indent=2, allow_nan=False).encode(),
        }
        error = _attempt(_write_all, tmp, final, files, entries)
    _all_ok(error, state, step, tmp)
    if state.is_main:
        try:
            prune_checkpoints(run_dir, keep_last, newest=step)
        except OSError as exc:  # the new checkpoint is safe; an old one left behind is no reason to stop
            log.warning("could not remove an old checkpoint: %s", exc)
    state.barrier()
    return final


def _write_all(tmp: Path, final: Path, files: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
    """Rank 0's part: the files (serialised one at a time, so only one is in memory as bytes), the
    manifest last, then the rename."""
    for rel, make in files.items():
        _put(tmp, rel, make(), entries)
    _fault_delay()
    write_manifest(tmp, entries)  # other ranks' rng files are hashed from disk
    _fsync_dir(tmp / "rng")
    _fsync_dir(tmp)
    _publish(tmp, final)


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int, newest: int | None = None) -> None:
    """Keep the newest ``keep_last`` intact checkpoints up to step ``newest``.

    Damaged checkpoints (by the cheap size check) are never removed and not counted, nor is anything newer
    than ``newest`` (the checkpoint just written): the last verified checkpoint always survives."""
    if keep_last <= 0:
        return
    found = [p for s, p in list_checkpoints(run_dir) if newest is None or s <= newest]
    intact = [p for p in found if verify_checkpoint(p, deep=False).ok]
    for path in intact[:-keep_last]:
        _discard(path)


# --------------------------------------------------------------------------------------------------
# load


def load_train_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / STATE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"checkpoint {path} is unreadable: {exc}") from None


def load_tensors(path: Path, name: str) -> dict[str, torch.Tensor]:
    file = path / name
    if not file.is_file():
        raise UserError(f"checkpoint {path} lacks {name}")
    return load_safetensors(file)


def load_pickled(path: Path, name: str) -> Any:
    file = path / name
    if not file.is_file():
        raise UserError(f"checkpoint {path} lacks {name}")
    return load_torch(file)


def load_rng(path: Path, rank: int) -> dict[str, torch.Tensor] | None:
    file = path / "rng" / f"rank-{rank:05d}.pt"
    if not file.is_file():
        return None
    return load_torch(file)
