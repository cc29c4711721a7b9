"""The README's commands, run the way a new user runs them (issue #14).

Every `sorakit ...` and `torchrun ... sorakit.cli.main ...` line of the README's code blocks is a key of
COVERAGE, which says how it is exercised:

- ``Run``: the command as written, in a scratch folder holding small generated inputs, with extra flags
  appended to shrink it (``--max-steps 2``, ``--num-videos 4``, ...) and placeholders such as ``HOST``
  replaced; it must exit 0, and ``check`` looks at what it wrote.
- ``Fetch``: a command that names external weights (T5-XXL, SD-VAE, Open-Sora / PixArt / DiT checkpoints).
  With the hub unreachable it must exit 2 with one line ``sorakit: error: ...`` saying what to download,
  spending under 5 s of CPU (a command that retried or started loading would not: wall time is not
  measured, the machine may be shared). Under torchrun such a line is checked in one process.

A README example missing from COVERAGE fails `test_every_readme_command_is_covered`, which prints the
entry to add. Commands of one group share a folder and run in the table's order (the replay needs the
prompt file's sidecar, `data cut` needs `data scenes`' CSV, ...); the groups run in parallel under xdist.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


@dataclass
class Run:
    group: str
    extra: tuple[str, ...] = ()  # appended to the command (later flags override earlier ones)
    check: Callable[[Path], None] | None = None  # called with the folder the command ran in


@dataclass
class Fetch:
    group: str
    extra: tuple[str, ...] = field(default=())


@dataclass
class Serve:
    """A server: started (its --port replaced by a free one), its /health must answer, then Ctrl-C ends it."""

    group: str
    extra: tuple[str, ...] = ()


# -- checks of what the runnable commands wrote --------------------------------------------------------


def _is_video(path: str, frames: int | None = None) -> Callable[[Path], None]:
    def check(work: Path) -> None:
        from sorakit.data.video import probe_video

        info = probe_video(work / path)
        assert frames is None or info["num_frames"] == frames, info

    return check


def _video_shape(path: str, frames: int, height: int, width: int) -> Callable[[Path], None]:
    def check(work: Path) -> None:
        from sorakit.data.video import probe_video

        info = probe_video(work / path)
        assert (info["num_frames"], info["height"], info["width"]) == (frames, height, width), info

    return check


def _bucket_shapes(work: Path) -> None:
    """The tiny-buckets run trained on several shapes, each step's logged as batch_shape."""
    rows = [json.loads(line) for line in (work / "runs" / "tb" / "metrics.jsonl").read_text().splitlines()]
    shapes = {tuple(r["batch_shape"]) for r in rows}
    assert len(shapes) >= 3 and {s[3:] for s in shapes} == {(64, 64), (64, 96), (96, 64)}, shapes


def _replay_is_byte_identical(work: Path) -> None:
    # "regenerate exactly": the replayed MP4 is the same file, byte for byte (issue #14 item 6)
    assert (work / "again.mp4").read_bytes() == (work / "out" / "0000-a-red-circle.mp4").read_bytes()


def _prompt_file_outputs(work: Path) -> None:
    names = sorted(p.name for p in (work / "out").iterdir())
    assert names == ["0000-a-red-circle.json", "0000-a-red-circle.mp4", "0001-a-blue-square.json",
                     "0001-a-blue-square.mp4"], names  # fmt: skip


def _four_videos(work: Path) -> None:
    assert len(list((work / "out").glob("000[0-3]-*.mp4"))) == 4, sorted(
        p.name for p in (work / "out").iterdir()
    )


def _csv_rows(path: str, at_least: int = 1) -> Callable[[Path], None]:
    def check(work: Path) -> None:
        import csv

        with open(work / path, newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) >= at_least, (path, rows)

    return check


def _checkpoint(run: str) -> Callable[[Path], None]:
    return lambda work: None if any((work / run / "checkpoints").glob("step-*")) else pytest.fail(f"no {run}")


def _adapter(path: str) -> Callable[[Path], None]:
    def check(work: Path) -> None:
        names = {p.name for p in (work / path).iterdir()} - {"vae"}  # a VAE decoder adapter may sit beside
        assert names == {"adapter_config.json", "adapter_model.safetensors"}, names

    return check


def _is_model(path: str, *files: str) -> Callable[[Path], None]:
    """A model directory at `path`, holding `files` too."""

    def check(work: Path) -> None:
        for name in ("sorakit_pipeline.json", *files):
            assert (work / path / name).is_file(), f"no {path}/{name}"

    return check


