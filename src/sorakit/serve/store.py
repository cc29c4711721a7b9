"""The durable job store of `sorakit serve`: one SQLite file under ``--data-dir``.

Every change is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), so a process killed at any
moment (kill -9 included) leaves the file as it was before or after that change, never between.
WAL mode lets the API read while a worker writes.

A job's life::

    queued --claim (a worker; attempts += 1, new token)--> in_progress --complete--> completed
                                                                       \\--fail-----> failed
    in_progress --worker died / server restarted--> queued (or failed after ``max_attempts``)
    any --delete--> (row removed)

Each claim gets a random ``token``; a worker's progress, completion and failure only apply while the
row still carries its token. A worker that lost its job (deleted, or handed to another worker after
a restart) therefore cannot write over it: every job completes at most once, and the ``events``
table records each transition so tests can count completions.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ID_PREFIX = "video_"
ID_HEX = 32
STATUSES = ("queued", "in_progress", "completed", "failed")
DB_FILE = "jobs.sqlite3"  # under --data-dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- creation order: pagination and queue order
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    seconds TEXT NOT NULL,
    size TEXT NOT NULL,
    params TEXT NOT NULL,                    -- JSON: what the worker passes to the pipeline
    progress INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    started_at REAL,
    completed_at INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    token TEXT,
    error TEXT,                              -- JSON {"code", "message"} once failed
    gen_seconds REAL                         -- wall time of the successful attempt
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    event TEXT NOT NULL,
    at REAL NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id);
"""


