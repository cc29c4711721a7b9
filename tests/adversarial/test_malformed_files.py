"""Item 10 of issue #24: damaged or hostile weight files, checkpoints and output folders are one
`sorakit: error:` line with exit 2 in convert, generate, train, resume and encode -- never a traceback,
and a planted pickle is refused, never run."""

from __future__ import annotations

import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sorakit.manifest import MANIFEST, write_manifest
from sorakit.training.checkpoint import list_checkpoints

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from _train_helpers import TINY_OVERRIDES, make_cache, tiny_config  # noqa: E402

UNWRITABLE = Path("/proc/sorakit-no-such-folder")  # even root cannot create anything under /proc


def _valid(path: Path) -> Path:
    save_file({"w": torch.randn(64, 64)}, str(path))
    return path


def _truncated(path: Path) -> Path:
    data = _valid(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _absurd_header(path: Path) -> Path:
    path.write_bytes(struct.pack("<Q", 2**62) + b'{"w": {}}')
    return path


def _huge_tensor_claim(path: Path) -> Path:
    header = b'{"w":{"dtype":"F32","shape":[1000000000000],"data_offsets":[0,4000000000000]}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(b"\x07not a tensor file at all" * 10)
    return path


class _Boom:
    def __reduce__(self):  # what a malicious checkpoint does: run a command when unpickled
        return (shutil.rmtree, ("/definitely/not/here",))


def _pickle_bomb(path: Path) -> Path:
    torch.save({"state": _Boom()}, str(path))
    return path


BAD_SAFETENSORS = [_truncated, _absurd_header, _huge_tensor_claim, _garbage]


@pytest.mark.parametrize("damage", BAD_SAFETENSORS)
def test_convert_refuses_damaged_safetensors(refused, tmp_path: Path, damage) -> None:
    ckpt = damage(tmp_path / "ckpt.safetensors")
    msg = refused("convert", str(ckpt), str(tmp_path / "out"), "--model", "STDiT-tiny")
    assert str(ckpt) in msg
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_convert_refuses_a_pickle(refused, tmp_path: Path) -> None:
    ckpt = _pickle_bomb(tmp_path / "evil.pt")
    assert "refusing to unpickle" in refused(
        "convert", str(ckpt), str(tmp_path / "out"), "--model", "STDiT-tiny"
    )


def test_convert_into_an_unwritable_folder_fails_before_reading(refused, tmp_path: Path) -> None:
    ckpt = _valid(tmp_path / "ckpt.safetensors")
    assert "cannot write to" in refused("convert", str(ckpt), str(UNWRITABLE / "m"), "--model", "STDiT-tiny")


@pytest.mark.parametrize("damage", BAD_SAFETENSORS)
def test_generate_refuses_a_model_folder_with_damaged_weights(
    refused, tiny_model_dir: Path, tmp_path, damage
):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    damage(model / "transformer" / "model.safetensors")
    msg = refused("generate", "a cat", "--model", str(model), "-o", str(tmp_path / "v.mp4"), "--steps", "1",
                  "--num-frames", "1", "--no-progress")  # fmt: skip
    assert "model.safetensors" in msg and not (tmp_path / "v.mp4").exists()


# training ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny run with checkpoints at steps 1 and 2, and its latent cache."""
    from sorakit.training.trainer import train

    root = tmp_path_factory.mktemp("run")
    cache = make_cache(root / "cache", n=8)
    torch.set_num_threads(1)
    train(tiny_config(f"data.csv={cache}", "train.max_steps=2", "train.ckpt_every=1"), root / "run")
    return root / "run", cache


def _train(refused, cache: Path, run: Path, *extra: str) -> str:
    return refused("train", "tiny", *TINY_OVERRIDES, "--data", str(cache), "--output", str(run), "--max-steps",
                   "3", "--ckpt-every", "1", *extra)  # fmt: skip


def _copy_run(run_dir: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    run, cache = run_dir
    copy = shutil.copytree(run, tmp_path / "run")
    return copy, list_checkpoints(copy)[-1][1]


@pytest.mark.parametrize("damage", BAD_SAFETENSORS)
def test_train_init_from_damaged_safetensors(refused, run_dir, tmp_path: Path, damage) -> None:
    bad = damage(tmp_path / "init.safetensors")
    msg = _train(refused, run_dir[1], tmp_path / "new", "--init", str(bad))
    assert str(bad) in msg


@pytest.mark.parametrize("damage", BAD_SAFETENSORS)
def test_resume_with_damaged_weights_under_a_matching_manifest(
    refused, run_dir, tmp_path: Path, damage
) -> None:
    """A checkpoint whose manifest was rewritten to match the damage (a hand-edited folder, another tool):
    the verification passes, so loading itself must refuse in one line."""
    run, last = _copy_run(run_dir, tmp_path)
    damage(last / "model.safetensors")
    (last / MANIFEST).unlink()
    write_manifest(last)
    assert "model.safetensors" in _train(refused, run_dir[1], run, "--resume")


def test_resume_refuses_a_planted_pickle(refused, run_dir, tmp_path: Path) -> None:
    run, last = _copy_run(run_dir, tmp_path)
    _pickle_bomb(last / "optimizer.pt")
    (last / MANIFEST).unlink()
    write_manifest(last)
    msg = _train(refused, run_dir[1], run, "--resume")
    assert "refusing to unpickle" in msg and "optimizer.pt" in msg


def test_resume_sets_aside_a_planted_pickle_without_manifest(run_dir, tmp_path: Path) -> None:
    """Without a manifest every file is test-loaded (weights_only) first: the pickle is refused there and
    the checkpoint set aside, never unpickled."""
    from sorakit.training.checkpoint import verify_checkpoint

    run, last = _copy_run(run_dir, tmp_path)
    _pickle_bomb(last / "optimizer.pt")
    (last / MANIFEST).unlink()
    verdict = verify_checkpoint(last)
    assert not verdict.ok and "optimizer.pt does not load" in verdict.reason


def test_resume_after_changing_the_model_shape(refused, run_dir, tmp_path: Path) -> None:
    run, _ = _copy_run(run_dir, tmp_path)
    msg = _train(refused, run_dir[1], run, "--resume", "model.arch.hidden_size=64")
    assert "does not fit the configured model" in msg


def test_train_and_encode_into_an_unwritable_folder(refused, run_dir, tmp_path: Path) -> None:
    assert "cannot write to" in _train(refused, run_dir[1], UNWRITABLE / "run")
    csv = tmp_path / "in.csv"
    csv.write_text("path,text\nx.mp4,a cat\n")
    msg = refused("data", "encode", str(csv), "--output", str(UNWRITABLE / "cache"))
    assert "cannot write to" in msg
