"""`sorakit data info INPUT --output CSV`: probe videos/images (frames, fps, size, aspect, duration)."""

from __future__ import annotations

import argparse

from sorakit.tools._io import add_data_root_arg
from sorakit.tools.executor import add_executor_args


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
    p.add_argument("--workers", type=int, default=None, help="same as --executor local:N")
    add_executor_args(p)
    add_data_root_arg(p)
    p.add_argument(
        "--fast",
        action="store_true",
        help="trust the container's frame count instead of decoding every frame (much faster on "
        "long videos; does not catch truncated files)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sorakit.tools._io import check_outputs, collect_inputs, report, write_outputs
    from sorakit.tools.executor import executor_from_args, open_pool, parts_dir_for, remove_parts
    from sorakit.tools.info import INFO_COLUMNS, run_info

    spec = executor_from_args(args)
    check_outputs(args.output, args.failures)
    rows, paths = collect_inputs(args.input, data_root=args.data_root)
    parts = parts_dir_for(args.output)
    with open_pool(spec) as pool:
        res = run_info(rows, paths, fast=args.fast, pool=pool, parts_dir=parts, retries=args.retries,
                       shard_items=args.shard_items)  # fmt: skip
    fpath = write_outputs(
        args.output, res.rows, res.failures, args.failures, first=("path", "text", *INFO_COLUMNS)
    )
    remove_parts(parts)
    report(args.output, len(res.rows), res.failures, fpath)
    return 0
