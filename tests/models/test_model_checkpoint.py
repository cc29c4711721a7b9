"""load_checkpoint formats and adapters, PixArt -> STDiT initialisation, save/from_pretrained round trip."""

from __future__ import annotations

import json

import pytest
import torch

from sorakit.errors import UserError
from sorakit.models import (
    PixArt,
    STDiT,
    build_model,
    from_pretrained,
    load_checkpoint,
    save_pretrained,
)

SMALL = dict(caption_channels=16, model_max_length=6)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every learned tensor (and the null caption) with noise so zero-inits cannot hide bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if "pos_embed" in name:
                continue
            t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model


def inputs(b=2, t=3, h=8, w=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, t, h, w, generator=g)
    ts = torch.tensor([10.0, 700.0][:b])
    y = torch.randn(b, 1, 6, 16, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]][:b])
    return x, ts, y, mask


def test_pt_wrappers_and_module_prefix(tmp_path):
    src = randomize(build_model("STDiT-tiny", input_size=(3, 8, 8), **SMALL))
    sd = src.state_dict()
    x, ts, y, mask = inputs()
    with torch.no_grad():
        ref = src.eval()(x, ts, y, mask)
    cases = {
        "ema.pt": ({"ema": {f"module.{k}": v for k, v in sd.items()}, "step": 3}, "ema", "module."),
        "model.pth": ({"model": sd, "optimizer_step": 7}, "model", None),
        "sd.pt": ({"state_dict": {f"_orig_mod.{k}": v for k, v in sd.items()}}, "state_dict", "_orig_mod."),
        "plain.pt": (sd, None, None),
    }
    for fname, (obj, wrapper, prefix) in cases.items():
        torch.save(obj, tmp_path / fname)
        dst = build_model("STDiT-tiny", input_size=(3, 8, 8), **SMALL).eval()
        report = load_checkpoint(dst, tmp_path / fname)
        assert report.file_format == "torch"
        assert report.wrapper == wrapper and report.stripped_prefix == prefix, fname
        assert sorted(report.loaded) == sorted(k for k in sd if "pos_embed" not in k)
        with torch.no_grad():
            torch.testing.assert_close(dst(x, ts, y, mask), ref, rtol=0, atol=0)


