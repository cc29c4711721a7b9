"""Small file helpers shared by the atomic writers."""

from __future__ import annotations

import os


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
