"""`sorakit data info INPUT --output CSV`: probe videos/images (frames, fps, size, aspect, duration)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="probe videos/images: num_frames, fps, height, width, aspect_ratio, duration",
        description="Probe every video/image of INPUT (a file, a folder, or a CSV with a path column) and "
        "write its rows with num_frames, fps, height, width, aspect_ratio (height/width) and duration filled. "
        "Unreadable files are listed in a failures CSV, not fatal.",
    )
    p.add_argument(
        "input", help="a video/image, a folder (searched recursively), or a CSV with a path column"
    )
    p.add_argument("-o", "--output", required=True, help="output CSV")
    p.add_argument("--failures", default=None, help="failures CSV (default: OUTPUT stem + .failures.csv)")
    p.add_argument("--workers", type=int, default=1, help="parallel probes (threads)")
    p.add_argument(
        "--fast",
        action="store_true",
        help="trust the container's frame count instead of decoding every frame (much faster on "
        "long videos; does not catch truncated files)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sorakit.tools._io import check_output, check_workers, collect_inputs, report, write_outputs
    from sorakit.tools.info import INFO_COLUMNS, run_info

    check_workers(args.workers)
    check_output(args.output)
    rows, paths = collect_inputs(args.input)
    res = run_info(rows, paths, workers=args.workers, fast=args.fast)
    fpath = write_outputs(
        args.output, res.rows, res.failures, args.failures, first=("path", "text", *INFO_COLUMNS)
    )
    report(args.output, len(res.rows), res.failures, fpath)
    return 0
