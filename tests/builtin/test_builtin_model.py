"""The shipped built-in model loads by default and generates a correctly shaped video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sorakit.pipelines.model_dir import BUILTIN_MODEL_DIR, is_model_dir, read_model_dir


def test_shipped_weights_exist_and_are_small():
    assert is_model_dir(BUILTIN_MODEL_DIR), "src/sorakit/builtin/model is missing: run `make train-builtin`"
    size = sum(p.stat().st_size for p in Path(BUILTIN_MODEL_DIR).rglob("*") if p.is_file())
    assert size <= 25 * 2**20
    _, cfg = read_model_dir(BUILTIN_MODEL_DIR)
    assert cfg.text_encoder.type == "minilm" and cfg.text_encoder.path == "builtin:minilm"
    assert cfg.inference.image_size == [64, 64] and cfg.inference.num_frames == 16


def test_default_pipeline_generates_a_video():
    from sorakit.pipelines import TextToVideoPipeline

    torch.set_num_threads(1)
    pipe = TextToVideoPipeline.from_pretrained(None, device="cpu")
    video = pipe("a red circle moving to the right", num_inference_steps=2, seed=0, progress=False)
    assert isinstance(video, np.ndarray) and video.dtype == np.uint8
    assert video.shape == (1, 16, 64, 64, 3)
    again = pipe("a red circle moving to the right", num_inference_steps=2, seed=0, progress=False)
    assert np.array_equal(video, again)
