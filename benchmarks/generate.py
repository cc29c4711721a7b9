"""Text-to-video generation cost: seconds per video and peak memory, per setup and sampler.

    python benchmarks/generate.py                                  # tiny setup, < 1 min on a CPU
    python benchmarks/generate.py --setups small --samplers dpm-solver   # minutes on a CPU
    python benchmarks/generate.py --setups opensora-16x256x256     # GPU: Open-Sora 1.0's sizes
    python benchmarks/generate.py --setups opensora-16x256x256 --samplers iddpm --dtype fp16 --batch 2
    python benchmarks/generate.py --memory --setups small --samplers dpm-solver --steps 10   # --vae-batch/--offload

`--memory` runs each low-memory variant (all frames decoded at once, `--vae-batch 1`, `--offload`, both) in
a fresh process, so that each peak is its own: peak RSS on the CPU (a process high-water mark), peak
allocated CUDA memory on a GPU. The encode/sample/decode stage times come from the same runs.

Every component is built from a config with random weights (timing does not depend on the values):
a T5 encoder, an AutoencoderKL and a diffusion transformer, run through TextToVideoPipeline exactly as
`sorakit generate` runs them (text encoder moved off the accelerator after encoding, classifier-free
guidance in one doubled batch, VAE decode frame by frame). `opensora-16x256x256` is Open-Sora 1.0's
inference setup at full size: STDiT-XL/2 (space_scale 0.5), a T5-v1.1-XXL-sized encoder (4096-d,
24 layers, 120 tokens) and the SD-VAE layout, 16x256x256, 100 IDDPM steps, CFG 7. Open-Sora published
5 s per sample and 22 GB on an H800 for it.

Columns: encode / sample / decode are the three stages' seconds for the batch; s/video = total / batch;
peak memory = torch.cuda.max_memory_allocated on CUDA, or the process's peak RSS on CPU (a high-water
mark over the whole run, so later rows include earlier ones).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sorakit.config import Config
from sorakit.encoders.text import T5Encoder
from sorakit.encoders.vae import VideoVAE
from sorakit.pipelines import TextToVideoPipeline
from sorakit.pipelines.tiny import TINY_VAE, make_tiny_t5

DEFAULT_STEPS = {"iddpm": 100, "ddim": 50, "dpm-solver": 20, "rflow": 30}

SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), sample_size=256, scaling_factor=0.18215,
)  # fmt: skip
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, vocab_size=32128)

SETUPS: dict[str, dict] = {
    # tiny: the test-suite components
    "tiny": dict(
        t5=dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4),
        max_length=12,
        vae=TINY_VAE,
        model="STDiT-tiny",
        arch=dict(hidden_size=32, num_heads=2, mlp_ratio=2.0),
        frames=4,
        size=(16, 16),
        batch=2,
    ),
    # small: SD-VAE layout at quarter width (/8), STDiT-S/2, a 256-d T5 over Open-Sora's 120 tokens
    "small": dict(
        t5=dict(d_model=256, d_kv=32, d_ff=512, num_layers=4, num_heads=8),
        max_length=120,
        vae={**SD_VAE, "block_out_channels": (32, 64, 128, 128), "norm_num_groups": 16},
        model="STDiT-S/2",
        arch={},
        frames=8,
        size=(64, 64),
        batch=2,
    ),
    # Open-Sora 1.0 inference, 16x256x256 (GPU)
    "opensora-16x256x256": dict(
        t5=T5_XXL,
        max_length=120,
        vae=SD_VAE,
        model="STDiT-XL/2",
        arch=dict(space_scale=0.5),
        frames=16,
        size=(256, 256),
        batch=1,
    ),
    "opensora-16x512x512": dict(
        t5=T5_XXL,
        max_length=120,
        vae=SD_VAE,
        model="STDiT-XL/2",
        arch={},
        frames=16,
        size=(512, 512),
        batch=1,
        micro_batch=128,
    ),
}


def build_pipeline(name: str, device: str, dtype: str, tokenizer_dir: Path) -> TextToVideoPipeline:
    """Random-weight components of setup `name`, built from configs (big ones directly in their dtype)."""
    from diffusers import AutoencoderKL
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    from sorakit.models import build_from_config
    from sorakit.runtime import resolve_device, resolve_dtype

    s = SETUPS[name]
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    torch.manual_seed(0)
    # the small trained tokenizer only supplies token ids; the encoder's size is what costs time
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    t5_cfg = T5Config(
        **{"vocab_size": 32128, **s["t5"]}, feed_forward_proj="gated-gelu", is_encoder_decoder=False
    )
    t5_dtype = torch.bfloat16 if dt == torch.bfloat16 else torch.float32
    with torch.device(dev):  # allocate T5-XXL on the accelerator directly, not through a CPU fp32 copy
        t5 = T5EncoderModel(t5_cfg).to(t5_dtype)
    encoder = T5Encoder.from_modules(tokenizer, t5, s["max_length"])
    vae = VideoVAE(AutoencoderKL(**s["vae"]), micro_batch_size=s.get("micro_batch"))

    cfg = Config()
    cfg.model.type = s["model"]
    cfg.model.space_scale = s["arch"].get("space_scale", 1.0)
    cfg.model.arch = {k: v for k, v in s["arch"].items() if k != "space_scale"}
    cfg.text_encoder.type, cfg.text_encoder.model_max_length = "t5", s["max_length"]
    cfg.inference.num_frames, cfg.inference.image_size = s["frames"], list(s["size"])
    latent = vae.latent_size(s["frames"], *s["size"])
    with torch.device(dev):
        transformer = build_from_config(
            cfg, latent, caption_channels=s["t5"]["d_model"], in_channels=vae.latent_channels
        )
    return TextToVideoPipeline(transformer, vae, encoder, cfg, device=dev, dtype=dt)


def timed_call(
    pipe: TextToVideoPipeline, prompts: list[str], sampler: str, steps: int, guidance: float, seed: int
):
    """Run the pipeline once, timing encode / sample / decode separately (same code path as __call__)."""
    dev = pipe.device
    stages: dict[str, float] = {}
    orig_encode, orig_decode = pipe.encode_prompt, pipe.vae.decode

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def timed(name, fn):
        def wrapper(*a, **k):
            sync()
            t = time.perf_counter()
            out = fn(*a, **k)
            sync()
            stages[name] = time.perf_counter() - t
            return out

        return wrapper

    pipe.encode_prompt = timed("encode", orig_encode)
    pipe.vae.decode = timed("decode", orig_decode)
    try:
        sync()
        start = time.perf_counter()
        pipe(
            prompts,
            num_inference_steps=steps,
            guidance_scale=guidance,
            sampler=sampler,
            seed=seed,
            progress=False,
        )
        sync()
        total = time.perf_counter() - start
    finally:
        del pipe.encode_prompt
        del pipe.vae.decode
    stages["sample"] = total - stages["encode"] - stages["decode"]
    stages["total"] = total
    return stages


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "GPU alloc"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 2**20 if sys.platform != "darwin" else kib / 2**30, "RSS"


VARIANTS = {  # name -> (vae_batch, offload)
    "all frames at once": (None, False),
    "--vae-batch 1": (1, False),
    "--offload": (None, True),
    "--offload --vae-batch 1": (1, True),
}


def one_variant(args: argparse.Namespace, tok_dir: Path) -> None:
    """One generation with `args.variant`'s settings in this process; prints its stats as a JSON line."""
    vae_batch, offload = VARIANTS[args.variant]
    name, sampler = args.setups[0], args.samplers[0]
    pipe = build_pipeline(name, args.device, args.dtype, tok_dir)
    pipe.offload = pipe.offload_text_encoder = offload
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder) if offload else ():
        module.to("cpu")  # built without offloading (components are allocated on the device): send them home
    if pipe.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(pipe.device)
    pipe.vae.micro_batch_size = vae_batch
    batch = args.batch or SETUPS[name]["batch"]
    prompts = [f"a red circle {i}" for i in range(batch)]
    stages = timed_call(pipe, prompts, sampler, args.steps or DEFAULT_STEPS[sampler], args.guidance, 0)
    mem, kind = peak_memory_gib(pipe.device)
    print(
        json.dumps({"stages": stages, "mem": mem, "kind": kind, "batch": batch, "device": str(pipe.device)})
    )


