"""The built-in model's decoder refinement: the ``decoder`` stage of the v3 recipe (``make train-builtin``).

The transformer places, colours and paces the object right, but at 64x64 a shape is 2 x 2 transformer tokens
and its outline comes out loose: apexes blunt, sides uneven (shape fidelity 0.877 for v3.2, where its own
autoencoder reconstructs rendered clips at 0.918). The autoencoder's decoder only ever saw the encoder's
latents of clean clips, never the transformer's. This stage shows it the transformer's own latents, each
paired with the clean rendering of the object that video shows:

1. :func:`self_pairs` -- the model generates videos for training captions (64x64, 16 frames, its default
   sampler); a video the evaluator scores as the right colour and shape and temporally consistent is kept, and
   :func:`clean_frames` renders its target: the caption's shape and colour, one size for the clip (from the
   object's area), centred on the object's centroid in each frame -- what the transformer drew, drawn clean
   (clips whose object touches the frame's edge are left out);
2. :func:`sorakit.training.vae.finetune_decoder` tunes the decoder on those pairs mixed with the encoder's
   latents of the same training clips (anchors, so references and reconstructions still decode as before);
   the encoder -- hence the latent space the transformer learnt -- is unchanged.

:func:`refine_decoder` runs both and writes the autoencoder; the recipe's stage installs it into the model
directory (docs/benchmarks.md, "Built-in model v3.3", has what it changed).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sorakit.data.transforms import clips_to_tensor
from sorakit.data.video import read_video
from sorakit.errors import UserError
from sorakit.eval.shapes import FG_THRESHOLD, VideoAnalysis, analyze_video, score_video
from sorakit.fileutil import atomic_path, follow_umask, save_safetensors, write_text_atomic
from sorakit.logging import get_logger
from sorakit.pipelines import to_uint8
from sorakit.safeload import load_safetensors
from sorakit.shapes_world import ALL_COLORS, shape_coverage
from sorakit.training.vae import DecoderTuneConfig, finetune_decoder

logger = get_logger(__name__)

# area of each shape over the area of its square bounding box, and its centroid's height in the box (0 = top)
FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5}
CENTROID_V = {"circle": 0.5, "square": 0.5, "triangle": 2.0 / 3.0, "diamond": 0.5}
SIZE = (16, 64, 64)  # frames, height, width of the generated clips


def clean_frames(
    frames: np.ndarray, color: str, shape: str, analysis: VideoAnalysis | None = None
) -> np.ndarray | None:
    """The clean rendering of the object of uint8 ``[T, H, W, 3]`` `frames`: `shape` in `color`, one side for
    the clip (the median over frames of the side whose ideal shape has the object's area), each frame's box
    placed so that the shape's centroid is the object's. None when a frame shows no object, or one cut by the
    frame's edge (the centroid of what is left of it is not the shape's). `analysis`: the evaluator's analysis
    of these frames when the caller has it (else it is made here)."""
    t, h, w, _ = frames.shape
    analysis = analyze_video(frames) if analysis is None else analysis
    if any(a is None for a in analysis.areas):
        return None
    fg = frames.max(axis=-1) > FG_THRESHOLD * 255
    if fg[:, 0].any() or fg[:, -1].any() or fg[:, :, 0].any() or fg[:, :, -1].any():
        return None
    side = float(np.median([np.sqrt(a / FILL[shape]) for a in analysis.areas]))
    rgb = np.asarray(ALL_COLORS[color], dtype=np.float32)
    out = np.empty_like(frames)
    for i, (cx, cy) in enumerate(analysis.centroids):
        # the evaluator's centroids are pixel indices; the renderer's coordinates put pixel centres at +0.5
        x, y = cx + 0.5 - side / 2, cy + 0.5 - side * CENTROID_V[shape]
        cov = shape_coverage(shape, h, w, x, y, side)
        out[i] = np.clip(np.rint(cov[..., None] * rgb), 0, 255).astype(np.uint8)
    return out


@torch.no_grad()
def self_pairs(
    pipe, captions: list[str], batch_size: int = 16, seed: int = 1000, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's latents ``[N, c, T, h, w]`` for `captions` (default sampler, 64x64, 16 frames; batch k seeded
    ``seed + k``) and the clean frames uint8 ``[N, T, H, W, 3]`` of each kept video (:func:`clean_frames`);
    a video is kept when the evaluator finds the caption's colour and shape and calls it consistent."""
    latents, targets = [], []
    bar = tqdm(total=len(captions), desc="decoder pairs", unit="video", disable=not progress)
    for k, start in enumerate(range(0, len(captions), batch_size)):
        part = captions[start : start + batch_size]
        gen = torch.Generator("cpu").manual_seed(seed + k)
        z = pipe(part, num_frames=SIZE[0], height=SIZE[1], width=SIZE[2], generator=gen, progress=False,
                 output_type="latent")  # fmt: skip
        videos = to_uint8(pipe.vae.decode(z.to(pipe.dtype))).cpu().numpy()  # the pipeline's "np" output
        for text, lat, frames in zip(part, z, videos):
            score = score_video(frames, text)
            if not (score.analysis.consistent and score.color_ok and score.shape_ok):
                continue
            target = clean_frames(frames, score.target[0], score.target[1], score.analysis)
            if target is not None:
                latents.append(lat.float().cpu())
                targets.append(torch.from_numpy(target))
        bar.update(len(part))
    bar.close()
    if not latents:
        raise UserError("decoder refinement: the model drew no usable video (nothing to learn from)")
    return torch.stack(latents), torch.stack(targets)


