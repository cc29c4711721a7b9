"""`sorakit data caption INPUT --output CSV`: caption clips with a local VLM or a chat-completions API."""

from __future__ import annotations

import argparse
import os
import sys

from sorakit.tools._io import add_data_root_arg
from sorakit.tools.executor import add_executor_args

OPENAI_URL = "https://api.openai.com/v1"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "caption",
        help="caption videos/clips with a local vision-language model or an OpenAI-compatible API",
        description="Caption every clip of INPUT (a video, a folder, or a CSV with a path column and optionally "
        "start_frame/end_frame) from frames at 20/50/80% of the clip, all passed to the model. Captions are "
        "appended to OUTPUT as they are made, so an interrupted run resumes where it stopped (rows already "
        "captioned are skipped). Empty, refused or failed captions go to a failures CSV with the reason.",
    )
    p.add_argument("input", help="a video, a folder, or a CSV with a path column")
    p.add_argument("-o", "--output", required=True, help="output CSV (input columns + text)")
    p.add_argument("--failures", default=None, help="failures CSV (default: OUTPUT stem + .failures.csv)")
    p.add_argument(
        "--backend",
        choices=("local", "api"),
        default=None,
        help="local: a transformers model from --model-dir; api: a chat-completions endpoint "
        "(default: local when --model-dir is given, else api)",
    )
    p.add_argument("--prompt", default=None, help="instruction given with the frames")
    p.add_argument("--prompt-file", default=None, help="read the instruction from this file")
    p.add_argument(
        "--frame-points",
        default="0.2,0.5,0.8",
        help="where in each clip to take frames, as fractions (default: 0.2,0.5,0.8)",
    )
    p.add_argument(
        "--batch-size", type=int, default=8, help="clips per model call / per API round (default: 8)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=4,
        help="threads decoding frames, and concurrent API requests (default: 4)",
    )
    p.add_argument(
        "--keep-existing",
        action="store_true",
        help="copy input rows that already have a text as they are instead of captioning them",
    )
    p.add_argument(
        "--no-retry-failed",
        action="store_true",
        help="on resume, skip rows listed in the failures CSV instead of retrying them",
    )
    add_executor_args(p, default="local:1", shards=False)
    add_data_root_arg(p)
    g = p.add_argument_group("local model")
    g.add_argument("--model-dir", default=None, help="directory of a LLaVA-style transformers model")
    g.add_argument("--device", default="auto", help="cuda, cpu, cuda:1, ... (default: cuda if available)")
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    g.add_argument("--max-new-tokens", type=int, default=256)
    a = p.add_argument_group("API")
    a.add_argument(
        "--base-url",
        default=None,
        help=f"chat-completions base URL (default: $OPENAI_BASE_URL or {OPENAI_URL})",
    )
    a.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY)")
    a.add_argument("--model", default="gpt-4o-mini", help="model name sent to the API (default: gpt-4o-mini)")
    a.add_argument("--max-tokens", type=int, default=300)
    a.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    a.add_argument("--max-retries", type=int, default=5, help="retries of a failing request (default: 5)")
    a.add_argument(
        "--retry-backoff",
        type=float,
        default=1.0,
        help="first retry wait in seconds, doubled each retry; Retry-After wins (default: 1)",
    )
    a.add_argument(
        "--image-size", type=int, default=512, help="longer side of the frames sent (default: 512)"
    )
    a.add_argument("--detail", choices=("low", "high", "auto"), default="low")
    p.set_defaults(func=run)


def _points(text: str) -> tuple[float, ...]:
    from sorakit.errors import UserError

    try:
        pts = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--frame-points must be comma-separated fractions, got {text!r}") from None
    if not pts or any(not 0.0 <= x <= 1.0 for x in pts):
        raise UserError(f"--frame-points must be fractions in [0, 1], got {text!r}")
    return pts


