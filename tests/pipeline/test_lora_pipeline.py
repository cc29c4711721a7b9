"""LoRA adapters after training: `sorakit export` writes a peft folder that peft itself loads onto the same
base with the same outputs; merged equals unmerged; `--merge-lora` writes a plain model; `generate --lora`
and `TextToVideoPipeline.load_lora` apply adapters (several, each with its scale); a wrong base, path or
scale is a one-line error. The base is the built-in model; the adapter trains 3 steps on a random cache. A VAE
decoder adapter (``vae/`` in an adapter folder) is peft format too, applied by load_lora and merged by export."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sorakit.cli.main import main
from sorakit.config import load_config
from sorakit.encoders.vae import VideoVAE, load_autoencoder
from sorakit.errors import UserError
from sorakit.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    apply_adapters,
    base_fingerprint,
    inject,
    read_adapter,
    write_sampler_settings,
)
from sorakit.modeldir import BUILTIN_MODEL_DIR
from sorakit.models import from_pretrained
from sorakit.pipelines import TextToVideoPipeline
from sorakit.pipelines.validate import ModelSource, flag_overrides
from sorakit.tools.synth import synthesize
from sorakit.training.export import export_run
from sorakit.training.trainer import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from _train_helpers import make_cache  # noqa: E402


def _base() -> torch.nn.Module:
    return from_pretrained(BUILTIN_MODEL_DIR / "transformer", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    """A LoRA run on the built-in model (rank 4, every default target and the adaLN projection)."""
    tmp = tmp_path_factory.mktemp("lora")
    cache = make_cache(tmp / "cache", n=8, text_dim=384, max_length=32)
    cfg = load_config("builtin/stdit", [
        f"data.csv={cache}", f"train.init_from={BUILTIN_MODEL_DIR}", "lora.rank=4", "lora.adaln=true",
        "train.max_steps=3", "train.ckpt_every=3", "train.lr=5e-2", "train.ema_decay=0", "train.warmup_steps=0",
        "train.decay_steps=0", "train.batch_size=4", "train.tensorboard=false",
    ])  # fmt: skip
    cfg.data.cache_dir = None
    train(cfg, tmp / "run")
    return tmp / "run"


def _inputs(batch: int = 2):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 4, 4, 8, 8, generator=g)
    y = torch.randn(batch, 1, 32, 384, generator=g)
    return x, torch.tensor([900.0, 200.0][:batch]), y, torch.ones(batch, 32, dtype=torch.long)


def test_exported_adapter_is_peft_format_and_peft_reproduces_sorakit(lora_run, tmp_path):
    from peft import PeftModel

    adapter = export_run(lora_run, tmp_path / "adapter")
    assert {p.name for p in adapter.iterdir()} == {ADAPTER_CONFIG, ADAPTER_WEIGHTS}
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and "t_block.1" in config["target_modules"]
    assert config["base_model_name_or_path"] == "the built-in model"
    assert config["revision"] == f"sorakit-sha256:{base_fingerprint(_base())}"
    tensors = load_file(str(adapter / ADAPTER_WEIGHTS))
    assert all(
        k.startswith("base_model.model.") and (".lora_A.weight" in k or ".lora_B.weight" in k)
        for k in tensors
    )

    x, t, y, mask = _inputs()
    with torch.no_grad():
        plain = _base()(x, t, y, mask)
        peft_model = PeftModel.from_pretrained(_base(), str(adapter)).eval()
        by_peft = peft_model(x, t, y, mask)
        ours = _base()
        apply_adapters(ours, [(adapter, 1.0)], base_fingerprint(ours), "base", merge=False)
        unmerged = ours(x, t, y, mask)
        merged_model = _base()
        apply_adapters(merged_model, [(adapter, 1.0)], base_fingerprint(merged_model), "base", merge=True)
        merged = merged_model(x, t, y, mask)
    assert (by_peft - plain).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(unmerged, by_peft, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
    assert not any(".lora_" in n for n, _ in merged_model.named_parameters())  # a plain model again
    assert set(merged_model.state_dict()) == set(_base().state_dict())


def test_merge_lora_export_equals_the_adapter_on_its_base(lora_run, tmp_path):
    adapter = export_run(lora_run, tmp_path / "adapter")
    merged_dir = export_run(lora_run, tmp_path / "merged", merge_lora=True)
    merged = from_pretrained(merged_dir / "transformer").eval()
    x, t, y, mask = _inputs()
    ours = _base()
    apply_adapters(ours, [(adapter, 1.0)], base_fingerprint(ours), "base", merge=False)
    with torch.no_grad():
        torch.testing.assert_close(merged(x, t, y, mask), ours(x, t, y, mask), atol=1e-4, rtol=1e-4)
    spec = json.loads((merged_dir / "sorakit_pipeline.json").read_text())
    assert spec["config"]["lora"]["rank"] == 0
    with pytest.raises(UserError, match="--bundle-vae writes a model directory"):
        export_run(lora_run, tmp_path / "x", bundle_vae=True)


def test_pipeline_load_lora_scales_and_several_adapters(lora_run, tmp_path):
    adapter = export_run(lora_run, tmp_path / "adapter")
    kw = dict(num_frames=4, num_inference_steps=2, seed=0, output_type="latent", progress=False)
    prompt = "a red circle moving to the right"
    base = TextToVideoPipeline.from_pretrained(None, device="cpu")
    plain = base(prompt, **kw)
    zero = TextToVideoPipeline.from_pretrained(None, device="cpu")
    assert zero.load_lora(f"{adapter}:0") == ["lora0"]
    torch.testing.assert_close(zero(prompt, **kw), plain, atol=1e-4, rtol=1e-4)  # scale 0: the base
    two = TextToVideoPipeline.from_pretrained(None, device="cpu")
    two.load_lora([(adapter, 0.5), f"{adapter}:0.5"])  # two halves of one adapter
    whole = TextToVideoPipeline.from_pretrained(None, device="cpu")
    whole.load_lora(adapter)
    out = whole(prompt, **kw)
    assert (out - plain).abs().max() > 1e-3
    torch.testing.assert_close(two(prompt, **kw), out, atol=1e-4, rtol=1e-4)


def test_generate_lora_cli_sidecar_replay_and_errors(lora_run, tmp_path, capsys):
    adapter = export_run(lora_run, tmp_path / "adapter")
    out = tmp_path / "a.mp4"
    args = [
        "generate",
        "a red circle moving to the right",
        "--num-frames",
        "4",
        "--steps",
        "2",
        "--no-progress",
    ]
    assert main([*args, "--lora", f"{adapter}:0.7", "--output", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["model"]["loras"] == [f"{adapter.resolve()}:0.7"]
    again = tmp_path / "b.mp4"
    assert (
        main(["generate", "--replay", str(out.with_suffix(".json")), "--output", str(again), "--no-progress"])
        == 0
    )
    assert again.read_bytes() == out.read_bytes()
    plain = tmp_path / "plain.mp4"
    assert main([*args, "--output", str(plain)]) == 0
    assert plain.read_bytes() != out.read_bytes()

    other = tmp_path / "other"
    shutil.copytree(adapter, other)
    config = json.loads((other / ADAPTER_CONFIG).read_text())
    config.update(base_model_name_or_path="/models/another-stdit", revision="sorakit-sha256:" + "f" * 64)
    (other / ADAPTER_CONFIG).write_text(json.dumps(config, allow_nan=False))
    numbers = {}  # adapter configs whose numbers would scale every update wrongly (NaN: a black video)
    for key, value, words in (
        ("lora_alpha", float("nan"), "NaN is not a number JSON allows"),  # Python's json would read it
        ("lora_alpha", 0, "lora_alpha must be a finite number > 0"),
        ("r", "8", "r must be a whole number >= 1"),
        ("lora_dropout", 1.5, "lora_dropout must be in [0, 1)"),
    ):
        folder = numbers[words] = tmp_path / f"bad-{len(numbers)}"
        shutil.copytree(adapter, folder)
        bad_config = {**json.loads((adapter / ADAPTER_CONFIG).read_text()), key: value}
        (folder / ADAPTER_CONFIG).write_text(json.dumps(bad_config, allow_nan=True))  # NaN on purpose
    capsys.readouterr()
    for bad, words in (
        *((str(folder), words) for words, folder in numbers.items()),
        (str(tmp_path / "missing"), "--lora: no such directory"),
        (f"{adapter}:abc", "the scale after ':' must be a number"),
        (f"{adapter}:nan", "finite number"),
        (str(tmp_path), "not a LoRA adapter folder"),
        (str(other), "was trained for base model /models/another-stdit (fingerprint ffffffffffff), not for the built-in model"),
    ):  # fmt: skip
        assert main([*args, "--lora", bad, "--output", str(tmp_path / "x.mp4")]) == 2, bad
        err = capsys.readouterr().err.strip()
        assert err.startswith("sorakit: error: ") and words in err and "\n" not in err, err


def test_an_adapters_sampler_json_sets_the_defaults_under_the_users_settings(lora_run, tmp_path, capsys):
    adapter = export_run(lora_run, tmp_path / "adapter")
    write_sampler_settings(adapter, {"guidance_interval": [500, 1000], "guidance_scale": 2.5})
    kw = dict(num_frames=4, num_inference_steps=3, seed=0, output_type="latent", progress=False)
    prompt = "a red circle moving to the right"
    pipe = TextToVideoPipeline.from_pretrained(None, device="cpu")
    default_interval = pipe.config.sampler.guidance_interval
    assert default_interval != [500.0, 1000.0]
    pipe.load_lora(adapter)
    assert (
        pipe.config.sampler.guidance_interval == [500.0, 1000.0] and pipe.config.sampler.guidance_scale == 2.5
    )
    plain = TextToVideoPipeline.from_pretrained(None, device="cpu")
    plain.load_lora(adapter, sampler=False)
    assert plain.config.sampler.guidance_interval == default_interval
    out = pipe(prompt, **kw)
    torch.testing.assert_close(out, plain(prompt, **kw, guidance_interval=(500, 1000), guidance_scale=2.5))
    assert (out - plain(prompt, **kw)).abs().max() > 1e-4  # the settings change the samples
    # generate --lora: the adapter's settings replace the model's, a flag replaces the adapter's
    assert ModelSource.choose(loras=[str(adapter)]).config().sampler.guidance_interval == [500.0, 1000.0]
    flags = flag_overrides([], None, "0,1000", None, False, False, None)
    source = ModelSource.choose(overrides=flags, loras=[str(adapter)])
    assert source.config().sampler.guidance_interval == [0, 1000]
    args = ["generate", prompt, "--num-frames", "4", "--steps", "2", "--no-progress", "--lora", str(adapter)]
    for extra, scale in (([], 2.5), (["--guidance", "4"], 4.0)):
        out_file = tmp_path / f"g{scale}.mp4"
        assert main([*args, *extra, "--output", str(out_file)]) == 0
        assert json.loads(out_file.with_suffix(".json").read_text())["guidance"] == scale

    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    for text, words in (
        ('{"shift": 3}', "shift cannot be set by an adapter"),
        ("{not json", "invalid JSON"),
        ("[500, 1000]", "expected an object of sampler settings"),
        ('{"guidance_interval": [-5, 1000]}', "guidance_interval"),
        ('{"guidance_scale": NaN}', "NaN is not a number JSON allows"),  # Python's json would read it
        ('{"guidance_interval": [1e400, 1000]}', "1e400 is beyond float's range"),  # Python reads inf
    ):
        (adapter / "sampler.json").write_text(text)
        with pytest.raises(UserError, match=words):
            pipe.load_lora(adapter)
        assert main([*args, "--output", str(tmp_path / "x.mp4")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("sorakit: error: ") and words in err and "\n" not in err, err
    assert all(torch.equal(v, before[k]) for k, v in pipe.transformer.state_dict().items())  # nothing applied
    assert pipe.config.sampler.guidance_interval == [500.0, 1000.0]


# --------------------------------------------------------------------------------------------------
# The VAE decoder adapter (adapter/vae/): trained by `train-vae --decoder-lora`, applied by load_lora, merged
# by `export --merge-lora --vae-lora`


def _builtin_autoencoder() -> torch.nn.Module:
    return load_autoencoder(BUILTIN_MODEL_DIR / "vae").eval()


@pytest.fixture(scope="module")
def vae_adapter(tmp_path_factory) -> Path:
    """A decoder adapter of the built-in VAE, 2 steps at a large rate on 2 synthetic clips of the new concepts."""
    tmp = tmp_path_factory.mktemp("vae-lora")
    csv_path = synthesize(tmp / "data", 2, seed=0, frames=4, concepts="extended", new_fraction=1.0)
    argv = ["train-vae", "--csv", str(csv_path), "-o", str(tmp / "vae"), "--decoder-lora", "builtin",
            "--steps", "2", "--batch-size", "2", "--lr", "5e-2"]  # fmt: skip
    assert main(argv) == 0
    return tmp / "vae"


def _latents(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 4, 16, 16, generator=torch.Generator().manual_seed(5))


def test_decoder_adapter_is_peft_format_zero_b_exact_and_peft_reproduces_it(vae_adapter):
    from peft import PeftModel

    config = json.loads((vae_adapter / ADAPTER_CONFIG).read_text())
    assert config["revision"] == f"sorakit-sha256:{base_fingerprint(_builtin_autoencoder())}"
    assert "decoder.conv_in" in config["target_modules"] and config["r"] == 4
    assert not any(
        m.startswith("encoder.") for m in config["target_modules"]
    )  # the latents stay as they were
    z = _latents()
    with torch.no_grad():
        plain = _builtin_autoencoder().decode(z).sample
        zero = _builtin_autoencoder()
        spec, _ = read_adapter(vae_adapter)
        inject(zero, spec)  # B = 0: exactly the base
        assert torch.equal(zero.decode(z).sample, plain)
        by_peft = PeftModel.from_pretrained(_builtin_autoencoder(), str(vae_adapter)).eval()
        peft_out = by_peft.base_model.model.decode(z).sample
        ours = _builtin_autoencoder()
        apply_adapters(ours, [(vae_adapter, 1.0)], base_fingerprint(ours), "vae", merge=False)
        merged = _builtin_autoencoder()
        apply_adapters(merged, [(vae_adapter, 1.0)], base_fingerprint(merged), "vae", merge=True)
        encoded = merged.encode(torch.rand(1, 3, 64, 64) * 2 - 1).latent_dist.mean
        base_encoded = _builtin_autoencoder().encode(torch.rand(1, 3, 64, 64) * 2 - 1).latent_dist.mean
    assert (peft_out - plain).abs().max() > 1e-2  # the adapter does something
    torch.testing.assert_close(ours.decode(z).sample, peft_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged.decode(z).sample, peft_out, atol=1e-4, rtol=1e-4)
    assert encoded.shape == base_encoded.shape and not any(
        ".lora_" in n for n, _ in merged.named_parameters()
    )


def test_load_lora_applies_the_vae_adapter_of_an_adapter_folder(lora_run, vae_adapter, tmp_path):
    adapter = export_run(lora_run, tmp_path / "adapter")
    both = tmp_path / "both"
    shutil.copytree(adapter, both)
    shutil.copytree(vae_adapter, both / "vae")
    kw = dict(num_frames=4, num_inference_steps=2, seed=0, progress=False, output_type="pt")
    prompt = "a red circle moving to the right"
    outs = {}
    for name, folder in (("transformer", adapter), ("both", both)):
        pipe = TextToVideoPipeline.from_pretrained(None, device="cpu")
        pipe.load_lora(folder)
        outs[name] = pipe(prompt, **kw)
        latents = pipe(prompt, **{**kw, "output_type": "latent"})
        outs[name + " latents"] = latents
        outs[name + " decoder"] = pipe.vae.decode(latents)
    torch.testing.assert_close(
        outs["both latents"], outs["transformer latents"]
    )  # the VAE adapter only draws
    assert (outs["both"] - outs["transformer"]).abs().max() > 1e-2
    reference = _builtin_autoencoder()
    apply_adapters(reference, [(vae_adapter, 1.0)], base_fingerprint(reference), "vae")
    vae = VideoVAE(
        reference, scaling_factor=TextToVideoPipeline.from_pretrained(None, device="cpu").vae.scaling_factor
    )
    with torch.no_grad():
        torch.testing.assert_close(
            outs["both decoder"], vae.decode(outs["both latents"]), atol=1e-5, rtol=1e-5
        )

    other = tmp_path / "other"
    shutil.copytree(both, other)
    config = json.loads((other / "vae" / ADAPTER_CONFIG).read_text())
    config.update(base_model_name_or_path="another VAE", revision="sorakit-sha256:" + "e" * 64)
    (other / "vae" / ADAPTER_CONFIG).write_text(json.dumps(config))
    pipe = TextToVideoPipeline.from_pretrained(None, device="cpu")
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    with pytest.raises(UserError, match=r"was trained for base model another VAE .*not for the VAE of"):
        pipe.load_lora(other)
    assert all(torch.equal(v, before[k]) for k, v in pipe.transformer.state_dict().items())  # nothing applied


def test_merge_lora_export_with_the_vae_adapter(lora_run, vae_adapter, tmp_path):
    merged_dir = export_run(lora_run, tmp_path / "merged", merge_lora=True, vae_lora=vae_adapter)
    ae = load_autoencoder(merged_dir / "vae").eval()
    reference = _builtin_autoencoder()
    apply_adapters(reference, [(vae_adapter, 1.0)], base_fingerprint(reference), "vae", merge=False)
    z = _latents()
    with torch.no_grad():
        torch.testing.assert_close(ae.decode(z).sample, reference.decode(z).sample, atol=1e-4, rtol=1e-4)
    pipe = TextToVideoPipeline.from_pretrained(merged_dir, device="cpu")
    base = TextToVideoPipeline.from_pretrained(None, device="cpu")
    assert pipe.vae.scaling_factor == base.vae.scaling_factor
    folder = tmp_path / "folder"  # an adapter folder: its vae/ merges, its sampler.json goes into the config
    shutil.copytree(vae_adapter, folder / "vae")
    write_sampler_settings(folder, {"guidance_interval": [400, 1000]})
    merged_dir = export_run(lora_run, tmp_path / "merged2", merge_lora=True, vae_lora=folder)
    assert TextToVideoPipeline.from_pretrained(merged_dir, device="cpu").config.sampler.guidance_interval == [
        400,
        1000,
    ]
    with pytest.raises(UserError, match="add --merge-lora"):
        export_run(lora_run, tmp_path / "x", vae_lora=vae_adapter)
    with pytest.raises(UserError, match="not a LoRA adapter folder"):
        export_run(lora_run, tmp_path / "y", merge_lora=True, vae_lora=tmp_path)


def test_train_vae_decoder_lora_errors(tmp_path, capsys):
    csv_path = synthesize(tmp_path / "data", 1, seed=0, frames=2)
    for base, words in ((str(tmp_path), "not a VAE folder or a model directory"),):
        argv = ["train-vae", "--csv", str(csv_path), "-o", str(tmp_path / "v"), "--decoder-lora", base]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("sorakit: error: ") and words in err and "\n" not in err, err
    assert main(["train-vae", "--csv", str(csv_path), "-o", str(tmp_path / "v"), "--decoder-lora", "builtin",
                 "--rank", "0"]) == 2  # fmt: skip
    assert "--rank must be >= 1" in capsys.readouterr().err
