"""Checks of a command's outputs made before its work starts."""

from __future__ import annotations

from pathlib import Path

from sorakit.fileutil import check_writable_folder


def check_can_create(folder: Path) -> None:
    """`folder` (or, when it does not exist yet, the nearest folder above it) accepts a new file, proven
    by creating and removing one; `folder` itself is not created, so a later error leaves nothing behind.
    Raises UserError naming the place that refuses (read-only mount, permissions, a file in the way)."""
    existing = next((p for p in (folder, *folder.absolute().parents) if p.exists()), Path("/"))
    check_writable_folder(existing)