def memory_table(args: argparse.Namespace) -> None:
    """Each variant of VARIANTS in its own process (peaks are per-process high-water marks)."""
    name, sampler = args.setups[0], args.samplers[0]
    s = SETUPS[name]
    steps = args.steps or DEFAULT_STEPS[sampler]
    print(f"setup {name}: {s['model']}, {args.batch or s['batch']} x {s['frames']} frames at "
          f"{s['size'][0]}x{s['size'][1]}, {sampler} {steps} steps; torch {torch.__version__}")  # fmt: skip
    print("| variant | encode s | sample s | decode s | peak GiB |")
    print("|---|---|---|---|---|")
    base = [sys.executable, __file__, "--setups", name, "--samplers", sampler, "--steps", str(steps),
            "--guidance", str(args.guidance), "--device", args.device, "--dtype", args.dtype]  # fmt: skip
    base += ["--batch", str(args.batch)] if args.batch else []
    for variant in VARIANTS:
        out = subprocess.run(
            [*base, f"--variant={variant}"], capture_output=True, text=True, check=True
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        st = r["stages"]
        print(f"| {variant} | {st['encode']:.3f} | {st['sample']:.2f} | {st['decode']:.3f} | "
              f"{r['mem']:.3f} ({r['kind']}, {r['device']}) |", flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setups", nargs="+", default=["tiny"], choices=list(SETUPS))
    p.add_argument("--samplers", nargs="+", default=["iddpm", "dpm-solver"], choices=list(DEFAULT_STEPS))
    p.add_argument("--steps", type=int, default=None, help="same step count for every sampler")
    p.add_argument("--guidance", type=float, default=7.0)
    p.add_argument("--batch", type=int, default=None, help="videos per call (default: per setup)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--repeats", type=int, default=1, help="timed runs after one warm-up; the best is shown")
    p.add_argument(
        "--memory", action="store_true", help="peak memory of --vae-batch 1 / --offload vs neither"
    )
    p.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # one --memory run
    args = p.parse_args()
    if args.memory:
        memory_table(args)
        return
    if args.variant:
        with tempfile.TemporaryDirectory() as tmp:
            one_variant(args, make_tiny_t5(Path(tmp) / "tok", vocab_size=64))
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = make_tiny_t5(Path(tmp) / "tok", vocab_size=64)
        for name in args.setups:
            pipe = build_pipeline(name, args.device, args.dtype, tok_dir)
            dev = pipe.device
            batch = args.batch or SETUPS[name]["batch"]
            prompts = [f"a red circle {i}" for i in range(batch)]
            for sampler in args.samplers:
                steps = args.steps or DEFAULT_STEPS[sampler]
                timed_call(pipe, prompts, sampler, min(steps, 2), args.guidance, 0)  # warm-up
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                best = min(
                    (
                        timed_call(pipe, prompts, sampler, steps, args.guidance, r)
                        for r in range(args.repeats)
                    ),
                    key=lambda s: s["total"],
                )
                mem, kind = peak_memory_gib(dev)
                rows.append((name, sampler, steps, batch, best, mem, kind, dev, pipe.dtype))
            del pipe
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    dev_name = torch.cuda.get_device_name(rows[0][7]) if rows and rows[0][7].type == "cuda" else "CPU"
    print(f"device: {dev_name}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    header = (
        "setup",
        "sampler",
        "steps",
        "batch",
        "dtype",
        "encode s",
        "sample s",
        "decode s",
        "s/video",
        "peak GiB",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, sampler, steps, batch, st, mem, kind, _, dt in rows:
        cells = (name, sampler, steps, batch, str(dt).removeprefix("torch."), f"{st['encode']:.3f}",
                 f"{st['sample']:.2f}", f"{st['decode']:.3f}", f"{st['total'] / batch:.2f}", f"{mem:.2f} ({kind})")  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if any(r[0].startswith("opensora-16x256") for r in rows):
        print("Open-Sora 1.0 published (H800, 16x256x256, 100 steps): 5 s / sample, 22 GB")


if __name__ == "__main__":
    main()
