"""Pipelines: TextToVideoPipeline (the model-directory format lives in ``sorakit.modeldir``, device and
precision choice in ``sorakit.runtime``; both are re-exported here for convenience)."""

from sorakit.modeldir import (
    BUILTIN_MODEL_DIR,
    PIPELINE_FILE,
    builtin_model_dir,
    is_model_dir,
    read_model_dir,
    save_model_dir,
)
from sorakit.pipelines.text_to_video import TextToVideoPipeline, null_caption, to_uint8
from sorakit.runtime import resolve_device, resolve_dtype

__all__ = [
    "BUILTIN_MODEL_DIR",
    "PIPELINE_FILE",
    "TextToVideoPipeline",
    "builtin_model_dir",
    "is_model_dir",
    "null_caption",
    "read_model_dir",
    "resolve_device",
    "resolve_dtype",
    "save_model_dir",
    "to_uint8",
]
