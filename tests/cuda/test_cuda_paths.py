"""What only a CUDA GPU exercises: bf16 / fp16 paths, SDPA's flash kernel, NCCL, the GPU generation path and
inductor's GPU kernels (``make gpu-check`` runs these first; see docs/benchmarks.md#gpu-check).

Every test is marked ``cuda`` and skipped without a GPU. ``SORAKIT_CUDA_TESTS_DEVICE=cpu`` runs the same
tests on the CPU (gloo instead of NCCL, aot_eager instead of inductor, the CUDA-only kernels skipped):
``benchmarks/gpu_check.py --dry-run`` does so, and tests/foundation/test_gpu_check.py runs that in CI, so
this file's code has run end to end before it first meets a GPU."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel as DDP

from sorakit.models import build_model
from sorakit.models.layers.attention import Attention, MultiHeadCrossAttention
from sorakit.pipelines import TextToVideoPipeline
from sorakit.pipelines.tiny import make_tiny_model_dir
from sorakit.training.trainer import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from _train_helpers import TINY_OVERRIDES, make_cache, tiny_config  # noqa: E402

DEVICE = torch.device(os.environ.get("SORAKIT_CUDA_TESTS_DEVICE") or "cuda")
ON_GPU = DEVICE.type == "cuda"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)"),
]
gpu_only = pytest.mark.skipif(not ON_GPU, reason="a CUDA kernel: nothing to check on the CPU")


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _stdit(hidden: int = 128, heads: int = 4, depth: int = 2, caption: int = 64, text_len: int = 16):
    """A small STDiT on 4 x 8 x 8 latents with every weight N(0, 0.02) (upstream zero-inits outputs)."""

    torch.manual_seed(0)
    model = build_model("STDiT-tiny", input_size=(4, 8, 8), hidden_size=hidden, num_heads=heads, depth=depth,
                        caption_channels=caption, model_max_length=text_len)  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model.to(DEVICE).eval()


def _stdit_inputs(batch: int = 2, caption: int = 64, text_len: int = 16):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 4, 8, 8, generator=g)
    t = torch.tensor([10.0, 700.0])[:batch]
    y = torch.randn(batch, 1, text_len, caption, generator=g)
    mask = torch.ones(batch, text_len, dtype=torch.long)
    mask[:, text_len // 2 :] = 0
    return [v.to(DEVICE) for v in (x, t, y, mask)]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("how", ["autocast", "weights"])
def test_low_precision_stdit_forward_matches_fp32(dtype, how):
    """Training runs the fp32 model under autocast; generation casts the weights (pipeline dtype)."""
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    if low == torch.float16 and not ON_GPU:
        pytest.skip("fp16 is a GPU precision in sorakit (refused on the CPU)")
    model = _stdit()
    x, t, y, mask = _stdit_inputs()
    with torch.no_grad():
        ref = model(x, t, y, mask)
        if how == "autocast":
            with torch.autocast(DEVICE.type, dtype=low):
                out = model(x, t, y, mask)
        else:
            out = model.to(low)(x.to(low), t, y.to(low), mask)
    assert out.dtype == low
    assert torch.isfinite(out).all()
    err = _rel_err(out, ref)
    assert err < {torch.bfloat16: 3e-2, torch.float16: 5e-3}[low], f"{dtype} {how}: relative error {err:.2e}"


@gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_sdpa_flash_kernel_serves_stdit_self_attention(dtype):
    """STDiT-XL/2 at 16x256x256 (space_scale 0.5): spatial attention over 256 tokens, temporal over 16,
    16 heads of 72 channels. With only the flash kernel allowed, SDPA raises if it cannot use it; the
    cross-attention (a caption mask) runs on flash or memory-efficient, and all agree with the math kernel."""

    torch.manual_seed(0)
    attn = Attention(1152, 16).to(DEVICE, dtype)
    cross = MultiHeadCrossAttention(1152, 16).to(DEVICE, dtype)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    mask = torch.ones(4, 120, dtype=torch.bool, device=DEVICE)
    mask[:, 30:] = False
    with torch.no_grad():
        for tokens in (256, 16):  # spatial: [B*T, 256, C]; temporal: [B*S, 16, C]
            x = torch.randn(8, tokens, 1152, device=DEVICE, dtype=dtype, generator=g)
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                fast = attn(x)
            with sdpa_kernel([SDPBackend.MATH]):
                ref = attn(x)
            assert _rel_err(fast, ref) < 2e-2, tokens
        x = torch.randn(4, 256, 1152, device=DEVICE, dtype=dtype, generator=g)
        cond = torch.randn(4, 120, 1152, device=DEVICE, dtype=dtype, generator=g)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            fast = cross(x, cond, mask)
        with sdpa_kernel([SDPBackend.MATH]):
            ref = cross(x, cond, mask)
        assert _rel_err(fast, ref) < 2e-2


def _all_reduce_and_ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: NCCL (gloo on the CPU run) all_reduce, then one DDP step of a small STDiT whose gradients
    must come out as the mean of every rank's own gradients."""
    dev = torch.device("cuda", rank) if ON_GPU else torch.device("cpu")
    if ON_GPU:
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if ON_GPU else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, device_id=dev if ON_GPU else None)  # fmt: skip
    try:
        total = torch.tensor([float(rank + 1)], device=dev)
        dist.all_reduce(total)
        model = _stdit().to(dev)  # eval mode: no random caption dropout, the same function on every rank
        inputs = [[v.to(dev) for v in _stdit_inputs()] for _ in range(world)]
        for r, inp in enumerate(inputs):  # every rank its own batch
            inp[0].add_(r)
        local = []
        for x, t, y, mask in inputs:
            model.zero_grad()
            model(x, t, y, mask).square().mean().backward()
            local.append([p.grad.clone() for p in model.parameters()])
        model.zero_grad()
        ddp = DDP(model, device_ids=[rank] if ON_GPU else None)
        x, t, y, mask = inputs[rank]
        ddp(x, t, y, mask).square().mean().backward()
        err = max(float((p.grad - sum(g[i] for g in local) / world).abs().max())
                  for i, p in enumerate(model.parameters()))  # fmt: skip
        torch.save({"sum": total.item(), "grad_err": err}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_nccl_all_reduce_and_ddp_step(tmp_path):
    """Every GPU one process (a single GPU: a 1-process NCCL group, which the trainer itself never forms)."""
    world = torch.cuda.device_count() if ON_GPU else 2
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_all_reduce_and_ddp_worker, args=(world, port, str(tmp_path)), nprocs=world, join=True)
    for r in range(world):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert got["sum"] == world * (world + 1) / 2
        assert got["grad_err"] < 1e-5, got


