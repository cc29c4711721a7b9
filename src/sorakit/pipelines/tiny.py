"""Tiny, randomly initialised components built from configs, for tests, benchmarks and smoke runs.

Nothing is downloaded: the T5 tokenizer is a small unigram model trained on the spot with the
``tokenizers`` library, the T5 encoder and the AutoencoderKL are built from small configs, and the
diffusion transformer is a 2-block STDiT. :func:`make_tiny_model_dir` writes a complete model directory
in the format of :mod:`sorakit.pipelines` that ``sorakit generate --model DIR`` accepts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from sorakit.config import Config
from sorakit.encoders.text import _quiet_transformers
from sorakit.modeldir import save_model_dir
from sorakit.models import build_model

_CORPUS = [
    "a red circle moving to the right",
    "a blue square bouncing on the floor",
    "a cat playing the piano in a sunny room",
    "waves crashing on a rocky beach at sunset",
    "a timelapse of clouds over green mountains",
    "a drone shot of a city street at night",
    "two dogs running across a snowy field",
]

# a 2-level AutoencoderKL: spatial downsampling 2, 4 latent channels
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(8, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=32,
)

TINY_STDIT = dict(
    depth=2,
    hidden_size=32,
    num_heads=2,
    patch_size=(1, 2, 2),
    in_channels=4,
    input_size=(4, 8, 8),
    mlp_ratio=2.0,
)


def make_tiny_t5(out_dir: str | os.PathLike, d_model: int = 32, vocab_size: int = 64, seed: int = 0) -> Path:
    """A T5 v1.1-style encoder (gated-GELU, 2 layers) + a trained unigram T5 tokenizer in ``out_dir``."""
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    _quiet_transformers()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = SentencePieceUnigramTokenizer()
    trainer.train_from_iterator(
        _CORPUS * 4, vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
        show_progress=False,
    )  # fmt: skip
    tokenizer = T5TokenizerFast(
        tokenizer_object=trainer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
    )
    tokenizer.save_pretrained(str(out))
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    T5EncoderModel(config).save_pretrained(str(out))
    return out


def make_tiny_autoencoder(seed: int = 0, **overrides):  # noqa: ANN201 - diffusers type imported lazily
    """A small randomly initialised ``AutoencoderKL`` (see :data:`TINY_VAE`)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**{**TINY_VAE, **overrides})


def make_tiny_vae(out_dir: str | os.PathLike, seed: int = 0, **overrides) -> Path:
    """Write :func:`make_tiny_autoencoder` with diffusers' ``save_pretrained`` to ``out_dir``."""
    out = Path(out_dir)
    make_tiny_autoencoder(seed, **overrides).save_pretrained(str(out))
    return out


def tiny_config(text_encoder: str = "t5", max_length: int = 12):  # noqa: ANN201 - Config imported lazily
    """The Config of the tiny pipeline: STDiT-tiny on 4 latent channels, 4 frames at 16x16 by default."""
    cfg = Config()
    cfg.model.type = "STDiT-tiny"
    cfg.model.arch = {"hidden_size": TINY_STDIT["hidden_size"], "num_heads": TINY_STDIT["num_heads"],
                      "mlp_ratio": TINY_STDIT["mlp_ratio"]}  # fmt: skip
    cfg.vae.type = "sd-vae"
    cfg.vae.path = "vae"
    if text_encoder == "minilm":
        cfg.text_encoder.type, cfg.text_encoder.path = "minilm", "builtin:minilm"
    else:
        cfg.text_encoder.type, cfg.text_encoder.path = "t5", "text_encoder"
    cfg.text_encoder.model_max_length = max_length
    cfg.sampler.type = "iddpm"
    cfg.sampler.num_sampling_steps = 5
    cfg.sampler.guidance_scale = 4.0
    cfg.inference.num_frames = 4
    cfg.inference.image_size = [16, 16]
    cfg.inference.fps = 4
    cfg.inference.batch_size = 2
    cfg.inference.dtype = "fp32"
    return cfg


def make_tiny_transformer(caption_channels: int, max_length: int, seed: int = 0, std: float = 0.05):
    """STDiT-tiny with every weight drawn from N(0, std), so that (unlike the upstream init, which zeroes
    the output layers) the prediction depends on the noise, the timestep and the caption."""
    torch.manual_seed(seed)
    model = build_model(
        "STDiT-tiny", input_size=TINY_STDIT["input_size"], hidden_size=TINY_STDIT["hidden_size"],
        num_heads=TINY_STDIT["num_heads"], mlp_ratio=TINY_STDIT["mlp_ratio"], caption_channels=caption_channels,
        model_max_length=max_length,
    )  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


def make_tiny_model_dir(out_dir: str | os.PathLike, seed: int = 0, text_encoder: str = "t5") -> Path:
    """A complete tiny model directory (transformer, VAE and -- for T5 -- the text encoder inside).

    ``text_encoder="minilm"`` uses the pip-packaged MiniLM (384-d, 16 tokens) by reference instead.
    """
    if text_encoder == "minilm":
        cfg = tiny_config("minilm", max_length=16)
        transformer = make_tiny_transformer(384, 16, seed)
        return save_model_dir(out_dir, transformer, cfg, vae=make_tiny_autoencoder(seed))
    cfg = tiny_config("t5", max_length=12)
    with tempfile.TemporaryDirectory() as tmp:
        t5_dir = make_tiny_t5(Path(tmp) / "t5", seed=seed)
        transformer = make_tiny_transformer(32, 12, seed)
        return save_model_dir(
            out_dir, transformer, cfg, vae=make_tiny_autoencoder(seed), text_encoder_dir=t5_dir
        )
