"""Folders that check themselves: a ``manifest.json`` listing every file's size and sha256.

Used by training checkpoints, exported model directories and (per shard, inside ``meta.json``) the latent
cache. The manifest is written last and atomically (temporary name, fsync, rename), so a folder whose
manifest verifies was completely written and has not changed since: a crash mid-write, a copy that stopped
half-way, a truncated or bit-flipped file all show up as a named file with a reason.

``manifest.json``::

    {"format": "sorakit-manifest", "version": 1, "created": "2026-12-01T22:30:01Z",
     "files": {"model.safetensors": {"size": 123, "sha256": "..."}, "rng/rank-00000.pt": {...}}}
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sorakit.fileutil import write_text_atomic

MANIFEST = "manifest.json"
FORMAT = "sorakit-manifest"
VERSION = 1
_CHUNK = 16 << 20


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking a folder.

    ``status`` is ``"verified"`` (the manifest matches every byte), ``"unverified"`` (no manifest, e.g.
    written by an older sorakit: nothing to check against) or ``"damaged"``; ``reason`` says why in a few
    words, naming the file."""

    status: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Usable: verified, or without a manifest (the caller decides what else to check)."""
        return self.status != "damaged"

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}" if self.reason else self.status


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 16 MiB chunks (memory stays flat for multi-GB weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: str | os.PathLike) -> dict[str, Any]:
    """``{"size", "sha256"}`` of one file as it is on disk."""
    return {"size": os.path.getsize(path), "sha256": sha256_file(path)}


def check_entry(path: Path, entry: dict[str, Any], deep: bool = True) -> str:
    """Why ``path`` does not match its manifest ``entry`` ("" when it does). ``deep=False`` checks the size
    only (no read: cheap enough to run on every checkpoint at every save)."""
    if not path.is_file():
        return f"{path.name} is missing"
    size = path.stat().st_size
    if size != int(entry.get("size", -1)):
        return (
            f"{path.name} has {size} bytes, the manifest says {entry.get('size')} (truncated or overwritten)"
        )
    if deep and sha256_file(path) != entry.get("sha256"):
        return f"{path.name} does not match its sha256 (the content changed after it was written)"
    return ""


def write_manifest(folder: str | os.PathLike, entries: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write ``folder/manifest.json`` atomically, last. ``entries`` maps relative paths to
    ``{"size", "sha256"}`` already known (hashed while writing); every other file under ``folder`` is
    hashed from disk."""
    root = Path(folder)
    files: dict[str, dict[str, Any]] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel == MANIFEST or p.name.startswith(f".{MANIFEST}"):
            continue
        files[rel] = dict(entries[rel]) if entries and rel in entries else file_entry(p)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = json.dumps(
        {"format": FORMAT, "version": VERSION, "created": created, "files": files}, indent=1, allow_nan=False
    )
    write_text_atomic(root / MANIFEST, body + "\n", fsync=True)
    return root / MANIFEST


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The parsed manifest, None when there is none; ValueError when it is unreadable or not one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{MANIFEST} is unreadable ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        raise ValueError(f"{MANIFEST} is not a sorakit manifest")
    return data


def verify_folder(folder: str | os.PathLike, deep: bool = True) -> Verdict:
    """Check every file the manifest lists (size, and sha256 with ``deep``). Files the manifest does not
    list (notes a user added) are not judged."""
    root = Path(folder)
    try:
        manifest = read_manifest(root)
    except ValueError as exc:
        return Verdict("damaged", str(exc))
    if manifest is None:
        return Verdict("unverified", f"no {MANIFEST}")
    for rel, entry in manifest["files"].items():
        why = check_entry(root / rel, entry, deep)
        if why:
            return Verdict("damaged", why.replace(Path(rel).name, rel, 1))
    return Verdict("verified")
