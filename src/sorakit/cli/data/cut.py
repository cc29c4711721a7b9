"""`sorakit data cut CLIPS.csv --output-dir DIR`: write each clip row as its own H.264 file."""

from __future__ import annotations

import argparse

from sorakit.tools._io import add_data_root_arg
from sorakit.tools.executor import add_executor_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cut",
        help="write each clip (path,start_frame,end_frame rows) as its own H.264 MP4",
        description="Cut the clips of CLIPS.csv (rows path, start_frame, end_frame exclusive; e.g. from "
        "`sorakit data scenes`) into H.264 MP4 files in DIR, optionally resizing the shorter side and changing "
        "the frame rate, and write a CSV pointing at them (with source_path, source_start_frame, "
        "source_end_frame). Existing clip files are kept, so an interrupted run resumes. Training can also use "
        "the clip rows directly without re-encoding.",
    )
    p.add_argument("input", help="clips CSV (path, start_frame, end_frame)")
    p.add_argument("--output-dir", required=True, help="folder for the clip files")
    p.add_argument("-o", "--output", default=None, help="output CSV (default: OUTPUT_DIR/clips.csv)")
    p.add_argument("--failures", default=None, help="failures CSV (default: OUTPUT stem + .failures.csv)")
    p.add_argument(
        "--short-side", type=int, default=None, help="resize so the shorter side is this many pixels"
    )
    p.add_argument("--upscale", action="store_true",
                   help="also enlarge sources whose shorter side is below --short-side (default: keep their size)")  # fmt: skip
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default: the source's)")
    p.add_argument("--crf", type=int, default=18, help="H.264 quality, 0-51, lower is better (default: 18)")
    p.add_argument("--overwrite", action="store_true", help="re-encode clips whose file already exists")
    p.add_argument("--workers", type=int, default=None, help="same as --executor local:N")
    add_executor_args(p)
    add_data_root_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sorakit.errors import UserError
    from sorakit.tools._io import check_outputs, collect_inputs, report, write_outputs
    from sorakit.tools.cut import CutOptions, run_cut
    from sorakit.tools.executor import executor_from_args, open_pool, parts_dir_for, remove_parts

    spec = executor_from_args(args)
    opts = CutOptions(
        output_dir=Path(args.output_dir).expanduser().resolve(),
        short_side=args.short_side,
        fps=args.fps,
        crf=args.crf,
        overwrite=args.overwrite,
        upscale=args.upscale,
    )
    opts.validate()
    if not str(args.input).lower().endswith(".csv"):
        raise UserError(f"cut reads a clips CSV (from `sorakit data scenes`), got {args.input}")
    output = args.output or str(opts.output_dir / "clips.csv")
    check_outputs(output, args.failures)
    if opts.output_dir.exists() and not opts.output_dir.is_dir():
        raise UserError(f"--output-dir {opts.output_dir} is a file")
    rows, paths = collect_inputs(args.input, data_root=args.data_root)
    parts = parts_dir_for(output)
    with open_pool(spec) as pool:
        res = run_cut(rows, paths, opts, pool=pool, parts_dir=parts, retries=args.retries,
                      shard_items=args.shard_items)  # fmt: skip
    fpath = write_outputs(
        output,
        res.rows,
        res.failures,
        args.failures,
        first=("path", "text", "num_frames", "fps", "height", "width"),
    )
    remove_parts(parts)
    report(output, len(res.rows), res.failures, fpath, what="clips")
    return 0
