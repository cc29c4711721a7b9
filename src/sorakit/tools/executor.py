"""Where the data tools run: one process, a local process pool, a Dask cluster or Ray.

``--executor`` takes one of

- ``local:1``: in this process, in order (no pickling; the reference every other executor must match);
- ``local[:N]``: a spawn-based process pool of N workers (default: one per core);
- ``dask:local[:N]``: a ``distributed.LocalCluster`` of N single-threaded worker processes;
- ``dask:ADDRESS``: an existing Dask cluster (``tcp://host:8786``; start one with ``dask scheduler`` and
  ``dask worker tcp://host:8786`` on every machine);
- ``ray[:ADDRESS]``: Ray (``pip install sorakit[ray]``); without an address ``ray.init()`` joins the
  cluster named by ``RAY_ADDRESS`` or starts a local one.

Every executor is a :class:`concurrent.futures.Executor` (Dask's ``Client.get_executor``, Ray's
``ObjectRef.future``), so the tools only ever call ``submit``. Work is cut into shards
(:func:`map_items`): each shard is one task, its results are written atomically to a part file as soon
as it finishes, and a re-run skips the parts already there. Results are put back in input order, so
the output does not depend on the executor, the number of workers or the order shards finish in.
A worker that dies takes only its running shards with it: Dask and Ray run them again elsewhere, and a
shard whose task still fails is submitted again (``retries`` times) before the run gives up.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sorakit.errors import UserError
from sorakit.fileutil import write_text_atomic
from sorakit.tools._io import one_line

# (ok, value): value is the item's result when ok, else the one-line reason it failed
ItemResult = tuple[bool, Any]


@dataclass(frozen=True)
class ExecutorSpec:
    """A parsed ``--executor``: kind ``local``, ``dask`` or ``ray``; `workers` None = one per core."""

    kind: str
    workers: int | None = None
    address: str | None = None  # dask/ray: the cluster; None with dask = a LocalCluster

    def __str__(self) -> str:
        if self.kind == "local":
            return f"local:{self.workers}" if self.workers else "local"
        where = self.address or ("local" + (f":{self.workers}" if self.workers else ""))
        return f"{self.kind}:{where}" if self.kind == "dask" or self.address else self.kind


def _count(text: str, spec: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"--executor {spec}: the worker count must be an integer >= 1, got {text!r}")
    return n


def parse_executor(spec: str) -> ExecutorSpec:
    """``local[:N]``, ``dask:local[:N]``, ``dask:ADDRESS`` or ``ray[:ADDRESS]`` -> ExecutorSpec.

    Raises UserError (before any work starts) on a malformed spec or when the engine is not installed.
    """
    kind, _, rest = spec.strip().partition(":")
    if kind == "local":
        return ExecutorSpec("local", _count(rest, spec) if rest else None)
    if kind == "dask":
        _require("distributed", "dask", 'pip install "sorakit[dask]" (or pip install distributed)')
        if not rest:
            raise UserError("--executor dask needs a scheduler address (dask:tcp://host:8786) or dask:local")
        if rest == "local" or rest.startswith("local:"):
            n = rest.partition(":")[2]
            return ExecutorSpec("dask", _count(n, spec) if n else None)
        return ExecutorSpec("dask", None, rest if "://" in rest else f"tcp://{rest}")
    if kind == "ray":
        _require("ray", "ray", 'pip install "sorakit[ray]"')
        return ExecutorSpec("ray", None, rest or None)
    raise UserError(
        f"unknown --executor {spec!r}; use local[:N], dask:local[:N], dask:ADDRESS or ray[:ADDRESS]"
    )


def _require(module: str, name: str, how: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(f"--executor {name} needs the {module!r} package: {how}")


class InlineExecutor(Executor):
    """Runs each call in this process when it is submitted (``local:1``): nothing is pickled."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            if isinstance(exc, KeyboardInterrupt):
                raise
            fut.set_exception(exc)
        return fut


class RayExecutor(Executor):
    """``concurrent.futures`` over Ray tasks; Ray itself re-runs a task whose worker died."""

    def __init__(self, address: str | None, max_retries: int = 3):
        import ray

        self._started = not ray.is_initialized()
        if self._started:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        self._call = ray.remote(max_retries=max_retries)(_call)
        self._ray = ray

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return self._call.remote(fn, *args, **kwargs).future()

    @property
    def workers(self) -> int:
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._started:
            self._ray.shutdown()


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


@dataclass
class Pool:
    """An open executor and how many tasks it runs at once (to size shards and the submit window)."""

    executor: Executor
    workers: int
    spec: ExecutorSpec

    @property
    def inline(self) -> bool:
        return isinstance(self.executor, InlineExecutor)


