"""Shared file handling for the data tools: CSV reading/writing (header row, atomic replace, durable
appends) and input discovery (a file, a folder or a CSV of paths). Where the work runs is
`sorakit.tools.executor`.

Conventions used by every tool:

- A CSV has a header row; the training columns are `path`, `text` and optionally `num_frames`, `fps`,
  `height`, `width`, `start_frame`, `end_frame` (exclusive), `label`.
- Values are kept as strings, so a row that goes through a tool unchanged is written back unchanged.
- A relative `path` in a CSV is resolved against the CSV's own folder (then the working directory);
  the tools write absolute paths (``sorakit data csv paths --relative`` makes them relative).
- Nothing is lost: a row that cannot be processed goes to a failures CSV with an `error` column.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sorakit.data.csvfile import confine, read_csv_file, shown
from sorakit.errors import UserError
from sorakit.fileutil import atomic_write, open_append, open_update, refuse_links

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts", ".gif")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MEDIA_EXTS = VIDEO_EXTS + IMAGE_EXTS

# Column order used when a tool writes a CSV: known columns first, others after in first-seen order.
PREFERRED_ORDER = (
    "path",
    "text",
    "label",
    "num_frames",
    "fps",
    "height",
    "width",
    "aspect_ratio",
    "duration",
    "start_frame",
    "end_frame",
    "start",
    "end",
)

Row = dict[str, str]


def is_image(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTS)


def read_csv(path: str | os.PathLike, require: Sequence[str] = ()) -> tuple[list[str], list[Row]]:
    """Read a CSV with a header row -> (column names, rows as dicts of strings).

    Raises UserError when the file is missing, has no header, or lacks a `require`d column, and for
    anything :func:`sorakit.data.csvfile.read_csv_file` refuses (repeated columns, not UTF-8, ...); a
    UTF-8 byte-order mark is accepted. Missing cells read as "" (never None), so every row has every column.
    """
    p = Path(path)
    fields, rows = read_csv_file(p)
    missing = [c for c in require if c not in fields]
    if missing:
        hint = ""
        if fields and (Path(fields[0]).suffix.lower() in MEDIA_EXTS or os.sep in fields[0]):
            hint = " (the first line looks like data: add a header row such as path,text,num_frames)"
        raise UserError(
            f"{p} has no column {', '.join(missing)}; its columns are {shown(', '.join(fields))}{hint}"
        )
    return fields, rows


def add_data_root_arg(parser: Any) -> None:
    """``--data-root DIR`` of the data commands that read paths from a CSV (see :func:`collect_inputs`)."""
    parser.add_argument(
        "--data-root",
        default=None,
        help="resolve the input CSV's relative paths against DIR and refuse any path that leads outside it "
        "(.., absolute paths, links): for CSVs from elsewhere",
    )


def order_fields(rows: Iterable[Row], first: Sequence[str] = ()) -> list[str]:
    """Column names of `rows`: `first`, then PREFERRED_ORDER's, then the rest in first-seen order."""
    seen: dict[str, None] = {}
    for r in rows:
        for k in r:
            seen.setdefault(k, None)
    out = [c for c in first if c in seen]
    out += [c for c in PREFERRED_ORDER if c in seen and c not in out]
    out += [c for c in seen if c not in out]
    return out