# -- the table -------------------------------------------------------------------------------------------

GEN = ("--steps", "3", "--no-progress")
EVAL = ("-n", "1", "--sets", "train", "--steps", "2", "--no-progress", "--threads", "1")
COVERAGE: dict[str, Run | Fetch | Serve] = {
    # generating
    'sorakit generate "a red circle moving to the right" --output red.mp4': Run("generate", GEN, _is_video("red.mp4", 16)),
    "sorakit generate --prompt-file prompts.txt --output-dir out --seed 1 --steps 30 --sampler dpm-solver":
        Run("generate", GEN, _prompt_file_outputs),
    "sorakit generate --replay out/0000-a-red-circle.json --output again.mp4":
        Run("generate", ("--no-progress",), _replay_is_byte_identical),
    # any shape: the built-in model (64x64, 16 frames) at another size and length; 9:16 at 64x64's pixel count,
    # 2 s at its 8 fps
    'sorakit generate "a red circle moving to the right" --resolution 64x96 --num-frames 32 --output wide.mp4':
        Run("shapes", GEN, _video_shape("wide.mp4", 32, 64, 96)),
    'sorakit generate "a blue square moving up" --aspect-ratio 9:16 --resolution-name 4096 --seconds 2 '
    "--output tall.mp4": Run("shapes", GEN, _video_shape("tall.mp4", 16, 88, 48)),
    "sorakit generate --preset opensora/16x256x256 --ckpt OpenSora-v1-HQ-16x256x256.pth --text-encoder "
    "./t5-v1_1-xxl --vae ./sd-vae-ft-ema --prompt-file prompts.txt --output-dir out": Fetch("generate"),
    "sorakit generate --preset opensora/16x256x256 --ckpt OpenSora-v1-HQ-16x256x256.pth --text-encoder "
    "./t5-v1_1-xxl --vae ./sd-vae-ft-ema --prompt-file prompts.txt --output-dir out --parity opensora-1.0":
        Fetch("generate"),
    # reference frames (docs/masks.md): the built-in model, small generated references
    'sorakit generate "a red circle moving to the right" --reference first.png --output i2v.mp4':
        Run("references", GEN, _is_video("i2v.mp4", 16)),
    'sorakit generate "a red circle moving to the right" --reference clip.mp4 --output more.mp4':
        Run("references", GEN, _is_video("more.mp4", 16)),
    'sorakit generate "a red circle moving to the right" --loop 3 --output long.mp4':
        Run("references", GEN, _is_video("long.mp4", 40)),
    'sorakit generate "a red circle moving to the right" --reference a.png --reference b.png --mask-strategy '
    '"0;0,1,0,-1,1" --output ab.mp4': Run("references", GEN, _is_video("ab.mp4", 16)),
    'sorakit generate "a blue circle moving to the right" --reference clip.mp4 --mask-strategy "0,0,0,0,16,0.5" '
    "--output edit.mp4": Run("references", GEN, _is_video("edit.mp4", 16)),
    'sorakit generate "a red circle moving to the right" --guidance-interval 0,700 --output interval.mp4':
        Run("generate", GEN, _is_video("interval.mp4", 16)),
    'sorakit generate "a red circle moving to the right" --cache teacache --output cached.mp4':
        Run("generate", GEN, _is_video("cached.mp4", 16)),
    'sorakit generate "a red circle moving to the right" --vae-batch 1 --offload --output light.mp4':
        Run("generate", GEN, _is_video("light.mp4", 16)),
    "sorakit serve --port 8000 --workers 1 --data-dir serve-data": Serve("serve"),
    "sorakit generate --preset dit/1x256x256-class --ckpt DiT-XL-2-256x256.pt --class-label 207 --output dog.png":
        Fetch("generate"),
    "torchrun --nproc_per_node 4 -m sorakit.cli.main generate --prompt-file p.txt --output-dir out":
        Run("torchrun-generate", GEN, _four_videos),
    'torchrun --nproc_per_node 2 -m sorakit.cli.main generate "..." --output long.mp4 --num-frames 64 '
    "--sequence-parallel": Run("torchrun-sp", ("--steps", "2", "--no-progress"), _is_video("long.mp4", 64)),
    # scoring the built-in model's tasks (docs/benchmarks.md)
    "sorakit eval shapes -n 24 --task i2v": Run("eval", EVAL),
    "sorakit eval shapes -n 24 --task extend": Run("eval", EVAL),
    "sorakit eval shapes -n 24 --sizes 64x96,96x64 --frames 16,32": Run("eval", EVAL),
    "sorakit eval shapes -n 24 --loop 3": Run("eval", EVAL),
    # training
    "sorakit data encode train.csv --output cache --config opensora/train/16x256x256": Fetch("train"),
    "sorakit train opensora/train/16x256x256 --data train.csv --output runs/s1 --init PixArt-XL-2-512x512.pth":
        Fetch("train"),
    "sorakit train opensora/train/16x512x512 --data hq.csv --output runs/s3 --init runs/s2-export": Fetch("train"),
    "sorakit train tiny --data train.csv --output runs/tiny --max-steps 50":
        Run("train", ("--max-steps", "2", "--batch-size", "2", "train.tensorboard=false"), _checkpoint("runs/tiny")),
    "sorakit checkpoints runs/tiny": Run("train", (), _checkpoint("runs/tiny")),
    "sorakit train tiny-buckets --data mixed.csv --output runs/tb --max-steps 20":
        Run("buckets", ("--max-steps", "6"), _bucket_shapes),
    "torchrun --nproc_per_node 8 -m sorakit.cli.main train opensora/train/64x512x512-sp --data d.csv --output runs/sp":
        Fetch("train"),
    # data tools, in the order a dataset is made
    "sorakit data synth --output shapes --num-videos 1000 --seed 0":
        Run("data", ("--num-videos", "4", "--frames", "16"), _csv_rows("shapes/train.csv", 4)),
    "sorakit data synth --output multi --num-videos 1000 --size 64x64,64x96,96x64 --frames 8,16,32":
        Run("data", ("--num-videos", "3", "--executor", "local:1"), _csv_rows("multi/train.csv", 3)),
    "sorakit data scenes raw_videos/ --output clips.csv --min-seconds 1 --max-seconds 5":
        Run("data", (), _csv_rows("clips.csv", 2)),
    "sorakit data cut clips.csv --output-dir clips/ --short-side 512": Run("data", (), _csv_rows("clips/clips.csv", 2)),
    "sorakit data info clips/ --output info.csv": Run("data", (), _csv_rows("info.csv", 2)),
    "sorakit data caption clips/clips.csv --output captioned.csv --base-url http://HOST/v1":
        Run("data", ("--max-retries", "0"), _csv_rows("captioned.csv", 2)),
    "sorakit data csv filter captioned.csv -o train.csv --drop-empty-caption --min-frames 16":
        Run("data", (), _csv_rows("train.csv", 2)),
    "sorakit data csv split train.csv -o train_split.csv --val-output val.csv --val-fraction 0.05":
        Run("data", (), _csv_rows("train_split.csv", 1)),
    "sorakit data csv buckets info.csv --config tiny-buckets": Run("data"),
    "sorakit data convert ucf101 UCF-101/ --output ucf101.csv": Run("data", (), _csv_rows("ucf101.csv", 2)),
    # data tools on an executor (several processes; a local Dask cluster)
    "sorakit data synth --output shapes --num-videos 40 --size 32 --frames 4 --executor local:2":
        Run("executor", ("--num-videos", "4"), _csv_rows("shapes/train.csv", 4)),
    "sorakit data info shapes/videos --output shapes_info.csv --executor dask:local:2 --retries 1":
        Run("executor", (), _csv_rows("shapes_info.csv", 4)),
    # LoRA on the built-in model (the shapes world's new concepts)
    "sorakit data synth --output new --num-videos 800 --concepts extended --new-fraction 0.5":
        Run("lora", ("--num-videos", "4", "--executor", "local:1"), _csv_rows("new/train.csv", 4)),
    "sorakit train builtin/stdit lora.rank=8 --init builtin --vae builtin:vae --data new/train.csv --output runs/lora":
        Run("lora", ("--max-steps", "2", "--batch-size", "2", "train.tensorboard=false"), _checkpoint("runs/lora")),
    "sorakit export runs/lora adapter --dtype fp16": Run("lora", (), _adapter("adapter")),
    "sorakit train-vae --csv new/train.csv -o adapter/vae --decoder-lora builtin":
        Run("lora", ("--steps", "2", "--batch-size", "2", "--threads", "1"), _adapter("adapter/vae")),
    'sorakit generate "an orange diamond moving to the left" --lora adapter --guidance 7 --guidance-interval 500,1000 --output orange.mp4':
        Run("lora", GEN, _is_video("orange.mp4", 16)),
    "sorakit export runs/lora merged --merge-lora --vae-lora adapter":
        Run("lora", (), _is_model("merged", "vae/config.json")),
    # configuration
    "sorakit config": Run("config"),
    "sorakit config opensora/inference/64x512x512 sampler.num_sampling_steps=50": Run("config"),
    "sorakit config path/to/opensora_config.py --format json": Run("config"),
}  # fmt: skip


