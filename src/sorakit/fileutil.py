"""Small file helpers shared by the atomic writers and the commands that check their outputs up front."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO

from safetensors.torch import save_file

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
    save_file(dict(tensors), str(path), metadata=metadata)
    if not os.path.islink(path):
        os.chmod(path, new_file_mode())


def follow_umask(folder: str | os.PathLike) -> None:
    """Give the ``*.safetensors`` files under `folder` that a library's ``save_pretrained`` wrote (0600,
    see :func:`save_safetensors`) the mode an ordinary new file gets."""
    mode = new_file_mode()
    for root, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".safetensors"):
                os.chmod(os.path.join(root, name), mode)


def write_text_atomic(path: str | os.PathLike, text: str, fsync: bool = False) -> None:
    """Write `text` (UTF-8) to `path` through :func:`atomic_write`: a temporary file in the same folder
    (created if missing), then a rename. A reader never sees half a file; a link at `path` is replaced."""
    with atomic_write(path, "w", fsync=fsync) as f:
        f.write(text)


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


# --------------------------------------------------------------------------------------------------
# Safe writes: every file sorakit creates, replaces or appends to goes through one of these.
#
# A folder sorakit writes into (a run folder, an output folder) may hold links planted by someone else,
# or left by a careless copy. Replacing a file is done by renaming a fresh temporary onto its name, which
# replaces a link itself and never writes its target; appending or updating in place opens with
# O_NOFOLLOW and refuses anything that is not a regular file; a file that must be new is opened with
# O_EXCL. Callers never call ``open(path, "w")`` themselves (tests/adversarial/test_symlinks.py checks).

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _refuse(path: str | os.PathLike) -> UserError:
    why = "it is a symbolic link" if os.path.islink(path) else "it is not a regular file"
    return UserError(f"refusing to write {path}: {why} (sorakit never writes through links; remove it)")


def _open_fd(path: str | os.PathLike, flags: int) -> int:
    """``os.open`` that never follows a final symbolic link and only opens regular files."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):  # a link, a folder, a FIFO (would block), a device
        raise _refuse(path)
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # replaced by a link since the lstat
            raise _refuse(path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _refuse(path)
    return fd


def open_append(path: str | os.PathLike, encoding: str = "utf-8", newline: str | None = None) -> TextIO:
    """Open `path` for appending text (created with the ordinary mode if missing). Raises UserError when
    `path` is a symbolic link or not a regular file, instead of appending to whatever it points at."""
    fd = _open_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(fd, "a", encoding=encoding, newline=newline)


def open_update(path: str | os.PathLike) -> BinaryIO:
    """Open an existing regular file for reading and writing in place (binary, ``rb+``), never through a
    link (UserError)."""
    return os.fdopen(_open_fd(path, os.O_RDWR), "rb+")


def open_new(path: str | os.PathLike, mode: str = "wb") -> IO[Any]:
    """Create `path`, which must not exist yet (O_EXCL: not even as a dangling link), and open it for
    writing (``"wb"`` or ``"w"``). For files inside a folder sorakit has just made."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666)
    return os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))


def refuse_links(folder: str | os.PathLike, names: Iterable[str], folders: Iterable[str] = ()) -> None:
    """UserError when any of `names` in `folder` exists and is a symbolic link or not a regular file, or
    any of `folders` is a symbolic link (sorakit writes inside those): checked before a command starts
    its work, so it stops before writing anything."""
    for name in names:
        p = os.path.join(folder, name)
        if os.path.lexists(p) and (os.path.islink(p) or not os.path.isfile(p)):
            raise _refuse(p)
    for name in folders:
        p = os.path.join(folder, name)
        if os.path.islink(p):
            raise _refuse(p)


def _temp_beside(path: str | os.PathLike, suffix: str = ".tmp") -> tuple[int, str]:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=folder)
    os.fchmod(fd, new_file_mode())
    return fd, tmp


def _publish(tmp: str, path: str | os.PathLike) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        raise UserError(f"cannot write {path}: it is a folder")
    os.replace(tmp, path)  # replaces a link at `path` itself; its target is never opened


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "w", newline: str | None = None, fsync: bool = False
) -> Iterator[IO[Any]]:
    """Write `path` through a fresh temporary file (O_EXCL, ordinary mode) in the same folder, renamed onto
    `path` when the block ends without an error: a reader never sees half a file, an error leaves the old
    file, and a link at `path` is replaced, never followed. `mode` is ``"w"`` (UTF-8 text) or ``"wb"``."""
    fd, tmp = _temp_beside(path)
    try:
        kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": newline}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """For writers that take a file name (safetensors, torch.save, PyAV): a fresh temporary path beside
    `path` (already created, O_EXCL), renamed onto `path` when the block succeeds, removed otherwise.
    `suffix` keeps an extension the writer needs (``.mp4``)."""
    fd, tmp = _temp_beside(path, suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes, fsync: bool = False) -> None:
    """`data` to `path` through :func:`atomic_write`."""
    with atomic_write(path, "wb", fsync=fsync) as f:
        f.write(data)


class SafeFileHandler(logging.FileHandler):
    """A ``logging.FileHandler`` that appends through :func:`open_append` (never through a link)."""

    def _open(self):  # noqa: ANN202 - logging's own signature
        return open_append(self.baseFilename, encoding=self.encoding or "utf-8")
