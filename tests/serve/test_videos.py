"""Generating through the server with the official `openai` client: create, poll, download, list, delete.

One server (one worker, the built-in model) for the session; videos use few sampler steps.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image
from serve_helpers import STEPS, wait_for

from sorakit.data.video import read_video
from sorakit.serve.store import DB_FILE, JobStore

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _spritesheet(served, prompt: str, seed: int) -> tuple[np.ndarray, object]:
    video = served.client().videos.create_and_poll(prompt=prompt, extra_body={"seed": seed, "steps": STEPS})
    assert video.status == "completed", video.error
    return _png(served.client().videos.download_content(video.id, variant="spritesheet").content), video


def test_create_poll_and_download_all_variants(served, tmp_path: Path) -> None:
    videos = served.client().videos
    video = videos.create_and_poll(
        prompt="a red circle moving to the right",
        size="64x64",
        seconds="2",
        extra_body={"seed": 7, "steps": STEPS},
    )
    assert video.status == "completed" and video.progress == 100 and video.error is None
    assert (video.model, video.size, video.seconds, video.object) == (
        "sorakit-builtin",
        "64x64",
        "2",
        "video",
    )
    assert video.completed_at >= video.created_at
    assert video.sorakit["seed"] == 7 and video.sorakit["steps"] == STEPS and video.sorakit["attempts"] == 1
    mp4 = tmp_path / "v.mp4"
    videos.download_content(video.id).write_to_file(mp4)
    frames = read_video(mp4)
    assert frames.shape == (16, 64, 64, 3)
    thumbnail = _png(videos.download_content(video.id, variant="thumbnail").content)
    sheet = _png(videos.download_content(video.id, variant="spritesheet").content)
    assert thumbnail.shape == (64, 64, 3) and sheet.shape == (256, 256, 3)
    cells = sheet.reshape(4, 64, 4, 64, 3).transpose(0, 2, 1, 3, 4).reshape(16, 64, 64, 3)
    assert np.array_equal(cells[8], thumbnail)  # both lossless copies of the middle frame
    # the MP4 is the same video, H.264-compressed
    assert np.abs(frames.astype(float) - cells.astype(float)).mean() < 6
    assert cells.std() > 5  # a picture, not a blank


def test_the_seed_is_honoured(served) -> None:
    a, _ = _spritesheet(served, "a blue square moving down", seed=11)
    b, _ = _spritesheet(served, "a blue square moving down", seed=11)
    c, _ = _spritesheet(served, "a blue square moving down", seed=12)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_progress_rises_from_the_sampler_steps(served) -> None:
    videos = served.client().videos
    video = videos.create(prompt="a green triangle moving left", extra_body={"steps": 40, "seed": 1})
    seen = []
    while video.status in ("queued", "in_progress"):
        seen.append((video.status, video.progress))
        time.sleep(0.02)
        video = videos.retrieve(video.id)
    assert video.status == "completed" and video.progress == 100
    running = [p for s, p in seen if s == "in_progress"]
    assert running == sorted(running)  # never goes back
    assert any(0 < p < 100 for p in running), seen
    assert video.id in [v.id for v in videos.list(limit=100)]


def test_deleting_a_running_video_cancels_it(served) -> None:
    videos = served.client().videos
    video = videos.create(prompt="a yellow circle moving up", extra_body={"steps": 500})
    wait_for(lambda: videos.retrieve(video.id).progress > 0, what="the job to start")
    assert videos.delete(video.id).deleted
    with pytest.raises(openai.NotFoundError):
        videos.retrieve(video.id)
    # the worker drops it at its next step and takes the next job
    after = videos.create_and_poll(prompt="a red square", extra_body={"steps": STEPS})
    assert after.status == "completed"
    store = JobStore(served.data_dir / DB_FILE)
    events = [e for _, e, _ in store.events(video.id)]
    assert events == ["queued", "claimed", "deleted"]
    assert not (served.data_dir / "videos" / video.id).exists()
    with pytest.raises(openai.NotFoundError):
        videos.download_content(video.id)


def test_models_health_and_metrics(served) -> None:
    model = served.client().models.list().data[0]
    assert model.id == "sorakit-builtin"
    assert model.sizes == ["64x64"] and model.seconds == ["2"]
    served.client().videos.create_and_poll(prompt="a red circle", extra_body={"steps": STEPS})
    health = served.health()
    assert health["status"] == "ok" and health["model"] == "sorakit-builtin" and not health["auth"]
    assert [w["alive"] and w["ready"] for w in health["workers"]] == [True]
    metrics = served.get("/metrics")[1]
    counts = JobStore(served.data_dir / DB_FILE).counts()
    assert f'sorakit_jobs{{status="completed"}} {counts["completed"]}' in metrics
    assert f"sorakit_video_generation_seconds_count {counts['completed']}" in metrics
    total = float(metrics.split("sorakit_video_generation_seconds_sum ")[1].split()[0])
    assert total > 0


def test_a_generation_error_fails_the_job_and_the_worker_goes_on(served) -> None:
    # a job the API would never queue (0 steps), written to the store directly, as a corrupt row would be
    store = JobStore(served.data_dir / DB_FILE)
    params = {"seed": 0, "steps": 0, "guidance": 4.0, "sampler": "rflow", "num_frames": 16, "height": 64,
              "width": 64, "fps": 8}  # fmt: skip
    bad = store.create(
        model="sorakit-builtin", prompt="x", seconds="2", size="64x64", params=params, max_queue=100
    )
    videos = served.client().videos
    video = videos.poll(bad.id, poll_interval_ms=100)
    assert video.status == "failed" and video.error.code == "generation_failed"
    assert "number of steps must be positive" in video.error.message
    with pytest.raises(openai.NotFoundError):
        videos.download_content(bad.id)
    assert videos.create_and_poll(prompt="a red circle", extra_body={"steps": STEPS}).status == "completed"
