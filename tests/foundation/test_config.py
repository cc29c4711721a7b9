from __future__ import annotations

import pytest

from sorakit.config import Config, ConfigError, list_presets, load_config

OPENSORA_INFER = """\
num_frames = 16
fps = 24 // 3
image_size = (256, 256)

# Define model
model = dict(
    type="STDiT-XL/2",
    space_scale=0.5,
    time_scale=1.0,
    enable_flashattn=True,
    enable_layernorm_kernel=True,
    from_pretrained="PRETRAINED_MODEL",
)
vae = dict(
    type="VideoAutoencoderKL",
    from_pretrained="stabilityai/sd-vae-ft-ema",
    micro_batch_size=128,
)
text_encoder = dict(
    type="t5",
    from_pretrained="./pretrained_models/t5_ckpts",
    model_max_length=120,
)
scheduler = dict(
    type="iddpm",
    num_sampling_steps=100,
    cfg_scale=7.0,
)
dtype = "fp16"

# Others
batch_size = 2
seed = 42
prompt_path = "./assets/texts/t2v_samples.txt"
save_dir = "./outputs/samples/"
"""

OPENSORA_TRAIN = """\
num_frames = 64
frame_interval = 2
image_size = (512, 512)
dataset = dict(type="VideoTextDataset", data_path=None, num_frames=64, frame_interval=2, image_size=(512, 512))

use_image_transform = False
num_workers = 4
dtype = "bf16"
grad_checkpoint = True
plugin = "zero2-seq"
sp_size = 2

model = dict(
    type="STDiT-XL/2",
    space_scale=1.0,
    time_scale=2 / 3,
    from_pretrained=None,
    enable_flashattn=True,
    enable_layernorm_kernel=True,
    enable_sequence_parallelism=True,
)
vae = dict(type="VideoAutoencoderKL", from_pretrained="stabilityai/sd-vae-ft-ema", micro_batch_size=128)
text_encoder = dict(type="t5", from_pretrained="DeepFloyd/t5-v1_1-xxl", model_max_length=120, shardformer=True)
scheduler = dict(type="iddpm", timestep_respacing="")

seed = 42
outputs = "outputs"
wandb = False
epochs = 1000
log_every = 10
ckpt_every = 250
load = None
batch_size = 1
lr = 2e-5
grad_clip = 1.0
"""


def test_every_preset_loads():
    names = list_presets()
    for expected in (
        "opensora/inference/16x256x256",
        "opensora/inference/16x512x512",
        "opensora/inference/64x512x512",
        "opensora/train/16x256x256",
        "opensora/train/16x512x512",
        "opensora/train/64x512x512",
        "opensora/train/64x512x512-sp",
    ):
        assert expected in names
    for name in names:
        assert isinstance(load_config(name), Config)


def test_preset_values_and_inheritance():
    cfg = load_config("opensora/inference/64x512x512")
    assert cfg.model.type == "STDiT-XL/2"
    assert cfg.model.time_scale == pytest.approx(2 / 3)
    assert cfg.inference.num_frames == 64 and cfg.inference.fps == 12
    assert cfg.inference.image_size == [512, 512]
    # inherited from the 16x256x256 base
    assert cfg.sampler.num_sampling_steps == 100 and cfg.sampler.guidance_scale == 7.0
    assert cfg.text_encoder.model_max_length == 120
    sp = load_config("opensora/train/64x512x512-sp")
    assert sp.parallel.sp_size == 2 and sp.data.num_frames == 64 and sp.data.frame_interval == 2


def test_overrides_convert_types():
    cfg = load_config(
        "opensora/inference/16x256x256",
        [
            "scheduler.num_sampling_steps=20",
            "scheduler.guidance_scale=4",
            "model.grad_checkpoint=true",
            "inference.image_size=128x64",
            "model.arch.depth=2",
            "model.from_pretrained=none",
            "vae.micro_batch_size=8",
        ],
    )
    assert cfg.sampler.num_sampling_steps == 20 and isinstance(cfg.sampler.num_sampling_steps, int)
    assert cfg.sampler.guidance_scale == 4.0 and isinstance(cfg.sampler.guidance_scale, float)
    assert cfg.model.grad_checkpoint is True
    assert cfg.inference.image_size == [128, 64]
    assert cfg.model.arch == {"depth": 2}
    assert cfg.model.from_pretrained is None
    assert cfg.vae.micro_batch_size == 8


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"model\.spce_scale.*space_scale"):
        load_config(None, ["model.spce_scale=1"])
    with pytest.raises(ConfigError, match=r"unknown section 'modle'.*model"):
        load_config(None, ["modle.type=x"])


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match=r"inference\.num_frames: expected an integer"):
        load_config(None, ["inference.num_frames=many"])
    with pytest.raises(ConfigError, match=r"train\.lr: expected a number"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="model.grad_checkpoint"):
        load_config(None, ["model.grad_checkpoint=maybe"])


def test_missing_preset_is_one_line_error():
    with pytest.raises(
        ConfigError, match="unknown preset 'opensora/inference/16x256x25'.*16x256x256"
    ) as info:
        load_config("opensora/inference/16x256x25")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/file.toml")


def test_toml_file_with_bad_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[sampler]\nsteps = 10\n")
    with pytest.raises(ConfigError, match=r"sampler\.steps"):
        load_config(str(path))


