"""Frozen encoders: text (T5, CLIP, MiniLM, class labels) and the per-frame video VAE."""

from sorakit.encoders.text import (
    BUILTIN_MINILM,
    TEXT_ENCODERS,
    ClassLabelEncoder,
    CLIPTextEncoder,
    MiniLMEncoder,
    T5Encoder,
    TextEncoder,
    build_text_encoder,
)
from sorakit.encoders.vae import VideoVAE, build_vae, load_autoencoder

__all__ = [
    "BUILTIN_MINILM",
    "TEXT_ENCODERS",
    "CLIPTextEncoder",
    "ClassLabelEncoder",
    "MiniLMEncoder",
    "T5Encoder",
    "TextEncoder",
    "VideoVAE",
    "build_text_encoder",
    "build_vae",
    "load_autoencoder",
]
