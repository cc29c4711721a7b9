"""Data-tool throughput per executor: items per second of `scenes` and `encode` on 1 and 2 workers,
locally (in-process `local:1`, process pool `local:2`) and on a Dask LocalCluster (`dask:local:1/2`).

    python benchmarks/data.py                          # ~3 min on a 2-core CPU
    python benchmarks/data.py --videos 32 --frames 240 --encode-rows 64

Inputs are generated: `--videos` H.264 clips of `--frames` frames (96x128, a cut every 40 frames) for
`scenes`, and a shapes-world CSV (32x32, 8 frames) encoded with the tiny VAE and the packaged MiniLM
text encoder for `encode`. Each executor is started before the clock starts (its start-up time is its
own column). Each command then runs twice on it: `cold` includes what a worker does on its first task
(starting, importing, loading models), `warm` is the same work again on the same workers, the steady
state of a long job. `x` is items/s over the `local:1` items/s of the same column. Every worker, the
in-process one included, runs torch with one thread (OMP_NUM_THREADS=1 unless set), so the columns
compare 1 and 2 workers, not torch's own threading.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from sorakit.tools.executor import open_pool, parse_executor

EXECUTORS = ("local:1", "local:2", "dask:local:1", "dask:local:2")


def make_videos(folder: Path, n: int, frames: int) -> list[Path]:
    """`n` MP4s of 96x128 frames: a moving bar over a colour that changes every 40 frames."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"v{i:03d}.mp4"
        with av.open(str(path), "w") as c:
            s = c.add_stream("libx264", rate=Fraction(24))
            s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
            colours = rng.integers(20, 235, size=(frames // 40 + 1, 3))
            for t in range(frames):
                img = np.empty((96, 128, 3), np.uint8)
                img[:] = colours[t // 40]
                img[:, (3 * t) % 120 : (3 * t) % 120 + 8] = 255 - colours[t // 40]
                for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)
        paths.append(path)
    return paths


def bench_scenes(pool, paths: list[Path], parts: Path) -> float:
    """Seconds for one `scenes` run over `paths` (fresh parts folder: nothing is skipped)."""
    from sorakit.tools.scenes import SceneOptions, run_scenes

    rows = [{"path": str(p)} for p in paths]
    t0 = time.perf_counter()
    res = run_scenes(rows, paths, SceneOptions(), pool=pool, parts_dir=parts, progress=False)
    dt = time.perf_counter() - t0
    assert not res.failures, res.failures[:1]
    return dt


def bench_encode(pool, csv: Path, vae: Path, out: Path, rows: int) -> float:
    """Seconds for one `encode` run of `rows` clips into the new cache folder `out`."""
    import torch

    from sorakit.data.cache import encode_to_cache
    from sorakit.tools.encode import EncodeInputs

    inputs = EncodeInputs(
        "tiny", (f"vae.path={vae}", "data.image_size=[32,32]", "data.num_frames=8"), str(csv), None, 0, "cpu"
    )
    t0 = time.perf_counter()
    dataset, v, text = inputs() if pool.inline else (inputs.dataset(), None, None)
    meta = encode_to_cache(
        dataset, out, v, text, {}, shard_size=max(1, rows // 8), batch_size=4, text_dtype=torch.float16,
        pool=pool, builder=inputs, progress=False,
    )  # fmt: skip
    dt = time.perf_counter() - t0
    assert meta["num_samples"] == rows
    return dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--frames", type=int, default=160)
    p.add_argument("--encode-rows", type=int, default=32)
    p.add_argument("--executors", nargs="+", default=list(EXECUTORS))
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported here or in any worker

    from sorakit.pipelines.tiny import make_tiny_vae
    from sorakit.tools.synth import synthesize

    work = Path(tempfile.mkdtemp(prefix="sorakit-bench-data-"))
    paths = make_videos(work / "videos", args.videos, args.frames)
    csv = synthesize(work / "shapes", args.encode_rows, size=32, frames=8)
    vae = make_tiny_vae(work / "vae")
    table = []
    for name in args.executors:
        t0 = time.perf_counter()
        tag = name.replace(":", "-")
        with open_pool(parse_executor(name)) as pool:
            start = time.perf_counter() - t0
            times = [
                bench_scenes(pool, paths, work / f"parts-{tag}-cold"),
                bench_scenes(pool, paths, work / f"parts-{tag}-warm"),
                bench_encode(pool, csv, vae, work / f"cache-{tag}-cold", args.encode_rows),
                bench_encode(pool, csv, vae, work / f"cache-{tag}-warm", args.encode_rows),
            ]
        rates = [args.videos / t for t in times[:2]] + [args.encode_rows / t for t in times[2:]]
        table.append((name, start, rates))
        print(f"{name}: start {start:.1f} s, scenes cold/warm " + " / ".join(f"{r:.2f}" for r in rates[:2])
              + " videos/s, encode cold/warm " + " / ".join(f"{r:.2f}" for r in rates[2:]) + " clips/s",
              flush=True)  # fmt: skip
    base = {t[0]: t for t in table}.get("local:1", table[0])[2]
    print(f"\nscenes: {args.videos} videos x {args.frames} frames (96x128); encode: {args.encode_rows} clips "
          "(32x32, 8 frames, tiny VAE + MiniLM)\n")  # fmt: skip
    print("| executor | start-up (s) | scenes cold (videos/s) | x | scenes warm | x | encode cold (clips/s) | x "
          "| encode warm | x |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, start, rates in table:
        cells = " | ".join(f"{r:.2f} | {r / b:.2f}x" for r, b in zip(rates, base))
        print(f"| `{name}` | {start:.1f} | {cells} |")


if __name__ == "__main__":
    main()
