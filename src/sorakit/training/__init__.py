"""Training: the loop (``trainer.py``), EMA, optimizer and LR schedule, checkpoints, MFU accounting."""

from sorakit.training.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from sorakit.training.ema import EMA
from sorakit.training.optim import build_lr_schedule, build_optimizer, freeze

__all__ = [
    "EMA",
    "build_optimizer",
    "build_lr_schedule",
    "freeze",
    "latest_checkpoint",
    "list_checkpoints",
    "save_checkpoint",
]
