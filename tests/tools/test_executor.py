"""The data tools on other executors: every command on a 2-worker Dask cluster writes exactly what an
in-process (`local:1`) run writes; a Dask worker killed mid-job loses and duplicates nothing; an
interrupted run resumes without redoing its finished shards; Ray when it is installed."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sorakit.cli.main import main
from sorakit.errors import UserError
from sorakit.tools.executor import (
    ExecutorSpec,
    InlineExecutor,
    Pool,
    map_items,
    open_pool,
    parse_executor,
    run_items,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from _train_helpers import write_clips  # noqa: E402


@pytest.fixture(scope="module")
def dask_cluster():
    """One LocalCluster for the module: 2 single-threaded worker processes (each under a nanny that
    restarts it when it dies), reached by the CLI through its scheduler address like a real cluster."""
    pytest.importorskip("distributed", reason="distributed is not installed")
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
    ) as cluster:
        yield cluster


def text_of(path: Path, *replace: tuple[Path, Path]) -> str:
    text = path.read_text()
    for a, b in replace:
        text = text.replace(str(a), str(b))
    return text


def same_video(a: Path, b: Path) -> None:
    """The same frames went into both files. Not the same bytes: libx264 through PyAV is not
    bit-reproducible even in one process (the same frames, encoded 15 times, gave 2 byte streams), so
    the decoded frames are compared, with the tolerance of such a re-encode."""
    import numpy as np

    from sorakit.data.video import read_video

    fa, fb = read_video(a), read_video(b)
    assert fa.shape == fb.shape
    assert np.abs(fa.astype(np.int16) - fb).mean() < 1.0, (a, b)


def both(tmp_path: Path, cluster, make_args) -> tuple[Path, Path]:
    """Run `sorakit` with make_args(folder) under local:1 and on the cluster; returns both folders."""
    ref, dist = tmp_path / "ref", tmp_path / "dask"
    for folder, executor in ((ref, "local:1"), (dist, f"dask:{cluster.scheduler_address}")):
        folder.mkdir(parents=True)
        assert main([*make_args(folder), "--executor", executor]) == 0
    return ref, dist


def test_parse_executor():
    assert parse_executor("local") == ExecutorSpec("local")
    assert parse_executor("local:3") == ExecutorSpec("local", 3)
    assert parse_executor("dask:local:2") == ExecutorSpec("dask", 2)
    assert parse_executor("dask:10.0.0.5:8786").address == "tcp://10.0.0.5:8786"
    assert str(parse_executor("dask:tcp://h:1")) == "dask:tcp://h:1"
    for bad in ("local:0", "local:x", "dask", "spark:h", "dask:local:-1"):
        with pytest.raises(UserError):
            parse_executor(bad)
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match=r"sorakit\[ray\]"):
            parse_executor("ray")


def test_cli_errors_before_work(tmp_path, capsys):
    video = write_clips(tmp_path, 1, frames=4, size=16)[0]
    assert main(["data", "info", str(video), "-o", str(tmp_path / "o.csv"), "--executor", "nope"]) == 2
    assert "unknown --executor" in capsys.readouterr().err
    assert main(["data", "info", str(video), "-o", str(tmp_path / "o.csv"), "--retries", "-1"]) == 2
    assert not (tmp_path / "o.csv").exists()


def test_retries_then_reason():
    calls: dict[int, int] = {}

    def flaky(x: int) -> int:
        calls[x] = calls.get(x, 0) + 1
        if x == 1 and calls[x] < 3:  # fails twice, then works
            raise OSError("network file system hiccup")
        if x == 2:
            raise ValueError(f"broken item {x}")
        return x * 10

    assert run_items(flaky, [0, 1, 2], retries=2) == [
        (True, 0),
        (True, 10),
        (False, "ValueError: broken item 2"),
    ]
    assert calls == {0: 1, 1: 3, 2: 3}
    calls.clear()
    assert run_items(flaky, [1], retries=1) == [(False, "OSError: network file system hiccup")]


def test_scenes_cut_info_caption_on_dask_match_local(media, tmp_path, dask_cluster):
    d = media["dir"]
    ref, dist = both(tmp_path, dask_cluster, lambda f: ["data", "scenes", str(d), "-o", str(f / "clips.csv"),
                                                         "--shard-items", "2"])  # fmt: skip
    assert text_of(dist / "clips.csv") == text_of(ref / "clips.csv")
    assert text_of(dist / "clips.failures.csv") == text_of(ref / "clips.failures.csv")
    assert len(list(csv.DictReader(open(ref / "clips.failures.csv")))) == 3  # the three broken files
    assert not (dist / "clips.parts").exists()  # finished: the parts are gone

    clips = ref / "clips.csv"
    ref, dist = both(tmp_path / "cut", dask_cluster,
                     lambda f: ["data", "cut", str(clips), "--output-dir", str(f / "out"), "--short-side", "32"])  # fmt: skip
    assert text_of(dist / "out" / "clips.csv", (dist, ref)) == text_of(ref / "out" / "clips.csv")
    names = sorted(p.name for p in (ref / "out").glob("*.mp4"))
    assert len(names) == 6 and names == sorted(p.name for p in (dist / "out").glob("*.mp4"))
    for n in names:
        same_video(dist / "out" / n, ref / "out" / n)

    ref, dist = both(
        tmp_path / "info", dask_cluster, lambda f: ["data", "info", str(d), "-o", str(f / "i.csv")]
    )
    assert text_of(dist / "i.csv") == text_of(ref / "i.csv")
    assert text_of(dist / "i.failures.csv") == text_of(ref / "i.failures.csv")

    with CaptionServer() as server:  # captions depend only on the frames, as a real model's do
        ref, dist = both(tmp_path / "cap", dask_cluster, lambda f: [
            "data", "caption", str(d), "-o", str(f / "c.csv"), "--base-url", server.url, "--api-key", "k",
            "--batch-size", "2", "--max-retries", "0"])  # fmt: skip
    assert text_of(dist / "c.csv") == text_of(ref / "c.csv")
    assert text_of(dist / "c.failures.csv") == text_of(ref / "c.failures.csv")
    assert len(list(csv.DictReader(open(ref / "c.csv")))) >= 2  # a.mp4, b.mp4 (and what opens of the rest)


def test_synth_and_encode_on_dask_match_local(tmp_path, dask_cluster):
    from sorakit.pipelines.tiny import make_tiny_vae

    ref, dist = both(tmp_path / "synth", dask_cluster,
                     lambda f: ["data", "synth", "-o", str(f), "-n", "7", "--size", "32", "--frames", "4",
                                "--shard-items", "2"])  # fmt: skip
    assert text_of(dist / "train.csv", (dist, ref)) == text_of(ref / "train.csv")
    for p in (ref / "videos").iterdir():
        same_video(dist / "videos" / p.name, p)

    vae_dir = make_tiny_vae(tmp_path / "vae")
    data = ref / "train.csv"
    with open(data, "a") as f:
        f.write(f"{ref / 'videos' / 'missing.mp4'},gone,4,8,32,32,red,circle,up\n")
    common = [f"vae.path={vae_dir}", "data.image_size=[16,16]", "data.num_frames=4"]
    ref, dist = both(tmp_path / "enc", dask_cluster,
                     lambda f: ["data", "encode", str(data), *common, "-o", str(f / "cache"), "--shard-size", "3",
                                "--batch-size", "2"])  # fmt: skip
    shards = sorted(p.name for p in (ref / "cache").glob("shard-*"))
    assert shards == ["shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    for name in [*shards, "meta.json", "failures.json"]:
        assert (dist / "cache" / name).read_bytes() == (ref / "cache" / name).read_bytes(), name
    assert json.loads((ref / "cache" / "meta.json").read_text())["num_samples"] == 7


def test_dask_local_cluster_from_the_cli(tmp_path, capsys):
    pytest.importorskip("distributed", reason="distributed is not installed")
    args = ["data", "synth", "-n", "3", "--size", "16", "--frames", "2"]
    assert main([*args, "-o", str(tmp_path / "a"), "--executor", "local:1"]) == 0
    assert main([*args, "-o", str(tmp_path / "b"), "--executor", "dask:local:2"]) == 0
    assert text_of(tmp_path / "b" / "train.csv", (tmp_path / "b", tmp_path / "a")) == text_of(
        tmp_path / "a" / "train.csv"
    )


def test_interrupted_run_resumes_without_redoing_finished_shards(media, tmp_path, monkeypatch):
    import sorakit.tools.scenes as scenes

    videos = [media["a"][0], media["b"][0], *media["bad"]]
    rows = [{"path": str(p)} for p in videos]
    opts = scenes.SceneOptions()
    reference = scenes.run_scenes(rows, videos, opts, progress=False)
    real, seen = scenes.detect_scenes, []

    def counting(path, o=None, stop_at=None):
        if len(seen) == stop_at:
            raise KeyboardInterrupt
        seen.append(Path(path).name)
        return real(path, o)

    parts = tmp_path / "parts"
    monkeypatch.setattr(scenes, "detect_scenes", lambda p, o: counting(p, o, stop_at=3))
    with pytest.raises(KeyboardInterrupt):  # stopped in the middle of the second shard
        scenes.run_scenes(rows, videos, opts, progress=False, parts_dir=parts, shard_items=2)
    assert seen == ["a.mp4", "b.mp4", "trunc.mp4"] and [p.name for p in parts.iterdir()] == [
        "part-00000.json"
    ]
    before = (parts / "part-00000.json").stat().st_mtime_ns
    seen.clear()
    monkeypatch.setattr(scenes, "detect_scenes", lambda p, o: counting(p, o))
    again = scenes.run_scenes(rows, videos, opts, progress=False, parts_dir=parts, shard_items=2)
    assert seen == ["trunc.mp4", "notes.mp4", "cutoff.mkv"]  # only the unfinished shards ran
    assert (parts / "part-00000.json").stat().st_mtime_ns == before
    assert again == reference
    # other options are other work: the parts are not reused
    seen.clear()
    scenes.run_scenes(rows, videos, scenes.SceneOptions(threshold=5.0), progress=False, parts_dir=parts,
                      shard_items=2)  # fmt: skip
    assert len(seen) == 5


def test_killed_dask_worker_loses_nothing(tmp_path, dask_cluster):
    """A worker process is killed while the job runs: its shards run again on the other worker (and on
    the worker its nanny restarts); the CSV and the videos are the same as an in-process run's."""
    from distributed import Client

    from sorakit.tools.synth import synthesize

    n, kw = 24, dict(size=128, frames=24, shard_items=1)
    ref = synthesize(tmp_path / "ref", n, **kw)
    out = tmp_path / "dask"
    result: dict = {}

    def job() -> None:
        try:
            with open_pool(ExecutorSpec("dask", None, dask_cluster.scheduler_address)) as pool:
                result["csv"] = synthesize(out, n, pool=pool, **kw)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    with Client(dask_cluster.scheduler_address) as client:
        pids = client.run(os.getpid)
        thread = threading.Thread(target=job)
        thread.start()
        victim, deadline = None, time.monotonic() + 120
        while victim is None and time.monotonic() < deadline:  # the first shard done, others running
            busy = [w for w, tasks in client.processing().items() if tasks]
            if len(list((out / "train.parts").glob("part-*.json"))) >= 1 and busy:
                victim = busy[0]
            time.sleep(0.02)
        assert victim is not None
        os.kill(pids[victim], signal.SIGKILL)
        killed_at = len(list((out / "train.parts").glob("part-*.json")))
        thread.join(300)
    assert "error" not in result, result.get("error")
    assert killed_at < n  # the kill happened in the middle of the job
    assert text_of(result["csv"], (out, tmp_path / "ref")) == text_of(ref)
    assert sorted(p.name for p in (out / "videos").iterdir()) == [f"{i:06d}.mp4" for i in range(n)]


