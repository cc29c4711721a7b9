"""Shot boundary detection with PySceneDetect, as clip rows.

Each output row is one clip: `path`, `start_frame`, `end_frame` (exclusive), `start`, `end` (seconds),
`fps`, `num_frames`, `height`, `width`, plus the input row's other columns. Clips shorter than
`min_seconds` are dropped; clips longer than `max_seconds` are split into equal parts (or dropped).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sorakit.data.video import MediaLimits, check_frame_size, open_video, stream_fps
from sorakit.errors import UserError
from sorakit.tools._io import Row, fmt_float
from sorakit.tools.executor import Pool, map_items, pool_for
from sorakit.tools.info import check_complete

DETECTORS = ("content", "adaptive")
# PySceneDetect's own defaults: ContentDetector threshold 27 (on its 0-255 HSV-difference score),
# AdaptiveDetector adaptive_threshold 3 (ratio of a frame's score to its neighbours' mean).
DEFAULT_THRESHOLD = {"content": 27.0, "adaptive": 3.0}

SCENE_COLUMNS = ("start_frame", "end_frame", "start", "end", "fps", "num_frames", "height", "width")


@dataclass
class VideoScenes:
    """Scenes of one video: frame ranges [start, end) and the video's metadata."""

    fps: float
    num_frames: int
    height: int
    width: int
    scenes: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class SceneOptions:
    detector: str = "content"
    threshold: float | None = None
    min_scene_len: int = 15  # frames between two cuts at least (PySceneDetect's default)
    min_seconds: float | None = None
    max_seconds: float | None = None
    long: str = "split"  # what to do with scenes longer than max_seconds: split or drop

    def validate(self) -> None:
        if self.detector not in DETECTORS:
            raise UserError(f"unknown detector {self.detector!r}; choose from {', '.join(DETECTORS)}")
        if self.threshold is not None and self.threshold <= 0:
            raise UserError(f"--threshold must be > 0, got {self.threshold}")
        if self.min_scene_len < 1:
            raise UserError(f"--min-scene-len must be >= 1 frame, got {self.min_scene_len}")
        if self.min_seconds is not None and self.min_seconds < 0:
            raise UserError(f"--min-seconds must be >= 0, got {self.min_seconds}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise UserError(f"--max-seconds must be > 0, got {self.max_seconds}")
        if (
            self.min_seconds is not None
            and self.max_seconds is not None
            and self.min_seconds > self.max_seconds
        ):
            raise UserError(
                f"--min-seconds {self.min_seconds} is larger than --max-seconds {self.max_seconds}"
            )
        if self.long not in ("split", "drop"):
            raise UserError(f"--long must be split or drop, got {self.long!r}")


def _make_detector(opts: SceneOptions):
    from scenedetect import AdaptiveDetector, ContentDetector

    if opts.detector == "content":
        thr = opts.threshold if opts.threshold is not None else DEFAULT_THRESHOLD["content"]
        return ContentDetector(threshold=thr, min_scene_len=opts.min_scene_len)
    thr = opts.threshold if opts.threshold is not None else DEFAULT_THRESHOLD["adaptive"]
    return AdaptiveDetector(adaptive_threshold=thr, min_scene_len=opts.min_scene_len)


def _counted_stream(path: Path, fps: float, limits: MediaLimits):  # noqa: ANN202 - scenedetect is imported lazily
    """PySceneDetect's PyAV stream numbering frames in decode order, at the frame rate sorakit's other
    tools report, with every frame checked by the media guard. Its own numbering comes from timestamps,
    which a raw H.264 file does not have (24 frames read as 1), and its rate from a different guess; frame
    numbers in decode order are what `data cut` and `data info` count."""
    from scenedetect.backends.pyav import VideoStreamAv  # imports OpenCV: only when scenes are detected

    class CountedStream(VideoStreamAv):
        def __init__(self) -> None:
            # suppress_output keeps FFmpeg's own log callback off (PyAV's default); no threading_mode with it
            super().__init__(str(path), frame_rate=fps, suppress_output=True)
            self.count = 0

        def read(self, decode: bool = True):  # noqa: ANN202 - scenedetect's signature
            out = super().read(decode)
            if out is not False:
                self.count += 1
                check_frame_size(path, self._frame.height, self._frame.width, limits)
            return out

        @property
        def frame_number(self) -> int:
            return self.count

        @property
        def position(self):  # noqa: ANN202 - a FrameTimecode
            return self.base_timecode + max(0, self.count - 1)

    return CountedStream()


def detect_scenes(path: str | Path, opts: SceneOptions | None = None) -> VideoScenes:
    """Scenes of one video as frame ranges covering it entirely (one scene when there is no cut).

    The file goes through the media guard (:func:`sorakit.data.video.open_video`: declared size checked
    before decoding), then PySceneDetect's PyAV backend decodes it (the same decoder as the rest of
    sorakit), with frames numbered as :func:`_counted_stream` says.
    Raises an exception (any type) when the video cannot be opened or decoded.
    """
    from scenedetect import SceneManager

    opts = opts or SceneOptions()
    logging.getLogger("pyscenedetect").setLevel(logging.ERROR)
    path = Path(path)
    limits = MediaLimits.from_env()
    with open_video(path, limits) as (_, stream):
        fps = stream_fps(stream)
    if fps <= 0:
        raise ValueError(f"{path}: unknown frame rate")
    video = _counted_stream(path, fps, limits)
    width, height = video.frame_size
    manager = SceneManager()
    manager.add_detector(_make_detector(opts))
    manager.detect_scenes(video=video)
    scene_list = manager.get_scene_list(start_in_scene=True)
    num_frames = int(video.frame_number)
    if not scene_list:
        if num_frames <= 0:
            raise ValueError("no decodable frames")
        scene_list_frames = [(0, num_frames)]
    else:
        scene_list_frames = [(int(a.frame_num), int(b.frame_num)) for a, b in scene_list]
        num_frames = max(num_frames, scene_list_frames[-1][1])
    check_complete(path, num_frames)
    return VideoScenes(
        fps=fps, num_frames=num_frames, height=int(height), width=int(width), scenes=scene_list_frames
    )


def limit_lengths(
    scenes: list[tuple[int, int]],
    fps: float,
    min_seconds: float | None = None,
    max_seconds: float | None = None,
    long: str = "split",
) -> list[tuple[int, int]]:
    """Apply the clip length limits: scenes over `max_seconds` are split into the fewest equal parts
    that fit (or dropped when `long="drop"`), then parts under `min_seconds` are dropped."""
    out: list[tuple[int, int]] = []
    max_frames = None
    if max_seconds is not None:
        max_frames = max(1, math.floor(max_seconds * fps + 1e-6))
    for s, e in scenes:
        n = e - s
        if max_frames is not None and n > max_frames:
            if long == "drop":
                continue
            parts = math.ceil(n / max_frames)
            bounds = [s + (k * n) // parts for k in range(parts + 1)]
            out.extend(zip(bounds[:-1], bounds[1:]))
        else:
            out.append((s, e))
    if min_seconds is not None:
        out = [(s, e) for s, e in out if (e - s) / fps >= min_seconds - 1e-6]
    return out


def clip_rows(row: Row, path: Path, vs: VideoScenes, ranges: list[tuple[int, int]]) -> list[Row]:
    """One output row per clip range, carrying the input row's other columns."""
    rows = []
    for s, e in ranges:
        rows.append(
            {
                **row,
                "path": str(path),
                "start_frame": str(s),
                "end_frame": str(e),
                "start": fmt_float(s / vs.fps, 4),
                "end": fmt_float(e / vs.fps, 4),
                "fps": fmt_float(vs.fps, 4),
                "num_frames": str(e - s),
                "height": str(vs.height),
                "width": str(vs.width),
            }
        )
    return rows


def _scenes_item(job: tuple[str, SceneOptions]) -> dict:
    """One video's scenes as a JSON-able dict (runs on a worker; raises when the video is unreadable)."""
    return asdict(detect_scenes(*job))


@dataclass
class Result:
    rows: list[Row] = field(default_factory=list)
    failures: list[Row] = field(default_factory=list)
    num_scenes: int = 0


def run_scenes(
    rows: list[Row],
    paths: list[Path],
    opts: SceneOptions,
    workers: int = 1,
    progress: bool = True,
    pool: Pool | None = None,
    parts_dir: str | os.PathLike | None = None,
    retries: int = 0,
    shard_items: int | None = None,
) -> Result:
    """Detect scenes in every input and build clip rows (input order kept); failures get a reason.

    Runs on `pool` (else a local pool of `workers`) in shards; see :func:`sorakit.tools.executor.map_items`
    for `parts_dir` (resume), `retries` and `shard_items`.
    """
    opts.validate()
    jobs = [(str(p), opts) for p in paths]
    with pool_for(pool, workers) as ex:
        found = map_items(
            _scenes_item, jobs, ex, parts_dir, shard_items, retries,
            desc="scenes" if progress else None, unit="video", key=opts,
        )  # fmt: skip
    out = Result()
    for row, path, (ok, res) in zip(rows, paths, found):
        if not ok:
            out.failures.append({**row, "error": res})
            continue
        vs = VideoScenes(**res)
        out.num_scenes += len(vs.scenes)
        ranges = limit_lengths(vs.scenes, vs.fps, opts.min_seconds, opts.max_seconds, opts.long)
        if not ranges:
            why = f"none of its {len(vs.scenes)} scenes is within the length limits"
            out.failures.append({**row, "error": why})
            continue
        out.rows.extend(clip_rows(row, path, vs, ranges))
    return out
