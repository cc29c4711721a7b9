"""`sorakit eval shapes`: scoring given videos and generating with a model directory."""

from __future__ import annotations

import csv
import json

from sorakit.cli.main import main
from sorakit.tools.synth import synthesize


def _video_csv(tmp_path, wrong: bool = False):
    src = synthesize(tmp_path / "data", 6, seed=9, holdout="none")
    rows = list(csv.DictReader(open(src)))
    out = tmp_path / "videos.csv"
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "text", "group"])
        for i, r in enumerate(rows):
            colour = "blue" if r["color"] != "blue" else "red"
            text = f"a {colour} {r['shape']} moving {r['motion']}" if wrong else r["text"]
            w.writerow([src.parent / r["path"], text, "a" if i % 2 else "b"])
    return out


def test_scores_given_videos(tmp_path, capsys):
    videos = _video_csv(tmp_path)
    res, js = tmp_path / "res.csv", tmp_path / "sum.json"
    assert main(["eval", "shapes", "--videos", str(videos), "--results", str(res), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "| overall | 6 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |" in out
    summary = json.loads(js.read_text())
    assert summary["a"]["n"] == 3 and summary["b"]["all"] == 100.0
    rows = list(csv.DictReader(open(res)))
    assert len(rows) == 6 and all(r["all_ok"] == "True" for r in rows)


def test_wrong_colour_prompts_score_zero(tmp_path, capsys):
    videos = _video_csv(tmp_path, wrong=True)
    assert main(["eval", "shapes", "--videos", str(videos)]) == 0
    out = capsys.readouterr().out
    assert "| overall | 6 | 0.0 | 100.0 | 100.0 | 0.0 | 100.0 |" in out


def test_user_errors(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,text\nx.mp4,a dog running\n")
    assert main(["eval", "shapes", "--videos", str(bad)]) == 2
    assert "names no" in capsys.readouterr().err
    assert main(["eval", "shapes", "--videos", str(tmp_path / "none.csv")]) == 2
    assert main(["eval", "shapes", "--sets", "train,weird", "--model", str(tmp_path)]) == 2
    assert main(["eval", "shapes", "--threads", "0", "--model", str(tmp_path)]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_generates_with_a_model_dir(tmp_path, capsys):
    from sorakit.pipelines.tiny import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "model", text_encoder="minilm")
    save = tmp_path / "gen"
    code = main(
        [
            "eval",
            "shapes",
            "--model",
            str(model),
            "-n",
            "2",
            "--sets",
            "train,heldout",
            "--steps",
            "2",
            "--save-videos",
            str(save),
            "--results",
            str(tmp_path / "r.csv"),
            "--threads",
            "1",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| train | 2 |" in out and "| heldout | 2 |" in out and "| overall | 4 |" in out
    assert len(list(save.glob("*.mp4"))) == 4
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [r["group"] for r in rows] == ["train", "train", "heldout", "heldout"]


def test_output_paths_checked_before_the_work(tmp_path, capsys):
    """--json / --results in a missing folder are created; under a file they fail before any scoring."""
    videos = _video_csv(tmp_path)
    js, res = tmp_path / "nodir" / "deeper" / "x.json", tmp_path / "other" / "r.csv"
    assert main(["eval", "shapes", "--videos", str(videos), "--json", str(js), "--results", str(res)]) == 0
    assert json.loads(js.read_text())["overall"]["n"] == 6 and len(list(csv.DictReader(open(res)))) == 6
    capsys.readouterr()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for flag in ("--json", "--results"):
        assert main(["eval", "shapes", "--videos", str(videos), flag, str(a_file / "x.out")]) == 2
        cap = capsys.readouterr()
        assert cap.out == "" and cap.err.startswith("sorakit: error:") and len(cap.err.splitlines()) == 1
    assert main(["eval", "shapes", "--videos", str(videos), "--json", str(tmp_path)]) == 2  # a folder
    assert main(["eval", "shapes", "--videos", str(videos), "--save-videos", str(a_file)]) == 2


def test_empty_prompt_file_is_an_error_and_no_progress_is_accepted(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert main(["eval", "shapes", "--prompts", str(empty), "--no-progress"]) == 2
    assert "holds no prompt" in capsys.readouterr().err
    videos = _video_csv(tmp_path)
    assert main(["eval", "shapes", "--videos", str(videos), "--no-progress"]) == 0
