"""Captioning videos and images with a vision-language model, resumably.

Frames at 20%, 50% and 80% of each clip (Open-Sora's choice) are all given to the model, in order.
Two backends share one interface, `caption(list of frame lists) -> list of str | CaptionError`:

- `LocalVLM`: a LLaVA-style model loaded with transformers from a directory
  (AutoProcessor + AutoModelForImageTextToText), batched, greedy decoding.
- `ChatAPI`: an OpenAI-compatible chat-completions endpoint (images as base64 JPEG data URLs),
  with retries, exponential backoff and `Retry-After` honoured on 429/503.

`run_caption` appends each captioned row to the output CSV as soon as it is done (flushed and
fsynced), so an interrupted run loses nothing and the next run skips the rows already captioned.
An empty, refused or failed caption goes to the failures CSV with its reason, never into the output.
At the end the output is rewritten (atomically) in input order.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import math
import random
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sorakit.data.video import probe_video, read_video
from sorakit.errors import UserError
from sorakit.tools._io import (
    CSVAppender,
    Row,
    is_image,
    one_line,
    read_csv_if_exists,
    repair_partial_line,
    write_csv,
)
from sorakit.tools.executor import Pool, pool_for, run_shards

FRAME_POINTS = (0.2, 0.5, 0.8)

DEFAULT_PROMPT = (
    "These images are frames taken in order from one video clip. Describe the video in detail: the main "
    "subjects and what they do, the setting, the camera motion, the lighting and the visual style. Use at most "
    "six sentences, describe it as one continuous video, and start directly with the content (not with "
    "'The video shows')."
)

_REFUSALS = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry, i|i can(no|')t|i am unable|i'?m unable|as an ai\b|i apologi[sz]e)",
    re.IGNORECASE,
)


class CaptionError(Exception):
    """A row that could not be captioned; the message is the reason written to the failures CSV."""


class FatalAPIError(UserError):
    """An error that would fail every row (bad key, unknown model): the run stops."""


# ------------------------------------------------------------------------------------------ frames
def sample_frame_indices(num_frames: int, points: Sequence[float] = FRAME_POINTS) -> list[int]:
    """Frame indices at the given fractions of a clip of `num_frames` frames (floor(p * n), clamped)."""
    if num_frames < 1:
        raise ValueError("a clip needs at least one frame")
    return [min(num_frames - 1, max(0, math.floor(p * num_frames))) for p in points]


def load_frames(row: Row, path: Path, points: Sequence[float] = FRAME_POINTS) -> list[np.ndarray]:
    """The frames a caption is made from: uint8 [H, W, 3] each, at `points` of the clip.

    A clip row (`start_frame`/`end_frame`) samples inside its range; an image gives one frame.
    """
    if not path.is_file():
        raise CaptionError(f"no such file: {path}")
    try:
        if is_image(path):
            return [read_video(path)[0]]
        start = int(row.get("start_frame") or 0)
        if row.get("end_frame"):
            n = int(row["end_frame"]) - start
        elif row.get("num_frames") and not row.get("start_frame"):
            n = int(float(row["num_frames"]))
        else:
            n = int(probe_video(path)["num_frames"]) - start
        if n < 1:
            raise CaptionError(f"empty frame range in {path}")
        idx = [start + i for i in sample_frame_indices(n, points)]
        frames = read_video(path, indices=idx)
    except CaptionError:
        raise
    except Exception as exc:
        raise CaptionError(f"cannot read frames: {one_line(exc)}") from exc
    return list(frames)


def clean_caption(text: str | None) -> str:
    """Whitespace-normalised caption; raises CaptionError when empty or a refusal."""
    caption = " ".join((text or "").split())
    if not caption:
        raise CaptionError("empty caption")
    if _REFUSALS.match(caption):
        raise CaptionError(f"refused: {caption[:120]}")
    return caption


# ---------------------------------------------------------------------------------- local backend
class LocalVLM:
    """A LLaVA-style vision-language model from a local directory (transformers format).

    Each clip's frames become that many image placeholders in one user turn, followed by the prompt;
    the processor's chat template is used when it has one, else the LLaVA-1.5 "USER: ... ASSISTANT:"
    format. All images of a batch go through the vision tower: pixel_values is [B * n_frames, 3, h, w].
    """

    def __init__(
        self,
        model_dir: str | Path,
        prompt: str = DEFAULT_PROMPT,
        device: str = "auto",
        dtype: str = "auto",
        max_new_tokens: int = 256,
    ):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model_dir = Path(model_dir).expanduser()
        if not (model_dir / "config.json").is_file():
            raise UserError(f"{model_dir} is not a transformers model directory (no config.json)")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        else:
            dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
            if dtype not in dtypes:
                raise UserError(f"unknown dtype {dtype!r}; choose from auto, {', '.join(dtypes)}")
            torch_dtype = dtypes[dtype]
        self.device = torch.device(device)
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.model = (
            AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch_dtype).to(self.device).eval()
        )
        tok = getattr(self.processor, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"  # generation continues from the right end of every row
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token

    def build_prompt(self, n_images: int) -> str:
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": self.prompt}]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
        image_token = getattr(self.processor, "image_token", "<image>")
        return "USER: " + "".join(f"{image_token}\n" for _ in range(n_images)) + self.prompt + " ASSISTANT:"

    def caption(self, batch: Sequence[Sequence[np.ndarray]]) -> list[str | CaptionError]:
        prompts = [self.build_prompt(len(frames)) for frames in batch]
        images = [np.ascontiguousarray(f) for frames in batch for f in frames]
        inputs = self.processor(images=images, text=prompts, return_tensors="pt", padding=True)
        inputs = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in inputs.items()}
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        results: list[str | CaptionError] = []
        for t in texts:
            try:
                results.append(clean_caption(t))
            except CaptionError as exc:
                results.append(exc)
        return results


_LOADED: dict[LocalVLMSpec, LocalVLM] = {}


@dataclass(frozen=True)
class LocalVLMSpec:
    """A LocalVLM by its settings: small to send to cluster workers, each of which loads the model once
    (on its first batch) and keeps it for every later batch it is given."""

    model_dir: str
    prompt: str = DEFAULT_PROMPT
    device: str = "auto"
    dtype: str = "auto"
    max_new_tokens: int = 256

    def load(self) -> LocalVLM:
        if self not in _LOADED:
            _LOADED[self] = LocalVLM(
                self.model_dir, self.prompt, self.device, self.dtype, self.max_new_tokens
            )
        return _LOADED[self]

    def caption(self, batch: Sequence[Sequence[np.ndarray]]) -> list[str | CaptionError]:
        return self.load().caption(batch)


# ------------------------------------------------------------------------------------ API backend
def encode_jpeg(frame: np.ndarray, max_side: int | None = 512, quality: int = 90) -> str:
    """A frame as a `data:image/jpeg;base64,...` URL, the longer side shrunk to `max_side`."""
    from PIL import Image

    img = Image.fromarray(frame)
    if max_side and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class ChatAPI:
    """An OpenAI-compatible chat-completions API (OpenAI, vLLM, llama.cpp server, ...).

    Transient failures (HTTP 408/409/429/5xx, connection errors, timeouts) are retried up to
    `max_retries` times, waiting `Retry-After` when the server sends it, else `backoff * 2**attempt`
    seconds (capped at `max_backoff`, with +-10% jitter). HTTP 401/403/404 stop the run.
    """

    base_url: str
    api_key: str | None
    model: str
    prompt: str = DEFAULT_PROMPT
    max_tokens: int = 300
    timeout: float = 120.0
    max_retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 60.0
    detail: str = "low"
    image_size: int | None = 512
    workers: int = 4
    sleep: Callable[[float], None] = time.sleep

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"

    def request_body(self, frames: Sequence[np.ndarray]) -> dict:
        content: list[dict] = [{"type": "text", "text": self.prompt}]
        for f in frames:
            content.append(
                {
                    "type": "image_url",
                    "image_url": {"url": encode_jpeg(f, self.image_size), "detail": self.detail},
                }
            )
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }

    def _post(self, body: bytes) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def caption_one(self, frames: Sequence[np.ndarray]) -> str:
        body = json.dumps(self.request_body(frames)).encode("utf-8")
        last = ""
        for attempt in range(self.max_retries + 1):
            wait: float | None = None
            try:
                return self._parse(self._post(body))
            except urllib.error.HTTPError as exc:
                detail = _error_detail(exc)
                if exc.code in (401, 403, 404):
                    raise FatalAPIError(f"caption API {self.url} answered HTTP {exc.code}: {detail}") from exc
                if exc.code not in (408, 409, 429) and exc.code < 500:
                    raise CaptionError(f"HTTP {exc.code}: {detail}") from exc
                last = f"HTTP {exc.code}: {detail}"
                wait = parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = one_line(exc)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                last = f"invalid JSON response: {one_line(exc)}"
            if attempt == self.max_retries:
                break
            if wait is None:
                wait = min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.9, 1.1)
            self.sleep(wait)
        raise CaptionError(f"failed after {self.max_retries + 1} attempts: {last}")

    @staticmethod
    def _parse(resp: dict) -> str:
        try:
            choice = resp["choices"][0]
            message = choice.get("message") or {}
        except (KeyError, IndexError, TypeError) as exc:
            raise CaptionError(f"unexpected response: {json.dumps(resp)[:200]}") from exc
        if message.get("refusal"):
            raise CaptionError(f"refused: {' '.join(str(message['refusal']).split())[:120]}")
        if choice.get("finish_reason") == "content_filter":
            raise CaptionError("refused: content filter")
        content = message.get("content")
        if isinstance(content, list):  # some servers return content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        return clean_caption(content)

    def caption(self, batch: Sequence[Sequence[np.ndarray]]) -> list[str | CaptionError]:
        def one(frames: Sequence[np.ndarray]) -> str | CaptionError:
            try:
                return self.caption_one(frames)
            except CaptionError as exc:
                return exc

        if self.workers <= 1 or len(batch) <= 1:
            return [one(f) for f in batch]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(batch))) as ex:
            return list(ex.map(one, batch))


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode("utf-8", "replace")
    except Exception:
        body = ""
    try:
        msg = json.loads(body)["error"]["message"]
    except Exception:
        msg = body or exc.reason
    return " ".join(str(msg).split())[:200]


# ---------------------------------------------------------------------------------------- the run
def row_key(row: Row) -> tuple[str, str, str]:
    """Identity of a row for resuming: its path and clip range."""
    return (row.get("path", ""), row.get("start_frame", ""), row.get("end_frame", ""))


@dataclass
class CaptionStats:
    captioned: int = 0  # captioned in this run
    skipped: int = 0  # already captioned before (resumed) or kept
    failed: int = 0
    total: int = 0


def run_caption(
    rows: Sequence[Row],
    paths: Sequence[Path],
    backend,
    output: str | Path,
    failures_file: str | Path,
    batch_size: int = 8,
    workers: int = 2,
    keep_existing: bool = False,
    retry_failed: bool = True,
    points: Sequence[float] = FRAME_POINTS,
    progress: bool = True,
    pool: Pool | None = None,
    retries: int = 0,
) -> CaptionStats:
    """Caption every row not captioned yet, appending results to `output` as they come.

    `backend.caption(list of frame lists)` returns one caption or CaptionError per clip. Rows already
    in `output` with a caption are skipped; earlier failures are retried unless `retry_failed` is
    False. With `keep_existing`, input rows that already have a `text` are copied as they are.
    Each batch of `batch_size` clips is one shard on `pool` (default: this process); `workers` threads
    decode frames inside it. A shard whose task fails (a lost worker) is run again `retries` times;
    a failed caption is not (the API backend retries transient errors itself).
    """
    output, failures_file = Path(output), Path(failures_file)
    fields = list(dict.fromkeys([*(k for r in rows for k in r), "text"]))
    repair_partial_line(output)  # a run killed mid-write may have left half a row
    repair_partial_line(failures_file)
    _, prev_out = read_csv_if_exists(output)
    captions: dict[tuple[str, str, str], Row] = {row_key(r): r for r in prev_out if r.get("text", "").strip()}
    _, prev_fail = read_csv_if_exists(failures_file)
    # earlier failures stay listed until their retry succeeds (rewritten at the end)
    failed_before = set() if retry_failed else {row_key(r) for r in prev_fail}
    stats = CaptionStats(total=len(rows))
    with CSVAppender(output, fields) as out_app:
        todo = _todo(rows, captions, failed_before, keep_existing, out_app, stats)
        batches = [todo[s : s + batch_size] for s in range(0, len(todo), batch_size)]
        with (
            CSVAppender(failures_file, [*fields, "error"], require=("path", "error")) as fail_app,
            pool_for(pool, 1) as ex,
            _Shards(rows, paths, batches, backend, points, workers, prefetch=ex.inline) as shards,
        ):

            def record(k: int, results: list[tuple[bool, str]]) -> None:
                for i, (ok, res) in zip(batches[k], results):
                    if ok:
                        new = {**rows[i], "text": res}
                        out_app.write(new)
                        captions[row_key(rows[i])] = new
                        stats.captioned += 1
                    else:
                        fail_app.write({**rows[i], "error": res})
                        stats.failed += 1

            run_shards(ex, caption_shard, shards, record, [len(b) for b in batches], retries,
                       desc="caption" if progress else None, unit="clip")  # fmt: skip
    _finalize(rows, captions, output, fields, prev_out)
    _finalize_failures(failures_file, captions, rows)
    return stats


def _todo(rows, captions, failed_before, keep_existing, out_app, stats) -> list[int]:
    """Indices of the rows to caption in this run (each row identity once); counts the others."""
    todo: list[int] = []
    queued: set[tuple[str, str, str]] = set()
    for i, r in enumerate(rows):
        k = row_key(r)
        if k in captions or k in failed_before:
            stats.skipped += k in captions
            stats.failed += k in failed_before and k not in captions
            continue
        if keep_existing and r.get("text", "").strip():
            captions[k] = r
            out_app.write(r)
            stats.skipped += 1
            continue
        if k not in queued:
            queued.add(k)
            todo.append(i)
    return todo


def _load_or_error(row: Row, path: Path, points: Sequence[float]) -> list[np.ndarray] | CaptionError:
    try:
        return load_frames(row, path, points)
    except CaptionError as exc:
        return exc


def caption_shard(
    backend,
    rows: Sequence[Row],
    paths: Sequence[Path],
    points: Sequence[float],
    threads: int,
    frames: Future | None = None,
) -> list[tuple[bool, str]]:
    """Caption one batch (runs on a worker): ``(True, caption)`` or ``(False, reason)`` per clip.

    `frames` is the batch's frames already being decoded (in-process runs decode the next batch while
    the model works on this one); otherwise they are decoded here with `threads` threads.
    """
    if frames is not None:
        loaded = frames.result()
    else:
        with ThreadPoolExecutor(max(1, threads)) as tp:
            loaded = list(tp.map(_load_or_error, rows, paths, [points] * len(rows)))
    ok = [j for j, f in enumerate(loaded) if not isinstance(f, CaptionError)]
    results: list[str | CaptionError] = [f if isinstance(f, CaptionError) else "" for f in loaded]
    if ok:
        got = backend.caption([loaded[j] for j in ok])
        if len(got) != len(ok):
            raise RuntimeError(f"backend returned {len(got)} captions for {len(ok)} clips")
        for j, g in zip(ok, got):
            results[j] = g
    return [
        (True, r)
        if isinstance(r, str) and r.strip()
        else (False, str(r) if isinstance(r, CaptionError) else "empty caption")
        for r in results
    ]


class _Shards(Sequence):
    """The argument tuples of :func:`caption_shard`, one per batch, built when submitted; with
    `prefetch` (an in-process run) asking for batch k also starts decoding batch k + 1."""

    def __init__(self, rows, paths, batches, backend, points, threads, prefetch: bool):
        self.rows, self.paths, self.batches = rows, paths, batches
        self.backend, self.points, self.threads = backend, points, threads
        self.loader = ThreadPoolExecutor(max(1, threads)) if prefetch else None
        self.outer = ThreadPoolExecutor(1) if prefetch else None  # waits on the loader's threads
        self.frames: dict[int, Future] = {}

    def _start(self, k: int) -> None:
        if self.loader is not None and k < len(self.batches) and k not in self.frames:
            rs = [self.rows[i] for i in self.batches[k]]
            ps = [self.paths[i] for i in self.batches[k]]
            self.frames[k] = self.outer.submit(
                lambda: list(self.loader.map(_load_or_error, rs, ps, [self.points] * len(rs)))
            )

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k):  # type: ignore[override]
        self._start(k)
        self._start(k + 1)
        rs = [self.rows[i] for i in self.batches[k]]
        ps = [self.paths[i] for i in self.batches[k]]
        return (self.backend, rs, ps, self.points, self.threads, self.frames.pop(k, None))

    def __enter__(self) -> _Shards:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loader is not None:
            self.outer.shutdown(wait=True, cancel_futures=True)
            self.loader.shutdown(wait=True)


def _finalize(
    rows: Sequence[Row], captions: dict, output: Path, fields: list[str], prev_out: list[Row]
) -> None:
    """Rewrite the output in input order: one row per input row that has a caption, then any captioned
    rows of an earlier run that are no longer in the input (kept, not lost)."""
    ordered = [{**r, "text": captions[row_key(r)]["text"]} for r in rows if row_key(r) in captions]
    in_input = {row_key(r) for r in rows}
    extra = [r for r in prev_out if r.get("text", "").strip() and row_key(r) not in in_input]
    all_fields = list(dict.fromkeys([*fields, *(k for r in extra for k in r)]))
    write_csv(output, ordered + extra, all_fields)


def _finalize_failures(failures_file: Path, captions: dict, rows: Sequence[Row]) -> None:
    """One line per still-failing row (its latest reason), in input order (shards on a cluster finish
    in any order); rows captioned since are removed."""
    fields, fails = read_csv_if_exists(failures_file)
    latest: dict[tuple[str, str, str], Row] = {}
    for r in fails:
        k = row_key(r)
        latest.pop(k, None)
        latest[k] = r
    order = {row_key(r): i for i, r in reversed(list(enumerate(rows)))}
    remaining = [r for k, r in latest.items() if k not in captions]
    remaining.sort(key=lambda r: order.get(row_key(r), len(order)))  # stable: others keep file order
    if remaining:
        write_csv(failures_file, remaining, fields)
    elif failures_file.exists():
        failures_file.unlink()


def print_summary(stats: CaptionStats, output: Path, failures_file: Path) -> None:
    msg = f"captioned {stats.captioned} clips ({stats.skipped} already done) -> {output}"
    if stats.failed:
        msg += f"; {stats.failed} failed, listed in {failures_file}"
    print(msg, file=sys.stderr)
