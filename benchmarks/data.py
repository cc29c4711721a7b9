"""Data-tool throughput per executor: items per second of `scenes` and `encode` on 1 and 2 workers,
locally (in-process `local:1`, process pool `local:2`) and on a Dask LocalCluster (`dask:local:1/2`).

    python benchmarks/data.py                          # ~3 min on a 2-core CPU
    python benchmarks/data.py --videos 32 --frames 240 --encode-rows 64

Inputs are generated: `--videos` H.264 clips of `--frames` frames (96x128, a cut every 40 frames) for
`scenes`, and a shapes-world CSV (32x32, 8 frames) encoded with the tiny VAE and the packaged MiniLM
text encoder for `encode`. Each executor is started before the clock starts (its start-up time is its
own column); the timed run includes what a worker does on its first task (importing, loading models),
since a real run pays it too. `speed-up` is items/s over the `local:1` items/s of the same command.
"""

from __future__ import annotations

import argparse
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
    from sorakit.tools.scenes import SceneOptions, run_scenes

    rows = [{"path": str(p)} for p in paths]
    t0 = time.perf_counter()
    res = run_scenes(rows, paths, SceneOptions(), pool=pool, parts_dir=parts, progress=False)
    dt = time.perf_counter() - t0
    assert not res.failures, res.failures[:1]
    return dt


def bench_encode(pool, csv: Path, vae: Path, out: Path, rows: int) -> float:
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

    from sorakit.pipelines.tiny import make_tiny_vae
    from sorakit.tools.synth import synthesize

    work = Path(tempfile.mkdtemp(prefix="sorakit-bench-data-"))
    paths = make_videos(work / "videos", args.videos, args.frames)
    csv = synthesize(work / "shapes", args.encode_rows, size=32, frames=8)
    vae = make_tiny_vae(work / "vae")
    table = []
    for name in args.executors:
        t0 = time.perf_counter()
        with open_pool(parse_executor(name)) as pool:
            start = time.perf_counter() - t0
            dt_s = bench_scenes(pool, paths, work / f"parts-{name}")
            dt_e = bench_encode(pool, csv, vae, work / f"cache-{name.replace(':', '-')}", args.encode_rows)
        table.append((name, start, args.videos / dt_s, args.encode_rows / dt_e))
        print(f"{name}: start {start:.1f} s, scenes {args.videos / dt_s:.2f} videos/s, "
              f"encode {args.encode_rows / dt_e:.2f} clips/s", flush=True)  # fmt: skip
    base = {t[0]: t for t in table}.get("local:1", table[0])
    print(f"\nscenes: {args.videos} videos x {args.frames} frames (96x128); encode: {args.encode_rows} clips "
          "(32x32, 8 frames, tiny VAE + MiniLM)\n")  # fmt: skip
    print("| executor | start-up (s) | scenes (videos/s) | speed-up | encode (clips/s) | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, start, s, e in table:
        print(f"| `{name}` | {start:.1f} | {s:.2f} | {s / base[2]:.2f}x | {e:.2f} | {e / base[3]:.2f}x |")


if __name__ == "__main__":
    main()
