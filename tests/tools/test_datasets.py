"""`sorakit data convert ucf101|imagenet`: class-labelled CSVs from the standard folder layouts."""

from __future__ import annotations

import csv
from pathlib import Path

from sorakit.cli.main import main
from sorakit.tools.datasets import camel_to_words


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_camel_to_words():
    assert camel_to_words("ApplyEyeMakeup") == "apply eye makeup"
    assert camel_to_words("YoYo") == "yo yo"
    assert camel_to_words("TVShow2") == "tv show 2"


def test_ucf101(tmp_path):
    root = tmp_path / "ucf"
    vids = {
        c: [touch(root / "UCF-101" / c / f"v_{c}_g0{g}_c01.avi") for g in (1, 2)]
        for c in ("YoYo", "ApplyEyeMakeup", "Basketball")
    }
    touch(root / "UCF-101" / "Basketball" / "readme.txt")  # not a video: ignored
    out = tmp_path / "ucf.csv"
    assert main(["data", "convert", "ucf101", str(root), "-o", str(out)]) == 0
    rows = read(out)
    assert [(Path(r["path"]).name, r["text"], r["label"]) for r in rows] == [
        ("v_ApplyEyeMakeup_g01_c01.avi", "apply eye makeup", "0"),
        ("v_ApplyEyeMakeup_g02_c01.avi", "apply eye makeup", "0"),
        ("v_Basketball_g01_c01.avi", "basketball", "1"),
        ("v_Basketball_g02_c01.avi", "basketball", "1"),
        ("v_YoYo_g01_c01.avi", "yo yo", "2"),
        ("v_YoYo_g02_c01.avi", "yo yo", "2"),
    ]
    assert all(Path(r["path"]).is_absolute() and Path(r["path"]).is_file() for r in rows)
    # official class indices and a split list
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 Basketball\n2 YoYo\n3 ApplyEyeMakeup\n")
    (lists / "testlist01.txt").write_text("YoYo/v_YoYo_g02_c01.avi\nBasketball/v_Basketball_g01_c01.avi\n")
    assert (
        main(
            [
                "data",
                "convert",
                "ucf101",
                str(root),
                "-o",
                str(out),
                "--raw-names",
                "--split-file",
                str(lists / "testlist01.txt"),
            ]
        )
        == 0
    )
    assert [(Path(r["path"]).name, r["text"], r["label"]) for r in read(out)] == [
        ("v_YoYo_g02_c01.avi", "YoYo", "1"),
        ("v_Basketball_g01_c01.avi", "Basketball", "0"),
    ]
    assert vids  # built above
    (lists / "bad.txt").write_text("YoYo/v_YoYo_g09_c01.avi 2\n")
    assert (
        main(["data", "convert", "ucf101", str(root), "-o", str(out), "--split-file", str(lists / "bad.txt")])
        == 2
    )


def test_imagenet(tmp_path, capsys):
    root = tmp_path / "imagenet"
    for wnid, n in (("n01443537", 2), ("n01440764", 3)):
        for i in range(n):
            touch(root / "train" / wnid / f"{wnid}_{i}.JPEG")
    out = tmp_path / "in.csv"
    assert main(["data", "convert", "imagenet", str(root), "-o", str(out)]) == 0
    rows = read(out)
    assert [(r["text"], r["label"]) for r in rows] == [("n01440764", "0")] * 3 + [("n01443537", "1")] * 2
    (root / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
    )
    assert main(["data", "convert", "imagenet", str(root), "-o", str(out)]) == 0
    assert [r["text"] for r in read(out)] == ["tench"] * 3 + ["goldfish"] * 2
    assert main(["data", "convert", "imagenet", str(root), "-o", str(out), "--all-synonyms"]) == 0
    assert read(out)[0]["text"] == "tench, Tinca tinca"
    assert main(["data", "convert", "imagenet", str(tmp_path / "nowhere"), "-o", str(out)]) == 2
    assert main(["data", "convert", "imagenet", str(root), "-o", str(out), "--split", "val"]) == 2
    assert "no 'val' folder" in capsys.readouterr().err
    (root / "val").mkdir()
    assert main(["data", "convert", "imagenet", str(root), "-o", str(out), "--split", "val"]) == 2
    assert "no class folders" in capsys.readouterr().err
