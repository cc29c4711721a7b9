"""The resolution-aware rectified-flow time shift (Open-Sora 1.2's `timestep_transform`) from the config:
off by default (the fixed `shift` as before), on for training (each micro-batch's shape) and sampling."""

from __future__ import annotations

import math

import pytest
import torch

from sorakit.config import load_config
from sorakit.diffusion import build_objective, build_sampler
from sorakit.diffusion.rflow import rflow_options, time_shift
from sorakit.training.bucketed import draw_micro_batch


def test_off_by_default_and_on_by_config():
    cfg = load_config("tiny", ["sampler.shift=3"])
    assert rflow_options(cfg.sampler, 64, 96, 8) == {"shift": 3.0}
    cfg = load_config("tiny", ["sampler.timestep_transform=true", "sampler.transform_base=[64,64,4]"])
    flow = build_objective("rflow", **rflow_options(cfg.sampler, 64, 64, 4))
    ratio = math.sqrt(128 * 96 / (64 * 64)) * math.sqrt(8 / 4)
    plain = build_objective("rflow")
    # training: one micro-batch's times are the plain draw shifted by its own shape's ratio
    t, noise, _, _ = draw_micro_batch(flow, torch.Generator().manual_seed(0), (3, 4, 8, 32, 24), 0.0,
                                   {"height": 128, "width": 96, "num_frames": 8})  # fmt: skip
    t0 = plain.sample_timesteps(3, torch.Generator().manual_seed(0), "cpu")
    torch.testing.assert_close(t, time_shift(t0, ratio))
    assert noise.shape == (3, 4, 8, 32, 24) and (t > t0).all()  # ratio > 1: towards noise
    # at the base shape the ratio is 1: nothing moves
    t1, _, _, _ = draw_micro_batch(flow, torch.Generator().manual_seed(0), (3, 4, 4, 16, 16), 0.0,
                                {"height": 64, "width": 64, "num_frames": 4})  # fmt: skip
    torch.testing.assert_close(t1, t0)
    # sampling: the video's shape sets the ratio of the sampling times
    sampler = build_sampler("rflow", 5, **rflow_options(cfg.sampler, 128, 96, 8))
    want = [
        float(time_shift(torch.tensor(x, dtype=torch.float64), ratio)) for x in (1000.0, 800, 600, 400, 200)
    ]
    assert sampler.timesteps == pytest.approx(want, rel=1e-12)


def test_micro_batch_masks_are_drawn_last_at_the_micro_batch_length():
    from sorakit.masks import MaskGenerator

    flow, geometry = build_objective("rflow"), {"height": 64, "width": 96, "num_frames": 8}
    plain = draw_micro_batch(flow, torch.Generator().manual_seed(3), (4, 4, 8, 16, 24), 0.3, geometry)
    masker = MaskGenerator({"image_head": 0.5, "image_tail": 0.5})  # every row masked, one or the other end
    masked = draw_micro_batch(
        flow, torch.Generator().manual_seed(3), (4, 4, 8, 16, 24), 0.3, geometry, masker
    )
    for a, b in zip(
        plain[:3], masked[:3]
    ):  # timesteps, noise, dropout: unchanged by the masks drawn after them
        torch.testing.assert_close(a, b)
    assert plain[3] is None and masked[3].shape == (4, 8)  # [B, T] at this micro-batch's 8 frames
    assert ((~masked[3][:, 0]) | (~masked[3][:, -1])).all()  # each row holds a condition frame at one end
