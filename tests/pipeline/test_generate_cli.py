"""`sorakit generate` end to end (in-process), with tiny models built from configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sorakit.cli.generate import slugify
from sorakit.cli.main import main
from sorakit.data.video import probe_video, read_video
from sorakit.pipelines import TextToVideoPipeline
from sorakit.pipelines.tiny import make_tiny_autoencoder
from sorakit.pipelines.validate import preset_name


def _gen(*args: str) -> int:
    return main(["generate", *args, "--no-progress"])


def test_single_prompt_mp4(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "clips" / "cat.mp4"
    code = _gen("a cat playing the piano", "--model", str(tiny_model_dir), "--output", str(out),
                "--num-frames", "5", "--resolution", "16x24", "--steps", "3", "--fps", "6", "--seed", "7")  # fmt: skip
    assert code == 0
    info = probe_video(out)
    assert (info["num_frames"], info["height"], info["width"]) == (5, 16, 24)
    assert info["fps"] == pytest.approx(6)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["prompt"] == "a cat playing the piano" and meta["seed"] == 7 and meta["steps"] == 3
    assert meta["num_frames"] == 5 and (meta["height"], meta["width"]) == (16, 24)
    assert meta["model"]["model"] == str(tiny_model_dir.resolve())


def test_prompt_file_names_seeds_and_replay(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\n  A blue square, bouncing!  \nwaves at sunset\n")
    out_dir = tmp_path / "out"
    code = _gen("--prompt-file", str(prompts), "--model", str(tiny_model_dir), "--output-dir", str(out_dir),
                "--batch-size", "2", "--steps", "3", "--num-frames", "3", "--seed", "100")  # fmt: skip
    assert code == 0
    names = sorted(p.name for p in out_dir.iterdir())
    # numbered by prompt: the blank line uses no number
    assert names == [
        "0000-a-red-circle.json", "0000-a-red-circle.mp4",
        "0001-a-blue-square-bouncing.json", "0001-a-blue-square-bouncing.mp4",
        "0002-waves-at-sunset.json", "0002-waves-at-sunset.mp4",
    ]  # fmt: skip
    second = json.loads((out_dir / "0001-a-blue-square-bouncing.json").read_text())
    third = json.loads((out_dir / "0002-waves-at-sunset.json").read_text())
    assert second["prompt"] == "A blue square, bouncing!" and second["index"] == 1
    assert second["seed"] == 100 and third["seed"] == 102  # seed + position of the batch's first prompt
    assert second["batch"]["prompts"] == ["a red circle", "A blue square, bouncing!"]

    # the sidecar regenerates the same video
    replay = tmp_path / "again.mp4"
    assert _gen("--replay", str(out_dir / "0001-a-blue-square-bouncing.json"), "--output", str(replay)) == 0
    np.testing.assert_array_equal(read_video(replay), read_video(out_dir / "0001-a-blue-square-bouncing.mp4"))
    # and it is not the same as its batch neighbour
    assert not np.array_equal(read_video(replay), read_video(out_dir / "0000-a-red-circle.mp4"))

    # a damaged sidecar is a one-line error, and nothing is written
    good = json.loads((out_dir / "0001-a-blue-square-bouncing.json").read_text())
    for damage, words in (
        (lambda m: m.pop("num_frames"), "not a sorakit sidecar (KeyError: 'num_frames')"),
        (lambda m: m.pop("output"), "not a sorakit sidecar (KeyError: 'output')"),
        (lambda m: m["batch"].pop("indices"), "not a sorakit sidecar (KeyError: 'indices')"),
        (lambda m: m["batch"].update(index="x"), "not a sorakit sidecar (ValueError"),
        (lambda m: m["batch"].update(index=2), "batch index 2 is outside its batch of 2 prompt(s)"),
    ):
        meta = json.loads(json.dumps(good, allow_nan=False))
        damage(meta)
        side, out = tmp_path / "damaged.json", tmp_path / "damaged.mp4"
        side.write_text(json.dumps(meta, allow_nan=False))
        capsys.readouterr()
        assert _gen("--replay", str(side), "--output", str(out)) == 2, words
        err = capsys.readouterr().err.strip()
        assert err.startswith("sorakit: error: --replay ") and words in err and "\n" not in err, err
        assert not out.exists()


def test_threads_option_sets_torch_threads(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        target = 1 if before != 1 else 2
        out = tmp_path / "t.mp4"
        assert _gen("a cat", "--model", str(tiny_model_dir), "--output", str(out), "--num-frames", "2",
                    "--steps", "2", "--threads", str(target)) == 0  # fmt: skip
        assert torch.get_num_threads() == target and out.is_file()
    finally:
        torch.set_num_threads(before)


def test_same_seed_same_video_different_seed_different(tiny_model_dir: Path, tmp_path: Path) -> None:
    common = ["a dog", "--model", str(tiny_model_dir), "--steps", "3", "--num-frames", "2"]
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert _gen(*common, "--seed", seed, "--output", str(tmp_path / f"{name}.mp4")) == 0
    a, b, c = (read_video(tmp_path / f"{n}.mp4") for n in "abc")
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1


def test_gif_and_png(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert (
        _gen("a dog", "--model", str(tiny_model_dir), "--steps", "2", "--gif", "--output-dir", str(tmp_path))
        == 0
    )
    gif = tmp_path / "0000-a-dog.gif"
    assert probe_video(gif)["num_frames"] == 4
    assert _gen("a dog", "--model", str(tiny_model_dir), "--steps", "2", "--num-frames", "1",
                "--output-dir", str(tmp_path)) == 0  # fmt: skip
    png = tmp_path / "0000-a-dog.png"
    assert read_video(png).shape == (1, 16, 16, 3)


def _one_line_error(capsys: pytest.CaptureFixture, code: int, needle: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sorakit: error:"), err
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--steps", "0"], "--steps must be positive"),
        (["--num-frames", "0"], "--num-frames must be positive"),
        (["--resolution", "18x16"], "multiples of 4x4"),
        (["--resolution", "big"], "HxW"),
        (["--sampler", "euler"], "unknown sampler"),
        (["--sampler", "dpm-solver", "--steps", "1"], "at least order=2 steps"),
        (["--batch-size", "0"], "--batch-size must be positive"),
        (["--threads", "0"], "--threads must be positive"),
        (["--dtype", "fp16", "--device", "cpu"], "fp16 is not supported on CPU"),
        (["--output", "OUT/x.avi"], "unsupported file type"),
        (["--output", "OUT/x.png"], "1 frame"),
        (["--output", "FILE/x.mp4"], "is a file, not a folder"),
        (["--text-encoder", "MISSING"], "--text-encoder: no such directory"),
        (["--ckpt", "MISSING"], "--ckpt: no such file"),
        (["--set", "vae.nope=1"], "unknown key 'vae.nope'"),
    ],
)
def test_bad_inputs_fail_before_loading(
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch,
    extra: list[str],
    needle: str,
) -> None:
    def no_loading(*a, **k):  # every error must come before any weights are read
        raise AssertionError("weights were loaded before the input was validated")

    monkeypatch.setattr(TextToVideoPipeline, "from_pretrained", no_loading)
    monkeypatch.setattr(TextToVideoPipeline, "from_config", no_loading)
    (tmp_path / "file").write_text("x")
    subst = {"OUT": str(tmp_path / "o"), "FILE": str(tmp_path / "file"), "MISSING": str(tmp_path / "missing")}
    extra = [next((a.replace(k, v) for k, v in subst.items() if a.startswith(k)), a) for a in extra]
    code = _gen("a cat", "--model", str(tiny_model_dir), *extra)
    _one_line_error(capsys, code, needle)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_bad_prompt_sources(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\n")
    _one_line_error(
        capsys, _gen("--prompt-file", str(empty), "--model", str(tiny_model_dir)), "has no prompts"
    )
    _one_line_error(capsys, _gen("--prompt-file", str(tmp_path / "nope.txt")), "no such file")
    _one_line_error(capsys, _gen("  ", "--model", str(tiny_model_dir)), "prompt is empty")
    _one_line_error(capsys, _gen("--model", str(tiny_model_dir)), "exactly one of")
    _one_line_error(capsys, _gen("a", "--model", str(tmp_path / "none")), "--model: no such directory")
    _one_line_error(capsys, _gen("a", "--model", str(tiny_model_dir), "--preset", "opensora/16x256x256"),
                    "either --model or --preset")  # fmt: skip
    two = tmp_path / "two.txt"
    two.write_text("a\nb\n")
    _one_line_error(capsys, _gen("--prompt-file", str(two), "--model", str(tiny_model_dir), "--output",
                                 str(tmp_path / "x.mp4")), "use --output-dir")  # fmt: skip
    _one_line_error(capsys, _gen("a", "--preset", "opensora/nope"), "unknown preset")
    _one_line_error(
        capsys, _gen("--class-label", "3", "--model", str(tiny_model_dir)), "class-conditional models"
    )


def test_builtin_missing(capsys: pytest.CaptureFixture, monkeypatch, tmp_path: Path) -> None:
    from sorakit import modeldir as model_dir

    monkeypatch.setattr(model_dir, "BUILTIN_MODEL_DIR", tmp_path / "none")
    _one_line_error(
        capsys, _gen("a cat", "--output", str(tmp_path / "a.mp4")), "no built-in model is installed yet"
    )


def test_hub_ids_offline_give_one_line(capsys: pytest.CaptureFixture, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = _gen("a cat", "--preset", "opensora/16x256x256", "--output", str(tmp_path / "a.mp4"),
                "--vae", "sorakit-test-nobody/vae")  # fmt: skip
    _one_line_error(capsys, code, "huggingface-cli download sorakit-test-nobody/vae")
    code = _gen("a cat", "--preset", "opensora/16x256x256", "--output", str(tmp_path / "a.mp4"),
                "--ckpt", "OpenSora-v1-HQ-16x256x256.pth", "--vae", str(tmp_path))  # fmt: skip
    # the VAE folder is empty: that error comes first
    _one_line_error(capsys, code, "config.json")


def _class_preset(tmp_path: Path, vae_dir: Path) -> Path:
    toml = tmp_path / "dit-tiny-class.toml"
    toml.write_text(
        '[model]\ntype = "DiT-tiny"\narch = { condition = "label_10", hidden_size = 32, num_heads = 2 }\n'
        f'[vae]\ntype = "sd-vae"\npath = "{vae_dir}"\n'
        '[text_encoder]\ntype = "classes"\npath = "10"\n'
        '[scheduler]\ntype = "dpm-solver"\nnum_sampling_steps = 3\ncfg_scale = 4.0\n'
        "[inference]\nnum_frames = 1\nimage_size = [16, 16]\nbatch_size = 2\n"
    )
    return toml


def test_class_label_preset_with_ckpt(
    tmp_path: Path, capsys: pytest.CaptureFixture, tiny_model_dir: Path
) -> None:
    from safetensors.torch import save_file

    from sorakit.models import build_model

    vae_dir = tmp_path / "vae"
    make_tiny_autoencoder().save_pretrained(str(vae_dir))
    preset = _class_preset(tmp_path, vae_dir)
    torch.manual_seed(0)
    dit = build_model("DiT-tiny", condition="label_10", hidden_size=32, num_heads=2, input_size=(1, 8, 8))
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.05)
    save_file(dit.state_dict(), str(tmp_path / "dit.safetensors"))
    out = tmp_path / "out"
    code = _gen("--preset", str(preset), "--ckpt", str(tmp_path / "dit.safetensors"), "--class-label", "3",
                "--class-label", "7", "--output-dir", str(out))  # fmt: skip
    assert code == 0
    three, seven = read_video(out / "0000-class-3.png"), read_video(out / "0001-class-7.png")
    assert three.shape == seven.shape == (1, 16, 16, 3)
    assert not np.array_equal(three, seven)
    assert json.loads((out / "0001-class-7.json").read_text())["prompt"] == "7"
    capsys.readouterr()
    # text where a class index is expected; a label out of range; a checkpoint of another model
    _one_line_error(
        capsys, _gen("a cat", "--preset", str(preset), "--output-dir", str(out)), "class-conditional"
    )
    _one_line_error(capsys, _gen("--class-label", "10", "--preset", str(preset), "--output-dir", str(out)),
                    "out of range 0..9")  # fmt: skip
    stdit = tiny_model_dir / "transformer" / "model.safetensors"
    code = _gen("--class-label", "1", "--preset", str(preset), "--ckpt", str(stdit), "--output-dir", str(out))
    _one_line_error(capsys, code, "checkpoint does not match DiT-tiny")


def test_helpers() -> None:
    assert slugify("  A cat, playing the PIANO!! ") == "a-cat-playing-the-piano"
    assert slugify("???") == "video"
    assert len(slugify("word " * 40)) <= 48
    assert preset_name("opensora/16x256x256") == "opensora/inference/16x256x256"
    assert preset_name("dit/1x256x256-class") == "dit/inference/1x256x256-class"
    assert preset_name("pixart/inference/1x512x512") == "pixart/inference/1x512x512"


def test_opensora_preset_with_local_components(tiny_model_dir: Path, tmp_path: Path) -> None:
    """--preset opensora/16x256x256 with --text-encoder/--vae/--ckpt (sizes shrunk with --set) gives the
    same video as the model directory holding those same components."""
    shrink = ["--set", "model.type=STDiT-tiny", "--set", "model.arch.hidden_size=32", "--set",
              "model.arch.num_heads=2", "--set", "model.arch.mlp_ratio=2.0", "--set", "model.space_scale=1.0",
              "--set", "text_encoder.model_max_length=12", "--set", "scheduler.guidance_scale=4.0"]  # fmt: skip
    common = [
        "a red circle",
        "--resolution",
        "16x16",
        "--num-frames",
        "2",
        "--steps",
        "2",
        "--seed",
        "3",
        "--fps",
        "4",
    ]
    code = _gen(*common, "--preset", "opensora/16x256x256", *shrink,
                "--text-encoder", str(tiny_model_dir / "text_encoder"), "--vae", str(tiny_model_dir / "vae"),
                "--ckpt", str(tiny_model_dir / "transformer" / "model.safetensors"),
                "--output", str(tmp_path / "preset.mp4"))  # fmt: skip
    assert code == 0
    meta = json.loads((tmp_path / "preset.json").read_text())
    assert meta["model"]["preset"] == "opensora/inference/16x256x256" and meta["sampler"] == "iddpm"
    assert _gen(*common, "--model", str(tiny_model_dir), "--output", str(tmp_path / "dir.mp4")) == 0
    np.testing.assert_array_equal(read_video(tmp_path / "preset.mp4"), read_video(tmp_path / "dir.mp4"))
    # and the preset's sidecar replays
    assert _gen("--replay", str(tmp_path / "preset.json"), "--output", str(tmp_path / "again.mp4")) == 0
    np.testing.assert_array_equal(read_video(tmp_path / "again.mp4"), read_video(tmp_path / "preset.mp4"))


def test_model_dir_with_foreign_ckpt(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--model DIR --ckpt FILE: the checkpoint is checked against the model before the text encoder loads."""
    from safetensors.torch import save_file

    from sorakit.models import build_model

    save_file(build_model("DiT-tiny", condition="label_10").state_dict(), str(tmp_path / "dit.safetensors"))
    code = _gen("a cat", "--model", str(tiny_model_dir), "--ckpt", str(tmp_path / "dit.safetensors"),
                "--output", str(tmp_path / "a.mp4"))  # fmt: skip
    _one_line_error(capsys, code, "checkpoint does not match STDiT-tiny")
    assert not (tmp_path / "a.mp4").exists()
