"""`sorakit data scenes INPUT --output CLIPS.csv`: split videos into shots with PySceneDetect."""

from __future__ import annotations

import argparse

from sorakit.tools._io import add_data_root_arg
from sorakit.tools.executor import add_executor_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scenes",
        help="detect shot boundaries (PySceneDetect) and write one CSV row per clip",
        description="Detect shot boundaries in every video of INPUT (a video, a folder, or a CSV with a path "
        "column) and write one row per clip: path, start_frame, end_frame (exclusive), start, end (seconds), fps, "
        "num_frames, height, width (plus the input row's other columns). Unreadable videos go to a failures CSV. "
        "Training can use these rows directly, or `sorakit data cut` writes each clip as its own file.",
    )
    p.add_argument("input", help="a video, a folder (searched recursively), or a CSV with a path column")
    p.add_argument("-o", "--output", required=True, help="output clips CSV")
    p.add_argument("--failures", default=None, help="failures CSV (default: OUTPUT stem + .failures.csv)")
    p.add_argument(
        "--detector",
        choices=("content", "adaptive"),
        default="content",
        help="PySceneDetect detector (default: content)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="cut threshold (default: 27 for content, 3.0 for adaptive)",
    )
    p.add_argument("--min-scene-len", type=int, default=15, help="minimum frames between cuts (default: 15)")
    p.add_argument("--min-seconds", type=float, default=None, help="drop clips shorter than this")
    p.add_argument("--max-seconds", type=float, default=None, help="split (or drop) clips longer than this")
    p.add_argument(
        "--long",
        choices=("split", "drop"),
        default="split",
        help="what to do with clips longer than --max-seconds (default: split into equal parts)",
    )
    p.add_argument("--workers", type=int, default=None, help="same as --executor local:N")
    add_executor_args(p)
    add_data_root_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sorakit.tools._io import (
        VIDEO_EXTS,
        check_outputs,
        collect_inputs,
        report,
        write_outputs,
    )
    from sorakit.tools.executor import executor_from_args, open_pool, parts_dir_for, remove_parts
    from sorakit.tools.scenes import SCENE_COLUMNS, SceneOptions, run_scenes

    spec = executor_from_args(args)
    check_outputs(args.output, args.failures)
    opts = SceneOptions(
        detector=args.detector,
        threshold=args.threshold,
        min_scene_len=args.min_scene_len,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        long=args.long,
    )
    opts.validate()
    rows, paths = collect_inputs(args.input, VIDEO_EXTS, data_root=args.data_root)
    parts = parts_dir_for(args.output)
    with open_pool(spec) as pool:
        res = run_scenes(rows, paths, opts, pool=pool, parts_dir=parts, retries=args.retries,
                         shard_items=args.shard_items)  # fmt: skip
    fpath = write_outputs(args.output, res.rows, res.failures, args.failures, first=("path", *SCENE_COLUMNS))
    remove_parts(parts)
    report(args.output, len(res.rows), res.failures, fpath, what=f"clips (from {res.num_scenes} scenes)")
    return 0
