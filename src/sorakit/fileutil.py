"""Small file helpers shared by the atomic writers and the commands that check their outputs up front."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sorakit.errors import UserError


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


def check_writable_file(path: Path) -> None:
    """The output file `path` is not a folder, and its folder can be written."""
    if path.is_dir():
        raise UserError(f"output {path} is a directory")
    check_writable_folder(path.parent)


def check_writable_folder(folder: Path) -> None:
    """Create `folder` and prove a file can be written there (works as root too)."""
    for ancestor in (folder, *folder.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise UserError(f"cannot write to {folder}: {ancestor} is a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".sorakit-write-test.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UserError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
