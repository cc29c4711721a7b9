"""The worker pool: starts N worker processes and replaces any that dies, re-queuing its job.

A monitor thread in the server process checks the workers twice a second. When one has exited
(killed, crashed, out of memory), the job it held goes back to the queue (or fails once it has been
tried ``max_attempts`` times, so a job that kills every worker cannot loop forever) and a new worker
takes its place. A worker that dies before its model is loaded is restarted with a growing delay.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sorakit.logging import get_logger
from sorakit.serve.store import JobStore
from sorakit.serve.worker import worker_main

log = get_logger(__name__)

MONITOR_INTERVAL_S = 0.5
MAX_BACKOFF_S = 30.0


@dataclass
class _Slot:
    """One worker position: the process filling it now and its restart history."""

    index: int
    process: Any = None
    ready: Any = None
    name: str = ""
    failures: int = 0  # consecutive deaths before the model loaded
    not_before: float = 0.0
    restarts: int = 0


class WorkerPool:
    """``workers`` processes running :func:`sorakit.serve.worker.worker_main` over ``data_dir``."""

    def __init__(
        self,
        store: JobStore,
        data_dir: Path,
        model: str | None,
        workers: int = 1,
        device: str = "auto",
        threads: int = 0,
        max_attempts: int = 3,
        nice: int = 0,
    ) -> None:
        self.store = store
        self.data_dir = Path(data_dir)
        self.model = model
        self.device = device
        self.threads = threads
        self.max_attempts = max_attempts
        self.nice = nice
        # spawn: a fresh interpreter per worker (forking a process that runs threads and an event
        # loop is unsafe), and it inherits none of the server's sockets or file locks.
        self._ctx = mp.get_context("spawn")
        self._slots = [_Slot(i) for i in range(workers)]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        for slot in self._slots:
            self._spawn(slot)
        self._thread = threading.Thread(target=self._monitor, name="sorakit-worker-pool", daemon=True)
        self._thread.start()

    def _spawn(self, slot: _Slot) -> None:
        slot.ready = self._ctx.Event()
        slot.name = f"worker-{slot.index}-{slot.restarts}"
        args = (
            str(self.data_dir),
            self.model,
            self.device,
            self.threads,
            slot.name,
            os.getpid(),
            slot.ready,
            self.nice,
        )
        slot.process = self._ctx.Process(target=worker_main, args=args, name=slot.name, daemon=False)
        slot.process.start()

    def _monitor(self) -> None:
        while not self._stop.wait(MONITOR_INTERVAL_S):
            with self._lock:
                for slot in self._slots:
                    if self._stop.is_set():
                        return
                    self._check(slot)

    def _check(self, slot: _Slot) -> None:
        """Replace the slot's worker if it has exited (after its back-off delay)."""
        proc = slot.process
        if proc is not None and proc.is_alive():
            if slot.ready.is_set():
                slot.failures = 0
            return
        if proc is not None:
            code = proc.exitcode
            released = self.store.release(
                slot.name, self.max_attempts, f"{slot.name} exited with code {code}"
            )
            log.warning(
                "%s (pid %s) exited with code %s; jobs handed back: %s", slot.name, proc.pid, code, released
            )
            if not slot.ready.is_set():
                slot.failures += 1
            slot.not_before = time.monotonic() + min(MAX_BACKOFF_S, 2.0**slot.failures - 1)
            slot.process = None
        if time.monotonic() >= slot.not_before:
            slot.restarts += 1
            self._spawn(slot)

    def status(self) -> list[dict[str, Any]]:
        """One entry per worker: name, pid, alive, ready (model loaded)."""
        out = []
        for slot in self._slots:
            proc = slot.process
            out.append(
                {
                    "name": slot.name,
                    "pid": proc.pid if proc is not None else None,
                    "alive": bool(proc is not None and proc.is_alive()),
                    "ready": bool(slot.ready is not None and slot.ready.is_set()),
                    "restarts": slot.restarts,
                }
            )
        return out

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the workers (SIGTERM, then SIGKILL after ``timeout``); their jobs go back to the queue
        without counting the interrupted attempt."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            procs = [s.process for s in self._slots if s.process is not None]
            for proc in procs:
                proc.terminate()
            deadline = time.monotonic() + timeout
            for proc in procs:
                proc.join(max(0.0, deadline - time.monotonic()))
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            for slot in self._slots:
                self.store.release(slot.name, self.max_attempts, "server stopped", count_attempt=False)
