"""`sorakit data synth --output DIR --num-videos N --seed S`: generate the synthetic "shapes" world."""

from __future__ import annotations

import argparse

from sorakit.tools.executor import add_executor_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="generate the synthetic 'shapes' text-to-video dataset (videos + train.csv)",
        description="Write N videos of one coloured shape moving left/right/up/down on black (H.264 MP4 under "
        "DIR/videos/) and DIR/train.csv (path,text,num_frames,fps,height,width,color,shape,motion,horizon). "
        "Deterministic for a seed; the held-out colour-shape-motion combinations are excluded unless "
        "--holdout none. Existing videos of the same seed are reused, so an interrupted run can be resumed.",
    )
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("-n", "--num-videos", type=int, required=True, help="number of videos")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", default="64",
                   help="frame size: N (square) or HxW; several, comma-separated (64x64,64x96,96x64): each video "
                        "draws one (default 64)")  # fmt: skip
    p.add_argument("--frames", default="16",
                   help="frames per video: N, several (8,16,32) or a range (8-32): each video draws one "
                        "(default 16)")  # fmt: skip
    p.add_argument("--fps", type=float, default=8, help="frames per second (default 8)")
    p.add_argument(
        "--holdout",
        choices=("default", "none"),
        default="default",
        help="'default' leaves sorakit.tools.synth.HELDOUT out; 'none' uses every combination",
    )
    p.add_argument("--concepts", choices=("default", "extended"), default="default",
                   help="'extended' adds the colour orange and the shape diamond (new to the built-in model) in "
                        "every combination with the old ones")  # fmt: skip
    p.add_argument("--new-fraction", type=float, default=None,
                   help="with --concepts extended: share of videos showing orange or a diamond (default: every "
                        "colour-shape-motion combination equally likely)")  # fmt: skip
    p.add_argument("--long-paths", type=float, default=0.0,
                   help="share of videos that open a longer path: paced and placed for up to 3x their frames "
                        "(the CSV's horizon column), to train a model with arch.horizon (default 0)")  # fmt: skip
    p.add_argument("--path-windows", type=float, default=0.0,
                   help="share of those longer paths shown from a later frame than their opening (horizon = "
                        "the frames left from the clip's first one), what a loop's later segments continue "
                        "(default 0)")  # fmt: skip
    p.add_argument("--path-slack", type=float, default=0.0,
                   help="a path too long for the frame (long clips, long paths) is slowed to span a random "
                        "1 - U(0, S) of the free width instead of border to border, its start anywhere in the "
                        "rest; S in [0, 0.5] (default 0)")  # fmt: skip
    p.add_argument("--workers", type=int, default=None, help="same as --executor local:N")
    add_executor_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from sorakit.tools.executor import executor_from_args, open_pool
    from sorakit.tools.synth import check_options, parse_lengths, parse_sizes, synthesize

    spec = executor_from_args(args)
    sizes, lengths = parse_sizes(args.size), parse_lengths(args.frames)
    check_options(args.num_videos, sizes, lengths, args.fps, args.holdout, args.concepts, args.new_fraction,
                  args.long_paths, args.path_windows, args.path_slack)  # fmt: skip
    t0 = time.perf_counter()
    with open_pool(spec) as pool:
        csv_path = synthesize(
            args.output, args.num_videos, seed=args.seed, size=sizes, frames=lengths, fps=args.fps,
            holdout=args.holdout, pool=pool, retries=args.retries, shard_items=args.shard_items, progress=True,
            concepts=args.concepts, new_fraction=args.new_fraction, long_paths=args.long_paths,
            windows=args.path_windows, slack=args.path_slack,
        )  # fmt: skip
    print(f"wrote {args.num_videos} videos and {csv_path} in {time.perf_counter() - t0:.1f}s")
    return 0