def training_clips(csv_path: Path, n: int) -> tuple[list[str], list[Path]]:
    """Captions and video paths of the first `n` rows of a synth CSV with the generated clips' size."""
    if n < 1:
        raise UserError(f"the decoder stage needs at least one video to generate, got {n}")
    caps, paths = [], []
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            if (int(row["num_frames"]), int(row["height"]), int(row["width"])) == SIZE:
                caps.append(row["text"])
                paths.append(csv_path.parent / row["path"])
            if len(caps) == n:
                break
    if not caps:
        raise UserError(f"{csv_path}: no {SIZE[1]}x{SIZE[2]} clip of {SIZE[0]} frames to learn from")
    return caps, paths


@torch.no_grad()
def anchor_pairs(vae, paths: list[Path], batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's latents (posterior mean, scaled) of the clips at `paths` and their frames."""
    frames = torch.from_numpy(np.stack([read_video(p) for p in paths]))  # [N, T, H, W, 3]
    latents = []
    for i in range(0, len(frames), batch_size):
        latents.append(vae.encode(clips_to_tensor(frames[i : i + batch_size]), sample=False).float())
    return torch.cat(latents), frames


def refine_decoder(
    pipe, csv_path: Path, out: Path, num_videos: int, cfg: DecoderTuneConfig, progress: bool = False
) -> Path:
    """Tune `pipe`'s VAE decoder on its own latents (module doc) and save the autoencoder to `out`
    (``save_pretrained``). The pairs are kept in ``out.parent/pairs.safetensors``: a resumed run reuses them."""
    caps, paths = training_clips(csv_path, num_videos)
    pairs_file = out.parent / "pairs.safetensors"
    if pairs_file.is_file():
        saved = load_safetensors(pairs_file)
        pairs = saved["latents"], saved["frames"]
    else:
        pairs = self_pairs(pipe, caps, progress=progress)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(pairs_file) as tmp:
            save_safetensors({"latents": pairs[0].contiguous(), "frames": pairs[1].contiguous()}, tmp)
    logger.info("decoder refinement: %d of %d generated videos kept", len(pairs[0]), len(caps))
    vae = pipe.vae.float()
    anchors = anchor_pairs(vae, paths)
    autoencoder = finetune_decoder(vae.autoencoder, pairs, anchors, vae.scaling_factor, cfg)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    autoencoder.save_pretrained(str(tmp), safe_serialization=True)
    config = json.loads((tmp / "config.json").read_text())
    config.pop("_name_or_path", None)  # where the base was loaded from: a path on the machine that ran it
    write_text_atomic(
        tmp / "config.json", json.dumps(config, indent=2, sort_keys=True, allow_nan=False) + "\n"
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    follow_umask(out)
    return out
