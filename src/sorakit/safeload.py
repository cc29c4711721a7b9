"""Reading tensors from files sorakit may not have written (downloads, checkpoints, model folders).

safetensors files are preferred (no code can be in them); torch files are read only through
``torch.load(weights_only=True)``, so a pickle that would build any other object is refused, never run.
Every failure -- a truncated file, a header claiming absurd sizes, garbage, a planted pickle -- is one
`UserError` naming the file, raised before anything uses the contents.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from sorakit.errors import UserError


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type name."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file``; a damaged file is a UserError naming it."""
    try:
        return load_file(str(path), device=device)
    # the library checks the header (size, JSON, offsets within the file); OSError: unreadable file
    except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({first_line(exc)})") from None


def load_torch(path: str | os.PathLike, allowed: Iterable[type] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` with the classes `allowed` besides tensors and containers;
    a pickle of anything else is refused, a damaged file is a UserError naming it."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"{path}: refusing to unpickle non-tensor objects (weights_only=True): {first_line(exc)}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, MemoryError) as exc:
        raise UserError(f"{path}: cannot read torch file ({first_line(exc)})") from None
