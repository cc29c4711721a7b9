"""The v3 recipe (`make train-builtin`: `--version 3`) end to end at toy size: multi-size synth -> v2's model
(from git history) copied as the base -> bucketed `data encode` -> `sorakit train builtin/stdit-v3 --init base` with
reference-frame masks -> export -> every task's evaluation; then a rerun that resumes training. The shipped
model directory is read, never written."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from sorakit.builtin import recipe
from sorakit.config import load_config
from sorakit.errors import UserError
from sorakit.manifest import verify_folder
from sorakit.modeldir import builtin_model_dir
from sorakit.safeload import load_safetensors

ROOT = Path(__file__).resolve().parents[2]


# the recipe's default base, v2, comes from git history: a shallow clone lacks it (the fixture then starts from the
# shipped model, and the test of the v2 base skips)
def _has_commit(revision: str) -> bool:
    try:
        cmd = ["git", "-C", str(ROOT), "cat-file", "-e", f"{revision}^{{commit}}"]
        return subprocess.run(cmd, capture_output=True).returncode == 0
    except OSError:  # no git
        return False


HAS_V2 = _has_commit(recipe.V2_REVISION)


def _tree_hash(path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def v3_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("recipe-v3")
    shipped = _tree_hash(builtin_model_dir())
    argv = [
        "--version", "3", "--workdir", str(work), "--export", str(work / "model"), "--num-videos", "10",
        "--eval-prompts", "1", "--eval-steps", "1", "--threads", "1", "--decoder-videos", "2", "--decoder-steps", "2",
        "--set", "train.max_steps=2", "--set", "train.decay_steps=1", "--set", "train.log_every=1",
        "--set", "train.tensorboard=false",
    ] + ([] if HAS_V2 else ["--base", str(builtin_model_dir())])  # fmt: skip
    assert recipe.main(argv) == 0
    assert _tree_hash(builtin_model_dir()) == shipped  # the shipped weights are untouched
    return work, argv


def test_v3_preset_has_buckets_and_masks():
    cfg = load_config(recipe.PRESET_V3)
    v2 = load_config(recipe.PRESET)
    assert set(cfg.data.buckets) == {"64x64", "64x96", "96x64"}
    assert {int(n) for table in cfg.data.buckets.values() for n in table} == {8, 16, 32}
    assert {"image_head", "quarter_head"} <= set(cfg.train.mask_ratios)  # image-to-video and extension
    # v2's network plus the horizon embedding (created at zero when v2's weights load): its weights are v3's start
    assert cfg.model.arch == {**v2.model.arch, "horizon": True}


@pytest.mark.skipif(not HAS_V2, reason=f"a shallow clone: no commit {recipe.V2_REVISION} (v2's weights)")
def test_v3_base_is_v2_from_git(v3_run):
    work, _ = v3_run
    # the base is v2 as committed at recipe.V2_REVISION: v2's network (no horizon embedding yet), v2's bytes
    v2 = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{recipe.V2_REVISION}:{recipe.V2_PATH}/transformer/model.safetensors"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    assert (work / "base" / "transformer" / "model.safetensors").read_bytes() == v2
    assert "horizon" not in json.loads((work / "base" / "transformer" / "config.json").read_text())["config"]


def test_v3_stages_run_end_to_end(v3_run):
    work, _ = v3_run
    assert sorted(json.loads((work / "times.json").read_text())) == sorted(recipe.STAGES_V3)
    rows = list(csv.DictReader(open(work / "data" / "train.csv")))
    assert len(rows) == 10 and len({(r["num_frames"], r["height"], r["width"]) for r in rows}) >= 3
    assert {int(r["horizon"]) >= int(r["num_frames"]) for r in rows} == {
        True
    }  # the CSV says each clip's horizon
    meta = json.loads((work / "cache" / "meta.json").read_text())
    assert "buckets" in meta and sum(meta["buckets"].values()) == 10
    log = (work / "stdit" / "train.log").read_text()
    assert "initialised weights from" in log and str(work / "base") in log
    assert "reference-frame masks" in log and "image_head 0.2" in log
    result = json.loads((work / "eval.json").read_text())
    assert set(recipe.v3_eval_tasks()) <= set(result)
    assert "frame0" in result["i2v"]["overall"] and "seam" in result["extend"]["overall"]
    assert "loop_direction" in result["loop 3"]["overall"]


def test_v3_export_does_every_task(v3_run):
    from sorakit.pipelines import TextToVideoPipeline

    work, _ = v3_run
    torch.set_num_threads(1)
    pipe = TextToVideoPipeline.from_pretrained(work / "model", device="cpu")
    first = np.zeros((64, 96, 3), np.uint8)
    first[20:36, 10:26] = (255, 0, 0)
    kw = dict(num_inference_steps=1, seed=0, progress=False)
    assert pipe("a red square moving right", height=64, width=96, reference=first, **kw).shape == (
        1,
        16,
        64,
        96,
        3,
    )
    assert pipe("a red square moving right", num_frames=8, **kw).shape == (1, 8, 64, 64, 3)
    assert pipe("a red square moving right", loop=3, **kw).shape == (1, 40, 64, 64, 3)


def test_v3_decoder_stage_tunes_the_decoder_only(v3_run):
    work, argv = v3_run
    weights = "vae/diffusion_pytorch_model.safetensors"
    base, tuned = load_safetensors(work / "base" / weights), load_safetensors(work / "model" / weights)
    assert torch.equal(
        tuned["decoder.conv_in.weight"],
        load_safetensors(work / "decoder" / weights)["decoder.conv_in.weight"],
    )
    encoder = [k for k in base if k.startswith(("encoder.", "quant_conv."))]
    assert encoder and all(torch.equal(base[k], tuned[k]) for k in encoder)  # the latent space is the same
    assert any(not torch.equal(base[k], tuned[k]) for k in base if k.startswith("decoder."))
    assert verify_folder(work / "model").status == "verified"  # the manifest was rewritten
    manifest = (work / "model" / "manifest.json").read_bytes()
    assert recipe.main([*argv, "--stages", "decoder"]) == 0  # done already: nothing trained or written
    assert (work / "model" / "manifest.json").read_bytes() == manifest
    (work / "decoder" / "transformer.sha256").write_text("another transformer\n")
    assert recipe.main([*argv, "--stages", "decoder"]) == 0  # made for another transformer: made again
    assert (work / "decoder" / "transformer.sha256").read_text().strip() != "another transformer"
    assert verify_folder(work / "model").status == "verified"


def test_v2_base_needs_its_git_revision(tmp_path):
    with pytest.raises(UserError, match="pass --base MODEL_DIR"):
        recipe.unpack_v2_model(tmp_path / "v2", revision="0" * 40)
    assert not (tmp_path / "v2").exists()


def test_v3_rerun_resumes_training(v3_run):
    work, argv = v3_run
    argv = [a if a != "train.max_steps=2" else "train.max_steps=3" for a in argv]
    assert recipe.main([*argv, "--stages", "data,vae,encode,train"]) == 0
    assert (work / "stdit" / "checkpoints" / "step-00000003").is_dir()
    log = (work / "stdit" / "train.log").read_text()
    assert "resumed from" in log and "step-00000002" in log
