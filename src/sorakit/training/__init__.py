"""Training: the loop (``trainer.py``), EMA, optimizer and LR schedule, checkpoints, MFU accounting."""

from sorakit.training.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from sorakit.training.ema import EMA
from sorakit.training.optim import build_optimizer, build_scheduler, freeze

__all__ = [
    "EMA",
    "build_optimizer",
    "build_scheduler",
    "freeze",
    "latest_checkpoint",
    "list_checkpoints",
    "save_checkpoint",
]
