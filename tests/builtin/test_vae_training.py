"""`sorakit train-vae`: trains, saves a loadable AutoencoderKL with a scaling factor, and resumes."""

from __future__ import annotations

import json

import numpy as np
import torch

from sorakit.cli.main import main
from sorakit.encoders.vae import VideoVAE, load_autoencoder
from sorakit.tools.synth import synthesize
from sorakit.training import vae as tv


def test_train_save_and_resume(tmp_path):
    torch.set_num_threads(1)
    csv_path = synthesize(tmp_path / "data", 3, seed=0, size=32, frames=4)
    out = tmp_path / "vae"
    args = [
        "train-vae",
        "--csv",
        str(csv_path),
        "-o",
        str(out),
        "--batch-size",
        "2",
        "--block-out-channels",
        "16,16",
        "--threads",
        "1",
    ]
    assert main([*args, "--steps", "2"]) == 0
    state = json.loads((out / "train_state" / "state.json").read_text())
    assert state["step"] == 2
    ae = load_autoencoder(out)
    assert list(ae.config.block_out_channels) == [16, 16] and ae.config.scaling_factor > 0
    vae = VideoVAE(ae)
    assert vae.downsample_factor == 2
    x = torch.rand(1, 3, 4, 32, 32) * 2 - 1
    z = vae.encode(x, sample=False)
    assert z.shape == (1, 4, 4, 16, 16)
    assert vae.decode(z).shape == x.shape
    assert (out / "recon.png").is_file()
    # resume: continues from step 2, not from scratch
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    assert main([*args, "--steps", "3"]) == 0
    assert json.loads((out / "train_state" / "state.json").read_text())["step"] == 3
    after = load_autoencoder(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_loss_decreases_on_one_batch():
    torch.manual_seed(0)
    cfg = tv.VAETrainConfig(block_out_channels=[16, 16], steps=30)
    model = tv.build_autoencoder(cfg, sample_size=32)
    frames = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    frames[:, 8:20, 10:22] = (255, 0, 255)
    x = tv.to_tensor(frames)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = None
    for _ in range(30):
        loss, _ = tv.vae_loss(model, x, cfg)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_bad_arguments(tmp_path, capsys):
    assert (
        main(["train-vae", "--csv", str(tmp_path / "none.csv"), "-o", str(tmp_path / "o"), "--steps", "1"])
        == 2
    )
    assert "no such CSV" in capsys.readouterr().err
    assert main(["train-vae", "--csv", "x.csv", "-o", str(tmp_path / "o"), "--steps", "0"]) == 2
