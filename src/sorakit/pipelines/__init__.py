"""Pipelines: TextToVideoPipeline and the model-directory format (see ``model_dir``'s docstring)."""

from sorakit.pipelines.model_dir import (
    BUILTIN_MODEL_DIR,
    PIPELINE_FILE,
    builtin_model_dir,
    is_model_dir,
    read_model_dir,
    save_model_dir,
)
from sorakit.pipelines.text_to_video import (
    TextToVideoPipeline,
    null_caption,
    resolve_device,
    resolve_dtype,
    to_uint8,
)

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
