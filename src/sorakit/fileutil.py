"""Small file helpers shared by the atomic writers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permissions an ordinary ``open(path, "w")`` would give a new file (0o666 minus the umask).

    ``tempfile.mkstemp`` creates files readable by their owner only; the atomic writers apply this mode
    before renaming, so outputs are as readable as any other file the user creates."""
    return 0o666 & ~_umask()


def new_dir_mode() -> int:
    """The permissions ``mkdir`` would give a new folder (0o777 minus the umask); ``tempfile.mkdtemp``
    makes owner-only folders, so a folder built under a temporary name gets this before its rename."""
    return 0o777 & ~_umask()


def save_safetensors(
    tensors: Mapping[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file``, then the mode an ordinary new file gets.

    safetensors creates its files owner-only (0600), unlike every other sorakit output; callers write to
    a temporary name and rename, so the mode is fixed here, before the file becomes visible."""
    from safetensors.torch import save_file

    save_file(dict(tensors), str(path), metadata=metadata)
    os.chmod(path, new_file_mode())


def follow_umask(folder: str | os.PathLike) -> None:
    """Give the ``*.safetensors`` files under `folder` that a library's ``save_pretrained`` wrote (0600,
    see :func:`save_safetensors`) the mode an ordinary new file gets."""
    mode = new_file_mode()
    for root, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".safetensors"):
                os.chmod(os.path.join(root, name), mode)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder (created if missing), then
    rename: a reader never sees half a file. The file gets the mode an ordinary new file gets."""
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
