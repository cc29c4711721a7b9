"""Reference frames through TextToVideoPipeline (tiny components): image-to-video holds frame 0 at the reference's
latent, video extension, interpolation between two images, looping (each segment told the frames left from its
start), per-segment prompts, the resize/crop like
training data, and one-line errors for bad references or strategies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sorakit.data.transforms import frames_to_tensor
from sorakit.errors import UserError
from sorakit.pipelines import TextToVideoPipeline
from sorakit.pipelines.reference import load_reference

KW = dict(num_frames=4, height=16, width=16, num_inference_steps=3, progress=False)


def _image(seed: int = 0, h: int = 20, w: int = 28) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _ref_latent(pipe: TextToVideoPipeline, item) -> torch.Tensor:
    ref = load_reference(item, 16, 16)
    return pipe.vae.encode(ref.frames[None], sample=False)[0]


@pytest.mark.parametrize("sampler", ["iddpm", "dpm-solver", "ddim"])
def test_image_to_video_holds_frame_zero(tiny_pipe: TextToVideoPipeline, sampler: str) -> None:
    img = _image()
    lat = tiny_pipe("a red circle", reference=img, sampler=sampler, seed=0, output_type="latent", **KW)
    torch.testing.assert_close(lat[0, :, 0], _ref_latent(tiny_pipe, img)[:, 0], rtol=0, atol=1e-6)
    plain = tiny_pipe("a red circle", sampler=sampler, seed=0, output_type="latent", **KW)
    assert not torch.allclose(lat[0, :, 1:], plain[0, :, 1:])  # the other frames see the reference


def test_reference_resized_and_cropped_like_training_data(tiny_pipe: TextToVideoPipeline, tmp_path) -> None:
    from sorakit.data.video import write_image

    img = _image(1, 24, 40)
    path = write_image(tmp_path / "ref.png", img)
    ref = load_reference(path, 16, 16)
    torch.testing.assert_close(ref.frames, frames_to_tensor(img[None], (16, 16)))
    assert ref.original_size == (24, 40) and len(ref.sha256) == 64


def test_extend_interpolate_and_edit(tiny_pipe: TextToVideoPipeline) -> None:
    video = np.stack([_image(s) for s in range(6)])
    # default for a video: its last K frames become the first K (K = 2 here)
    lat = tiny_pipe("x", reference=video, condition_frames=2, seed=0, output_type="latent", **KW)
    torch.testing.assert_close(lat[0, :, :2], _ref_latent(tiny_pipe, video)[:, 4:], rtol=0, atol=1e-6)
    # two images: first and last frame (upstream "0;0,1,0,-1,1")
    a, b = _image(7), _image(8)
    lat = tiny_pipe("x", reference=[a, b], mask_strategy="0;0,1,0,-1,1", seed=0, output_type="latent", **KW)
    torch.testing.assert_close(lat[0, :, 0], _ref_latent(tiny_pipe, a)[:, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(lat[0, :, 3], _ref_latent(tiny_pipe, b)[:, 0], rtol=0, atol=1e-6)
    # SDEdit of a whole video at 0.5: close to, but not equal to, the reference
    lat = tiny_pipe(
        "x", reference=video[:4], mask_strategy="0,0,0,0,4,0.5", seed=0, output_type="latent", **KW
    )
    ref = _ref_latent(tiny_pipe, video[:4])
    assert not torch.allclose(lat[0], ref)


def test_loop_makes_one_longer_video(tiny_pipe: TextToVideoPipeline) -> None:
    lat = tiny_pipe("|0|a cat|1|a dog", loop=3, condition_frames=1, seed=0, output_type="latent", **KW)
    assert lat.shape[2] == 3 * 4 - 2 * 1
    frames = tiny_pipe("a cat", loop=2, condition_frames=2, seed=0, **KW)
    assert frames.shape == (1, 6, 16, 16, 3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(reference="/nonexistent.png"), "no such file"),
        (dict(reference=np.zeros((4, 4), np.uint8)), "expected uint8 RGB"),
        (dict(reference=_image(), mask_strategy="0,1"), "reference 1 does not exist"),
        (dict(reference=_image(), mask_strategy="0,0,0,9"), "target_start 9 is outside the video"),
        (dict(reference=_image(), mask_strategy="0,0,0,0,1,2"), r"edit_ratio must be in \[0, 1\]"),
        (dict(reference=_image(), mask_strategy="0,0,0,0,1,0,0"), "expected 1 to 6"),
        (dict(reference=np.stack([_image()] * 2)), "fewer than --condition-frames 4"),
        (dict(loop=2, condition_frames=4), "--condition-frames must be in"),
        (dict(loop=0), "--loop must be >= 1"),
    ],
)
def test_bad_references_are_user_errors(tiny_pipe: TextToVideoPipeline, kwargs, message) -> None:
    with pytest.raises(UserError, match=message):
        tiny_pipe("x", seed=0, **{**KW, **kwargs})


def test_reference_needs_an_stdit_model(tiny_pipe: TextToVideoPipeline, monkeypatch) -> None:
    def forward(x, t, y, mask=None):  # a model without x_mask
        return x

    monkeypatch.setattr(tiny_pipe.transformer, "forward", forward)
    with pytest.raises(UserError, match="reference frames need an STDiT model"):
        tiny_pipe("x", reference=_image(), seed=0, **KW)


def test_a_loop_tells_each_segment_the_frames_left(tiny_model_dir):
    from sorakit.models.checkpoint import load_checkpoint
    from sorakit.models.stdit import STDiT

    pipe = TextToVideoPipeline.from_pretrained(tiny_model_dir, device="cpu", dtype="fp32")
    old = pipe.transformer
    model = STDiT(horizon=True, **old.config).eval()
    load_checkpoint(model, old.state_dict())
    model.prediction_type = old.prediction_type
    # the embedder starts at zero (adds nothing): give it weights so that the horizon matters
    torch.nn.init.normal_(model.h_embedder.mlp[2].weight, std=0.5)
    pipe.transformer = model
    seen: list = []
    model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw.get("horizon")), with_kwargs=True)
    kw = KW | dict(num_inference_steps=2, seed=0)
    pipe("a cat", loop=3, condition_frames=1, **kw)
    assert sorted(set(seen), reverse=True) == [10.0, 7.0, 4.0]  # 3 x 4 - 2 x 1 = 10 frames, then 7, then 4
    seen.clear()
    pipe("a cat", **kw)
    assert set(seen) == {4.0}  # one segment: its own length, ratio 1

    # horizon guidance: the segments planned longer than their 4 frames run rows of both plans at once
    seen.clear()
    plain = pipe("a cat", loop=3, condition_frames=1, output_type="latent", **kw)
    pipe.config.sampler.horizon_guidance = 1.0
    guided = pipe("a cat", loop=3, condition_frames=1, output_type="latent", **kw)
    plans = {tuple(sorted(set(h.tolist()), reverse=True)) if torch.is_tensor(h) else h for h in seen}
    assert {p for p in plans if isinstance(p, tuple)} == {(10.0, 4.0), (7.0, 4.0)}
    assert 4.0 in plans  # the last segment, 4 frames left: no second plan
    assert guided.shape == plain.shape and torch.isfinite(guided).all() and not torch.equal(guided, plain)

    # a horizon margin: every segment of a loop is told the frames left x the margin (the last one too, so it
    # gets a second plan of its own length); a video of one segment still its own length
    pipe.config.sampler.horizon_margin = 1.5
    seen.clear()
    pipe("a cat", loop=3, condition_frames=1, output_type="latent", **kw)
    plans = {tuple(sorted(set(h.tolist()), reverse=True)) for h in seen if torch.is_tensor(h)}
    assert plans == {(15.0, 4.0), (10.5, 4.0), (6.0, 4.0)}
    seen.clear()
    pipe("a cat", **kw)
    assert set(seen) == {4.0}