def test_names_from_before_the_renames_still_load(tmp_path):
    """Configs written before issue #13 said [scheduler] and cfg_*: they load under today's names."""
    path = tmp_path / "old.toml"
    path.write_text('base = "tiny"\n[scheduler]\ntype = "ddim"\ncfg_scale = 2.5\ncfg_channels = 3\n')
    cfg = load_config(str(path), ["scheduler.num_sampling_steps=7", "sampler.cfg_scale=3"])
    assert (cfg.sampler.type, cfg.sampler.num_sampling_steps) == ("ddim", 7)
    assert (cfg.sampler.guidance_scale, cfg.sampler.guidance_channels) == (3.0, 3)
    assert "[sampler]" in cfg.dump() and "scheduler" not in cfg.dump() and "cfg_" not in cfg.dump()
    with pytest.raises(ConfigError, match=r"sampler\.cfg_scal\b.*guidance_scale"):
        load_config("tiny", ["scheduler.cfg_scal=3"])


def test_dump_round_trips(tmp_path):
    cfg = load_config("opensora/train/64x512x512-sp", ["model.arch.depth=3"])
    path = tmp_path / "resolved.toml"
    path.write_text(cfg.dump())
    again = load_config(str(path))
    assert again == cfg


def test_opensora_inference_py_config(tmp_path):
    path = tmp_path / "16x256x256.py"
    path.write_text(OPENSORA_INFER)
    cfg = load_config(str(path))
    assert cfg.model.type == "STDiT-XL/2" and cfg.model.space_scale == 0.5
    assert cfg.model.from_pretrained == "PRETRAINED_MODEL"
    assert cfg.vae.type == "sd-vae" and cfg.vae.micro_batch_size == 128
    assert cfg.text_encoder.path == "./pretrained_models/t5_ckpts"
    assert cfg.sampler.num_sampling_steps == 100 and cfg.sampler.guidance_scale == 7.0
    assert cfg.inference.fps == 8 and cfg.inference.num_frames == 16
    assert cfg.inference.image_size == [256, 256] and cfg.inference.dtype == "fp16"
    assert cfg.inference.batch_size == 2 and cfg.inference.save_dir == "./outputs/samples/"


def test_opensora_training_py_config(tmp_path):
    path = tmp_path / "64x512x512-sp.py"
    path.write_text(OPENSORA_TRAIN)
    cfg = load_config(str(path), ["train.max_steps=5"])
    assert cfg.data.num_frames == 64 and cfg.data.frame_interval == 2 and cfg.data.image_size == [512, 512]
    assert cfg.model.time_scale == pytest.approx(2 / 3) and cfg.model.grad_checkpoint is True
    assert cfg.parallel.sp_size == 2 and cfg.parallel.strategy == "fsdp"
    assert cfg.train.mixed_precision == "bf16" and cfg.train.batch_size == 1 and cfg.train.ckpt_every == 250
    assert cfg.train.max_steps == 5


@pytest.mark.parametrize(
    "line, what",
    [
        ("import os", "import"),
        ("from os import system", "import"),
        ("model = dict(type=__import__('os').system('touch PWNED'))", "function call"),
        ("x = open('/etc/passwd').read()", "function call"),
        ("def f():\n    pass", "FunctionDef"),
        ("exec('1')", "Expr"),
    ],
)
def test_opensora_py_config_refuses_code(tmp_path, monkeypatch, line, what):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.py"
    path.write_text(f"num_frames = 16\n{line}\n")
    with pytest.raises(ConfigError, match=what):
        load_config(str(path))
    assert not (tmp_path / "PWNED").exists()


def test_string_fields_take_override_text_verbatim():
    cfg = load_config(None, ["text_encoder.path=5", "vae.path=none", "model.type=STDiT-XL/2"])
    assert cfg.text_encoder.path == "5" and cfg.vae.path is None and cfg.model.type == "STDiT-XL/2"


def test_a_choice_named_none_is_the_name_not_null():
    """`parallel.strategy=none` picks the choice "none" (it was read as the null value and rejected)."""
    assert load_config(None, ["parallel.strategy=none"]).parallel.strategy == "none"
    with pytest.raises(ConfigError, match="parallel.strategy"):
        load_config(None, ["parallel.strategy=zero9"])


def test_model_folder_written_before_the_renames_reads_the_same(tmp_path):
    """A model folder exported with [scheduler] / cfg_scale reads as today's [sampler] / guidance_scale."""
    import json
    import shutil

    from sorakit.manifest import MANIFEST
    from sorakit.modeldir import PIPELINE_FILE, builtin_model_dir, read_model_dir

    old = tmp_path / "old-model"
    shutil.copytree(builtin_model_dir(), old)
    (old / MANIFEST).unlink(missing_ok=True)  # folders of that time had no manifest
    spec = json.loads((old / PIPELINE_FILE).read_text())
    sampler = spec["config"].pop("sampler")
    renamed = {"guidance_scale": "cfg_scale", "guidance_channels": "cfg_channels"}
    later = (
        "guidance_interval",
        "cache",
        "horizon_guidance",
        "horizon_margin",
    )  # sampler keys added after the renames: absent then, so their defaults
    spec["config"]["scheduler"] = {renamed.get(k, k): v for k, v in sampler.items() if k not in later}
    (old / PIPELINE_FILE).write_text(json.dumps(spec))
    assert "cfg_scale" in (old / PIPELINE_FILE).read_text()
    then, now = read_model_dir(old)[1], read_model_dir(builtin_model_dir())[1]
    assert then.sampler.guidance_interval is None and then.sampler.cache is None
    assert then.sampler.horizon_guidance == 0.0 and then.sampler.horizon_margin == 1.0
    now.sampler.guidance_interval = now.sampler.cache = None
    now.sampler.horizon_guidance, now.sampler.horizon_margin = 0.0, 1.0
    assert then.sampler == now.sampler and then.sampler.guidance_scale == 4.0
    assert then.to_dict() | {"vae": None} == now.to_dict() | {"vae": None}  # vae.path: each its own folder
