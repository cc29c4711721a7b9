"""The built-in model's decoder refinement (`sorakit.builtin.decoder`, the v3 recipe's `decoder` stage): the
clean target of a generated clip is the prompted shape where the clip shows its object, and
`finetune_decoder` learns latent -> frame pairs while leaving the encoder as it is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sorakit.builtin.decoder import clean_frames, training_clips
from sorakit.errors import UserError
from sorakit.eval.shapes import analyze_video, score_video
from sorakit.shapes_world import ShapeSpec, render
from sorakit.training.vae import (
    DecoderTuneConfig,
    VAETrainConfig,
    build_autoencoder,
    finetune_decoder,
    to_tensor,
)


def _clip(shape: str, color: str = "red", motion: str = "right") -> np.ndarray:
    spec = ShapeSpec(color, shape, motion, side=18.0, speed=1.7, x0=6.3, y0=21.6, caption="")
    return render(spec, 64, 16)


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_a_clean_clip_is_its_own_target(shape):
    frames = _clip(shape)
    target = clean_frames(frames, "red", shape)
    a, b = analyze_video(frames), analyze_video(target)
    for (x0, y0), (x1, y1) in zip(a.centroids, b.centroids):
        assert abs(x0 - x1) < 0.35 and abs(y0 - y1) < 0.35  # the object stays where it was
    masks = frames.max(-1) > 102, target.max(-1) > 102
    iou = (masks[0] & masks[1]).sum() / (masks[0] | masks[1]).sum()
    assert iou > 0.93
    assert score_video(target, f"a red {shape} moving right").fidelity > 0.9
    np.testing.assert_array_equal(clean_frames(frames, "red", shape, a), target)  # the caller's analysis


@pytest.mark.parametrize(("shape", "damage"), [("triangle", "blunt"), ("circle", "stem"), ("square", "dent")])
def test_a_loosely_drawn_object_gets_a_clean_target(shape, damage):
    frames = _clip(shape).copy()
    for f in frames:
        ys, xs = np.nonzero(f.max(-1) > 102)
        top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
        cx = (left + right) // 2
        if damage == "blunt":  # the apex 6 px wide
            f[top : top + 5, cx - 3 : cx + 3] = (255, 0, 0)
        elif damage == "stem":  # the mushroom: a stem under the cap
            f[bottom : bottom + 5, cx - 2 : cx + 2] = (255, 0, 0)
        else:  # concave sides
            f[top + 5 : bottom - 4, left : left + 4] = 0
            f[top + 5 : bottom - 4, right - 3 : right + 1] = 0
    prompt = f"a red {shape} moving right"
    damaged, clean = score_video(frames, prompt), score_video(clean_frames(frames, "red", shape), prompt)
    assert damaged.fidelity < 0.86 and clean.fidelity > 0.9
    assert clean.all_ok and clean.analysis.consistent


def test_a_frame_without_an_object_or_with_a_cut_one_has_no_target():
    frames = _clip("circle").copy()
    frames[5] = 0
    assert clean_frames(frames, "red", "circle") is None
    spec = ShapeSpec("red", "circle", "left", side=18.0, speed=1.7, x0=20.0, y0=21.6, caption="")
    leaving = render(spec, 64, 16)  # reaches the left edge at frame 12
    assert clean_frames(leaving[:10], "red", "circle") is not None
    assert clean_frames(leaving, "red", "circle") is None


def test_training_clips_are_the_generated_size(tmp_path):
    (tmp_path / "train.csv").write_text(
        "path,text,num_frames,fps,height,width\n"
        "videos/0.mp4,a red circle moving left,8,8,64,64\n"
        "videos/1.mp4,a blue square moving up,16,8,64,96\n"
        "videos/2.mp4,a green triangle moving down,16,8,64,64\n"
    )
    caps, paths = training_clips(tmp_path / "train.csv", 5)
    assert caps == ["a green triangle moving down"] and paths == [tmp_path / "videos/2.mp4"]
    with pytest.raises(UserError, match="at least one"):
        training_clips(tmp_path / "train.csv", 0)


def test_finetune_decoder_learns_the_pairs_and_keeps_the_encoder():
    torch.manual_seed(0)
    ae = build_autoencoder(VAETrainConfig(block_out_channels=[16, 16], norm_num_groups=8), sample_size=16)
    frames = torch.from_numpy(
        np.stack([_clip("circle", "green")[:, 24:40, 8:24] for _ in range(2)])
    )  # [2, T, 16, 16, 3]
    with torch.no_grad():
        x = to_tensor(frames.reshape(-1, 16, 16, 3).numpy())
        z = ae.encode(x).latent_dist.mode().reshape(2, 16, 4, 8, 8).permute(0, 2, 1, 3, 4)
    targets = frames.flip(-2)  # the pairs ask for mirrored frames, the anchors for the frames themselves
    encoder = {k: v.clone() for k, v in ae.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}

    def error() -> float:
        with torch.no_grad():
            y = ae.decode(z.permute(0, 2, 1, 3, 4).reshape(-1, 4, 8, 8)).sample
        return float((y - to_tensor(targets.reshape(-1, 16, 16, 3).numpy())).abs().mean())

    before = error()
    cfg = DecoderTuneConfig(steps=60, batch_size=8, lr=3e-3, warmup_steps=5, target_share=0.75)
    out = finetune_decoder(ae, (z, targets), (z, frames), 1.0, cfg)
    assert out is ae and not ae.training
    assert error() < 0.6 * before
    assert all(torch.equal(ae.state_dict()[k], v) for k, v in encoder.items())
    assert not any(p.requires_grad for p in ae.parameters())
    with pytest.raises(UserError, match="do not pair up"):
        finetune_decoder(ae, (z, targets[:, :8]), (z, frames), 1.0, cfg)