@contextlib.contextmanager
def open_pool(spec: ExecutorSpec | str) -> Iterator[Pool]:
    """Start (or connect to) the executor of `spec` and shut it down afterwards."""
    if isinstance(spec, str):
        spec = parse_executor(spec)
    cores = os.cpu_count() or 1
    if spec.kind == "local" and (spec.workers or cores) == 1:
        yield Pool(InlineExecutor(), 1, spec)
    elif spec.kind == "local":
        n = spec.workers or cores
        ctx = mp.get_context("spawn")
        threads = max(1, cores // n)
        with ProcessPoolExecutor(n, mp_context=ctx, initializer=_share_cores, initargs=(threads,)) as ex:
            yield Pool(ex, n, spec)
    elif spec.kind == "dask":
        with _dask_pool(spec, cores) as pool:
            yield pool
    else:
        ex = RayExecutor(spec.address)
        try:
            yield Pool(ex, ex.workers, spec)
        finally:
            ex.shutdown()


def _share_cores(threads: int) -> None:
    """In a pool worker, before torch or numpy start their thread pools: N workers each take
    cores / N threads instead of every one taking all cores (as Dask does for its workers)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))


@contextlib.contextmanager
def _dask_pool(spec: ExecutorSpec, cores: int) -> Iterator[Pool]:
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if spec.address is None:
            # single-threaded worker processes: the tools' work is CPU-bound Python and FFmpeg
            cluster = LocalCluster(
                n_workers=spec.workers or cores,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            )
            stack.enter_context(cluster)
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(spec.address, timeout="20s"))
            except OSError as exc:
                raise UserError(f"cannot reach the Dask scheduler at {spec.address}: {exc}") from None
        threads = sum(client.nthreads().values()) or 1
        # pure=False: a shard submitted twice (a retry) must run again, not return the cached failure
        yield Pool(client.get_executor(pure=False), threads, spec)


def add_executor_args(parser: Any, default: str = "local", shards: bool = True) -> None:
    """``--executor``, ``--retries`` (and ``--shard-items`` with `shards`) for a data command."""
    parser.add_argument(
        "--executor",
        default=None,
        help=f"where to run: local[:N] (process pool; local:1 = in this process), dask:local[:N], "
        f"dask:tcp://HOST:8786, ray[:ADDRESS] (default: {default}, or local:N with --workers N)",
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="attempts again at a failing item or lost shard (default: 2)"
    )
    if shards:
        parser.add_argument(
            "--shard-items", type=int, default=None, help="items per shard (default: about 4 per worker)"
        )


def executor_from_args(args: Any, default: str = "local", workers_flag: bool = True) -> ExecutorSpec:
    """The ExecutorSpec of parsed CLI args; with `workers_flag`, ``--workers N`` alone means ``local:N``."""
    if getattr(args, "retries", 0) < 0:
        raise UserError(f"--retries must be >= 0, got {args.retries}")
    if getattr(args, "shard_items", None) is not None and args.shard_items < 1:
        raise UserError(f"--shard-items must be >= 1, got {args.shard_items}")
    workers = getattr(args, "workers", None) if workers_flag else None
    if args.executor:
        return parse_executor(args.executor)
    if workers is not None:
        if workers < 1:
            raise UserError(f"--workers must be >= 1, got {workers}")
        return ExecutorSpec("local", workers)
    return parse_executor(default)


# ------------------------------------------------------------------------------------------ shards
def shard_size(n_items: int, workers: int, requested: int | None = None) -> int:
    """Items per shard: `requested`, else about 4 shards per worker, at most 32 items: a shard is also the
    unit a killed run keeps, and 32 videos fully decoded by `data info` take about half a minute (256 took
    long enough that a 100k-row run killed after 400 s had not finished one)."""
    if requested:
        return requested
    return max(1, min(32, -(-n_items // (4 * max(1, workers)))))


def run_items(fn: Callable[[Any], Any], items: Sequence[Any], retries: int = 0) -> list[ItemResult]:
    """One shard on a worker: `fn` on each item, trying a failing item `retries` more times.

    An item that still fails gives ``(False, reason)``; the shard itself never raises for an item.
    """
    out: list[ItemResult] = []
    for item in items:
        for attempt in range(retries + 1):
            try:
                out.append((True, fn(item)))
                break
            except Exception as exc:  # noqa: BLE001 - any item failure is reported, never fatal
                if attempt == retries:
                    out.append((False, one_line(exc)))
    return out


def fingerprint(*parts: Any) -> str:
    """A stable id of a shard's work (its items and options), so a part file is reused only for the
    same work: repr() of dataclasses, paths and numbers does not change between runs."""
    return hashlib.sha1(repr(parts).encode()).hexdigest()


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data), fsync=True)


def _read_part(path: Path, fp: str) -> list | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data["results"] if data.get("fingerprint") == fp else None


def run_shards(
    pool: Pool,
    task: Callable[..., Any],
    shards: Sequence[tuple],
    on_done: Callable[[int, Any], None],
    sizes: Sequence[int] | None = None,
    retries: int = 2,
    desc: str | None = None,
    unit: str = "item",
) -> None:
    """Submit ``task(*shards[k])`` for every k, at most 2 per worker in flight; ``on_done(k, result)``
    runs here, in this process, as each finishes. A task that raises (its worker was lost, the
    cluster gave up on it) is submitted again up to `retries` times, then its error propagates.
    The bar shows shards done / total and items (``sizes[k]`` per shard) per second."""
    sizes = sizes or [1] * len(shards)
    bar = tqdm(total=len(shards), desc=desc, unit="shard", disable=True if not desc else None, leave=False)
    t0, items_done = time.perf_counter(), 0
    todo = list(range(len(shards)))[::-1]
    attempts = [0] * len(shards)
    running: dict[Future, int] = {}
    window = 1 if pool.inline else 2 * pool.workers
    try:
        while todo or running:
            while todo and len(running) < window:
                k = todo.pop()
                running[pool.executor.submit(task, *shards[k])] = k
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: running[f]):
                k = running.pop(fut)
                try:
                    result = fut.result()
                except UserError:  # a mistake in the command (a bad API key): running again cannot help
                    raise
                except Exception:
                    attempts[k] += 1
                    if attempts[k] > retries:
                        raise
                    todo.append(k)
                    continue
                on_done(k, result)
                items_done += sizes[k]
                bar.update(1)
                bar.set_postfix_str(f"{items_done / max(time.perf_counter() - t0, 1e-9):.2f} {unit}/s")
    finally:
        for fut in running:
            fut.cancel()
        bar.close()


def map_items(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    pool: Pool,
    parts_dir: str | os.PathLike | None = None,
    shard_items: int | None = None,
    retries: int = 2,
    desc: str | None = None,
    unit: str = "item",
    key: Any = None,
) -> list[ItemResult]:
    """``fn`` over `items` in shards on `pool`; returns ``(ok, value)`` per item in input order.

    With `parts_dir`, each finished shard is written there atomically as ``part-NNNNN.json`` and a
    later call with the same items, shard size and `key` (the options that change results) reads it
    back instead of running it again. Values must be JSON-serialisable (every value goes through JSON,
    read back or not, so a resumed run returns exactly what a fresh one does).
    """
    size = shard_size(len(items), pool.workers, shard_items)
    shards = [list(items[s : s + size]) for s in range(0, len(items), size)]
    fps = [fingerprint(getattr(fn, "__qualname__", ""), key, size, shard) for shard in shards]
    results: list[list[ItemResult] | None] = [None] * len(shards)
    parts = Path(parts_dir) if parts_dir is not None else None
    if parts is not None:
        parts.mkdir(parents=True, exist_ok=True)
        for k, fp in enumerate(fps):
            results[k] = _read_part(parts / f"part-{k:05d}.json", fp)
    todo = [k for k, r in enumerate(results) if r is None]

    def on_done(j: int, res: list[ItemResult]) -> None:
        k = todo[j]
        res = json.loads(json.dumps(res))
        if parts is not None:
            _write_json(parts / f"part-{k:05d}.json", {"fingerprint": fps[k], "results": res})
        results[k] = res

    run_shards(
        pool,
        run_items,
        [(fn, shards[k], retries) for k in todo],
        on_done,
        sizes=[len(shards[k]) for k in todo],
        retries=retries,
        desc=desc,
        unit=unit,
    )
    return [(bool(ok), v) for r in results for ok, v in (r or [])]


def remove_parts(parts_dir: str | os.PathLike) -> None:
    """Delete a parts folder once the final output is written (only our own part files)."""
    p = Path(parts_dir)
    if not p.is_dir():
        return
    for f in p.glob("part-*.json"):
        f.unlink()
    for f in p.glob(".part-*.json.tmp-*"):
        f.unlink()
    with contextlib.suppress(OSError):
        p.rmdir()


def parts_dir_for(output: str | os.PathLike) -> Path:
    """Where the finished shards of a run writing `output` are kept until it completes:
    ``clips.csv`` -> ``clips.parts/``."""
    p = Path(output)
    return p.with_name(f"{p.stem}.parts")


@contextlib.contextmanager
def pool_for(pool: Pool | None, workers: int = 1) -> Iterator[Pool]:
    """`pool` itself when given (the caller owns it), else a ``local:workers`` pool for this call."""
    if pool is not None:
        yield pool
        return
    with open_pool(ExecutorSpec("local", max(1, workers))) as own:
        yield own
