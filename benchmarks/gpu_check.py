"""`make gpu-check`: everything only a CUDA GPU can check, in one command, under 8 minutes, into one file.

    python benchmarks/gpu_check.py                      # on a machine with a CUDA GPU (what `make gpu-check` runs)
    python benchmarks/gpu_check.py --dry-run            # the same stages at tiny sizes on the CPU (CI runs this)

Stages, each a subprocess with its own time limit (so one stuck stage cannot eat the others' time), in order:

1. tests    ``pytest -m cuda tests/cuda``: bf16/fp16 forward vs fp32, SDPA's flash kernel on STDiT-XL/2's
            attention shapes, NCCL DDP / FSDP2 on every GPU vs one process, bf16/fp16 training steps,
            generation on the GPU vs the CPU, inductor-compiled training vs eager.
2. generate ``benchmarks/generate.py``: Open-Sora 1.0's inference setup (STDiT-XL/2, T5-XXL-sized encoder,
            SD-VAE, random weights) at 16x256x256, fp16, batch 2 (its sample config), IDDPM-100 and
            DPM-Solver-20, against the published 5 s / sample and 22 GB (H800).
3. train    ``benchmarks/train.py --only-xl``: STDiT-XL/2 16x256x256 training step (batch 8, bf16, grad
            checkpointing) samples/s and MFU, against the published 7.0 samples/s per H800.
4. compile  ``benchmarks/train.py --compile``: eager vs ``train.compile`` (inductor) for the built-in model.

Budget (H800/H100-class GPU; measured numbers replace these once it has run): tests ~90 s (most of it
torchrun start-ups and the inductor compile of the tiny model), generate ~120 s (building a 4.7B-parameter
T5 and STDiT-XL/2 on the GPU, a 2-step warm-up per sampler, then IDDPM 100 steps ~2 x 5 s and DPM-Solver 20
steps ~2 x 1 s), train ~60 s (building STDiT-XL/2, 1 + 3 warm-up steps and 10 timed steps at ~1.1 s each),
compile ~90 s (inductor compiling the built-in model's forward and backward twice, then 3 x 2 x 10 steps):
~6 minutes. The stage limits (180 + 180 + 120 + 150 s) would allow 10.5 min; a stage
that hits its limit is reported as such, and the run goes on. `--budget-s` caps the sum (default 480).

Writes the markdown report to `--output` (default outputs/gpu-check.md) atomically, and prints it.
Exit status: 0 all stages passed, 1 some stage failed or ran out of time, 2 no CUDA GPU (without --dry-run).
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent


def stages(dry_run: bool) -> list[tuple[str, list[str], int, dict[str, str]]]:
    """(name, argv, time limit s, extra environment) of each stage; `dry_run`: tiny sizes on the CPU."""
    py = sys.executable
    tests = [py, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", str(ROOT / "tests" / "cuda")]
    if dry_run:
        return [
            ("tests", tests, 600, {"SORAKIT_CUDA_TESTS_DEVICE": "cpu"}),
            ("generate", [py, str(BENCH / "generate.py"), "--setups", "tiny", "--samplers", "iddpm", "dpm-solver",
                          "--steps", "2", "--device", "cpu", "--dtype", "fp32", "--batch", "2"], 300, {}),
            ("train", [py, str(BENCH / "train.py"), "--only-xl", "--dry-run", "--steps", "2", "--warmup", "1"], 300, {}),
            ("compile", [py, str(BENCH / "train.py"), "--compile", "--preset", "tiny", "--compile-backend", "aot_eager",
                         "--precisions", "fp32", "--rounds", "2", "--steps", "2", "--batch-size", "2"], 300, {}),
        ]  # fmt: skip
    return [
        ("tests", tests, 180, {}),
        ("generate", [py, str(BENCH / "generate.py"), "--setups", "opensora-16x256x256", "--samplers", "iddpm",
                      "dpm-solver", "--dtype", "fp16", "--batch", "2", "--device", "cuda"], 180, {}),
        ("train", [py, str(BENCH / "train.py"), "--only-xl", "--steps", "10", "--warmup", "3"], 120, {}),
        ("compile", [py, str(BENCH / "train.py"), "--compile", "--device", "cuda", "--preset", "builtin/stdit",
                     "--precisions", "bf16", "--rounds", "3", "--steps", "10", "--batch-size", "8"], 150, {}),
    ]  # fmt: skip


def run_stage(argv: list[str], limit: float, env: dict[str, str]) -> tuple[str, str, float]:
    """Run one stage -> (status: passed / failed (rc N) / timed out, its output, seconds)."""
    start = time.perf_counter()
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
                **env}  # fmt: skip
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return f"timed out after {limit:.0f} s", out, time.perf_counter() - start
    status = "passed" if proc.returncode == 0 else f"failed (rc {proc.returncode})"
    out = proc.stdout if proc.returncode == 0 else proc.stdout + "\n" + proc.stderr[-4000:]
    return status, out, time.perf_counter() - start


def tests_table(junit: Path) -> list[str]:
    """The pytest JUnit XML as a markdown table: test, outcome, seconds, reason."""
    if not junit.is_file():
        return ["(no test report: pytest did not get to write one)"]
    lines = ["| test | outcome | s | note |", "|---|---|---:|---|"]
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, note = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
                note = " ".join((el.get("message") or "").split())[:160].replace("|", "/")
        lines.append(f"| {case.get('name')} | {outcome} | {float(case.get('time', 0)):.1f} | {note} |")
    return lines


def shown(cmd: list[str]) -> str:
    """The command as a reader would type it: `python`, paths relative to the repository."""
    words = ["python" if c == sys.executable else c for c in cmd]
    words = [os.path.relpath(w, ROOT) if w.startswith(str(ROOT)) else w for w in words]
    return " ".join(w for w in words if not w.startswith("--junitxml="))


def machine_line(dry_run: bool) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if torch.cuda.is_available() and not dry_run:
        gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        what = f"{torch.cuda.device_count()} GPU(s): {gpus}, CUDA {torch.version.cuda}"
    else:
        what = f"CPU dry run (--dry-run: tiny sizes), {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    return f"{when}; {what}; torch {torch.__version__}; python {sys.version.split()[0]}"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as fh:
        fh.write(text)
    os.replace(fh.name, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--output", type=Path, default=ROOT / "outputs" / "gpu-check.md", help="the report (markdown)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="every stage at tiny sizes on the CPU (no GPU needed)"
    )
    p.add_argument("--budget-s", type=float, default=None,
                   help="total time for all stages (default 480 s = 8 min; 1800 s with --dry-run on a shared CPU)")  # fmt: skip
    p.add_argument("--stages", nargs="+", choices=["tests", "generate", "train", "compile"], help="a subset")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        build = "" if torch.version.cuda else ", a CPU build: on a GPU machine `make venv TORCH=torch`"
        print(f"gpu-check: no CUDA GPU here (torch {torch.__version__}{build}); it needs one "
              "(`python benchmarks/gpu_check.py --dry-run` runs the same stages on the CPU at tiny sizes)",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.budget_s is None:
        args.budget_s = 1800.0 if args.dry_run else 480.0
    report = ["# sorakit gpu-check", "", machine_line(args.dry_run), ""]
    summary = ["| stage | status | s | limit s |", "|---|---|---:|---:|"]
    failed, start = False, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        for name, cmd, limit, env in stages(args.dry_run):
            if args.stages and name not in args.stages:
                continue
            left = args.budget_s - (time.perf_counter() - start)
            if left < 10:
                summary.append(
                    f"| {name} | not run: the {args.budget_s:.0f} s budget is spent | 0 | {limit} |"
                )
                failed = True
                continue
            if name == "tests":
                cmd = [*cmd, f"--junitxml={junit}", "-rs"]
            print(f"gpu-check: {name} (limit {min(limit, left):.0f} s) ...", file=sys.stderr, flush=True)
            status, out, secs = run_stage(cmd, min(limit, left), env)
            failed |= status != "passed"
            summary.append(f"| {name} | {status} | {secs:.0f} | {min(limit, left):.0f} |")
            report += [
                f"## {name}",
                "",
                f"`{shown(cmd)}`",
                "",
            ]
            if name == "tests":
                report += [*tests_table(junit), "", "```", out.strip()[-3000:], "```", ""]
            else:
                report += [out.strip(), ""]
    total = time.perf_counter() - start
    summary.append(f"| all | {'FAILED' if failed else 'passed'} | {total:.0f} | {args.budget_s:.0f} |")
    report[4:4] = ["## summary", "", *summary, ""]
    text = "\n".join(report) + "\n"
    write_atomic(args.output, text)
    print(text)
    print(
        f"gpu-check: {'FAILED' if failed else 'passed'} in {total:.0f} s; report: {args.output}",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
