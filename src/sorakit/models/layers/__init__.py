"""Pieces shared unchanged by STDiT, PixArt, DiT and Latte."""

from sorakit.models.layers.attention import (
    Attention,
    MultiHeadCrossAttention,
    caption_key_mask,
    explicit_attention,
    trimmed_caption_mask,
)
from sorakit.models.layers.blocks import (
    DropPath,
    FinalLayer,
    Mlp,
    T2IFinalLayer,
    layer_norm,
    modulate_fp32_norm,
    modulated_layer_norm,
    per_frame,
    t2i_modulate,
)
from sorakit.models.layers.embeddings import (
    CaptionEmbedder,
    HorizonEmbedder,
    LabelEmbedder,
    PatchEmbed3D,
    TimestepEmbedder,
    get_1d_sincos_pos_embed,
    get_2d_sincos_pos_embed,
    timestep_features,
)
from sorakit.models.layers.linear import Linear, linear, use_onednn

__all__ = [
    "Attention",
    "CaptionEmbedder",
    "DropPath",
    "FinalLayer",
    "HorizonEmbedder",
    "LabelEmbedder",
    "Linear",
    "Mlp",
    "MultiHeadCrossAttention",
    "PatchEmbed3D",
    "T2IFinalLayer",
    "TimestepEmbedder",
    "caption_key_mask",
    "explicit_attention",
    "trimmed_caption_mask",
    "get_1d_sincos_pos_embed",
    "get_2d_sincos_pos_embed",
    "layer_norm",
    "linear",
    "modulate_fp32_norm",
    "modulated_layer_norm",
    "per_frame",
    "t2i_modulate",
    "timestep_features",
    "use_onednn",
]
