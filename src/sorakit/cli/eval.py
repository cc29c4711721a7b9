"""`sorakit eval shapes`: how well a model follows prompts of the synthetic shapes world."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate models (shapes: prompt following on the synthetic world)")
    evsub = p.add_subparsers(dest="eval_command", metavar="BENCHMARK")
    s = evsub.add_parser(
        "shapes",
        help="score colour / shape / direction / temporal consistency of generated or given videos",
        description="Generate one video per prompt with a model directory (default: the built-in model) and "
        "score it against the prompt: colour, shape and direction of the object, all three together, and "
        "temporal consistency (one object in every frame, stable size). Prompt sets: 'train' (training "
        "phrasings), 'novel' (phrasings never used in training), 'heldout' (colour-shape-motion "
        "combinations left out of training). Shape fidelity is the mean IoU of the object with the prompted "
        "shape fitted to its box (rendered videos ~0.94). --task i2v gives each prompt a rendered first frame as "
        "the reference (scores frame 0 = reference, frame 1 continues); --task extend the first 16 frames of a "
        "rendered clip (scores speed kept, no seam jump); --loop N scores direction in every segment. --sizes / "
        "--frames score other shapes. With --videos, scores existing videos instead (CSV with path,text and "
        "optionally group).",
    )
    s.add_argument("--model", default=None, help="sorakit model directory (default: the built-in model)")
    s.add_argument(
        "--videos", default=None, help="CSV of videos to score instead of generating (path,text[,group])"
    )
    s.add_argument("--prompts", default=None, help="text file, one prompt per line (group 'custom')")
    s.add_argument("--sets", default="train,novel,heldout", help="prompt sets (default train,novel,heldout)")
    s.add_argument("-n", "--num-prompts", type=int, default=24, help="prompts per set (default 24)")
    s.add_argument("--seed", type=int, default=0, help="seed of the prompt sets and the sampling noise")
    s.add_argument("--sampler", default=None, help="iddpm, dpm-solver, ddim or rflow (default: the model's)")
    s.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    s.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    s.add_argument("--task", default="t2v", choices=("t2v", "i2v", "extend"),
                   help="t2v (text only), i2v (a rendered first frame as reference) or extend (a rendered "
                        "16-frame clip as reference); default t2v")  # fmt: skip
    s.add_argument("--sizes", default=None,
                   help="frame sizes HxW to score, comma-separated (e.g. 64x96,96x64; default: the model's)")  # fmt: skip
    s.add_argument("--frames", default=None,
                   help="frames per video (segment) to score, comma-separated (e.g. 8,32; default: the model's)")  # fmt: skip
    s.add_argument("--loop", type=int, default=1, help="segments per video, each after the first continuing the "
                   "last one's final --condition-frames frames (default 1)")  # fmt: skip
    s.add_argument("--condition-frames", type=int, default=4,
                   help="K: frames of the reference clip (extend) or previous segment (loop) kept (default 4)")  # fmt: skip
    s.add_argument("--batch-size", type=int, default=8, help="videos generated at once (default 8)")
    s.add_argument("--save-videos", default=None, help="write the generated videos to this folder")
    s.add_argument("--results", default=None, help="write one row per video to this CSV")
    s.add_argument("--json", default=None, help="write the summary to this JSON file")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=run_shapes)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _read_video_csv(path: str) -> list[tuple[str, str, str]]:
    import csv
    from pathlib import Path

    from sorakit.errors import UserError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"no such CSV: {path}")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "text"} <= set(rows[0]):
        raise UserError(f"{path}: expected a header row with path and text columns and at least one row")
    out = []
    for r in rows:
        vp = Path(r["path"])
        if not vp.is_absolute() and not vp.exists():
            vp = p.parent / vp
        out.append((str(vp), r["text"], r.get("group") or "custom"))
    return out


def run_shapes(args: argparse.Namespace) -> int:
    import time

    from sorakit.errors import UserError
    from sorakit.eval import shapes as ev
    from sorakit.fileutil import write_text_atomic
    from sorakit.tools._io import check_output, write_csv

    if args.num_prompts < 1 or args.batch_size < 1:
        raise UserError("--num-prompts and --batch-size must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.videos and (args.task != "t2v" or args.loop != 1 or args.sizes or args.frames):
        raise UserError(
            "--videos scores given videos: --task, --loop, --sizes and --frames apply to generating"
        )
    shapes = _task_specs(args, None) if not args.videos else []  # bad shapes: one line before any work
    # output paths are checked before the work, not found broken after it
    results = check_output(args.results, "--results") if args.results else None
    summary_json = check_output(args.json, "--json") if args.json else None
    if args.save_videos and os.path.exists(args.save_videos) and not os.path.isdir(args.save_videos):
        raise UserError(f"--save-videos {args.save_videos} is a file; give a folder")
    t0 = time.perf_counter()
    scores = _score_given(args) if args.videos else _generate_and_score(args, shapes)
    summary = ev.summarize(scores)
    print(ev.format_table(summary))
    print(f"({len(scores)} videos in {time.perf_counter() - t0:.1f}s)")
    if results is not None:
        write_csv(results, [s.row() for s in scores])
    if summary_json is not None:
        from sorakit.jsonutil import dumps

        write_text_atomic(summary_json, dumps(summary, indent=2))  # a non-finite score is written as null
    return 0


def _score_given(args: argparse.Namespace) -> list:
    """--videos: score the videos of a CSV (every prompt parsed before any video is read)."""
    from tqdm import tqdm

    from sorakit.data.video import read_video
    from sorakit.errors import UserError
    from sorakit.eval import shapes as ev

    items = _read_video_csv(args.videos)
    for _, text, _ in items:
        ev.parse_prompt(text)  # every prompt must name colour, shape and direction: fail before work
    scores = []
    for path, text, group in tqdm(
        items, desc="score", unit="video", disable=True if args.no_progress else None
    ):
        try:
            frames = read_video(path)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        scores.append(ev.score_video(frames, text, group))
    return scores


def _prompts(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(group, prompt)`` pairs from --prompts (non-empty lines) or the named --sets."""
    from pathlib import Path

    from sorakit.errors import UserError
    from sorakit.eval import shapes as ev

    if args.prompts:
        if not Path(args.prompts).is_file():
            raise UserError(f"no such prompt file: {args.prompts}")
        lines = [ln.strip() for ln in Path(args.prompts).read_text().splitlines() if ln.strip()]
        if not lines:
            raise UserError(f"{args.prompts} holds no prompt (every line is empty)")
        prompts = [("custom", ln) for ln in lines]
    else:
        sets = [s.strip() for s in args.sets.split(",") if s.strip()]
        for s in sets:
            if s not in ev.PROMPT_SETS:
                raise UserError(f"unknown prompt set {s!r} (valid: {', '.join(ev.PROMPT_SETS)})")
        prompts = ev.build_prompts(sets, args.num_prompts, args.seed)
    for _, text in prompts:
        ev.parse_prompt(text)
    return prompts


