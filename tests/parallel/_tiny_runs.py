"""The tiny training runs that the distributed tests compare: one config, one randomised model, one run."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from _train_helpers import random_stdit, tiny_config  # noqa: E402

from sorakit.training.trainer import Components, train  # noqa: E402

STEPS = 3


def run_config(cache: Path, batch: int, *extra: str):
    """The tiny config on the latent cache at `cache`: STEPS steps, a checkpoint at the end, caption dropout
    and gradient clipping on (so that both take part in what the processes must agree on)."""
    return tiny_config(
        f"data.csv={cache}", f"train.batch_size={batch}", f"train.max_steps={STEPS}", f"train.ckpt_every={STEPS}",
        "train.caption_dropout=0.3", "train.grad_clip=0.5", *extra,
    )  # fmt: skip


def run(cfg, run_dir: Path, resume: bool = False) -> tuple[list[float], Path | None]:
    """Train `cfg` from `random_stdit`: (losses, the last checkpoint's model.safetensors or None)."""
    res = train(cfg, run_dir, resume=resume, components=Components(model=random_stdit(cfg)))
    return res.losses, (res.checkpoint / "model.safetensors") if res.checkpoint else None
