"""The one CSV reader of sorakit (training data, data tools): a header row, then rows as dicts of strings.

A CSV may come from anywhere (a spreadsheet, a colleague, a web form), so whatever its bytes are, reading
it gives rows or a one-line :class:`UserError` naming the file and the line, never a traceback:

- a UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped; other encodings are refused with the offset
  of the first bad byte (guessing an encoding would silently change paths);
- header names are stripped of surrounding spaces; a name given twice is refused (``path,text,path``
  would otherwise silently keep the last value);
- a row with more cells than the header is refused; missing cells read as "";
- NUL bytes, unterminated quotes and fields over the csv module's size limit are refused;
- text in messages is shown with control characters escaped, so a message stays one line.

Paths in a CSV may point anywhere; :func:`confine` keeps them under a chosen folder (``--data-root``).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from sorakit.errors import UserError

Row = dict[str, str]


def shown(text: str, limit: int = 80) -> str:
    """`text` for a one-line message: control characters escaped, cut at `limit` characters."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _decode(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None
    if "\x00" in text:
        raise UserError(f"{path}: contains NUL bytes at offset {text.index(chr(0))}: not a text CSV")
    return text


def _header(path: Path, reader: csv.DictReader) -> list[str]:
    try:
        raw = reader.fieldnames
    except csv.Error as exc:
        raise UserError(f"{path}: line 1: {shown(str(exc))}") from None
    fields = [f.strip() for f in raw or []]
    if not fields or fields == [""]:
        raise UserError(f"{path}: empty file or no header row (expected columns like path,text)")
    twice = sorted({f for f in fields if fields.count(f) > 1})
    if twice:
        names = ", ".join(repr(shown(f, 40)) for f in twice)
        raise UserError(f"{path}: column {names} appears more than once in the header; keep one of each")
    reader.fieldnames = fields
    return fields


def read_csv_file(path: str | os.PathLike) -> tuple[list[str], list[Row]]:
    """Read a CSV with a header row -> (column names, rows). Raises UserError (one line) for a missing or
    unreadable file and for any of the problems in the module docstring."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"CSV file not found: {p}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {p}: {exc.strerror or exc}") from None
    reader = csv.DictReader(io.StringIO(_decode(p, data), newline=""))
    fields = _header(p, reader)
    rows: list[Row] = []
    try:
        for r in reader:
            if r.pop(None, None):  # more cells than header columns
                raise UserError(f"{p}: line {reader.line_num} has more cells than the header has columns")
            rows.append({k: ("" if v is None else v) for k, v in r.items()})
    except csv.Error as exc:
        raise UserError(f"{p}: line {reader.line_num}: {shown(str(exc))}") from None
    return fields, rows


def confine(paths: list[Path], root: str | os.PathLike, what: str) -> None:
    """UserError unless every path is inside `root` once `..` and symbolic links are resolved: a CSV from
    elsewhere cannot make sorakit read ``../../etc/passwd`` or an absolute path outside the data folder.
    `what` names the source in the message (the CSV)."""
    base = Path(root).expanduser().resolve()
    outside = [p for p in paths if not Path(p).resolve().is_relative_to(base)]
    if outside:
        raise UserError(
            f"{what}: {len(outside)} path(s) lead outside --data-root {base} (first: {shown(str(outside[0]))}); "
            "fix the CSV or choose another --data-root"
        )
