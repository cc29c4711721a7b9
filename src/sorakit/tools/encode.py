"""What an ``encode`` worker needs to build for itself: the config, the CSV's dataset, the VAE and the
text encoder, loaded once per worker process and reused for every shard it is given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sorakit.config import load_config
from sorakit.data.dataset import VideoTextDataset
from sorakit.encoders import build_text_encoder, build_vae

_BUILT: dict[EncodeInputs, tuple[Any, Any, Any]] = {}


@dataclass(frozen=True)
class EncodeInputs:
    """The settings ``sorakit data encode`` was run with; small enough to send to every worker."""

    config: str
    overrides: tuple[str, ...]
    csv: str
    data_root: str | None
    seed: int
    device: str  # "auto": each worker takes its own GPU when it has one

    def resolved_device(self) -> Any:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def config_obj(self) -> Any:
        return load_config(self.config, list(self.overrides))

    def dataset(self, cfg: Any = None) -> Any:
        """The CSV as a VideoTextDataset (reads the CSV only)."""
        cfg = cfg or self.config_obj()
        return VideoTextDataset(
            self.csv, cfg.data.num_frames, cfg.data.frame_interval, cfg.data.image_size,
            data_root=self.data_root or cfg.data.data_root, seed=self.seed, flip=False,
            label_column=cfg.text_encoder.type == "classes",
        )  # fmt: skip

    def build(self) -> tuple[Any, Any, Any]:
        """(VideoTextDataset, VAE, text encoder), built in this process."""
        cfg = self.config_obj()
        device = self.resolved_device()
        vae, text = build_vae(cfg.vae, device=device), build_text_encoder(cfg.text_encoder, device=device)
        return self.dataset(cfg), vae, text

    def __call__(self) -> tuple[Any, Any, Any]:
        """The built objects, loaded on this worker's first shard and kept for the next ones."""
        if self not in _BUILT:
            _BUILT[self] = self.build()
        return _BUILT[self]