def _check_numbers(args: argparse.Namespace) -> None:
    """Finite, in-range numeric flags (the config fields' checks, sorakit.config.check_value)."""
    from sorakit.config import NON_NEGATIVE, POSITIVE, Bounds, check_value

    for flag, value, bounds in (
        ("--timeout", args.timeout, Bounds(gt=0)), ("--retry-backoff", args.retry_backoff, NON_NEGATIVE),
        ("--max-retries", args.max_retries, NON_NEGATIVE), ("--max-tokens", args.max_tokens, POSITIVE),
        ("--max-new-tokens", args.max_new_tokens, POSITIVE), ("--image-size", args.image_size, Bounds(ge=1, le=65_536)),
    ):  # fmt: skip
        check_value(flag, value, bounds)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sorakit.errors import UserError
    from sorakit.tools._io import check_outputs, collect_inputs
    from sorakit.tools.caption import DEFAULT_PROMPT, LocalVLMSpec, print_summary, run_caption
    from sorakit.tools.executor import executor_from_args, open_pool

    spec = executor_from_args(args, default="local:1", workers_flag=False)
    points = _points(args.frame_points)
    _check_numbers(args)
    if args.batch_size < 1 or args.workers < 1:
        raise UserError("--batch-size and --workers must be >= 1")
    prompt = args.prompt or DEFAULT_PROMPT
    if args.prompt_file:
        pf = Path(args.prompt_file)
        if not pf.is_file():
            raise UserError(f"prompt file not found: {pf}")
        prompt = pf.read_text().strip()
    backend_name = args.backend or ("local" if args.model_dir else "api")
    output, failures = check_outputs(args.output, args.failures)
    rows, paths = collect_inputs(args.input, data_root=args.data_root)
    if backend_name == "local":
        if not args.model_dir:
            raise UserError("--backend local needs --model-dir")
        if not (Path(args.model_dir) / "config.json").is_file():
            raise UserError(
                f"--model-dir {args.model_dir} is not a transformers model directory (no config.json)"
            )
        backend = LocalVLMSpec(str(args.model_dir), prompt, args.device, args.dtype, args.max_new_tokens)
        if spec.kind == "local" and spec.workers == 1:
            backend.load()  # in this process: load (and fail) before any work; workers load their own
    else:
        backend = _api_backend(args, prompt)
    try:
        with open_pool(spec) as pool:
            stats = run_caption(
                rows,
                paths,
                backend,
                output,
                failures,
                batch_size=args.batch_size,
                workers=args.workers,
                keep_existing=args.keep_existing,
                retry_failed=not args.no_retry_failed,
                points=points,
                pool=pool,
                retries=args.retries,
            )
    except KeyboardInterrupt:
        print(
            f"sorakit: interrupted; captions so far are in {output}; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    print_summary(stats, output, failures)
    if stats.failed and not stats.captioned:
        # nothing was produced (a dead server, a wrong model name): a script must see that as a failure
        print(f"sorakit: error: no clip was captioned, all {stats.failed} failed (reasons in {failures})",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _api_backend(args: argparse.Namespace, prompt: str):  # noqa: ANN202 - ChatAPI imported lazily
    """The ChatAPI of the command line (checked: URL scheme, key for OpenAI, retry settings)."""
    from sorakit.errors import UserError
    from sorakit.tools.caption import ChatAPI

    base_url = args.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL
    api_key = args.api_key or os.environ.get("OPENAI_API_KEY")
    if not base_url.startswith(("http://", "https://")):
        raise UserError(f"--base-url must start with http:// or https://, got {base_url!r}")
    if not api_key and base_url.rstrip("/") == OPENAI_URL:
        raise UserError(
            "the OpenAI API needs a key: set OPENAI_API_KEY or pass --api-key "
            "(or give --model-dir for a local model, or --base-url for another server)"
        )
    if args.max_retries < 0 or args.retry_backoff < 0:
        raise UserError("--max-retries and --retry-backoff must be >= 0")
    return ChatAPI(
        base_url=base_url,
        api_key=api_key,
        model=args.model,
        prompt=prompt,
        max_tokens=args.max_tokens,
        timeout=args.timeout,
        max_retries=args.max_retries,
        backoff=args.retry_backoff,
        detail=args.detail,
        image_size=args.image_size,
        workers=args.workers,
    )
