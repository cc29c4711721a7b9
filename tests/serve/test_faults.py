"""Faults: the server killed with SIGKILL while jobs are queued (two of them with reference uploads) and one
is running, then restarted; a worker killed mid-job. Every job completes exactly once (counted in the store's event log)."""

from __future__ import annotations

import os
import signal
from collections import Counter

import pytest
from serve_helpers import (
    CLOSE,
    PROMPT,
    STEPS,
    Server,
    clip,
    diff,
    frames_of,
    image,
    mp4_bytes,
    png_bytes,
    process_gone,
    wait_for,
)

from sorakit.serve.store import DB_FILE, JobStore

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

LONG = 60  # steps of the job that is running when the kill comes (a few seconds on a CPU)


def _running(server: Server, video_id: str) -> bool:
    video = server.client().videos.retrieve(video_id)
    return video.status == "in_progress" and video.progress > 0


def _all_completed(server: Server, ids: list[str]) -> bool:
    return all(server.client().videos.retrieve(i).status == "completed" for i in ids)


def test_sigkill_restart_and_a_killed_worker(tmp_path) -> None:
    data = tmp_path / "data"
    server = Server(data, ["--workers", "1"])
    try:
        (worker,) = server.wait_ready()
        videos = server.client().videos
        done_before = videos.create_and_poll(prompt="a red circle", extra_body={"steps": STEPS, "seed": 1})
        running = videos.create(prompt="a blue square moving down", extra_body={"steps": LONG, "seed": 2})
        queued = [
            videos.create(prompt=f"a green triangle {i}", extra_body={"steps": STEPS}).id for i in range(3)
        ]
        # jobs with a reference: their uploads are stored with them, so the restart runs them too
        upload = ("first.png", png_bytes(image()), "image/png")
        i2v = videos.create(prompt=PROMPT, input_reference=upload, extra_body={"steps": STEPS, "seed": 5})
        mp4, source = mp4_bytes(clip(), tmp_path)
        ext = videos.extend(
            prompt=PROMPT, seconds="2", video=("clip.mp4", mp4, "video/mp4"), extra_body={"steps": STEPS}
        )
        queued += [i2v.id, ext.id]
        wait_for(lambda: _running(server, running.id), what="the long job to run")
    finally:
        server.kill()  # SIGKILL: no shutdown code runs
    # the orphaned worker notices its parent is gone and exits without finishing the job
    wait_for(lambda: process_gone(worker["pid"]), timeout=60, what="the orphaned worker to exit")

    server = Server(data, ["--workers", "1"])
    try:
        videos = server.client().videos
        assert videos.retrieve(done_before.id).status == "completed"
        assert len(videos.download_content(done_before.id).content) > 0  # still downloadable
        ids = [done_before.id, running.id, *queued]
        wait_for(lambda: _all_completed(server, ids), timeout=300, interval=0.5, what="every job to complete")
        assert videos.retrieve(running.id).sorakit["attempts"] == 2
        assert {videos.retrieve(i).sorakit["attempts"] for i in queued} == {1}

        # a worker killed mid-job is replaced and the job runs again
        (worker,) = server.wait_ready()
        victim = videos.create(prompt="a yellow circle moving up", extra_body={"steps": LONG, "seed": 3})
        wait_for(lambda: _running(server, victim.id), what="the job to run")
        os.kill(worker["pid"], signal.SIGKILL)
        wait_for(lambda: _all_completed(server, [victim.id]), timeout=300, interval=0.5, what="the re-run")
        (replacement,) = server.health()["workers"]
        assert replacement["pid"] != worker["pid"] and replacement["restarts"] == 1
        assert videos.retrieve(victim.id).sorakit["attempts"] == 2
        ids.append(victim.id)

        events = JobStore(data / DB_FILE).events()
        completions = Counter(job for job, event, _ in events if event == "completed")
        assert completions == Counter(ids)  # every job completed, each exactly once
        requeued = Counter(job for job, event, _ in events if event == "requeued")
        assert requeued == Counter([running.id, victim.id])
        listed = [v.id for v in videos.list(limit=100, order="asc")]
        assert listed == ids[:2] + queued + [victim.id]  # none lost, none duplicated
        for video_id in ids:
            assert len(videos.download_content(video_id).content) > 0
        assert diff(frames_of(server, i2v.id)[0], image()) < CLOSE
        assert diff(frames_of(server, ext.id)[:4], source[-4:]) < CLOSE
    finally:
        server.stop()
