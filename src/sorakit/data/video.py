"""Video and image IO through PyAV: read frames, write H.264 MP4 (yuv420p) atomically, probe metadata.

Every media file sorakit reads is opened by :func:`open_video`, the media guard: a few hundred bytes can
declare 8192x8192 frames or a billion of them (a decompression bomb), so the declared frame size is
checked against :class:`MediaLimits` before any frame is decoded, each decoded frame is checked again
(a stream may change size midway), and readers that keep frames (:func:`read_video`) refuse a clip longer
than the frame limit up front or as soon as it is passed. The limits come from the environment
(``SORAKIT_MAX_PIXELS``, ``SORAKIT_MAX_FRAMES``), so worker processes of every executor share them.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from sorakit.cpu import cpu_flags
from sorakit.errors import UserError
from sorakit.fileutil import new_file_mode

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
VIDEO_EXTENSIONS = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".gif"}


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _atomic_target(path: Path) -> Path:
    """A fresh hidden temporary file beside `path` (renamed onto it once complete). Temporaries of
    `path` left by a killed writer (a SIGKILLed worker) are removed first: they can never complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.stem)}.{'?' * 8}{glob.escape(path.suffix)}"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.fchmod(fd, new_file_mode())
    os.close(fd)
    return Path(tmp)


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = 8,
    crf: int = 18,
    codec: str = "libx264",
) -> Path:
    """Write uint8 frames ``[T, H, W, 3]`` as an H.264 MP4 (yuv420p, playable everywhere), or a GIF when
    the suffix is ``.gif``. Written to a temporary file in the same folder, then renamed.

    yuv420p needs even sizes: odd heights/widths are padded by one pixel (edge replicated).
    """

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    if path.suffix.lower() == ".gif":
        return _encode_atomic(path, frames, fps, "gif", "gif", "rgb8", {})
    ph, pw = frames.shape[1] % 2, frames.shape[2] % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return _encode_atomic(
        path, frames, fps, "mp4", codec, "yuv420p", x264_options(crf) if codec == "libx264" else {}
    )


def x264_options(crf: int) -> dict[str, str]:
    """libx264 options that make the same frames give the same bytes in every process.

    x264's AVX-512 macroblock-tree kernel reads past the end of its per-row cost arrays into heap
    padding that nobody initialised, and the garbage feeds the rate control: at frame sizes such as
    48, 64, 80 or 160 pixels the same frames encoded to different files (pixels off by up to 31
    levels) depending on what the process had freed before (e.g. after a model ran). With glibc's
    MALLOC_PERTURB_ the output followed the fill byte; with x264 capped at AVX2 it is the same for
    every fill byte and every size tried, and as fast. So on an AVX-512 CPU x264 runs its AVX2 code.
    """
    opts = {"crf": str(crf)}
    if {"avx512f", "avx2"} <= cpu_flags():
        opts["x264-params"] = "asm=AVX2"  # every AVX-512 CPU has AVX2, so this never names a missing ISA
    return opts


