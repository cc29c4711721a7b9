"""Worker processes of `sorakit serve`: each loads the model once, then claims and runs jobs.

A worker is a separate process (started by :class:`sorakit.serve.pool.WorkerPool`), so a slow
generation never blocks the API and a crashed one takes down only itself. It talks to the server only
through the job store and the files under ``--data-dir``:

1. claim the oldest queued job (atomically, see :meth:`JobStore.claim`);
2. run :class:`TextToVideoPipeline` (with the job's reference file and mask strategy, if any) with a
   callback that stores the progress after each sampler step, and stops early when the job was deleted
   or handed to another worker;
3. write ``video.mp4``, ``thumbnail.png`` and ``spritesheet.png`` (each atomically) to the job's
   folder, then mark the job completed in one transaction.

When the server process disappears (kill -9), the worker notices its parent changed and exits; the
restarted server re-queues the job it was running.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sorakit.data.video import write_image, write_video
from sorakit.errors import UserError
from sorakit.pipelines import TextToVideoPipeline
from sorakit.serve.store import DB_FILE, Job, JobStore

IDLE_POLL_S = 0.2
VIDEO_FILE, THUMBNAIL_FILE, SPRITESHEET_FILE = "video.mp4", "thumbnail.png", "spritesheet.png"
VARIANTS = {"video": (VIDEO_FILE, "video/mp4"), "thumbnail": (THUMBNAIL_FILE, "image/png")}
VARIANTS["spritesheet"] = (SPRITESHEET_FILE, "image/png")


class JobLost(Exception):
    """The job this worker runs was deleted or given to another worker: stop without writing."""


def job_dir(data_dir: Path, job_id: str) -> Path:
    """The folder of a job's files (``job_id`` must be a validated id)."""
    return Path(data_dir) / "videos" / job_id


def spritesheet(frames: np.ndarray) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` -> one ``[rows*H, cols*W, 3]`` image, frames left to right, top to bottom
    (``cols = ceil(sqrt(T))``; unused cells stay black)."""
    t, h, w, c = frames.shape
    cols = math.ceil(math.sqrt(t))
    rows = math.ceil(t / cols)
    sheet = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, frame in enumerate(frames):
        r, col = divmod(i, cols)
        sheet[r * h : (r + 1) * h, col * w : (col + 1) * w] = frame
    return sheet


def write_outputs(folder: Path, frames: np.ndarray, fps: float) -> None:
    """The three downloadable variants of one video ``[T, H, W, 3]``, each written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / THUMBNAIL_FILE, frames[len(frames) // 2])
    write_image(folder / SPRITESHEET_FILE, spritesheet(frames))
    # the MP4 last: its presence is what a reader of the folder could mistake for "done"
    write_video(folder / VIDEO_FILE, frames, fps=fps)


def run_job(pipe: Any, store: JobStore, job: Job, data_dir: Path, parent_pid: int) -> None:
    """Generate one claimed job and record the outcome (completed, failed, or nothing if it was lost)."""
    assert job.token is not None
    token = job.token
    last = [-1]

    def on_step(done: int, total: int) -> None:
        if os.getppid() != parent_pid:
            raise SystemExit(0)  # the server is gone: its successor re-queues this job
        pct = min(99, done * 100 // total)  # 100 only once the files are written
        if pct != last[0]:
            last[0] = pct
            if not store.set_progress(job.id, token, pct):
                raise JobLost(job.id)

    p = job.params
    folder = job_dir(data_dir, job.id)
    # a reference was written into the job's folder (under a name the server chose) before the job was queued
    reference = {} if "reference" not in p else {
        "reference": str(folder / Path(p["reference"]["file"]).name),  # never a path out of the folder
        "mask_strategy": p["mask_strategy"],
        "condition_frames": p["condition_frames"],
    }  # fmt: skip
    start = time.perf_counter()
    try:
        frames = pipe(
            job.prompt,
            num_frames=p["num_frames"],
            height=p["height"],
            width=p["width"],
            num_inference_steps=p["steps"],
            guidance_scale=p["guidance"],
            sampler=p["sampler"],
            seed=p["seed"],
            progress=False,
            callback=on_step,
            **reference,
        )[0]
        write_outputs(folder, frames, p["fps"])
    except JobLost:
        _drop_files_if_deleted(store, data_dir, job.id)
        return
    except (UserError, ValueError, RuntimeError, OSError) as exc:
        store.fail(
            job.id, token, "generation_failed", str(exc).splitlines()[0][:500] if str(exc) else repr(exc)
        )
        return
    if not store.complete(job.id, token, time.perf_counter() - start):
        _drop_files_if_deleted(store, data_dir, job.id)


def _drop_files_if_deleted(store: JobStore, data_dir: Path, job_id: str) -> None:
    """A job deleted while running may have had its files written after the API removed the folder."""
    if store.get(job_id) is None:
        shutil.rmtree(job_dir(data_dir, job_id), ignore_errors=True)


def worker_main(
    data_dir: str,
    model: str | None,
    device: str,
    threads: int,
    name: str,
    parent_pid: int,
    ready: Any = None,
    nice: int = 0,
) -> None:
    """The body of one worker process: load the model, then claim and run jobs until the server goes.

    ``ready`` (a multiprocessing Event) is set once the model is loaded; ``nice`` then lowers the
    process's CPU priority by that much."""
    # Ctrl-C reaches the whole process group: let the server stop the workers in order instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    if threads > 0:
        torch.set_num_threads(threads)
    pipe = TextToVideoPipeline.from_pretrained(model, device=device)
    store = JobStore(Path(data_dir) / DB_FILE, synchronous="NORMAL")
    if ready is not None:
        ready.set()
    if nice:
        # after loading: below the API's priority, so on busy cores a GET is answered first
        os.nice(nice)
    while os.getppid() == parent_pid:
        job = store.claim(name)
        if job is None:
            time.sleep(IDLE_POLL_S)
            continue
        run_job(pipe, store, job, Path(data_dir), parent_pid)
