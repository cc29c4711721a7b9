"""The data tools chained as a user would, ending in the training CSV reader."""

from __future__ import annotations

import csv
from pathlib import Path

from sorakit.cli.main import main
from sorakit.data.dataset import read_table


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_scenes_cut_caption_filter_split_then_training_reader(media, tmp_path, monkeypatch, chat_server):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    scenes, clips_dir = tmp_path / "scenes.csv", tmp_path / "clips"
    assert main(["data", "scenes", str(media["dir"]), "-o", str(scenes), "--min-seconds", "0.6"]) == 0
    assert main(["data", "cut", str(scenes), "--output-dir", str(clips_dir), "--short-side", "32"]) == 0
    clips = clips_dir / "clips.csv"
    n_clips = len(read(clips))
    captions = tmp_path / "captions.csv"
    with chat_server(["The video shows a square moving."], default="Colours drift by.") as server:
        assert (
            main(
                [
                    "data",
                    "caption",
                    str(clips),
                    "-o",
                    str(captions),
                    "--base-url",
                    server.url,
                    "--workers",
                    "2",
                ]
            )
            == 0
        )
    assert len(read(captions)) == n_clips
    stripped = tmp_path / "stripped.csv"
    assert main(["data", "csv", "strip-prefix", str(captions), "-o", str(stripped)]) == 0
    assert sum(r["text"] == "A square moving." for r in read(stripped)) == 1
    filtered = tmp_path / "filtered.csv"
    assert (
        main(
            [
                "data",
                "csv",
                "filter",
                str(stripped),
                "-o",
                str(filtered),
                "--min-frames",
                "16",
                "--drop-empty-caption",
            ]
        )
        == 0
    )
    kept = read(filtered)
    assert kept and all(int(r["num_frames"]) >= 16 for r in kept)
    train, val = tmp_path / "train.csv", tmp_path / "val.csv"
    assert (
        main(
            [
                "data",
                "csv",
                "split",
                str(filtered),
                "-o",
                str(train),
                "--val-output",
                str(val),
                "--val-count",
                "1",
            ]
        )
        == 0
    )
    rows = read_table(train) + read_table(val)
    assert len(rows) == len(kept)
    assert all(r.path.is_file() and r.text for r in rows)
    # clips of one source video stay on one side of the split
    sources = lambda p: {r["source_path"] for r in read(p)}  # noqa: E731
    assert not sources(train) & sources(val)
