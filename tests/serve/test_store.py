"""The SQLite job store: atomic claims, claim tokens, re-queue / give up, pagination, queue limit."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sorakit.serve.store import JobStore, QueueFull, new_id, valid_id


def _add(store: JobStore, n: int, max_queue: int = 1000) -> list[str]:
    return [
        store.create(
            model="m", prompt=f"p{i}", seconds="2", size="64x64", params={"i": i}, max_queue=max_queue
        ).id
        for i in range(n)
    ]


def test_ids_are_random_and_validated() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(valid_id(i) for i in ids)
    good = new_id()
    for bad in ["", "video_", good[:-1], good + "0", good.upper(), "video_../../../etc/passwd",
                "video_" + "g" * 32, "clip_" + "0" * 32, good[:-1] + "/", "video_" + "0" * 31 + "\n"]:  # fmt: skip
        assert not valid_id(bad), bad


def test_claims_are_atomic_across_connections(tmp_path: Path) -> None:
    """Eight threads (eight SQLite connections, as eight worker processes would have) drain 60 jobs:
    every job is claimed exactly once, in creation order per claimer."""
    path = tmp_path / "jobs.sqlite3"
    ids = _add(JobStore(path), 60)
    claimed: dict[str, list[str]] = {}

    def drain(name: str) -> None:
        store = JobStore(path)  # its own connection
        mine = claimed.setdefault(name, [])
        while (job := store.claim(name)) is not None:
            assert job.status == "in_progress" and job.worker == name and job.attempts == 1
            mine.append(job.id)

    threads = [threading.Thread(target=drain, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for mine in claimed.values() for i in mine]
    assert sorted(every) == sorted(ids)  # none lost, none twice
    for mine in claimed.values():
        assert mine == sorted(mine, key=ids.index)


def test_a_claim_token_guards_progress_and_completion(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    (job_id,) = _add(store, 1)
    first = store.claim("w0")
    assert store.set_progress(job_id, first.token, 40) and store.get(job_id).progress == 40
    assert store.release("w0", max_attempts=3, reason="w0 died") == [job_id]
    requeued = store.get(job_id)
    assert requeued.status == "queued" and requeued.progress == 0 and requeued.token is None
    second = store.claim("w1")
    assert second.attempts == 2 and second.token != first.token
    # the first worker (say, an orphan of a killed server) can no longer touch the job
    assert not store.set_progress(job_id, first.token, 90)
    assert not store.complete(job_id, first.token, 1.0)
    assert not store.fail(job_id, first.token, "x", "y")
    assert store.complete(job_id, second.token, 2.5)
    assert not store.complete(job_id, second.token, 2.5)  # completes once
    done = store.get(job_id)
    assert done.status == "completed" and done.progress == 100 and done.gen_seconds == 2.5
    events = [e for _, e, _ in store.events(job_id)]
    assert events == ["queued", "claimed", "requeued", "claimed", "completed"]


def test_a_job_that_keeps_killing_workers_fails_after_max_attempts(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    (job_id,) = _add(store, 1)
    for attempt in (1, 2):
        store.claim("w")
        store.release("w", max_attempts=3, reason=f"crash {attempt}")
        assert store.get(job_id).status == "queued"
    store.claim("w")
    store.release("w", max_attempts=3, reason="crash 3")
    job = store.get(job_id)
    assert job.status == "failed" and job.error["code"] == "worker_lost"
    assert "3 times" in job.error["message"] and "crash 3" in job.error["message"]
    assert store.claim("w") is None


def test_an_orderly_shutdown_does_not_use_up_attempts(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    (job_id,) = _add(store, 1)
    for _ in range(5):
        store.claim("w")
        store.release(None, max_attempts=2, reason="server stopped", count_attempt=False)
    job = store.get(job_id)
    assert job.status == "queued" and job.attempts == 0


def test_deleting_a_running_job_stops_its_worker(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    (job_id,) = _add(store, 1)
    job = store.claim("w")
    assert store.delete(job_id).status == "in_progress"
    assert store.get(job_id) is None
    assert not store.set_progress(job_id, job.token, 50)
    assert not store.complete(job_id, job.token, 1.0)
    assert store.delete(job_id) is None


def test_queue_limit_and_positions(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    ids = _add(store, 3, max_queue=3)
    with pytest.raises(QueueFull):
        _add(store, 1, max_queue=3)
    assert [store.queue_position(store.get(i)) for i in ids] == [1, 2, 3]
    store.claim("w")  # running jobs do not count against the queue
    assert [store.queue_position(store.get(i)) for i in ids[1:]] == [1, 2]
    _add(store, 1, max_queue=3)
    assert store.counts() == {"queued": 3, "in_progress": 1, "completed": 0, "failed": 0}


def test_pagination(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    ids = _add(store, 7)
    for order, expected in (("desc", ids[::-1]), ("asc", ids)):
        seen, after, more = [], None, True
        while more:
            page, more = store.page(after, 3, order)
            seen += [j.id for j in page]
            after = page[-1].id
        assert seen == expected
    page, more = store.page(ids[2], 10, "desc")
    assert [j.id for j in page] == ids[:2][::-1] and not more
    with pytest.raises(KeyError):
        store.page(new_id(), 3, "asc")


def test_the_store_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    ids = _add(JobStore(path), 2)
    JobStore(path).claim("w")
    again = JobStore(path)
    assert [again.get(i).status for i in ids] == ["in_progress", "queued"]
    assert again.release(None, 3, "restart") == [ids[0]]
