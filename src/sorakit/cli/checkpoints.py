"""`sorakit checkpoints RUN_DIR`: a run's checkpoints with step, time, size and whether each verifies."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "checkpoints",
        help="list a training run's checkpoints: step, time, size, verified / damaged (and why)",
        description=(
            "List RUN_DIR/checkpoints/: every checkpoint is checked against its manifest (file sizes and "
            "sha256); damaged ones say which file and why. `sorakit train --resume` continues from the newest "
            "one marked verified (or unverified: written before manifests existed, every file loads)."
        ),
    )
    parser.add_argument("run_dir", help="training run directory (the --output of sorakit train)")
    parser.add_argument(
        "--quick", action="store_true", help="check file sizes only (no sha256: fast on large checkpoints)"
    )
    parser.set_defaults(func=run)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from sorakit.errors import UserError
    from sorakit.training import checkpoint as ckpt

    root = Path(args.run_dir)
    if not root.is_dir():
        raise UserError(f"no such run directory: {args.run_dir}")
    if not (root / ckpt.CHECKPOINTS).is_dir():
        raise UserError(f"{args.run_dir} holds no {ckpt.CHECKPOINTS}/ folder (not a training run directory?)")
    found = ckpt.describe_checkpoints(root, deep=not args.quick)
    print(f"{'step':>8}  {'written (UTC)':19}  {'size':>9}  {'folder':18}  status")
    for c in found:
        step = str(c.step) if c.step is not None else "-"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c.time))
        print(f"{step:>8}  {when:19}  {_size(c.size):>9}  {c.name:18}  {c.verdict}")
    if not found:
        print("(no checkpoints)")
    return 0