def write_csv(path: str | os.PathLike, rows: Sequence[Row], fields: Sequence[str] | None = None) -> Path:
    """Write `rows` with a header, atomically: a temporary file in the same folder, fsync, rename.

    A reader never sees a half-written CSV; an interrupted write leaves the old file in place.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if fields is None:
        fields = order_fields(rows)
    with atomic_write(p, "w", newline="", fsync=True) as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore", restval="")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return p


class CSVAppender:
    """Appends rows to a CSV one at a time, each flushed and fsynced, for long resumable runs.

    If the file exists its header is kept (new columns are not added: rows are written with the
    existing columns); otherwise the header is `fields`. An existing file whose header lacks a column
    of `require` is not one this writer made (appending would drop that column from every row): it
    is refused with a UserError and left as it is. Links are refused too. Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike, fields: Sequence[str], require: Sequence[str] = ()):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        refuse_links(self.path.parent, [self.path.name])
        existing: list[str] = []
        if self.path.is_file() and self.path.stat().st_size > 0:
            existing = _header(self.path)
            missing = [c for c in require if c not in existing]
            if missing:
                raise UserError(
                    f"{self.path} exists but has no column {', '.join(missing)} (columns: "
                    f"{', '.join(existing)}): not written by this command; move it away or name another file"
                )
            repair_partial_line(self.path)
        self.fields = existing or list(fields)
        self._f = open_append(self.path, newline="")
        self._w = csv.DictWriter(self._f, fieldnames=self.fields, extrasaction="ignore", restval="")
        if not existing:
            self._w.writeheader()
            self._sync()

    def write(self, row: Row) -> None:
        self._w.writerow(row)
        self._sync()

    def _sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> CSVAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        try:
            return next(csv.reader(f), [])
        except csv.Error as exc:
            raise UserError(f"{path}: not a CSV file ({exc})") from None


def repair_partial_line(path: str | os.PathLike) -> None:
    """A run killed mid-line leaves a partial last line: drop it so the next append starts clean."""
    if not os.path.isfile(path) and not os.path.islink(path):
        return
    with open_update(path) as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # find the last newline and truncate after it
        pos = size - 1
        chunk = 4096
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            data = f.read(pos - start)
            i = data.rfind(b"\n")
            if i >= 0:
                f.truncate(start + i + 1)
                return
            pos = start
        f.truncate(0)


