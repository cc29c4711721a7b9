"""What the training loop does differently with buckets (``data.buckets``): the micro-batch sampler and the
random draws of one micro-batch.

Without buckets, timesteps, noise and caption dropout are drawn for the global batch from one checkpointed
generator and sliced per rank (2 ranks x batch 2 = 1 rank x batch 4). With buckets every rank holds its own
micro-batch of its own shape, so each micro-batch draws from generators seeded by ``(seed, epoch, global
micro-batch index)`` -- VAE posterior sample, timesteps, noise, caption dropout and reference-frame masks
alike. A micro-batch is then
trained the same whichever rank, and however many ranks, run it (a 2-process step is the mean of the two
1-process micro-batches), and a resumed run needs no generator state to continue bit-exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sorakit.data.bucket_cache import BucketLatentCache
from sorakit.data.buckets import BucketBatchSampler, build_table, clip_sizes
from sorakit.errors import ConfigError, UserError

_TAG = 0x6D62  # separates these draws from the data pipeline's per-sample generators


def bucket_sampler(cfg: Any, rows: list[Any], dp_rank: int, dp_size: int) -> BucketBatchSampler | None:
    """The bucket sampler for `rows` (:class:`~sorakit.data.dataset.Row`) or None without `data.buckets`."""
    table = build_table(cfg.data)
    if table is None:
        return None
    _check_sequence_parallel(table, cfg.parallel.sp_size)
    return BucketBatchSampler(table, clip_sizes(rows), dp_rank, dp_size, cfg.train.seed)


def _check_sequence_parallel(table: Any, sp_size: int) -> None:
    """Sequence parallelism splits latent frames over `sp_size` ranks: every bucket length must allow it."""
    bad = [b.name for b in table.buckets() if b.num_frames % sp_size]
    if sp_size > 1 and bad:
        raise ConfigError(
            f"parallel.sp_size={sp_size}: bucket(s) {', '.join(bad)} have a frame count that does not split "
            f"over {sp_size} processes"
        )


def cache_sampler(cfg: Any, dataset: Any, dp_rank: int, dp_size: int) -> BucketBatchSampler | None:
    """The bucket sampler of a bucketed latent cache (each clip stored at its bucket), else None."""
    if not isinstance(dataset, BucketLatentCache):
        return None
    table = build_table(cfg.data)
    if table is None:
        raise UserError("this latent cache is bucketed: train it with a config that has data.buckets")
    _check_sequence_parallel(table, cfg.parallel.sp_size)
    return BucketBatchSampler(table, [], dp_rank, dp_size, cfg.train.seed, fixed=dataset.buckets)


@dataclass
class MicroBatchRandom:
    """The generators of one micro-batch: `cpu` (timesteps, noise, dropout) and `device` (VAE sampling)."""

    cpu: torch.Generator
    device: torch.Generator


def micro_batch_random(
    seed: int, epoch: int, step_in_epoch: int, dp_rank: int, dp_size: int, device: torch.device
) -> MicroBatchRandom:
    """Generators of the micro-batch this rank trains at `step_in_epoch` (global index step * dp + rank)."""
    index = step_in_epoch * dp_size + dp_rank
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index, _TAG]).generate_state(2, np.uint64)
    return MicroBatchRandom(
        cpu=torch.Generator().manual_seed(int(state[0] >> 1)),
        device=torch.Generator(device=device).manual_seed(int(state[1] >> 1)),
    )


def draw_micro_batch(
    objective: Any,
    gen: torch.Generator,
    shape: tuple[int, ...],
    p_drop: float,
    geometry: dict[str, int],
    masker: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Timesteps `[B]`, noise `shape` = `[B, C, T, h, w]`, caption dropout `[B]` (or None) and, with a
    `masker` (``train.mask_ratios``), reference-frame masks `[B, T]` of one micro-batch, in that order;
    `geometry` (height, width, num_frames in pixels/frames) feeds a resolution-aware shift."""
    b = shape[0]
    if getattr(objective, "use_timestep_transform", False):
        t = objective.sample_timesteps(b, gen, "cpu", **geometry)
    else:
        t = objective.sample_timesteps(b, gen, "cpu")
    noise = torch.randn(shape, generator=gen)
    drop = (torch.rand(b, generator=gen) < p_drop).long() if p_drop > 0 else None
    x_mask = masker.get_masks(b, shape[2], gen)[0] if masker is not None else None
    return t, noise, drop, x_mask


def batch_geometry(batch: dict[str, Any], downsample: int) -> tuple[list[int], dict[str, int]]:
    """(the batch's shape as logged, {height, width, num_frames} in pixels) of a video or latent batch."""
    if "video" in batch:
        shape = list(batch["video"].shape)  # [B, 3, T, H, W] before the VAE
        return shape, {"height": shape[3], "width": shape[4], "num_frames": shape[2]}
    shape = list(batch["latent"].shape)  # [B, C, T, h, w]
    return shape, {"height": shape[3] * downsample, "width": shape[4] * downsample, "num_frames": shape[2]}
