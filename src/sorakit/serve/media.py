"""Reference media of `sorakit serve`: uploaded images and videos checked before anything decodes them.

An upload is accepted only when

1. its first bytes are those of a format the server reads (PNG, JPEG, WebP images; MP4/MOV, Matroska/WebM
   videos), whatever its file name or content type says;
2. its header (PIL for images, the container's stream for videos, read without decoding a frame) gives a
   size and a frame count within the limits below, so a small file cannot unpack into gigabytes;
3. it is written under the job's own folder, ``DIR/videos/<id>/reference.<ext>``, with a name the server
   chooses (the client's file name is never used), before the job is committed: a restart finds the job
   with its reference.

The worker decodes the file when it runs the job (through the pipeline's `load_reference`); a file that
passes these checks and still fails to decode fails its job with the decoder's message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sorakit.fileutil import atomic_write
from sorakit.serve.errors import ApiError

MAX_SIDE = 4096  # pixels, either side of an image or a video frame
MAX_VIDEO_FRAMES = 512
MAX_VIDEO_VOXELS = 2**26  # frames x height x width: 192 MiB once decoded to uint8 RGB

IMAGE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
ACCEPTED = "PNG, JPEG or WebP images; MP4, MOV, WebM or MKV videos"


@dataclass
class Upload:
    """A file part of a multipart request: its bytes (the body limit bounds them) and its file name, which
    is never used as a path."""

    filename: str | None
    data: bytes = b""

    def __str__(self) -> str:
        return "<file upload>"


@dataclass
class ReferenceFile:
    """A checked reference: its bytes (an upload) or a completed video's file (copied when queued).

    ``frames`` is the frame count (1 for an image) that mask strategies are checked against."""

    kind: str  # "image" | "video"
    suffix: str
    frames: int
    width: int
    height: int
    origin: str  # "upload" or the id of the completed video it comes from
    data: bytes | None = None
    path: Path | None = None

    @property
    def name(self) -> str:
        return "reference" + self.suffix

    def record(self) -> dict[str, Any]:
        """What the job's params keep about it (the worker reads ``file`` from the job's folder)."""
        digest = hashlib.sha256(self.data).hexdigest() if self.data is not None else None
        return {"file": self.name, "kind": self.kind, "frames": self.frames, "width": self.width,
                "height": self.height, "origin": self.origin, "sha256": digest}  # fmt: skip

    def write(self, folder: Path) -> Path:
        """Write (or copy) the file into ``folder`` atomically (a fresh temporary file, fsynced, renamed)."""
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder / self.name, "wb", fsync=True) as fh:
            if self.data is not None:
                fh.write(self.data)
            else:
                assert self.path is not None
                with open(self.path, "rb") as src:
                    shutil.copyfileobj(src, fh)
        return folder / self.name


def _sniff(data: bytes) -> str | None:
    """The container of ``data`` from its magic bytes: "image" or "video" (None: not one we read)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") or data.startswith(b"\xff\xd8\xff"):
        return "image"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image"
    if data[4:8] == b"ftyp" or data.startswith(b"\x1a\x45\xdf\xa3"):  # ISO BMFF (mp4/mov), EBML (mkv/webm)
        return "video"
    return None


def _check_image(data: bytes, param: str) -> ReferenceFile:
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            fmt, (width, height) = im.format, im.size
            if fmt not in IMAGE_FORMATS:
                raise ApiError(
                    400, f"'{param}': unsupported image format {fmt} ({ACCEPTED})", param, "invalid_file"
                )
            _check_side(width, height, param)
            im.verify()  # structure and checksums, without decoding the pixels
    except ApiError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ApiError(400, f"'{param}' is not a readable image ({exc})", param, "invalid_file") from None
    return ReferenceFile("image", IMAGE_FORMATS[fmt], 1, width, height, "upload", data=data)


def _check_side(width: int, height: int, param: str) -> None:
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise ApiError(
            400,
            f"'{param}' is {width}x{height}; each side must be 1 to {MAX_SIDE} pixels",
            param,
            "file_too_large",
        )


def probe_video_header(source: Any, param: str) -> tuple[int, int, int]:
    """(frames, width, height) of a video file or bytes from its container: the stream header and a count
    of the packets (demuxed, not decoded). 400 when it has no video stream or is over the limits."""
    import av  # PyAV: heavy, and only needed once a video arrives

    try:
        with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
            if not container.streams.video:
                raise ApiError(400, f"'{param}' has no video stream", param, "invalid_file")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            _check_side(width, height, param)
            frames = 0
            for packet in container.demux(stream):
                frames += packet.size > 0  # the demuxer's final flush packet is empty
                if frames > MAX_VIDEO_FRAMES:
                    raise ApiError(
                        400, f"'{param}' has over {MAX_VIDEO_FRAMES} frames", param, "file_too_large"
                    )
    except ApiError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:  # type: ignore[attr-defined]
        raise ApiError(400, f"'{param}' is not a readable video ({exc})", param, "invalid_file") from None
    if frames == 0:
        raise ApiError(400, f"'{param}' holds no frames", param, "invalid_file")
    if frames * width * height > MAX_VIDEO_VOXELS:
        raise ApiError(400, f"'{param}' is {frames} frames of {width}x{height}; at most {MAX_VIDEO_VOXELS} "
                       "pixels in all", param, "file_too_large")  # fmt: skip
    return frames, width, height


def check_upload(data: bytes, param: str, kinds: tuple[str, ...] = ("image", "video")) -> ReferenceFile:
    """Check uploaded bytes (magic bytes, then the header) without decoding them; 400 on anything wrong."""
    kind = _sniff(data)
    if kind is None:
        raise ApiError(400, f"'{param}' is not a file the server reads ({ACCEPTED})", param, "invalid_file")
    if kind not in kinds:
        raise ApiError(400, f"'{param}' must be {' or '.join(kinds)}, got {kind}", param, "invalid_file")
    if kind == "image":
        return _check_image(data, param)
    frames, width, height = probe_video_header(data, param)
    suffix = ".mp4" if data[4:8] == b"ftyp" else ".mkv"
    return ReferenceFile("video", suffix, frames, width, height, "upload", data=data)


def data_url_bytes(url: Any, param: str) -> bytes:
    """The bytes of a ``data:<type>;base64,...`` URL. Other URLs are refused: the server fetches nothing."""
    if not isinstance(url, str):
        raise ApiError(422, f"'{param}' must be a string", param, "invalid_type")
    head, sep, payload = url.partition(",")
    if not (head.startswith("data:") and head.endswith(";base64") and sep):
        raise ApiError(400, f"'{param}' must be a base64 data URL (data:image/png;base64,...); the server "
                       "does not fetch URLs", param, "invalid_value")  # fmt: skip
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"'{param}' is not valid base64", param, "invalid_value") from None


def reference_from_field(value: Any, param: str, kinds: tuple[str, ...]) -> ReferenceFile:
    """``input_reference`` / ``video`` as sent: a file part, or ``{"image_url": data URL}``."""
    if isinstance(value, Upload):
        return check_upload(value.data, param, kinds)
    if isinstance(value, dict) and "image_url" in value:
        return check_upload(data_url_bytes(value["image_url"], f"{param}.image_url"), param, kinds)
    if isinstance(value, dict) and "file_id" in value:
        raise ApiError(400, f"'{param}.file_id': uploaded-file ids are not served; send the file itself",
                       f"{param}.file_id", "unsupported")  # fmt: skip
    raise ApiError(
        400, f"'{param}' must be a file upload or {{\"image_url\": data URL}}", param, "invalid_value"
    )