def read_csv_if_exists(path: str | os.PathLike) -> tuple[list[str], list[Row]]:
    """Like read_csv, but a missing or empty file gives ([], [])."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return [], []
    return read_csv(p)


def resolve_path(path: str, base: Path | None) -> Path:
    """Where a `path` cell points: absolute as is; relative against `base` (the CSV's folder) when
    the file exists there, else against the working directory when it exists there, else `base`."""
    p = Path(path).expanduser()
    if p.is_absolute() or base is None:
        return p
    cand = base / p
    if cand.exists() or not p.exists():
        return cand
    return p


def failures_path(output: str | os.PathLike) -> Path:
    """Default failures file next to an output CSV: `clips.csv` -> `clips.failures.csv`."""
    p = Path(output)
    return p.with_name(f"{p.stem}.failures.csv")


def collect_inputs(
    source: str | os.PathLike, exts: Sequence[str] = MEDIA_EXTS, data_root: str | os.PathLike | None = None
) -> tuple[list[Row], list[Path]]:
    """Rows to process from a media file, a folder (searched recursively for `exts`) or a CSV.

    Returns (rows, resolved paths), one resolved absolute path per row. A folder or a single file
    gives rows {"path": absolute path}; a CSV gives its rows unchanged (so their other columns are
    carried through), and needs a `path` column. With `data_root`, a CSV's relative paths resolve
    against it (rows get the absolute path), and every path must lead inside it (UserError otherwise,
    before any work).
    """
    p = Path(source).expanduser()
    if not p.exists():
        raise UserError(f"input not found: {p}")
    if p.is_dir():
        files = _media_in(p, exts)
        paths = [_absolute(f) for f in files]
        rows, where = [{"path": str(f)} for f in paths], str(p)
    elif p.suffix.lower() == ".csv":
        _, rows = read_csv(p, require=("path",))
        base = Path(data_root).expanduser().resolve() if data_root else p.resolve().parent
        paths, where = [resolve_path(r["path"], base).absolute() for r in rows], str(p)
    else:
        rows, paths, where = [{"path": str(p.resolve())}], [p.resolve()], str(p)
    if data_root is not None:
        confine(paths, data_root, where)
        rows = [{**r, "path": str(q)} for r, q in zip(rows, paths)]  # the outputs do not depend on DIR
    return rows, paths


def _media_in(folder: Path, exts: Sequence[str]) -> list[Path]:
    """Entries under `folder` named like media, hidden ones (``.name``: temporaries of a killed writer,
    a parts folder) left out. Entries that are not regular files (a folder named ``x.mp4``, a link loop, a
    dangling link) are kept, so they end up as failure rows with a reason instead of vanishing."""
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):  # linked sub-folders count, loops don't
        seen.add(os.path.realpath(root))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files) + [d for d in dirs if d.lower().endswith(tuple(exts))]:
            if not name.startswith(".") and Path(name).suffix.lower() in exts:
                found.append(Path(root) / name)
        dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(root, d)) not in seen]
    if not found:
        raise UserError(f"no files with extensions {', '.join(exts)} under {folder}")
    return sorted(found)


def _absolute(path: Path) -> Path:
    """`path` with its links resolved, or (a link loop, a dangling link) as it is, made absolute."""
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):
        return path.absolute()


def one_line(exc: BaseException) -> str:
    """An exception as a single line for a failures CSV."""
    msg = str(exc).strip().replace("\r", " ").replace("\n", " ")
    name = type(exc).__name__
    return f"{name}: {msg}" if msg else name


def fmt_float(x: Any, digits: int = 6) -> str:
    """A float as a short string (no trailing zeros); ints stay ints."""
    if isinstance(x, int):
        return str(x)
    s = f"{float(x):.{digits}f}".rstrip("0").rstrip(".")
    return s if s not in ("", "-0") else "0"


def write_outputs(
    output: str | os.PathLike,
    rows: Sequence[Row],
    failures: Sequence[Row],
    failures_file: str | os.PathLike | None = None,
    first: Sequence[str] = ("path",),
) -> Path | None:
    """Write the output CSV and, when there are failures, the failures CSV (`error` column last).

    A stale failures file from an earlier run is removed when this run has none. Returns the
    failures path when one was written.
    """
    write_csv(output, rows, order_fields(rows, first) if rows else list(first))
    fpath = Path(failures_file) if failures_file else failures_path(output)
    if failures:
        fields = [c for c in order_fields(failures, first) if c != "error"] + ["error"]
        write_csv(fpath, failures, fields)
        return fpath
    if fpath.is_file():
        fpath.unlink()
    return None


def report(
    output: str | os.PathLike, n_rows: int, failures: Sequence[Row], fpath: Path | None, what: str = "rows"
) -> None:
    """One summary line on stderr, plus the first few failure reasons."""
    msg = f"wrote {n_rows} {what} to {output}"
    if failures:
        msg += f"; {len(failures)} failed (listed in {fpath})"
    print(msg, file=sys.stderr)
    for r in failures[:5]:
        print(f"  failed: {r.get('path', '')}: {r.get('error', '')}", file=sys.stderr)
    if len(failures) > 5:
        print(f"  ... and {len(failures) - 5} more", file=sys.stderr)


def check_output(path: str | os.PathLike, what: str = "output") -> Path:
    """Validate an output CSV path before any heavy work: not a folder, and a file can really be created
    in its nearest existing folder (tried, so it holds for root and read-only mounts too)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder; give a file path")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {what} {p}: {parent} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise UserError(
            f"cannot write {what} {p}: {parent} is not writable ({exc.strerror or exc})"
        ) from None
    return p


def check_outputs(output: str | os.PathLike, failures: str | os.PathLike | None) -> tuple[Path, Path]:
    """:func:`check_output` on a command's output CSV and on its failures CSV (`failures`, else the default
    beside the output), both before the work: a run never ends with results it cannot record."""
    out = check_output(output)
    return out, check_output(failures or failures_path(out), "failures CSV")