def _task_specs(args: argparse.Namespace, default: tuple[int, int, int] | None) -> list:
    """One TaskSpec per (size, frames) of --sizes x --frames; `default` (frames, H, W) fills what is not
    given (None: only validate the flags)."""
    from sorakit.eval.shape_tasks import TaskSpec
    from sorakit.tools.synth import parse_lengths, parse_sizes

    t, h, w = default or (16, 64, 64)
    sizes = parse_sizes(args.sizes) if args.sizes else [(h, w)]
    lengths = parse_lengths(args.frames) if args.frames else [t]
    specs = [
        TaskSpec(args.task, n, hh, ww, args.loop, args.condition_frames) for hh, ww in sizes for n in lengths
    ]
    for spec in specs:
        spec.check()
    return specs


def _generate_and_score(args: argparse.Namespace, shapes: list) -> list:
    import torch

    from sorakit.eval.shape_tasks import generate_task
    from sorakit.pipelines import TextToVideoPipeline

    prompts = _prompts(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = TextToVideoPipeline.from_pretrained(args.model, device="cpu" if args.threads else "auto")
    inf = pipe.config.inference
    shapes = _task_specs(args, (inf.num_frames, *inf.image_size))
    named = bool(args.sizes or args.frames)  # groups say the shape when the user chose shapes
    scores = []
    for spec in shapes:
        group = [(f"{g} {spec.name}" if named else g, p) for g, p in prompts]
        save = f"{args.save_videos}/{spec.name}" if args.save_videos and len(shapes) > 1 else args.save_videos
        scores += generate_task(
            pipe, group, spec, batch_size=args.batch_size, seed=args.seed, save_dir=save, fps=inf.fps,
            progress=not args.no_progress, num_inference_steps=args.steps, guidance_scale=args.guidance,
            sampler=args.sampler,
        )  # fmt: skip
    return scores
