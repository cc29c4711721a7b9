"""Issue #24 item 1: files sorakit creates or appends to are never written through a planted symbolic link.

One rule, measured on the source: every writer under src/ goes through sorakit.fileutil (atomic replace
through a fresh temporary, O_NOFOLLOW appends, O_EXCL new files). Then the cases the issue found: a
training run folder with config.toml / train.log / metrics.jsonl planted as links (fresh run and
--resume), and `data caption`'s failures CSV planted as a link.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

from sorakit.errors import UserError
from sorakit.fileutil import (
    atomic_write,
    open_append,
    open_new,
    open_update,
    refuse_links,
    write_bytes_atomic,
    write_text_atomic,
)

SRC = Path(__file__).resolve().parents[2] / "src" / "sorakit"
sys.path.insert(0, str(SRC.parents[1] / "tests" / "training"))

# writes that do not go through fileutil, each with the reason it is safe
ALLOWED = {
    # PyAV writes into a fresh mkstemp temporary (O_EXCL), renamed onto the output afterwards
    ("data/video.py", "av.open"),
}


def _write_flags(call: ast.Call) -> bool:
    names = {n.attr for a in call.args[1:2] for n in ast.walk(a) if isinstance(n, ast.Attribute)}
    return bool(names & {"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"})


def _raw_writes(path: Path) -> list[str]:
    """Calls in `path` that create or append to a file by name without sorakit.fileutil."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
        modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
        modes += [
            k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)
        ]
        writes = any(isinstance(m, str) and set(m) & set("wax+") for m in modes)
        bad = (
            (name == "open" and writes)
            or name in ("write_text", "write_bytes", "FileHandler")
            or (owner == "shutil" and name in ("copyfile", "copy", "copy2", "move"))
            or (name == "save" and owner == "torch" and not isinstance(node.args[1], ast.Name))
            or (name == "open" and owner == "os" and _write_flags(node))
        )
        where = f"{owner}.{name}" if owner else name
        if bad and (str(path.relative_to(SRC)), where) not in ALLOWED:
            found.append(f"{path.relative_to(SRC)}:{node.lineno} {where}(...)")
    return found


def test_every_writer_goes_through_fileutil() -> None:
    offenders = [hit for p in sorted(SRC.rglob("*.py")) if p.name != "fileutil.py" for hit in _raw_writes(p)]
    assert not offenders, "write files through sorakit.fileutil:\n" + "\n".join(offenders)


def _planted(tmp_path: Path, name: str) -> tuple[Path, Path]:
    target = tmp_path / f"victim-{name}"
    target.write_text("precious\n")
    link = tmp_path / "out" / name
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(target)
    return link, target


def test_helpers_never_write_a_link_target(tmp_path: Path) -> None:
    link, target = _planted(tmp_path, "a.txt")
    with pytest.raises(UserError, match="symbolic link"):
        open_append(link)
    with pytest.raises(UserError, match="symbolic link"):
        open_update(link)
    with pytest.raises(UserError, match="symbolic link"):
        refuse_links(link.parent, [link.name])
    with pytest.raises(FileExistsError):
        open_new(link)
    write_text_atomic(link, "new\n")  # replaces the link itself
    assert not link.is_symlink() and link.read_text() == "new\n"
    link.unlink()
    link.symlink_to(target)
    write_bytes_atomic(link, b"bytes")
    with pytest.raises(RuntimeError):
        with atomic_write(link) as fh:  # an error inside the block leaves the old entry and no temporary
            fh.write("half")
            raise RuntimeError
    assert link.read_bytes() == b"bytes" and [p.name for p in link.parent.iterdir()] == [link.name]
    fifo = tmp_path / "out" / "fifo"
    import os

    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        open_append(fifo)  # would block forever waiting for a reader
    assert target.read_text() == "precious\n"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from _train_helpers import make_cache

    return make_cache(tmp_path_factory.mktemp("cache"), n=8)


def _train(cache: Path, run: Path, steps: int, resume: bool = False):
    from _train_helpers import tiny_config

    from sorakit.training.trainer import train

    cfg = tiny_config(f"data.csv={cache}", f"train.max_steps={steps}", "train.ckpt_every=1")
    return train(cfg, run, resume=resume)


@pytest.mark.parametrize("name", ["config.toml", "train.log", "metrics.jsonl"])
def test_train_refuses_links_in_the_run_folder(tmp_path: Path, cache: Path, name: str) -> None:
    link, target = _planted(tmp_path, name)
    with pytest.raises(UserError, match=f"{name}: it is a symbolic link"):
        _train(cache, link.parent, steps=1)
    assert target.read_text() == "precious\n"


@pytest.mark.parametrize("name", ["checkpoints", "tensorboard"])
def test_train_refuses_linked_folders_in_the_run_folder(tmp_path: Path, cache: Path, name: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = tmp_path / "out"
    run.mkdir()
    (run / name).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UserError, match=f"{name}: it is a symbolic link"):
        _train(cache, run, steps=1)
    assert not any(elsewhere.iterdir())


def test_resume_does_not_rewrite_a_planted_metrics_link(tmp_path: Path, cache: Path) -> None:
    run = tmp_path / "out"
    _train(cache, run, steps=2)
    (run / "metrics.jsonl").unlink()
    link, target = _planted(tmp_path, "metrics.jsonl")
    target.write_text('{"step": 1}\n{"step": 99}\n')
    with pytest.raises(UserError, match="metrics.jsonl: it is a symbolic link"):
        _train(cache, run, steps=3, resume=True)
    assert target.read_text() == '{"step": 1}\n{"step": 99}\n'


class _Fails:
    def caption(self, batch):
        from sorakit.tools.caption import CaptionError

        return [CaptionError("no caption") for _ in batch]


def test_caption_does_not_append_to_a_linked_failures_csv(tmp_path: Path) -> None:
    from sorakit.data.video import write_video
    from sorakit.tools.caption import run_caption

    clip = write_video(tmp_path / "a.mp4", np.zeros((4, 16, 16, 3), np.uint8))
    link, target = _planted(tmp_path, "o.failures.csv")
    with pytest.raises(UserError, match="symbolic link"):
        run_caption([{"path": str(clip)}], [clip], _Fails(), link.parent / "o.csv", link, progress=False)
    assert target.read_text() == "precious\n"