def _train_cmd(cache: Path, run: Path, procs: int, *extra: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    return [*launcher, "-m", "sorakit.cli.main", "train", "tiny", *TINY_OVERRIDES, "--data", str(cache),
            "--output", str(run), "--max-steps", "3", "--ckpt-every", "3", "train.caption_dropout=0",
            "train.batch_size=2", *extra]  # fmt: skip


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_nccl_data_parallel_training_on_every_gpu(tmp_path, strategy):
    """torchrun with one process per GPU (NCCL; gloo on the CPU run: 2 processes) trains like one process on
    the same global batch: same losses, same weights."""
    if strategy == "fsdp" and not ON_GPU:
        pytest.skip("FSDP2 over gloo is tests/parallel/test_data_parallel.py's; the CPU run keeps to DDP")
    procs = torch.cuda.device_count() if ON_GPU else 2
    backend = "nccl" if ON_GPU else "gloo"
    cache = make_cache(tmp_path / "cache", n=4 * procs)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {
        "single": _train_cmd(cache, tmp_path / "single", 1, f"train.batch_size={2 * procs}",
                             "train.mixed_precision=fp32"),
        strategy: _train_cmd(cache, tmp_path / strategy, procs, f"parallel.strategy={strategy}",
                             f"parallel.backend={backend}", "train.mixed_precision=fp32"),
    }  # fmt: skip
    for name, cmd in runs.items():
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{name}: {out.stderr[-3000:]}"
    assert _losses(tmp_path / strategy) == pytest.approx(_losses(tmp_path / "single"), rel=1e-4, abs=1e-5)
    ck = "checkpoints/step-00000003/model.safetensors"
    a, b = load_file(str(tmp_path / strategy / ck)), load_file(str(tmp_path / "single" / ck))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_steps(tmp_path, precision):
    """The trainer on the device: bf16 autocast, and fp16 with its gradient scaler (GPU only), track fp32."""
    if precision == "fp16" and not ON_GPU:
        pytest.skip("train.mixed_precision=fp16 needs a GPU")

    cache = make_cache(tmp_path / "cache", n=8)
    base = [f"data.csv={cache}", "train.max_steps=3", "train.ckpt_every=3", "train.caption_dropout=0"]  # fmt: skip
    ref = train(tiny_config(*base, "train.mixed_precision=fp32"), tmp_path / "fp32")
    low = train(tiny_config(*base, f"train.mixed_precision={precision}"), tmp_path / precision)
    assert all(torch.isfinite(torch.tensor(low.losses)))
    assert low.losses == pytest.approx(ref.losses, rel=5e-2)


def test_generation_on_the_device_matches_cpu(tmp_path, monkeypatch):
    """The same seed samples the same latents on the GPU as on the CPU (noise comes from a CPU generator)."""

    # fp32 on the GPU as on the CPU: no TF32 in the patch embedding's convolution or the matmuls
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        _generate_on_both(tmp_path)
    finally:
        torch.set_float32_matmul_precision(precision)


def _generate_on_both(tmp_path: Path) -> None:
    model_dir = make_tiny_model_dir(tmp_path / "model")
    kw = dict(num_frames=4, num_inference_steps=5, seed=3, progress=False, output_type="latent")
    prompts = ["a red circle moving to the right", "a cat playing the piano"]
    for sampler in ("iddpm", "dpm-solver"):
        cpu = TextToVideoPipeline.from_pretrained(model_dir, device="cpu", dtype="fp32")(
            prompts, sampler=sampler, **kw
        )
        on_device = TextToVideoPipeline.from_pretrained(model_dir, device=str(DEVICE), dtype="fp32")
        dev = on_device(prompts, sampler=sampler, **kw)
        assert dev.device.type == DEVICE.type
        torch.testing.assert_close(dev.cpu(), cpu, rtol=1e-3, atol=1e-3, msg=sampler)


def test_compiled_training_matches_eager_on_the_device(tmp_path, monkeypatch):
    """train.compile with inductor's GPU (triton) kernels; on the CPU run aot_eager (inductor's C++ build
    takes minutes there: tests/training/test_compile_training.py)."""
    if ON_GPU:
        monkeypatch.delenv("SORAKIT_COMPILE_BACKEND", raising=False)  # the default: inductor
    else:
        monkeypatch.setenv("SORAKIT_COMPILE_BACKEND", "aot_eager")
    if ON_GPU and shutil.which("g++") is None and shutil.which("clang++") is None:
        pytest.skip("inductor needs a C++ compiler for its host code")

    torch._dynamo.reset()
    cache = make_cache(tmp_path / "cache", n=8)
    # a small lr: AdamW's normalised step turns last-bit gradient differences of near-zero gradients into
    # up to lr-sized weight differences, which a different kernel's summation order may cause
    base = [f"data.csv={cache}", "train.max_steps=3", "train.ckpt_every=3", "train.mixed_precision=fp32",
            "train.lr=1e-4"]  # fmt: skip
    eager = train(tiny_config(*base), tmp_path / "eager")
    compiled = train(tiny_config(*base, "train.compile=true"), tmp_path / "compiled")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-3, abs=1e-5)
    a = load_file(str(compiled.checkpoint / "model.safetensors"))
    b = load_file(str(eager.checkpoint / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=2e-4, msg=k)


def test_sdpa_math_matches_reference_softmax():
    """The attention the models call (SDPA, whatever kernel the device picks) is softmax(q k^T / sqrt(d)) v."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 32, 16, generator=g).to(DEVICE) for _ in range(3))
    ref = torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1) @ v
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), ref, rtol=1e-4, atol=1e-4)
