"""Video and image IO through PyAV: read frames, write H.264 MP4 (yuv420p) atomically, probe metadata."""

from __future__ import annotations

import functools
import glob
import os
import platform
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

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
    if _cpu_has_avx512():
        opts["x264-params"] = "asm=AVX2"  # every AVX-512 CPU has AVX2, so this never names a missing ISA
    return opts


@functools.lru_cache(maxsize=1)
def _cpu_has_avx512() -> bool:
    """True on an x86-64 CPU with AVX-512 (Linux: /proc/cpuinfo; macOS: sysctl)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        if platform.system() == "Darwin":
            out = subprocess.run(["sysctl", "-n", "hw.optional.avx512f"], capture_output=True, text=True)
            return out.stdout.strip() == "1"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return "avx512f" in flags and "avx2" in flags
    except OSError:
        pass
    return False


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


def read_video(
    path: str | os.PathLike,
    start_frame: int = 0,
    end_frame: int | None = None,
    step: int = 1,
    indices: list[int] | None = None,
) -> np.ndarray:
    """Decode frames ``[T, H, W, 3]`` uint8 (RGB). Either the frames ``start_frame:end_frame:step`` or the
    given frame `indices` (0-based, in decode order). Images are 1-frame videos.

    Raises :class:`UserError` for a missing file and :class:`ValueError` for undecodable content.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    wanted: set[int] | None = set(indices) if indices is not None else None
    last = max(wanted) if wanted else end_frame
    frames: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if last is not None and i >= (last + 1 if wanted else last):
                    break
                if wanted is not None:
                    if i in wanted:
                        frames[i] = frame.to_ndarray(format="rgb24")
                elif i >= start_frame and (i - start_frame) % step == 0:
                    frames[i] = frame.to_ndarray(format="rgb24")
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

    ``num_frames`` is counted by decoding when the container does not store it reliably.
    Raises ValueError when the file cannot be read.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream")
            stream = container.streams.video[0]
            height, width = stream.codec_context.height, stream.codec_context.width
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            count = 0
            for _ in container.decode(stream):
                count += 1
    except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
        raise ValueError(f"cannot read {path}: {exc}") from exc
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
