"""Issue #24 items 7 and 8: a data command never loses results to an output it cannot write.

- `data caption` must not overwrite (or append its reasons without their column to) a failures CSV
  that is not its own;
- `data info --failures` into a folder that cannot be written is refused before any work, so the main
  CSV is not written and then followed by a traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sorakit.cli.main import main
from sorakit.data.video import write_video
from sorakit.errors import UserError


class _Fails:
    def caption(self, batch):
        from sorakit.tools.caption import CaptionError

        return [CaptionError("the model refused") for _ in batch]


def test_caption_keeps_a_foreign_failures_csv(tmp_path: Path) -> None:
    from sorakit.tools.caption import run_caption

    clip = write_video(tmp_path / "a.mp4", np.zeros((4, 16, 16, 3), np.uint8))
    foreign = tmp_path / "o.failures.csv"
    foreign.write_text("path,note\n/data/x.mp4,keep me\n")
    with pytest.raises(UserError, match="no column error"):
        run_caption([{"path": str(clip)}], [clip], _Fails(), tmp_path / "o.csv", foreign, progress=False)
    assert foreign.read_text() == "path,note\n/data/x.mp4,keep me\n"


def test_caption_keeps_this_runs_reasons_next_to_earlier_ones(tmp_path: Path) -> None:
    from sorakit.tools.caption import run_caption

    clip = write_video(tmp_path / "a.mp4", np.zeros((4, 16, 16, 3), np.uint8))
    fails = tmp_path / "o.failures.csv"
    fails.write_text("path,error\n/elsewhere/b.mp4,earlier reason\n")
    run_caption([{"path": str(clip)}], [clip], _Fails(), tmp_path / "o.csv", fails, progress=False)
    text = fails.read_text()
    assert "earlier reason" in text and "the model refused" in text


@pytest.mark.parametrize("where", ["file-as-folder", "proc"])
def test_info_checks_the_failures_csv_before_the_work(tmp_path: Path, capsys, where: str) -> None:
    good = write_video(tmp_path / "good.mp4", np.zeros((4, 16, 16, 3), np.uint8))
    (tmp_path / "bad.mp4").write_text("not a video")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    failures = blocker / "f.csv" if where == "file-as-folder" else Path("/proc/sorakit-f.csv")
    out = tmp_path / "out.csv"
    code = main(["data", "info", str(tmp_path), "-o", str(out), "--failures", str(failures)])
    err = capsys.readouterr().err
    assert code == 2 and "sorakit: error: cannot write failures CSV" in err and "Traceback" not in err
    assert not out.exists() and good.exists()
