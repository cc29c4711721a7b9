"""Clip sampling and frame transforms for training: which frames to take, resize + center crop, flip,
scaling to [-1, 1]. Pure functions over numpy / torch, no torchvision.

Open-Sora 1.0 takes `num_frames` frames every `frame_interval` frames from a random start
(``TemporalRandomCrop``), resizes the shorter side and center-crops to the training size, flips
horizontally at random and normalises to [-1, 1].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def clip_indices(total: int, num_frames: int, frame_interval: int, rng: np.random.Generator) -> list[int]:
    """Frame indices of one training clip from a video of `total` frames: `num_frames` frames exactly
    `frame_interval` apart from a random start (Open-Sora's ``TemporalRandomCrop``; upstream spreads the
    frames with a truncated ``linspace`` over the window, which makes some gaps one frame longer).
    A video shorter than the clip is spread evenly over `num_frames` (frames repeat when it has fewer).
    """
    if total <= 0:
        raise ValueError("video has no frames")
    span = (num_frames - 1) * frame_interval + 1
    if total >= span:
        start = int(rng.integers(0, total - span + 1))
        return [start + k * frame_interval for k in range(num_frames)]
    return np.linspace(0, total - 1, num_frames).round().astype(int).tolist()


def resize_center_crop(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize so that the frames cover `size` (H, W) keeping the aspect ratio, then center-crop.

    frames: ``[T, 3, H, W]`` float -> ``[T, 3, size[0], size[1]]``. Antialiased bilinear downscaling.
    """
    th, tw = size
    h, w = frames.shape[-2:]
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    if (nh, nw) != (h, w):
        frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", align_corners=False, antialias=nh < h)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return frames[..., top : top + th, left : left + tw]


def clips_to_tensor(clips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 clips ``[B, T, H, W, 3]`` -> float32 ``[B, 3, T, H, W]`` in [-1, 1], as the VAE encodes them (no
    resizing: the clips are already the size to encode)."""
    x = torch.as_tensor(np.ascontiguousarray(clips) if isinstance(clips, np.ndarray) else clips)
    return x.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def frames_to_tensor(frames: np.ndarray, size: tuple[int, int], flip: bool = False) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float32 ``[3, T, size[0], size[1]]`` in [-1, 1] (channels first, as the
    VAE expects), optionally flipped left-right."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    x = resize_center_crop(x, size)
    if flip:
        x = x.flip(-1)
    x = (x / 127.5 - 1.0).clamp_(-1.0, 1.0)
    return x.permute(1, 0, 2, 3).contiguous()
