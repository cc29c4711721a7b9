"""The tiny training runs that the distributed tests compare: one config, one randomised model, one run."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from _train_helpers import tiny_config  # noqa: E402

from sorakit.training.trainer import Components, DataSource, build_model, train  # noqa: E402

STEPS = 3


def run_config(cache: Path, batch: int, *extra: str):
    """The tiny config on the latent cache at `cache`: STEPS steps, a checkpoint at the end, caption dropout
    and gradient clipping on (so that both take part in what the processes must agree on)."""
    return tiny_config(
        f"data.csv={cache}", f"train.batch_size={batch}", f"train.max_steps={STEPS}", f"train.ckpt_every={STEPS}",
        "train.caption_dropout=0.3", "train.grad_clip=0.5", *extra,
    )  # fmt: skip


def random_model(cfg):
    """The tiny STDiT with every weight randomised (upstream zero-inits several outputs)."""
    data = DataSource(None, None, True, (4, 8, 8), 4, 16, 8, False)  # type: ignore[arg-type]
    model = build_model(cfg, data)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def run(cfg, run_dir: Path, resume: bool = False) -> tuple[list[float], Path | None]:
    """Train `cfg` from `random_model`: (losses, the last checkpoint's model.safetensors or None)."""
    res = train(cfg, run_dir, resume=resume, components=Components(model=random_model(cfg)))
    return res.losses, (res.checkpoint / "model.safetensors") if res.checkpoint else None