def new_id() -> str:
    """A random job id: ``video_`` + 32 hex digits (128 bits: unguessable, safe as a folder name)."""
    return ID_PREFIX + secrets.token_hex(ID_HEX // 2)


def valid_id(text: str) -> bool:
    """True only for ids of :func:`new_id`'s form, so an id never carries ``/`` or ``..`` into a path."""
    body = text[len(ID_PREFIX) :]
    return text.startswith(ID_PREFIX) and len(body) == ID_HEX and all(c in "0123456789abcdef" for c in body)


class QueueFull(Exception):
    """The queue already holds ``max_queue`` jobs."""


@dataclass
class Job:
    """One row of ``jobs``, decoded."""

    seq: int
    id: str
    status: str
    model: str
    prompt: str
    seconds: str
    size: str
    params: dict[str, Any]
    progress: int
    created_at: int
    started_at: float | None
    completed_at: int | None
    attempts: int
    worker: str | None
    token: str | None
    error: dict[str, Any] | None
    gen_seconds: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        data = dict(row)
        data["params"] = json.loads(data["params"])
        data["error"] = json.loads(data["error"]) if data["error"] else None
        return cls(**data)


class JobStore:
    """The jobs and their events in ``path`` (created when missing). Safe to use from many threads
    (one connection per thread) and many processes (SQLite's locking)."""

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        # FULL: a commit is on disk when it returns (the API's acknowledged jobs survive a power cut).
        # Workers use NORMAL: in WAL mode that still survives a killed process, and a progress update
        # per step then costs no fsync; a completion lost to a power cut is re-queued and re-run.
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.synchronous = synchronous
        self._local = threading.local()
        self._db().executescript(_SCHEMA)

    # -- connections and transactions -------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly
            # the block of `_tx`; busy_timeout waits for another process's write lock.
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front, so a read-then-write
        (claim, queue-limit check) cannot interleave with another writer."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    @staticmethod
    def _event(db: sqlite3.Connection, job_id: str, event: str, detail: str | None = None) -> None:
        db.execute(
            "INSERT INTO events (job_id, event, at, detail) VALUES (?, ?, ?, ?)",
            (job_id, event, time.time(), detail),
        )

    # -- the API's side ---------------------------------------------------------------------------

    def create(
        self,
        *,
        model: str,
        prompt: str,
        seconds: str,
        size: str,
        params: dict[str, Any],
        max_queue: int,
        job_id: str | None = None,
    ) -> Job:
        """Queue a new job (``job_id``: one of :func:`new_id` whose files are already in place, e.g. a
        reference upload); :class:`QueueFull` when ``max_queue`` jobs are already waiting."""
        job_id = new_id() if job_id is None else job_id
        if not valid_id(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        with self._tx() as db:
            waiting = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
            if waiting >= max_queue:
                raise QueueFull(waiting)
            db.execute(
                "INSERT INTO jobs (id, status, model, prompt, seconds, size, params, created_at)"
                " VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
                (job_id, model, prompt, seconds, size, json.dumps(params, allow_nan=False), int(time.time())),
            )
            self._event(db, job_id, "queued")
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        row = self._db().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def page(self, after: str | None = None, limit: int = 20, order: str = "desc") -> tuple[list[Job], bool]:
        """Jobs in creation order (``asc``/``desc``) after the job ``after`` (a cursor); returns the page
        and whether more follow. An unknown ``after`` raises KeyError."""
        cmp, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        db = self._db()
        where, args = "", []
        if after is not None:
            row = db.execute("SELECT seq FROM jobs WHERE id = ?", (after,)).fetchone()
            if row is None:
                raise KeyError(after)
            where, args = f"WHERE seq {cmp} ?", [row[0]]
        rows = db.execute(
            f"SELECT * FROM jobs {where} ORDER BY seq {direction} LIMIT ?", (*args, limit + 1)
        ).fetchall()
        return [Job.from_row(r) for r in rows[:limit]], len(rows) > limit

    def delete(self, job_id: str) -> Job | None:
        """Remove the job (whatever its status); its worker, if any, notices at its next step."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            self._event(db, job_id, "deleted", row["status"])
        return Job.from_row(row)

    def queue_position(self, job: Job) -> int:
        """1 for the next job a worker will claim."""
        db = self._db()
        ahead = db.execute(
            "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND seq < ?", (job.seq,)
        ).fetchone()
        return int(ahead[0]) + 1

    def counts(self) -> dict[str, int]:
        """Jobs by status (every status present, 0 when none)."""
        rows = self._db().execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        out = dict.fromkeys(STATUSES, 0)
        out.update({r[0]: int(r[1]) for r in rows})
        return out

    def generation_stats(self) -> tuple[int, float]:
        """(completed jobs, total seconds they took to generate)."""
        row = (
            self._db()
            .execute("SELECT COUNT(*), COALESCE(SUM(gen_seconds), 0) FROM jobs WHERE status = 'completed'")
            .fetchone()
        )
        return int(row[0]), float(row[1])

    def events(self, job_id: str | None = None) -> list[tuple[str, str, str | None]]:
        """(job id, event, detail) in order, for one job or all."""
        sql, args = "SELECT job_id, event, detail FROM events", ()
        if job_id is not None:
            sql, args = sql + " WHERE job_id = ?", (job_id,)
        return [tuple(r) for r in self._db().execute(sql + " ORDER BY seq", args).fetchall()]

    # -- the workers' side ------------------------------------------------------------------------

    def claim(self, worker: str) -> Job | None:
        """Atomically take the oldest queued job for ``worker`` (None when the queue is empty)."""
        token = secrets.token_hex(8)
        with self._tx() as db:
            row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'in_progress', worker = ?, token = ?, attempts = attempts + 1,"
                " progress = 0, started_at = ? WHERE id = ? AND status = 'queued'",
                (worker, token, time.time(), row["id"]),
            )
            self._event(db, row["id"], "claimed", worker)
        return self.get(row["id"])

    def set_progress(self, job_id: str, token: str, progress: int) -> bool:
        """Record progress (0-100); False when the job is no longer this claim's (deleted or re-queued)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET progress = ? WHERE id = ? AND token = ? AND status = 'in_progress'",
                (int(progress), job_id, token),
            )
        return cur.rowcount == 1

    def complete(self, job_id: str, token: str, gen_seconds: float) -> bool:
        """Mark the claim's job completed; False (and nothing written) when it is no longer this claim's."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status = 'completed', progress = 100, completed_at = ?, gen_seconds = ?,"
                " token = NULL WHERE id = ? AND token = ? AND status = 'in_progress'",
                (int(time.time()), gen_seconds, job_id, token),
            )
            if cur.rowcount == 1:
                self._event(db, job_id, "completed")
        return cur.rowcount == 1

    def fail(self, job_id: str, token: str | None, code: str, message: str) -> bool:
        """Mark the job failed with an OpenAI-style error; with a token, only if the claim still holds."""
        error = json.dumps({"code": code, "message": message}, allow_nan=False)
        with self._tx() as db:
            sql = "UPDATE jobs SET status = 'failed', error = ?, completed_at = ?, token = NULL WHERE id = ?"
            args: tuple[Any, ...] = (error, int(time.time()), job_id)
            if token is not None:
                sql, args = sql + " AND token = ? AND status = 'in_progress'", (*args, token)
            cur = db.execute(sql, args)
            if cur.rowcount == 1:
                self._event(db, job_id, "failed", code)
        return cur.rowcount == 1

    def release(
        self, worker: str | None, max_attempts: int, reason: str, count_attempt: bool = True
    ) -> list[str]:
        """Hand back the jobs ``worker`` (None: every worker) was running: re-queued, or failed once they
        have been attempted ``max_attempts`` times. ``count_attempt=False`` (an orderly shutdown) gives
        the attempt back. Returns the ids released."""
        with self._tx() as db:
            sql, args = "SELECT id, attempts FROM jobs WHERE status = 'in_progress'", ()
            if worker is not None:
                sql, args = sql + " AND worker = ?", (worker,)
            released = []
            for row in db.execute(sql, args).fetchall():
                attempts = row["attempts"] - (0 if count_attempt else 1)
                if attempts >= max_attempts:
                    message = f"generation stopped {attempts} times ({reason}); giving up"
                    db.execute(
                        "UPDATE jobs SET status = 'failed', token = NULL, worker = NULL, completed_at = ?,"
                        " error = ? WHERE id = ?",
                        (
                            int(time.time()),
                            json.dumps({"code": "worker_lost", "message": message}, allow_nan=False),
                            row["id"],
                        ),
                    )
                    self._event(db, row["id"], "failed", reason)
                else:
                    db.execute(
                        "UPDATE jobs SET status = 'queued', token = NULL, worker = NULL, progress = 0,"
                        " attempts = ? WHERE id = ?",
                        (attempts, row["id"]),
                    )
                    self._event(db, row["id"], "requeued", reason)
                released.append(row["id"])
        return released
