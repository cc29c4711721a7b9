"""One small logging module. Messages go to stderr; under torchrun only rank 0 logs at INFO,
other ranks log warnings and errors only (prefixed with their rank)."""

from __future__ import annotations

import logging
import os
import sys

_CONFIGURED = False


def get_rank() -> int:
    """The process rank under torchrun (from the environment, so it works before init_process_group)."""
    return int(os.environ.get("RANK", "0"))


def setup_logging(level: int | str | None = None) -> None:
    global _CONFIGURED
    if _CONFIGURED:
        return
    rank = get_rank()
    if level is None:
        level = os.environ.get("SORAKIT_LOG_LEVEL", "INFO")
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"[rank{rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    handler.setFormatter(
        logging.Formatter(f"{prefix}%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger("sorakit")
    root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)
    root.propagate = False
    _CONFIGURED = True


def get_logger(name: str) -> logging.Logger:
    """A logger under the `sorakit` namespace, configured on first use."""
    setup_logging()
    if not name.startswith("sorakit"):
        name = f"sorakit.{name}"
    return logging.getLogger(name)
