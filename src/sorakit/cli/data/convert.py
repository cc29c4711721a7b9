"""`sorakit data convert ucf101|imagenet ROOT --output CSV`: class-labelled datasets as CSVs."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="write a CSV (path, text, label) for UCF101 or ImageNet in their folder layouts",
        description="List a class-per-folder dataset as a CSV with path, text (the class name) and label (class "
        "index). ucf101: ROOT/<Class>/*.avi (or ROOT/UCF-101/...); labels from classInd.txt when found, else "
        "sorted folder order. imagenet: ROOT/<split>/<wnid>/*.JPEG; labels in sorted wnid order; names from "
        "LOC_synset_mapping.txt / synset_words.txt when found.",
    )
    p.add_argument("dataset", choices=("ucf101", "imagenet"))
    p.add_argument("root", help="dataset root folder")
    p.add_argument("-o", "--output", required=True, help="output CSV")
    p.add_argument(
        "--split-file",
        default=None,
        help="ucf101: an official split list (trainlist01.txt / testlist01.txt) to restrict to",
    )
    p.add_argument(
        "--raw-names",
        action="store_true",
        help="ucf101: keep CamelCase class names as text (default: words, e.g. 'apply eye makeup')",
    )
    p.add_argument("--split", default="train", help="imagenet: subfolder of ROOT to list (default: train)")
    p.add_argument("--class-names", default=None, help="imagenet: a 'wnid name, synonyms' file")
    p.add_argument(
        "--all-synonyms", action="store_true", help="imagenet: text is every synonym, not the first"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from sorakit.errors import UserError
    from sorakit.tools._io import check_output, write_csv
    from sorakit.tools.datasets import imagenet_rows, ucf101_rows

    check_output(args.output)
    if args.dataset == "ucf101":
        if args.class_names or args.all_synonyms:
            raise UserError("--class-names/--all-synonyms are for imagenet")
        rows = ucf101_rows(args.root, args.split_file, raw_names=args.raw_names)
    else:
        if args.split_file or args.raw_names:
            raise UserError("--split-file/--raw-names are for ucf101")
        rows = imagenet_rows(args.root, args.split, args.class_names, first_name_only=not args.all_synonyms)
    write_csv(args.output, rows, ["path", "text", "label"])
    n_classes = len({r["label"] for r in rows})
    print(f"wrote {len(rows)} rows ({n_classes} classes) to {args.output}", file=sys.stderr)
    return 0
