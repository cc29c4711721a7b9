"""Small file helpers shared by the atomic writers and the commands that check their outputs up front."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
