"""`sorakit data csv ...`: merge, filter, strip-prefix, paths, split, stats, checked row by row."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from sorakit.cli.main import main
from sorakit.errors import UserError
from sorakit.tools._io import CSVAppender, read_csv, write_csv
from sorakit.tools.csvutil import FilterSpec, filter_rows, split_rows, strip_prefix


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write(path: Path, header: str, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def test_merge_unites_columns_and_dedupes(tmp_path):
    a = write(tmp_path / "a.csv", "path,text", "v1.mp4,one", "v2.mp4,two", "v1.mp4,one again")
    b = write(
        tmp_path / "other" / "b.csv",
        "text,path,num_frames",
        "three,v3.mp4,16",
        f"two dup,{tmp_path / 'v2.mp4'},8",
        "b's own v1,v1.mp4,4",
    )
    c = write(
        tmp_path / "c.csv",
        "path,start_frame,end_frame,text",
        "v1.mp4,0,10,clip a",
        "v1.mp4,10,20,clip b",
        "v1.mp4,0,10,clip a dup",
    )
    out = tmp_path / "m.csv"
    dups = tmp_path / "d.csv"
    assert (
        main(["data", "csv", "merge", str(a), str(b), str(c), "-o", str(out), "--duplicates", str(dups)]) == 0
    )
    rows = read(out)
    other = str(tmp_path / "other")
    assert [(r["path"], r["text"], r["num_frames"], r["start_frame"]) for r in rows] == [
        ("v1.mp4", "one", "", ""),
        ("v2.mp4", "two", "", ""),
        (os.path.join(other, "v3.mp4"), "three", "16", ""),  # b.csv lives elsewhere: made absolute
        (os.path.join(other, "v1.mp4"), "b's own v1", "4", ""),  # a different file than a.csv's v1
        ("v1.mp4", "clip a", "", "0"),
        ("v1.mp4", "clip b", "", "10"),
    ]
    assert [r["text"] for r in read(dups)] == ["one again", "two dup", "clip a dup"]
    assert all(r["reason"].startswith("duplicate") for r in read(dups))


def test_filter_row_by_row(tmp_path):
    src = write(
        tmp_path / "in.csv",
        "path,text,num_frames,fps,height,width",
        "a.mp4,a cat runs,32,16,240,320",  # kept
        "b.mp4,a dog,8,16,240,320",  # too few frames
        "c.mp4,,64,16,240,320",  # empty caption
        "d.mp4,tall video,32,16,640,240",  # aspect 2.67 > 2
        "e.mp4,small one,32,16,100,100",  # short side < 128
        "f.mp4,long video here,400,16,240,320",  # 25 s > 20 s
        "g.mp4,unknown frames,,16,240,320",  # frames unknown
    )
    out = tmp_path / "out.csv"
    assert (
        main(
            [
                "data",
                "csv",
                "filter",
                str(src),
                "-o",
                str(out),
                "--min-frames",
                "16",
                "--drop-empty-caption",
                "--max-aspect",
                "2",
                "--min-short-side",
                "128",
                "--max-duration",
                "20",
            ]
        )
        == 0
    )
    assert [r["path"] for r in read(out)] == ["a.mp4"]
    rej = {r["path"]: r["reason"] for r in read(tmp_path / "out.rejected.csv")}
    assert rej == {
        "b.mp4": "frames 8 < 16",
        "c.mp4": "empty caption",
        "d.mp4": "aspect ratio 2.66667 > 2",
        "e.mp4": "short side 100 < 128",
        "f.mp4": "duration 25 > 20",
        "g.mp4": "frames unknown",
    }
    # caption word bounds, frames from a clip range when num_frames is absent
    rows = [
        {"path": "x", "text": "one two three", "start_frame": "0", "end_frame": "20"},
        {"path": "y", "text": "one", "start_frame": "5", "end_frame": "10"},
    ]
    kept, rejected = filter_rows(rows, FilterSpec(min_caption_words=2, min_frames=6))
    assert [r["path"] for r in kept] == ["x"] and rejected[0]["reason"] == "frames 5 < 6"
    kept, rejected = filter_rows(rows, FilterSpec(max_caption_words=2))
    assert [r["path"] for r in kept] == ["y"] and rejected[0]["reason"] == "caption words 3 > 2"
    with pytest.raises(UserError, match="info"):
        filter_rows([{"path": "x", "text": "t"}], FilterSpec(min_frames=1))
    assert main(["data", "csv", "filter", str(src), "-o", str(out)]) == 2  # no bound given


def test_strip_prefix():
    assert strip_prefix("The video shows a cat on a sofa.") == "A cat on a sofa."
    assert strip_prefix("the video depicts: waves crashing") == "Waves crashing"
    assert strip_prefix("In the video, a man walks") == "A man walks"
    assert strip_prefix("The videos show a cat") == "The videos show a cat"  # not at a word boundary
    assert strip_prefix("A cat. The video shows more") == "A cat. The video shows more"
    assert strip_prefix("The video shows") == "The video shows"  # would become empty: unchanged
    assert strip_prefix("Scene: a road", ["Scene"]) == "A road"


def test_strip_prefix_cli_keeps_other_columns(tmp_path):
    src = write(
        tmp_path / "in.csv",
        "path,text,label",
        'a.mp4,"The video shows a cat, then a dog",1',
        "b.mp4,A bird,2",
    )
    out = tmp_path / "o.csv"
    assert main(["data", "csv", "strip-prefix", str(src), "-o", str(out)]) == 0
    assert read(out) == [
        {"path": "a.mp4", "text": "A cat, then a dog", "label": "1"},
        {"path": "b.mp4", "text": "A bird", "label": "2"},
    ]


def test_paths_absolute_and_relative(tmp_path):
    src = write(tmp_path / "data" / "in.csv", "path,text", "videos/a.mp4,a", f"{tmp_path / 'x' / 'b.mp4'},b")
    absolute = tmp_path / "abs.csv"
    assert main(["data", "csv", "paths", str(src), "-o", str(absolute), "--absolute"]) == 0
    assert [r["path"] for r in read(absolute)] == [
        str(tmp_path / "data" / "videos" / "a.mp4"),
        str(tmp_path / "x" / "b.mp4"),
    ]
    rel = tmp_path / "x" / "rel.csv"
    assert main(["data", "csv", "paths", str(absolute), "-o", str(rel), "--relative"]) == 0
    assert [r["path"] for r in read(rel)] == [os.path.join("..", "data", "videos", "a.mp4"), "b.mp4"]


def test_split_keeps_clips_of_a_video_together(tmp_path):
    rows = [{"path": f"v{i // 3}.mp4", "text": str(i), "start_frame": str(i % 3)} for i in range(30)]
    train, val = split_rows(rows, val_fraction=0.2, seed=1)
    assert len(train) + len(val) == 30 and {r["text"] for r in train} | {r["text"] for r in val} == {
        str(i) for i in range(30)
    }
    assert len(val) == 6  # 2 of 10 videos, 3 clips each
    assert not {r["path"] for r in train} & {r["path"] for r in val}
    assert [int(r["text"]) for r in train] == sorted(int(r["text"]) for r in train)  # order kept
    assert split_rows(rows, val_fraction=0.2, seed=1) == (train, val)  # deterministic
    assert split_rows(rows, val_fraction=0.2, seed=2) != (train, val)
    train, val = split_rows(rows, val_count=1)
    assert len(val) == 3
    with pytest.raises(UserError):
        split_rows(rows, val_count=10)
    with pytest.raises(UserError):
        split_rows(rows)
    src = tmp_path / "in.csv"
    write_csv(src, rows)
    assert (
        main(
            [
                "data",
                "csv",
                "split",
                str(src),
                "-o",
                str(tmp_path / "t.csv"),
                "--val-output",
                str(tmp_path / "v.csv"),
                "--val-count",
                "2",
            ]
        )
        == 0
    )
    assert len(read(tmp_path / "t.csv")) == 24 and len(read(tmp_path / "v.csv")) == 6


def test_stats(tmp_path, capsys):
    src = write(
        tmp_path / "in.csv",
        "path,text,num_frames,fps,height,width,label",
        "a.mp4,The video shows x,16,8,240,320,cat",
        "b.mp4,,48,8,240,320,dog",
        "c.mp4,y z,32,16,480,640,cat",
    )
    assert main(["data", "csv", "stats", str(src)]) == 0
    out = capsys.readouterr().out
    assert "rows: 3" in out
    assert "frames: min 16  median 32  mean 32  max 48  total 96" in out
    assert "captions: 2 non-empty, 1 empty" in out
    assert "240x320 (2)" in out and "cat (2)" in out
    assert "removable prefix: 1" in out


def test_csv_io_atomic_and_append(tmp_path):
    p = tmp_path / "x.csv"
    write_csv(p, [{"path": "a", "text": 'comma, "quote"\nnewline'}])
    assert read_csv(p) == (["path", "text"], [{"path": "a", "text": 'comma, "quote"\nnewline'}])
    assert [f for f in os.listdir(tmp_path)] == ["x.csv"]  # no temporary file left behind
    # a partial last line (killed mid-write) is dropped before appending
    with open(p, "a") as f:
        f.write("b,half a li")
    with CSVAppender(p, ["path", "text"]) as app:
        app.write({"path": "c", "text": "ok"})
    assert read_csv(p)[1] == [{"path": "a", "text": 'comma, "quote"\nnewline'}, {"path": "c", "text": "ok"}]
    with pytest.raises(UserError, match="no column label"):
        read_csv(p, require=("path", "label"))


def test_output_that_is_a_folder_is_a_user_error(tmp_path, capsys):
    src = write(tmp_path / "in.csv", "path,text", "a.mp4,a")
    assert main(["data", "csv", "strip-prefix", str(src), "-o", str(tmp_path)]) == 2
    assert main(["data", "info", str(src), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("is a folder") == 2 and "Traceback" not in err
