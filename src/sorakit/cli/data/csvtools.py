"""`sorakit data csv ...`: merge, filter, strip-prefix, paths, split, stats on CSVs with a header row."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "csv",
        help="CSV utilities: merge, filter, strip-prefix, paths, split, stats",
        description="Utilities for dataset CSVs (header row; columns path, text, num_frames, fps, height, width, "
        "start_frame, end_frame, label, ...). Outputs are written atomically; -o may be the input itself.",
    )
    cs = p.add_subparsers(dest="csv_command", metavar="CSV_COMMAND")

    m = cs.add_parser(
        "merge",
        help="concatenate CSVs, uniting columns and dropping duplicate rows",
        description="Concatenate CSVs. Rows pointing at the same file (and frame range) are kept "
        "once (the first). Relative paths are made absolute when their CSV is in another folder.",
    )
    m.add_argument("inputs", nargs="+", help="input CSVs")
    m.add_argument("-o", "--output", required=True)
    m.add_argument("--duplicates", default=None, help="also write the dropped duplicate rows here")
    m.set_defaults(func=run_merge)

    _register_filter(cs)

    s = cs.add_parser(
        "strip-prefix",
        help='remove captioner openings such as "The video shows"',
        description="Remove a leading phrase from every caption (text column) and capitalise "
        "what follows. Without --prefix a built-in list is used (The video shows/depicts/features, ...).",
    )
    s.add_argument("input")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--prefix", action="append", default=None, help="a prefix to remove (repeatable)")
    s.set_defaults(func=run_strip)

    pa = cs.add_parser("paths", help="make paths absolute or relative to the output CSV's folder")
    pa.add_argument("input")
    pa.add_argument("-o", "--output", required=True)
    g = pa.add_mutually_exclusive_group(required=True)
    g.add_argument("--absolute", action="store_true")
    g.add_argument("--relative", action="store_true", help="relative to the folder of OUTPUT")
    pa.set_defaults(func=run_paths)

    sp = cs.add_parser("split", help="random train/validation split (clips of one video stay together)")
    sp.add_argument("input")
    sp.add_argument("-o", "--output", required=True, help="train CSV")
    sp.add_argument("--val-output", required=True, help="validation CSV")
    sp.add_argument("--val-fraction", type=float, default=None)
    sp.add_argument("--val-count", type=int, default=None, help="number of groups (videos) for validation")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument(
        "--group-by",
        default=None,
        help="column whose equal values stay together (default: source_path if present, else path)",
    )
    sp.set_defaults(func=run_split)

    _register_buckets(cs)

    st = cs.add_parser("stats", help="print a summary of a CSV")
    st.add_argument("input")
    st.set_defaults(func=run_stats)

    p.set_defaults(func=lambda args: p.print_help() or 2)


def _register_buckets(cs: argparse._SubParsersAction) -> None:
    bk = cs.add_parser(
        "buckets",
        help="how many clips land in each bucket of a config's data.buckets, and how many are dropped and why",
        description="Assign every row (its num_frames, height, width columns: `sorakit data info` writes them) "
        "to a bucket of --config's data.buckets as training does for one epoch, and print clips and micro-batches "
        "per bucket and the dropped rows by reason.",
    )
    bk.add_argument("input", help="training CSV with num_frames, height, width columns")
    bk.add_argument(
        "overrides", nargs="*", help="key.sub=value config overrides (e.g. data.frame_interval=2)"
    )
    bk.add_argument("--config", default="tiny-buckets", help="preset or config file with data.buckets")
    bk.add_argument("--epoch", type=int, default=0, help="the epoch whose keep-probability draws to show")
    bk.add_argument("--seed", type=int, default=None, help="default: the config's train.seed")
    bk.set_defaults(func=run_buckets)


def _register_filter(cs: argparse._SubParsersAction) -> None:
    f = cs.add_parser(
        "filter",
        help="keep rows within bounds on frames, duration, size, aspect ratio, caption",
        description="Keep the rows that meet every given bound; the others are written to a "
        "rejected CSV with a reason column. Aspect ratio is height / width.",
    )
    f.add_argument("input")
    f.add_argument("-o", "--output", required=True)
    f.add_argument(
        "--rejected", default=None, help="rejected rows CSV (default: OUTPUT stem + .rejected.csv)"
    )
    f.add_argument("--min-frames", type=int)
    f.add_argument("--max-frames", type=int)
    f.add_argument("--min-duration", type=float, help="seconds")
    f.add_argument("--max-duration", type=float, help="seconds")
    f.add_argument("--min-height", type=int)
    f.add_argument("--min-width", type=int)
    f.add_argument("--min-short-side", type=int, help="min(height, width) at least this")
    f.add_argument("--min-aspect", type=float, help="height / width at least this")
    f.add_argument("--max-aspect", type=float, help="height / width at most this")
    f.add_argument("--min-caption-words", type=int)
    f.add_argument("--max-caption-words", type=int)
    f.add_argument("--drop-empty-caption", action="store_true", help="drop rows whose text is empty")
    f.set_defaults(func=run_filter)


def _check_outputs(*paths: str | None) -> None:
    from sorakit.tools._io import check_output

    for p in paths:
        if p:
            check_output(p)


def _write_with_reason(path: str, rows: list) -> None:
    from sorakit.tools._io import order_fields, write_csv

    fields = [c for c in order_fields(rows) if c != "reason"] + ["reason"]
    write_csv(path, rows, fields)


def run_merge(args: argparse.Namespace) -> int:
    from sorakit.tools._io import order_fields, write_csv
    from sorakit.tools.csvutil import merge

    _check_outputs(args.output, getattr(args, "val_output", None))
    rows, dups = merge(args.inputs, args.output)
    write_csv(args.output, rows, order_fields(rows) if rows else ["path"])
    if args.duplicates and dups:
        _write_with_reason(args.duplicates, dups)
    print(f"wrote {len(rows)} rows to {args.output}; dropped {len(dups)} duplicates", file=sys.stderr)
    return 0


def run_filter(args: argparse.Namespace) -> int:
    import re
    from collections import Counter
    from pathlib import Path

    _check_outputs(args.output, getattr(args, "val_output", None))
    from sorakit.errors import UserError
    from sorakit.tools._io import read_csv, write_csv
    from sorakit.tools.csvutil import FilterSpec, filter_rows

    spec = FilterSpec(
        min_frames=args.min_frames,
        max_frames=args.max_frames,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        min_height=args.min_height,
        min_width=args.min_width,
        min_short_side=args.min_short_side,
        min_aspect=args.min_aspect,
        max_aspect=args.max_aspect,
        min_caption_words=args.min_caption_words,
        max_caption_words=args.max_caption_words,
        drop_empty_caption=args.drop_empty_caption,
    )
    if not spec.active():
        raise UserError("give at least one bound (e.g. --min-frames 16 or --drop-empty-caption)")
    fields, rows = read_csv(args.input)
    kept, rejected = filter_rows(rows, spec, fields)
    write_csv(args.output, kept, fields)
    rej_path = args.rejected or str(Path(args.output).with_name(Path(args.output).stem + ".rejected.csv"))
    if rejected:
        write_csv(rej_path, rejected, [*fields, "reason"])
    elif Path(rej_path).is_file():
        Path(rej_path).unlink()
    print(
        f"kept {len(kept)} of {len(rows)} rows in {args.output}"
        + (f"; {len(rejected)} rejected in {rej_path}" if rejected else ""),
        file=sys.stderr,
    )
    reasons = Counter(re.split(r" [\d<>-]", r["reason"])[0] for r in rejected)
    for k, v in reasons.most_common():
        print(f"  {k}: {v}", file=sys.stderr)
    return 0


def run_strip(args: argparse.Namespace) -> int:
    from sorakit.errors import UserError
    from sorakit.tools._io import read_csv, write_csv
    from sorakit.tools.csvutil import DEFAULT_PREFIXES, strip_prefixes

    _check_outputs(args.output, getattr(args, "val_output", None))
    fields, rows = read_csv(args.input)
    if "text" not in fields:
        raise UserError(f"{args.input} has no text column")
    out, changed = strip_prefixes(rows, args.prefix or DEFAULT_PREFIXES)
    write_csv(args.output, out, fields)
    print(f"stripped a prefix from {changed} of {len(rows)} captions; wrote {args.output}", file=sys.stderr)
    return 0


def run_paths(args: argparse.Namespace) -> int:
    from sorakit.tools._io import read_csv, write_csv
    from sorakit.tools.csvutil import rebase_paths

    _check_outputs(args.output, getattr(args, "val_output", None))
    fields, rows = read_csv(args.input, require=("path",))
    out = rebase_paths(rows, args.input, args.output, "absolute" if args.absolute else "relative")
    write_csv(args.output, out, fields)
    print(f"wrote {len(out)} rows to {args.output}", file=sys.stderr)
    return 0


def run_split(args: argparse.Namespace) -> int:
    from sorakit.tools._io import read_csv, write_csv
    from sorakit.tools.csvutil import split_rows

    _check_outputs(args.output, getattr(args, "val_output", None))
    fields, rows = read_csv(args.input)
    train, val = split_rows(rows, args.val_fraction, args.val_count, args.seed, args.group_by)
    write_csv(args.output, train, fields)
    write_csv(args.val_output, val, fields)
    print(
        f"train: {len(train)} rows -> {args.output}; validation: {len(val)} rows -> {args.val_output}",
        file=sys.stderr,
    )
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from sorakit.tools._io import read_csv
    from sorakit.tools.csvutil import stats

    fields, rows = read_csv(args.input)
    print(stats(rows, fields))
    return 0


def run_buckets(args: argparse.Namespace) -> int:
    from sorakit.config import load_config
    from sorakit.data.buckets import bucket_report, build_table, clip_sizes_from_records
    from sorakit.errors import UserError
    from sorakit.tools._io import read_csv

    cfg = load_config(args.config, list(args.overrides))
    table = build_table(cfg.data)
    if table is None:
        raise UserError(f"config {args.config} has no data.buckets table")
    _, records = read_csv(args.input)  # only path and the size columns are needed (no captions yet)
    seed = cfg.train.seed if args.seed is None else args.seed
    print(bucket_report(table, clip_sizes_from_records(records), seed, args.epoch))
    return 0