def readme_commands(text: str) -> list[str]:
    """The command lines of the README's code blocks that start with `sorakit` or `torchrun`: continuation
    lines joined, a trailing `# comment` dropped, runs of spaces collapsed."""
    commands, in_block, pending = [], False, ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1].strip() + " "
            continue
        pending = ""
        line = re.sub(r"\s+#\s.*$", "", line)
        line = re.sub(r"\s+", " ", line).strip()
        if line.startswith(("sorakit ", "torchrun ")) or line == "sorakit":
            commands.append(line)
    return commands


def test_every_readme_command_is_covered() -> None:
    found = readme_commands(README.read_text())
    table = set(COVERAGE)
    missing = [c for c in found if c not in table]
    stale = sorted(table - set(found))
    hint = "\n".join(f"    {c!r}: Run(GROUP, EXTRA_FLAGS, CHECK) or Fetch(GROUP)," for c in missing)
    assert not missing, (
        f"README commands with no test: add each to COVERAGE in {Path(__file__).name} "
        f"(Run if it works offline on small inputs, Fetch if it needs downloaded weights):\n{hint}"
    )
    assert not stale, f"COVERAGE lists commands no longer in the README; remove them: {stale}"
    assert len(found) == len(set(found)), "a README command appears twice"


# -- running -----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Captioner(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that captions every clip the same way."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        body = {"choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "A red circle moves to the right."}}]}  # fmt: skip
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """The hub unreachable (a closed local port) with an empty cache; one torch thread per process."""
    hf = tmp_path_factory.mktemp("hf-home")
    out = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy")}
    out.update(HF_ENDPOINT=f"http://127.0.0.1:{_free_port()}", HF_HOME=str(hf), OMP_NUM_THREADS="1",
               OPENAI_API_KEY="sk-test")  # fmt: skip
    return out


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """Eight small videos of the shapes world (16 frames, 64x64) with their train.csv."""
    from sorakit.tools.synth import synthesize

    root = tmp_path_factory.mktemp("shapes")
    synthesize(root, 8, seed=3, frames=16)
    return root