def test_ray_matches_local(media, tmp_path):
    pytest.importorskip(
        "ray", reason="ray is not installed (pip install 'sorakit[ray]' to run the Ray tests)"
    )
    d = media["dir"]
    for folder, executor in (("ref", "local:1"), ("ray", "ray")):
        assert (
            main(["data", "scenes", str(d), "-o", str(tmp_path / folder / "c.csv"), "--executor", executor])
            == 0
        )
    assert text_of(tmp_path / "ray" / "c.csv") == text_of(tmp_path / "ref" / "c.csv")


def test_inline_pool_runs_in_order():
    pool = Pool(InlineExecutor(), 1, ExecutorSpec("local", 1))
    assert map_items(str, [3, 1, 2], pool, shard_items=2) == [(True, "3"), (True, "1"), (True, "2")]


class CaptionServer:
    """A chat-completions server whose caption is a hash of the images it is sent."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                images = [c["image_url"]["url"] for c in body["messages"][0]["content"] if "image_url" in c]
                text = "clip " + hashlib.sha1("".join(images).encode()).hexdigest()[:12]
                payload = json.dumps({"choices": [{"message": {"content": text}, "finish_reason": "stop"}]})
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> CaptionServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_killed_writers_temporary_is_removed_when_the_file_is_written_again(tmp_path: Path) -> None:
    """A SIGKILLed worker leaves its hidden `.NAME.XXXXXXXX.mp4`; the re-run of that item removes it."""
    import numpy as np

    from sorakit.data.video import write_video

    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    stale = tmp_path / ".000003.k1ll3d_x.mp4"
    stale.write_bytes(b"half a video")
    other = tmp_path / ".000003.extra.k1ll3d_x.mp4"  # another file's temporary: kept
    other.write_bytes(b"x")
    write_video(tmp_path / "000003.mp4", frames, fps=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "000003.mp4"]