def test_ema_preferred_over_model(tmp_path):
    a = randomize(build_model("DiT-tiny", input_size=(1, 8, 8)), seed=1)
    b = randomize(build_model("DiT-tiny", input_size=(1, 8, 8)), seed=2)
    torch.save({"model": a.state_dict(), "ema": b.state_dict()}, tmp_path / "c.pt")
    m = build_model("DiT-tiny", input_size=(1, 8, 8))
    assert load_checkpoint(m, tmp_path / "c.pt").wrapper == "ema"
    assert torch.equal(m.blocks[0].attn.qkv.weight, b.blocks[0].attn.qkv.weight)
    assert load_checkpoint(m, tmp_path / "c.pt", wrapper_key="model").wrapper == "model"
    assert torch.equal(m.blocks[0].attn.qkv.weight, a.blocks[0].attn.qkv.weight)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_refuses_full_unpickle(tmp_path):
    m = build_model("DiT-tiny", input_size=(1, 8, 8))
    torch.save({"model": m.state_dict(), "hook": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="weights_only"):
        load_checkpoint(m, tmp_path / "evil.pt")


def test_mismatch_names_keys(tmp_path):
    src = build_model("STDiT-tiny", input_size=(2, 8, 8), **SMALL).state_dict()
    src["blocks.0.extra.weight"] = torch.zeros(3)
    del src["blocks.1.mlp.fc2.bias"]
    m = build_model("STDiT-tiny", input_size=(2, 8, 8), **SMALL)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(UserError) as err:
        load_checkpoint(m, src)
    msg = str(err.value)
    assert (
        "missing 1 keys: blocks.1.mlp.fc2.bias" in msg and "unexpected 1 keys: blocks.0.extra.weight" in msg
    )
    # nothing was loaded
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    # shape mismatch
    src = build_model("STDiT-tiny", input_size=(2, 8, 8), caption_channels=8, model_max_length=6).state_dict()
    with pytest.raises(
        UserError, match=r"shape mismatch for .*y_embedder.y_proj.fc1.weight \[64, 8\] vs model \[64, 16\]"
    ):
        load_checkpoint(m, src)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(m, tmp_path / "nope.pt")
    (tmp_path / "junk.bin").write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(UserError, match="not a safetensors file nor a torch checkpoint"):
        load_checkpoint(m, tmp_path / "junk.bin")


def test_other_size_pos_embed_recomputed_and_image_conv_unsqueezed():
    # a DiT image checkpoint: 2-D patch conv, pos_embed of another size
    src = randomize(build_model("DiT-tiny", input_size=(1, 16, 16), condition="label_10"))
    sd = dict(src.state_dict())
    sd["x_embedder.proj.weight"] = sd["x_embedder.proj.weight"][:, :, 0]
    sd["pos_embed"] = sd.pop("pos_embed_spatial")  # original DiT name
    sd.pop("pos_embed_temporal")
    m = build_model("DiT-tiny", input_size=(4, 8, 8), condition="label_10")
    own_pos = m.pos_embed_spatial.clone()
    report = load_checkpoint(m, sd)
    assert list(report.adapted) == ["x_embedder.proj.weight"]
    assert report.recomputed == ["pos_embed_spatial", "pos_embed_temporal"] and report.dropped == [
        "pos_embed"
    ]
    assert torch.equal(m.pos_embed_spatial, own_pos)
    assert torch.equal(m.x_embedder.proj.weight[:, :, 0], src.x_embedder.proj.weight[:, :, 0])


def test_null_caption_length_adapted():
    src = randomize(build_model("STDiT-tiny", input_size=(1, 8, 8), caption_channels=16, model_max_length=4))
    m = build_model("STDiT-tiny", input_size=(1, 8, 8), caption_channels=16, model_max_length=6)
    report = load_checkpoint(m, src.state_dict())
    assert "extended from 4 to 6" in report.adapted["y_embedder.y_embedding"]
    emb = m.y_embedder.y_embedding
    assert torch.equal(emb[:4], src.y_embedder.y_embedding) and torch.equal(
        emb[5], src.y_embedder.y_embedding[3]
    )


def test_pixart_to_stdit_reproduces_pixart_frame_by_frame():
    torch.manual_seed(0)
    pixart = randomize(PixArt(input_size=(1, 8, 8), hidden_size=32, depth=2, num_heads=4, no_temporal_pos_emb=True,
                              space_scale=0.5, **SMALL), seed=3).double().eval()  # fmt: skip
    sd = dict(pixart.state_dict())
    sd["x_embedder.proj.weight"] = sd["x_embedder.proj.weight"][:, :, 0]  # as in the PixArt-alpha release
    sd["csize_embedder.mlp.0.weight"] = torch.zeros(2, 2)  # PixArt-MS size embedders are not used by STDiT
    stdit = STDiT(
        input_size=(3, 8, 8), hidden_size=32, depth=2, num_heads=4, space_scale=0.5, **SMALL
    ).double()
    report = load_checkpoint(stdit, {"state_dict": sd})
    assert report.pixart_to_stdit and report.wrapper == "state_dict"
    assert report.ignored == ["csize_embedder.mlp.0.weight"]
    assert list(report.adapted) == ["x_embedder.proj.weight"]
    temporal = [k for k in stdit.state_dict() if ".attn_temp." in k]
    assert sorted(report.created) == sorted(temporal) and len(temporal) == 8
    assert all(report.created[k].startswith("zeros") for k in temporal if ".proj." in k)
    assert sorted(report.loaded + list(report.adapted)) == sorted(
        k for k in pixart.state_dict() if "pos_embed" not in k
    )

    x, ts, y, mask = inputs()
    x, y = x.double(), y.double()
    with torch.no_grad():
        out = stdit.eval()(x, ts, y, mask)
        per_frame = torch.cat([pixart(x[:, :, i : i + 1], ts, y, mask) for i in range(x.shape[2])], dim=2)
    assert out.abs().max() > 0.1  # randomised weights: a real, non-trivial output
    torch.testing.assert_close(out, per_frame, rtol=1e-10, atol=1e-10)


def test_save_pretrained_round_trip(tmp_path):
    model = randomize(build_model("STDiT-tiny", input_size=(2, 8, 8), **SMALL)).eval()
    save_pretrained(model, tmp_path / "m", extra_config={"note": "test"})
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["architecture"] == "STDiT" and cfg["preset"] == "STDiT-tiny"
    assert cfg["config"]["input_size"] == [2, 8, 8] and cfg["config"]["caption_channels"] == 16
    assert cfg["extra_config"] == {"note": "test"}
    loaded = from_pretrained(tmp_path / "m").eval()
    assert type(loaded) is STDiT and loaded.preset == "STDiT-tiny"
    x, ts, y, mask = inputs(t=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, ts, y, mask), model(x, ts, y, mask), rtol=0, atol=0)
    # also through the class method and load_checkpoint on the directory
    assert isinstance(STDiT.from_pretrained(tmp_path / "m"), STDiT)
    with pytest.raises(TypeError):
        PixArt.from_pretrained(tmp_path / "m")
    other = build_model("STDiT-tiny", input_size=(2, 8, 8), **SMALL)
    assert load_checkpoint(other, tmp_path / "m").file_format == "safetensors"
    assert torch.equal(other.final_layer.linear.weight, model.final_layer.linear.weight)
    with pytest.raises(UserError, match="holds a STDiT model, not a PixArt"):
        load_checkpoint(build_model("PixArt-tiny", input_size=(2, 8, 8), **SMALL), tmp_path / "m")
    # bf16 export
    model.save_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    assert from_pretrained(tmp_path / "bf16").final_layer.linear.weight.dtype == torch.bfloat16
    with pytest.raises(UserError, match="not a sorakit model directory"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("model_type", ["STDiT-tiny", "PixArt-tiny", "DiT-tiny", "Latte-tiny"])
@pytest.mark.parametrize("objective", ["iddpm", "rflow"])
def test_build_from_config_prediction_and_variance(model_type, objective, tmp_path):
    """The config decides the model once: rectified flow -> a velocity model without learned variance,
    whatever the family calls the switch (pred_sigma / learn_sigma); the choice survives save/load."""
    from sorakit.config import Config
    from sorakit.models import build_from_config

    cfg = Config()
    cfg.model.type, cfg.train.objective, cfg.text_encoder.model_max_length = model_type, objective, 6
    rflow = objective == "rflow"
    model = build_from_config(cfg, (2, 4, 4), in_channels=4, caption_channels=16,
                              learn_variance=False if rflow else None)  # fmt: skip
    assert model.prediction_type == ("flow" if rflow else "epsilon")
    assert model.learns_variance is (not rflow)
    assert model.out_channels == (4 if rflow else 8)
    save_pretrained(model, tmp_path / "m")
    assert (
        json.loads((tmp_path / "m" / "config.json").read_text())["prediction_type"] == model.prediction_type
    )
    loaded = from_pretrained(tmp_path / "m")
    assert (loaded.prediction_type, loaded.learns_variance) == (model.prediction_type, model.learns_variance)


def test_folder_without_prediction_type_uses_the_callers_fallback(tmp_path):
    """Folders written before the field existed keep loading: the caller says what the model predicts."""
    model = build_model("STDiT-tiny", input_size=(2, 4, 4), **SMALL)
    save_pretrained(model, tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    meta = json.loads(path.read_text())
    meta.pop("prediction_type")
    path.write_text(json.dumps(meta))
    assert from_pretrained(tmp_path / "m").prediction_type == "epsilon"
    assert from_pretrained(tmp_path / "m", prediction_type="flow").prediction_type == "flow"
    meta["prediction_type"] = "epsilon"  # a recorded type wins over the fallback
    path.write_text(json.dumps(meta))
    assert from_pretrained(tmp_path / "m", prediction_type="flow").prediction_type == "epsilon"
