"""`sorakit convert`: upstream checkpoint -> sorakit model directory, and its user errors."""

from __future__ import annotations

import json

import torch

from sorakit.cli.main import main
from sorakit.models import PixArt, build_model, from_pretrained, save_pretrained


def test_convert_pixart_into_stdit(tmp_path, capsys):
    pixart = PixArt(
        input_size=(1, 8, 8), hidden_size=32, depth=2, num_heads=4, caption_channels=16, model_max_length=6
    )
    sd = {k: v for k, v in pixart.state_dict().items()}
    sd["x_embedder.proj.weight"] = sd["x_embedder.proj.weight"][:, :, 0]
    torch.save({"state_dict": sd}, tmp_path / "PixArt-tiny.pth")
    out = tmp_path / "stdit"
    code = main(["convert", str(tmp_path / "PixArt-tiny.pth"), str(out), "--model", "STDiT-tiny",
                 "input_size=4,8,8", "hidden_size=32", "caption_channels=16", "model_max_length=6",
                 "space_scale=0.5", "--dtype", "bfloat16"])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "PixArt -> STDiT initialisation" in text and "blocks.1.attn_temp.proj.weight: zeros" in text
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "STDiT" and cfg["config"]["input_size"] == [4, 8, 8]
    assert cfg["config"]["space_scale"] == 0.5 and cfg["dtype"] == "bfloat16"
    model = from_pretrained(out)
    assert torch.equal(model.blocks[0].attn.qkv.weight, pixart.blocks[0].attn.qkv.weight.bfloat16())


def test_convert_user_errors(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    assert main(["convert", str(missing), str(tmp_path / "o"), "--model", "STDiT-tiny"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    torch.save({"x": torch.zeros(1)}, tmp_path / "c.pt")
    assert (
        main(["convert", str(tmp_path / "c.pt"), str(tmp_path / "o"), "--model", "STDiT-tiny", "depht=3"])
        == 2
    )
    assert "unknown model argument(s) depht" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "c.pt"), str(tmp_path / "o"), "--model", "Nope"]) == 2
    assert "unknown model 'Nope'" in capsys.readouterr().err
    assert (
        main(
            [
                "convert",
                str(tmp_path / "c.pt"),
                str(tmp_path / "o"),
                "--model",
                "DiT-tiny",
                "input_size=1,8,8",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("sorakit: error:") and "missing" in err and "unexpected 1 keys: x" in err
    assert not (tmp_path / "o").exists()


def test_converted_dir_as_model_says_how_to_use_it(tmp_path, capsys):
    """`generate --model CONVERTED` explains the transformer-only folder (was: 'no sorakit_pipeline.json')."""
    model = build_model("STDiT-tiny", input_size=(4, 8, 8), hidden_size=32, depth=1, num_heads=2)
    save_pretrained(model, tmp_path / "conv")
    code = main(["generate", "a cat", "--model", str(tmp_path / "conv"), "--output", str(tmp_path / "a.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--preset PRESET --ckpt {tmp_path / 'conv'}" in err
