"""Issue #24 items 6, 14, 17 and the CSV property: what a hostile or careless CSV can do.

- a header naming a column twice (``path,text,path``) is refused, not silently resolved to the last value,
  in the data tools and in training;
- a CSV saved with a UTF-8 byte-order mark (Excel) reads like any other;
- ``--data-root DIR`` keeps every path (``..``, absolute, through a link) inside DIR;
- any bytes at all give rows or a one-line UserError (Hypothesis), never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sorakit.cli.main import main
from sorakit.data.dataset import read_table
from sorakit.data.video import write_video
from sorakit.errors import UserError
from sorakit.tools._io import read_csv


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_video(tmp_path / "data" / "a.mp4", np.full((3, 16, 16, 3), 90, np.uint8), fps=8)


def test_repeated_columns_are_refused_everywhere(tmp_path: Path, clip: Path, capsys) -> None:
    f = tmp_path / "dup.csv"
    f.write_text(f"path,text,path\n{clip},a cat,/elsewhere/b.mp4\n")
    with pytest.raises(UserError, match="column 'path' appears more than once"):
        read_csv(f)
    with pytest.raises(UserError, match="column 'path' appears more than once"):
        read_table(f)
    for cmd in (
        ["info", str(f), "-o", str(tmp_path / "i.csv")],
        ["scenes", str(f), "-o", str(tmp_path / "s.csv")],
    ):
        assert main(["data", *cmd]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "appears more than once" in err
    # names differing only by surrounding spaces are the same column once stripped
    f.write_text(f"path,text, text\n{clip},a,b\n")
    with pytest.raises(UserError, match="'text' appears more than once"):
        read_table(f)


def test_a_utf8_bom_is_accepted(tmp_path: Path, clip: Path) -> None:
    f = tmp_path / "bom.csv"
    f.write_bytes(f"\ufeffpath,text\n{clip},caf\u00e9\n".encode())
    assert read_table(f)[0].path == clip and read_table(f)[0].text == "caf\u00e9"
    assert read_csv(f, require=("path",))[0] == ["path", "text"]
    out = tmp_path / "info.csv"
    assert main(["data", "info", str(f), "-o", str(out)]) == 0
    fields, rows = read_csv(out)
    assert rows[0]["path"] == str(clip) and rows[0]["num_frames"] == "3"


def test_not_utf8_names_the_byte(tmp_path: Path) -> None:
    f = tmp_path / "latin1.csv"
    f.write_bytes("path,text\na.mp4,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8 text \\(byte 0xe9 at offset 19\\)"):
        read_csv(f)


def test_data_root_confines_csv_paths(tmp_path: Path, clip: Path, capsys) -> None:
    root = clip.parent
    outside = write_video(tmp_path / "secret.mp4", np.zeros((2, 16, 16, 3), np.uint8))
    (root / "link.mp4").symlink_to(outside)
    ok = tmp_path / "ok.csv"
    ok.write_text("path,text\na.mp4,inside\n")
    assert main(["data", "info", str(ok), "-o", str(tmp_path / "o.csv"), "--data-root", str(root)]) == 0
    assert read_csv(tmp_path / "o.csv")[1][0]["path"] == str(clip)
    assert read_table(ok, data_root=root)[0].path == clip
    for bad in ("../secret.mp4", str(outside), "link.mp4", "../../../../etc/passwd"):
        f = tmp_path / "bad.csv"
        f.write_text(f"path,text\na.mp4,fine\n{bad},escape\n")
        code = main(["data", "info", str(f), "-o", str(tmp_path / "b.csv"), "--data-root", str(root)])
        err = capsys.readouterr().err
        assert code == 2 and "1 path(s) lead outside --data-root" in err, (bad, err)
        assert not (tmp_path / "b.csv").exists()
        with pytest.raises(UserError, match="lead outside --data-root"):
            read_table(f, data_root=root)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=200).map(lambda s: s.encode("utf-8"))))
def test_any_bytes_give_rows_or_one_line_error(tmp_path: Path, data: bytes) -> None:
    """Arbitrary bytes (and arbitrary UTF-8 text: quotes, NULs, BOMs, odd line ends) as a CSV: both readers
    return rows whose every value is a string, or raise a UserError whose message is one line."""
    f = tmp_path / "any.csv"
    f.write_bytes(data)
    for read in (lambda: read_csv(f, require=("path",)), lambda: read_table(f)):
        try:
            result = read()
        except UserError as exc:
            assert "\n" not in str(exc) and "\r" not in str(exc), str(exc)
            continue
        rows = result[1] if isinstance(result, tuple) else result
        assert isinstance(rows, list)