def _prepare(group: str, work: Path, shapes: Path) -> dict[str, str]:
    """The small inputs a group's commands read; returns placeholder substitutions."""
    import shutil

    lines = "a red circle\n\na blue square\n"
    (work / "prompts.txt").write_text(lines)
    (work / "p.txt").write_text(
        "a red circle moving up\na green triangle moving left\na blue square\na circle\n"
    )
    subs: dict[str, str] = {}
    if group == "train":
        shutil.copytree(shapes / "videos", work / "videos")
        for name in ("train.csv", "hq.csv", "d.csv"):
            shutil.copy(shapes / "train.csv", work / name)
    if group == "data":
        (work / "raw_videos").mkdir()
        (work / "UCF-101" / "ApplyEyeMakeup").mkdir(parents=True)
        (work / "UCF-101" / "Archery").mkdir(parents=True)
        for i, cls in enumerate(("ApplyEyeMakeup", "Archery")):
            shutil.copy(shapes / "videos" / f"{i:06d}.mp4", work / "raw_videos" / f"{i:06d}.mp4")
            shutil.copy(shapes / "videos" / f"{i:06d}.mp4", work / "UCF-101" / cls / f"v_{cls}_g01_c01.avi")
    if group == "references":  # images of the shapes world's size, and one of its 16-frame clips
        from sorakit.data.video import read_video, write_image

        clip = shapes / "videos" / "000000.mp4"
        shutil.copy(clip, work / "clip.mp4")
        frames = read_video(clip)
        for name, k in (("first.png", 0), ("a.png", 0), ("b.png", -1)):
            write_image(work / name, frames[k])
    if group == "buckets":  # clips of three sizes and two lengths, with the size columns `data info` writes
        _write_mixed_clips(work)
    if group == "config":
        (work / "path" / "to").mkdir(parents=True)
        (work / "path" / "to" / "opensora_config.py").write_text(
            'num_frames = 16\nfps = 24 // 3\nimage_size = (256, 256)\n\nmodel = dict(\n    type="STDiT-XL/2",\n'
            '    space_scale=0.5,\n    time_scale=1.0,\n)\nvae = dict(type="VideoAutoencoderKL", '
            'from_pretrained="stabilityai/sd-vae-ft-ema")\ntext_encoder = dict(type="t5", '
            'from_pretrained="DeepFloyd/t5-v1_1-xxl", model_max_length=120)\nscheduler = dict(type="iddpm", '
            'num_sampling_steps=100, cfg_scale=7.0)\ndtype = "fp16"\nbatch_size = 1\nseed = 42\n'
        )
    return subs


