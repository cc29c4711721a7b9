"""Helpers of the training tests: generated videos + CSV, a latent cache, a tiny VAE and a hashing text
encoder (so no weights are downloaded), and a tiny config."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch


def write_clips(folder: Path, n: int, frames: int = 6, size: int = 20, seed: int = 0) -> list[Path]:
    """`n` small MP4s of a coloured square moving over a gradient (deterministic)."""
    from sorakit.data.video import write_video

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        color = rng.integers(60, 255, size=3)
        video = np.zeros((frames, size, size, 3), np.uint8)
        for t in range(frames):
            video[t, ..., 0] = (xx * 255 // size).astype(np.uint8)
            x0 = (2 + 2 * t + i) % (size - 6)
            video[t, 4:10, x0 : x0 + 6] = color
        path = folder / f"clip{i}.mp4"
        write_video(path, video, fps=8)
        paths.append(path)
    return paths


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    import csv

    fields = list(rows[0])
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


class HashTextEncoder(torch.nn.Module):
    """Deterministic stand-in for T5: each word -> a fixed random vector; `encode` like sorakit's encoders."""

    def __init__(self, dim: int = 16, max_length: int = 8) -> None:
        super().__init__()
        self.output_dim = dim
        self.model_max_length = max_length

    def _vec(self, word: str) -> torch.Tensor:
        seed = int(hashlib.sha1(word.encode()).hexdigest()[:8], 16)
        return torch.randn(self.output_dim, generator=torch.Generator().manual_seed(seed))

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.zeros(len(texts), 1, self.model_max_length, self.output_dim)
        mask = torch.zeros(len(texts), self.model_max_length, dtype=torch.long)
        for b, text in enumerate(texts):
            for i, word in enumerate(text.split()[: self.model_max_length]):
                y[b, 0, i] = self._vec(word)
                mask[b, i] = 1
        return y, mask


def tiny_vae():
    """sorakit's VideoVAE around a randomly initialised 2-level AutoencoderKL (downsampling 2)."""
    from sorakit.encoders import VideoVAE
    from sorakit.pipelines.tiny import make_tiny_autoencoder

    return VideoVAE(make_tiny_autoencoder(seed=0))


def make_cache(folder: Path, n: int = 12, text_dim: int = 16, max_length: int = 8, seed: int = 0) -> Path:
    """A latent cache of random latents [4, 4, 8, 8] and caption embeddings, as `sorakit data encode` writes."""
    from sorakit.data.cache import write_meta, write_shard

    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lengths = torch.randint(2, max_length + 1, (n, 1), generator=g)
    for k, part in enumerate(torch.arange(n).chunk(2)):
        m = len(part)
        write_shard(folder / f"shard-{k:05d}.safetensors", {
            "latents": torch.randn(m, 4, 4, 8, 8, generator=g),
            "y": torch.randn(m, max_length, text_dim, generator=g).half(),
            "mask": (torch.arange(max_length)[None] < lengths[part]).to(torch.uint8),
            "row": part.clone(),
        })  # fmt: skip
    write_meta(folder, {"latent_shape": [4, 4, 8, 8], "text_dim": text_dim, "model_max_length": max_length})
    return folder


TINY_OVERRIDES = [
    "model.arch.hidden_size=32", "model.arch.depth=2", "model.arch.num_heads=4",
    "data.num_frames=4", "data.image_size=[16,16]", "data.frame_interval=1", "data.num_workers=0",
    "train.batch_size=4", "train.tensorboard=false", "train.peak_tflops=1.0", "train.log_every=1",
    "text_encoder.model_max_length=8",
]  # fmt: skip


def tiny_config(*overrides: str):
    from sorakit.config import load_config

    return load_config("tiny", [*TINY_OVERRIDES, *overrides])


def kill_after_checkpoint(
    cmd: list[str], run: Path, env: dict[str, str], at: int = 3, timeout: float = 180
) -> int:
    """Start the training command `cmd`, SIGKILL it as soon as `run` has a checkpoint of step >= `at`, and
    return the last checkpoint's step (what a resume starts from)."""
    import signal
    import subprocess
    import time

    from sorakit.training.checkpoint import list_checkpoints

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        done = list_checkpoints(run)
        if done and done[-1][0] >= at:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return list_checkpoints(run)[-1][0]


def random_stdit(cfg):  # noqa: ANN001, ANN201 - a sorakit STDiT
    """The tiny STDiT of `make_cache`'s latents with every weight random (seed 7, std 0.05): upstream
    zero-inits several outputs, which would hide what a test compares."""
    from sorakit.training.trainer import DataSource, build_model

    data = DataSource(None, None, True, (4, 8, 8), 4, 16, 8, False)  # type: ignore[arg-type]
    model = build_model(cfg, data)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model
