from __future__ import annotations

import pytest

from sorakit.errors import UserError
from sorakit.fileutil import check_writable_file as _check_writable
from sorakit.fileutil import check_writable_folder as _check_folder_writable


def test_unrelated_subfolder_does_not_block_output(tmp_path):
    (tmp_path / "x").mkdir()  # a folder that once tripped the writability probe
    _check_writable(tmp_path / "demo.mp4")
    assert not (tmp_path / "demo.mp4").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # the probe file is cleaned up


def test_output_checks_refuse_bad_paths(tmp_path):
    (tmp_path / "out.mp4").mkdir()
    with pytest.raises(UserError, match="is a directory"):
        _check_writable(tmp_path / "out.mp4")
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file, not a folder"):
        _check_folder_writable(tmp_path / "file" / "sub")
    _check_folder_writable(tmp_path / "new" / "deeper")
    assert (tmp_path / "new" / "deeper").is_dir()