def _write_mixed_clips(work: Path) -> None:
    """work/mixed.csv: six small MP4s, 64x64, 64x96 and 96x64 (H x W) at 5 and 9 frames (a moving square)."""
    import csv

    import numpy as np

    from sorakit.data.video import write_video

    (work / "mixed").mkdir()
    with open(work / "mixed.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["path", "text", "num_frames", "height", "width"])
        for i, (t, h, w) in enumerate(
            [(9, 64, 64), (5, 64, 64), (9, 64, 96), (5, 64, 96), (9, 96, 64), (5, 96, 64)]
        ):
            video = np.zeros((t, h, w, 3), np.uint8)
            for k in range(t):
                video[k, 20:36, 4 + 4 * k : 20 + 4 * k, i % 3] = 220
            write_video(work / "mixed" / f"{i}.mp4", video, fps=8)
            out.writerow([f"mixed/{i}.mp4", f"a square moving right, clip {i}", t, h, w])


def _argv(command: str, extra: tuple[str, ...], subs: dict[str, str], in_one_process: bool) -> list[str]:
    tokens = [subs.get(t, t) for t in shlex.split(command, comments=True)]
    tokens = [re.sub(r"http://HOST/", f"http://{subs.get('HOST', 'HOST')}/", t) for t in tokens]
    if tokens[0] == "torchrun":
        i = tokens.index("-m")
        if in_one_process:  # the same command in one process: what each of torchrun's would do first
            return [sys.executable, *tokens[i:], *extra]
        port = ["--master-port", str(_free_port())]  # not torchrun's default 29500, which tests share
        return [sys.executable, "-m", "torch.distributed.run", *port, *tokens[1:], *extra]
    return [sys.executable, "-m", "sorakit.cli.main", *tokens[1:], *extra]


def _run(argv: list[str], work: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, cpu


def _serve(argv: list[str], work: Path, env: dict[str, str]) -> None:
    import signal
    import time
    import urllib.request

    port = _free_port()
    argv[argv.index("--port") + 1] = str(port)
    proc = subprocess.Popen(
        argv, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline, status = time.monotonic() + 600, None
        while status != 200 and proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    status = r.status
            except OSError:
                time.sleep(0.5)
        assert status == 200, f"`{' '.join(argv)}` did not answer /health (exit {proc.poll()})"
    finally:
        proc.send_signal(signal.SIGINT)  # what the README says ends it
        try:
            out = proc.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
    assert proc.returncode in (0, 130), out[-3000:]
    assert "Traceback" not in out, out[-3000:]


GROUPS = list(dict.fromkeys(case.group for case in COVERAGE.values()))


@pytest.mark.parametrize("group", GROUPS)
def test_readme_commands(group: str, tmp_path: Path, env: dict[str, str], shapes: Path) -> None:
    subs = _prepare(group, tmp_path, shapes)
    server = None
    if group == "data":
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Captioner)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        subs["HOST"] = f"127.0.0.1:{server.server_address[1]}"
    try:
        for command, case in COVERAGE.items():
            if case.group != group:
                continue
            argv = _argv(command, case.extra, subs, in_one_process=isinstance(case, Fetch))
            if isinstance(case, Serve):
                _serve(argv, tmp_path, env)
                continue
            proc, cpu = _run(argv, tmp_path, env)
            said = f"`{command}` ->\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
            if isinstance(case, Fetch):
                lines = proc.stderr.strip().splitlines()
                assert proc.returncode == 2, said
                assert len(lines) == 1 and lines[0].startswith("sorakit: error:"), said
                assert "download" in lines[0], said
                # imports alone (torch, transformers, diffusers) take 3-5.3 s of CPU on a busy 2-core machine;
                # building the model or decoding a checkpoint before failing would take far more
                assert cpu < 10.0, f"{said}\n{cpu:.1f} s of CPU: it did work or retried before failing"
            else:
                assert proc.returncode == 0, said
                if case.check is not None:
                    case.check(tmp_path)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