def _encode_atomic(
    path: Path, frames: np.ndarray, fps: float, fmt: str, codec: str, pix_fmt: str, options: dict[str, str]
) -> Path:
    """Encode RGB frames into a temporary file beside `path`, then rename it into place."""
    import av

    tmp = _atomic_target(path)
    try:
        with av.open(str(tmp), mode="w", format=fmt) as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = pix_fmt
            stream.options = options
            for frame in frames:
                for packet in stream.encode(
                    av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                ):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write one uint8 ``[H, W, 3]`` image (PNG/JPEG by suffix) atomically."""
    import av

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        _save_with_av(tmp, path, frame)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _save_with_av(tmp: Path, path: Path, frame: Any) -> None:
    import av

    codec = {".png": "png", ".jpg": "mjpeg", ".jpeg": "mjpeg"}.get(path.suffix.lower(), "png")
    pix = "rgb24" if codec == "png" else "yuvj420p"
    with av.open(str(tmp), mode="w", format="image2") as container:
        stream = container.add_stream(codec, rate=1)
        stream.width, stream.height = frame.width, frame.height
        stream.pix_fmt = pix
        for packet in stream.encode(frame.reformat(format=pix)):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# --------------------------------------------------------------------------------------------------
# reading: the media guard

PIXELS_ENV, FRAMES_ENV = "SORAKIT_MAX_PIXELS", "SORAKIT_MAX_FRAMES"


@dataclass(frozen=True)
class MediaLimits:
    """What one media file may ask of a reader. `max_pixels`: height x width of a frame (default
    4096 x 4096: DCI 4K fits, 8K does not); `max_frames`: frames one read keeps in memory at once (a clip;
    default 10,000: 7 minutes at 24 fps)."""

    max_pixels: int = 4096 * 4096
    max_frames: int = 10_000

    @classmethod
    def from_env(cls) -> MediaLimits:
        """The limits set by ``SORAKIT_MAX_PIXELS`` / ``SORAKIT_MAX_FRAMES`` (positive integers), else the
        defaults. A malformed value is a UserError."""
        values = {}
        for field_name, var in (("max_pixels", PIXELS_ENV), ("max_frames", FRAMES_ENV)):
            raw = os.environ.get(var, "").strip()
            if raw:
                try:
                    values[field_name] = int(raw)
                except ValueError:
                    values[field_name] = 0
                if not 0 < values[field_name] < 2**62:
                    raise UserError(f"{var} must be a positive integer, got {raw!r}")
        return cls(**values)


class MediaTooLarge(ValueError):
    """A file over :class:`MediaLimits`: a failure of that file (a failures-CSV row, a skipped training
    sample), not of the run."""


def check_frame_size(path: str | os.PathLike, height: int, width: int, limits: MediaLimits) -> None:
    """MediaTooLarge when a `height` x `width` frame of `path` is over ``limits.max_pixels``."""
    if height * width > limits.max_pixels:
        raise MediaTooLarge(
            f"{path}: {width}x{height} frames ({height * width:,} pixels) are over the limit of "
            f"{limits.max_pixels:,} pixels per frame (raise it with {PIXELS_ENV})"
        )


def check_clip_length(path: str | os.PathLike, frames: int, limits: MediaLimits) -> None:
    """MediaTooLarge when a read would keep more than ``limits.max_frames`` frames of `path`."""
    if frames > limits.max_frames:
        raise MediaTooLarge(
            f"{path}: a clip of {frames:,} frames is over the limit of {limits.max_frames:,} frames per clip "
            f"(raise it with {FRAMES_ENV})"
        )


def declared_frames(container: Any, stream: Any) -> int | None:
    """Frames the container says its first video stream has (the stream's frame count, else its duration,
    else the file's when it has no other stream), from headers only; None when it does not say."""
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        return None
    if stream.duration and stream.time_base:
        return round(float(stream.duration * stream.time_base) * float(rate))
    if container.duration and len(container.streams) == 1:
        return round(container.duration / 1e6 * float(rate))
    return None


def _not_a_file(path: Path) -> str | None:
    """Why `path` cannot be read as a media file (a folder named ``x.mp4``, a link loop, ...), or None."""
    try:
        path.stat()
    except OSError as exc:
        return "a symbolic link loop" if exc.errno == errno.ELOOP else (exc.strerror or str(exc)).lower()
    if path.is_dir():
        return "a folder, not a media file"
    if not path.is_file():
        return "not a regular file"
    return None


@contextlib.contextmanager
def open_video(path: str | os.PathLike, limits: MediaLimits | None = None) -> Iterator[tuple[Any, Any]]:
    """Open a video or image for reading -> ``(container, first video stream)``, the declared frame size
    checked against `limits` (default :meth:`MediaLimits.from_env`) before anything is decoded.

    Raises ValueError naming the file when it is not a readable regular file, cannot be opened, has no
    video stream, or (MediaTooLarge) declares frames over the limit. Decode with :func:`decode`."""
    import av

    path = Path(path)
    why = _not_a_file(path)
    if why:
        raise (
            FileNotFoundError(f"no such file: {path}")
            if why.startswith("no such")
            else ValueError(f"{path}: {why}")
        )
    limits = limits or MediaLimits.from_env()
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
        raise ValueError(f"cannot read {path}: {exc}") from exc
    with container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        check_frame_size(path, stream.codec_context.height, stream.codec_context.width, limits)
        yield container, stream


def decode(
    container: Any, stream: Any, path: str | os.PathLike, limits: MediaLimits | None = None
) -> Iterator[Any]:
    """The frames of `stream`, each checked against ``limits.max_pixels`` (a stream can switch to larger
    frames after its header) before the caller converts it."""
    limits = limits or MediaLimits.from_env()
    stream.thread_type = "AUTO"
    for frame in container.decode(stream):
        check_frame_size(path, frame.height, frame.width, limits)
        yield frame


def reduced_size(height: int, width: int, target: tuple[int, int] | None) -> tuple[int, int] | None:
    """The (height, width) to decode a ``height x width`` source at when the caller will resize it to cover
    `target`: scaled down (aspect kept, even sizes) to twice the final size, so a 4K source for a 64x64
    model never exists in memory as 4K RGB; None when the source is not that much larger (decoded as is,
    so ordinary data gives exactly the pixels it always did)."""
    if target is None:
        return None
    scale = max(2 * target[0] / height, 2 * target[1] / width)
    if scale >= 1:
        return None
    return max(2, 2 * math.ceil(height * scale / 2)), max(2, 2 * math.ceil(width * scale / 2))


def _kept(path: Path, start: int, end: int | None, step: int, indices: list[int] | None, declared: int | None,
          limits: MediaLimits) -> None:  # fmt: skip
    """Refuse up front a read that would keep more than ``limits.max_frames`` frames."""
    if indices is not None:
        n = len(set(indices))
    else:
        stop = end if end is not None else declared
        n = -(-(stop - start) // step) if stop is not None else 0
    check_clip_length(path, n, limits)


def read_video(
    path: str | os.PathLike,
    start_frame: int = 0,
    end_frame: int | None = None,
    step: int = 1,
    indices: list[int] | None = None,
    size_hint: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode frames ``[T, H, W, 3]`` uint8 (RGB). Either the frames ``start_frame:end_frame:step`` or the
    given frame `indices` (0-based, in decode order). Images are 1-frame videos. With `size_hint`
    (height, width the caller will resize to), a much larger source is decoded at a reduced size
    (:func:`reduced_size`).

    Raises :class:`UserError` for a missing file and :class:`ValueError` (MediaTooLarge over the
    :class:`MediaLimits`) for content that cannot or may not be decoded.
    """
    import av

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise UserError(f"no such file: {path}")
    limits = MediaLimits.from_env()
    wanted: set[int] | None = set(indices) if indices is not None else None
    last = max(wanted) if wanted else end_frame
    frames: dict[int, np.ndarray] = {}
    with open_video(path, limits) as (container, stream):
        _kept(path, start_frame, end_frame, step, indices, declared_frames(container, stream), limits)
        size = reduced_size(stream.codec_context.height, stream.codec_context.width, size_hint)
        opts = {"height": size[0], "width": size[1], "interpolation": "AREA"} if size else {}
        try:
            for i, frame in enumerate(decode(container, stream, path, limits)):
                if last is not None and i >= (last + 1 if wanted else last):
                    break
                if (
                    (i in wanted)
                    if wanted is not None
                    else (i >= start_frame and (i - start_frame) % step == 0)
                ):
                    frames[i] = frame.to_ndarray(format="rgb24", **opts)
                    check_clip_length(path, len(frames), limits)  # the header may have understated it
        except (av.error.FFmpegError, IndexError) as exc:  # type: ignore[attr-defined]
            if not frames:
                raise ValueError(f"cannot decode {path}: {exc}") from exc
    if not frames:
        raise ValueError(f"no frames decoded from {path}")
    if wanted is not None:
        missing = sorted(wanted - frames.keys())
        if missing:
            raise ValueError(f"{path}: frames {missing[:5]} beyond the end ({len(frames)} decoded)")
        return np.stack([frames[i] for i in indices])  # type: ignore[union-attr]
    return np.stack([frames[i] for i in sorted(frames)])


def probe_video(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a video or image: num_frames, fps, height, width, aspect_ratio, duration.

    ``num_frames`` is counted by decoding (no frame is kept or converted), so truncated files count only
    what decodes. Raises ValueError when the file cannot be read or is over the :class:`MediaLimits`.
    """
    import av

    path = Path(path)
    count = 0
    try:
        with open_video(path) as (container, stream):
            height, width = stream.codec_context.height, stream.codec_context.width
            fps = stream_fps(stream)
            for _ in decode(container, stream, path):
                count += 1
    except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
        raise ValueError(f"cannot read {path}: {exc}") from exc
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    if count == 0:
        raise ValueError(f"{path}: no decodable frames")
    if is_image(path):
        fps = 0.0
    return {
        "num_frames": count,
        "fps": fps,
        "height": height,
        "width": width,
        "aspect_ratio": height / width if width else 0.0,
        "duration": count / fps if fps else 0.0,
    }


def stream_fps(stream: Any) -> float:
    """Frames per second of a video stream (its average rate, else FFmpeg's guess); 0.0 when unknown."""
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 0.0
