"""The training loop, written out (DiT's train.py): `_train` reads top to bottom --
`build_data` (data, and the frozen encoders raw videos need) -> `build_model` -> `build_train_state`
(parallelise, optimiser, lr schedule, EMA, random streams, resume) -> loop over `train_step`,
`log_window` and `save`. `TrainState` is everything the loop advances.

Reproducibility contract: a run stopped at any point (even by ``kill -9``) and resumed with ``--resume``
ends with exactly the weights of an uninterrupted run (bit for bit on CPU). What makes it hold:

- the data order is a function of ``(seed, epoch)`` and each sample's random choices of
  ``(seed, epoch, index)`` (``sorakit.data.dataset``); the checkpoint stores ``(epoch, batch)``;
- timesteps, noise, caption-dropout decisions and reference-frame masks (``train.mask_ratios``) come
  from one trainer generator, drawn for the *global* batch and sliced per data-parallel rank -- so
  2 ranks x batch 2 train exactly like 1 rank x batch 4 -- and its state is checkpointed with every
  other RNG state; with buckets (``data.buckets``) every micro-batch has its own shape and draws from
  generators of ``(seed, epoch, micro-batch index)`` instead (``sorakit.training.bucketed``);
- model, EMA, optimizer and lr-schedule state are saved losslessly (float32 safetensors / torch.save).
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.utils.tensorboard import SummaryWriter

from sorakit import jsonutil
from sorakit.config import Config, apply_dict, validate_config
from sorakit.data.bucket_cache import open_cache
from sorakit.data.buckets import BucketBatchSampler
from sorakit.data.cache import is_cache_dir
from sorakit.data.dataset import ResumableBatchSampler, SkipReport, VideoTextDataset, collate
from sorakit.diffusion import build_objective as objective_by_name
from sorakit.diffusion.rflow import rflow_options
from sorakit.encoders import build_text_encoder, build_vae
from sorakit.errors import ConfigError, UserError
from sorakit.fileutil import SafeFileHandler, atomic_write, open_append, refuse_links, write_text_atomic
from sorakit.logging import get_logger
from sorakit.masks import MaskGenerator, normalise_ratios
from sorakit.modeldir import is_model_dir, read_model_dir
from sorakit.models import build_from_config, load_checkpoint, model_spec
from sorakit.parallel.mesh import ParallelState, all_reduce_mean, all_reduce_sum, init_distributed, shutdown
from sorakit.parallel.parallelize import compile_backend, parallelize
from sorakit.runtime import autocast_dtype, resolve_mixed_precision
from sorakit.training import checkpoint as ckpt
from sorakit.training import lora
from sorakit.training.bucketed import (
    batch_geometry,
    bucket_sampler,
    cache_sampler,
    draw_micro_batch,
    micro_batch_random,
)
from sorakit.training.ema import EMA
from sorakit.training.mfu import known_peak_tflops, tokens_per_sample, training_flops_per_sample
from sorakit.training.optim import build_lr_schedule, build_optimizer, freeze

log = get_logger(__name__)


@dataclass
class Components:
    """Pre-built pieces (tests, notebooks); whatever is None is built from the config."""

    model: nn.Module | None = None
    objective: Any = None
    vae: Any = None
    text_encoder: Any = None


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)
    checkpoint: Path | None = None
    skipped: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Building


def build_objective(cfg: Config) -> Any:
    """The training objective: IDDPM (Open-Sora 1.0) or rectified flow (from ``sorakit.diffusion``)."""
    name = cfg.train.objective
    h, w = cfg.data.image_size
    extra = rflow_options(cfg.sampler, h, w, cfg.data.num_frames) if name == "rflow" else {}
    if name == "rflow" and cfg.train.timestep_shift is not None:  # a fixed shift for training times only
        extra = {"shift": float(cfg.train.timestep_shift)}
    return objective_by_name(name, num_timesteps=cfg.sampler.num_timesteps, **extra)


@dataclass
class DataSource:
    """What the loop iterates: a dataset, its sampler, and how latents / conditions are obtained."""

    dataset: Any
    sampler: ResumableBatchSampler | BucketBatchSampler
    cached: bool
    latent_size: tuple[int, int, int]  # the configured shape (the model is built for it)
    latent_channels: int
    caption_channels: int | None
    text_len: int | None
    label: bool
    downsample: int = 8  # pixels per latent pixel (the VAE's factor)
    bucketed: bool = False  # data.buckets: micro-batches of several shapes (sorakit.training.bucketed)


def build_data(cfg: Config, state: ParallelState, components: Components) -> DataSource:
    """Open the training data (checked before anything heavy is built). A latent cache brings its own shapes
    and names its encoders (adopted into `cfg`); raw videos need the frozen VAE and text encoder, built here
    into `components`, whose shapes the model takes."""
    source = cfg.data.cache_dir or cfg.data.csv
    if not source:
        raise UserError(
            "no training data: pass --data CSV (or a latent cache directory from `sorakit data encode`)"
        )
    sampler_args = dict(
        batch_size=cfg.train.batch_size, rank=state.dp_rank, num_replicas=state.dp_size, seed=cfg.train.seed
    )
    if cfg.data.cache_dir or is_cache_dir(source):
        ds = open_cache(source, damaged=cfg.data.damaged_shards)
        c, t, h, w = ds.latent_shape
        _adopt_cache_encoders(cfg, ds.meta)
        buckets = cache_sampler(cfg, ds, state.dp_rank, state.dp_size)
        return DataSource(
            dataset=ds, sampler=buckets or ResumableBatchSampler(len(ds), **sampler_args), cached=True,
            latent_size=(t, h, w), latent_channels=c, caption_channels=ds.meta.get("text_dim") or None,
            text_len=ds.meta.get("model_max_length") or None, label=not ds.has_text, bucketed=buckets is not None,
            downsample=int(ds.meta.get("downsample") or ds.meta.get("image_size", [8 * h])[0] // h),
        )  # fmt: skip
    if Path(source).is_dir():
        raise UserError(f"{source} is a directory but not a latent cache (no meta.json)")
    label = cfg.text_encoder.type == "classes"
    ds = VideoTextDataset(
        source, cfg.data.num_frames, cfg.data.frame_interval, cfg.data.image_size, data_root=cfg.data.data_root,
        seed=cfg.train.seed, flip=cfg.data.random_flip, label_column=label,
    )  # fmt: skip
    buckets = bucket_sampler(cfg, ds.rows, state.dp_rank, state.dp_size)
    build_encoders(cfg, state, components)
    f = int(getattr(components.vae, "downsample_factor", 8))
    return DataSource(
        dataset=ds, sampler=buckets or ResumableBatchSampler(len(ds), **sampler_args), cached=False,
        bucketed=buckets is not None, downsample=f,
        latent_size=(cfg.data.num_frames, cfg.data.image_size[0] // f, cfg.data.image_size[1] // f),
        latent_channels=int(getattr(components.vae, "latent_channels", 4)),
        caption_channels=None if label else getattr(components.text_encoder, "output_dim", None),
        text_len=None if label else cfg.text_encoder.model_max_length, label=label,
    )  # fmt: skip


def _adopt_cache_encoders(cfg: Config, meta: dict[str, Any]) -> None:
    """A model trained on a cache is tied to the VAE and text encoder that wrote it: record those in the
    run's config (what `sorakit export` passes on to `sorakit generate`)."""
    for section in ("vae", "text_encoder"):
        spec = meta.get(section)
        if isinstance(spec, dict):
            before = getattr(cfg, section).__dict__.copy()
            apply_dict(cfg, {section: spec}, source=f"latent cache {section}")
            if getattr(cfg, section).__dict__ != before:
                log.info("using the latent cache's %s settings: %s", section, spec)


def build_encoders(cfg: Config, state: ParallelState, components: Components) -> None:
    """Frozen VAE and text encoder for training from raw videos (not needed with a latent cache)."""
    low = state.device.type == "cuda" and cfg.train.mixed_precision == "bf16"
    dtype = torch.bfloat16 if low else torch.float32
    if components.vae is None:
        vcfg = copy.deepcopy(cfg.vae)
        if cfg.train.vae_micro_batch_size:
            vcfg.micro_batch_size = cfg.train.vae_micro_batch_size
        components.vae = build_vae(vcfg, device=state.device, dtype=dtype)
    if components.text_encoder is None:
        components.text_encoder = build_text_encoder(cfg.text_encoder, device=state.device, dtype=dtype)


def build_model(cfg: Config, data: DataSource) -> nn.Module:
    """The diffusion transformer for this data's latent size (float32, random init, seeded)."""
    _adopt_init_horizon(cfg)
    torch.manual_seed(cfg.train.seed)
    return build_from_config(
        cfg, data.latent_size, in_channels=data.latent_channels, caption_channels=data.caption_channels,
        text_len=data.text_len, class_dropout_prob=cfg.train.caption_dropout,
        # rectified flow predicts a velocity: there is no variance to learn
        learn_variance=False if cfg.train.objective == "rflow" else None,
    )  # fmt: skip


def _adopt_init_horizon(cfg: Config) -> None:
    """An init model directory whose STDiT has the horizon embedding (the built-in model since v3.1): the run's
    network gets it too (``model.arch.horizon``) unless the config sets it, so the weights fit."""
    init = cfg.train.init_from or cfg.model.from_pretrained
    if not init or "horizon" in cfg.model.arch or not is_model_dir(init):
        return
    if read_model_dir(init)[1].model.arch.get("horizon"):
        cfg.model.arch["horizon"] = True


def load_init_weights(model: nn.Module, path: str) -> None:
    """``--init``: PixArt-alpha weights for stage 1, a previous stage's exported model afterwards."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"--init: no such file or directory: {path}")
    if (p / "sorakit_pipeline.json").is_file():
        p = p / "transformer"
    report = load_checkpoint(model, p)
    log.info("initialised weights from %s%s", path, f" ({report})" if str(report) else "")


# --------------------------------------------------------------------------------------------------
# One step's inputs


def _conditions(
    batch: dict[str, Any],
    data: DataSource,
    components: Components,
    device: torch.device,
    vae_gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Batch -> (x0 latents [B, C, T, h, w] float32, y [B, 1, L, Cy] or labels [B], mask [B, L] or None)."""
    with torch.no_grad():
        if data.cached:
            x0 = batch["latent"].to(device, torch.float32)
        else:
            video = batch["video"].to(device)
            x0 = components.vae.encode(video.to(components.vae.dtype), generator=vae_gen).float()
        if data.label:
            return x0, batch["label"].to(device), None
        if data.cached:
            return x0, batch["y"].to(device, torch.float32), batch["mask"].to(device)
        y, mask = components.text_encoder.encode(list(batch["text"]))
        return x0, y.to(device, torch.float32), (mask.to(device) if mask is not None else None)


def _model_fn(
    model: nn.Module, y: torch.Tensor, mask: torch.Tensor | None, drop: torch.Tensor | None, device_type: str,
    autocast_dtype: torch.dtype | None, horizon: torch.Tensor | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:  # fmt: skip
    """``model_fn(x_t, t)`` for the objective: the model under autocast (weights stay float32), output float32.
    `horizon` `[B]` (the data's planned path lengths) goes to a model with a horizon embedding."""
    extra = {} if horizon is None else {"horizon": horizon}

    def model_fn(x_t: torch.Tensor, timestep: torch.Tensor, **kw: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(x_t, timestep, y, mask, drop, **kw, **extra)  # kw: x_mask of reference frames
        return out.float()

    return model_fn


def _draw_global(
    objective: Any,
    gen: torch.Generator,
    global_batch: int,
    shape: tuple[int, ...],
    p_drop: float,
    part: slice,
    masker: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Timesteps, noise, caption-dropout decisions and reference-frame masks ``[B, T]`` (with a `masker`)
    for the whole global batch, then this rank's part. Masks are drawn last, so a run without
    ``train.mask_ratios`` draws exactly what it always did."""
    t = objective.sample_timesteps(global_batch, gen, "cpu")
    noise = torch.randn((global_batch, *shape), generator=gen)
    drop = (torch.rand(global_batch, generator=gen) < p_drop).long() if p_drop > 0 else None
    x_mask = masker.get_masks(global_batch, shape[1], gen)[0][part] if masker is not None else None
    return t[part], noise[part], (drop[part] if drop is not None else None), x_mask


# --------------------------------------------------------------------------------------------------
# The data stream


def _batches(
    data: DataSource, cfg: Config, epoch: int, start_batch: int
) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """Yields ``(epoch, batch_index_in_epoch, batch)`` forever, starting at ``(epoch, start_batch)``."""
    while True:
        data.sampler.set_epoch(epoch, start_batch)
        if data.cached and getattr(data.dataset, "in_memory", False):
            it: Iterator[dict[str, Any]] = (
                data.dataset.get_batch([k[0] for k in keys]) for keys in data.sampler
            )
        else:
            loader = torch.utils.data.DataLoader(
                data.dataset, batch_sampler=data.sampler, num_workers=cfg.data.num_workers, collate_fn=collate,
                pin_memory=torch.cuda.is_available(), generator=torch.Generator(),  # never touch the global RNG
                worker_init_fn=_worker_init, persistent_workers=False,
            )  # fmt: skip
            it = iter(loader)
        for b, batch in enumerate(it, start=start_batch):
            yield epoch, b, batch
        epoch, start_batch = epoch + 1, 0


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------
# Logging


class MetricsLogger:
    """Console (rank 0), ``RUN_DIR/metrics.jsonl`` and TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.writer = None
        self.file = None
        if not enabled:
            return
        self.file = open_append(run_dir / "metrics.jsonl")
        if tensorboard:
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        parts = [f"step {step}"]
        for k, v in metrics.items():
            parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
        log.info(" | ".join(parts))
        assert self.file is not None
        # a non-finite metric (an inf gradient norm) is written as null: bare NaN / Infinity are not JSON
        self.file.write(jsonutil.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):  # not batch_shape
                    self.writer.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after `step` by a run that died before its next checkpoint."""
    refuse_links(path.parent, [path.name])  # never read a planted link's target into the run's log
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                keep.append(line)
        except (ValueError, KeyError):
            continue
    write_text_atomic(path, "".join(f"{x}\n" for x in keep))


def _add_file_log(run_dir: Path) -> logging.Handler:
    handler = SafeFileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger("sorakit").addHandler(handler)
    return handler


# --------------------------------------------------------------------------------------------------
# State dicts that work for plain, DDP and FSDP2 models alike


def _full_options(**kw: Any) -> StateDictOptions:
    return StateDictOptions(full_state_dict=True, **kw)


def _gather_states(
    model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
    msd = get_model_state_dict(model, options=_full_options(cpu_offload=True))
    osd = get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))
    return msd, osd, ema.state_dict(model)


# --------------------------------------------------------------------------------------------------
# The training state and the three things the loop does: train_step, log_window, save


@dataclass
class TrainState:
    """What the loop advances, and (with the config) what a checkpoint stores."""

    model: nn.Module  # the single-device model: EMA and checkpoints read it
    train_model: nn.Module  # the same model wrapped for DDP / FSDP2: what a step calls
    params: list[nn.Parameter]  # the trainable parameters (gradient clipping)
    optimizer: torch.optim.Optimizer
    lr_schedule: Any
    ema: EMA
    # "train": timesteps, noise, caption dropout and reference-frame masks of the global batch; "vae": latents
    generators: dict[str, torch.Generator]
    skip: SkipReport
    scaler: torch.amp.GradScaler | None  # fp16 only
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    masker: Any = None  # train.mask_ratios: a MaskGenerator (reference-frame masks), None without


@dataclass
class Throughput:
    """What a log line's throughput and MFU are computed from."""

    global_batch: int
    tokens: int  # per sample
    flops: float | None  # training FLOPs per sample
    peak: float | None  # TFLOP/s per device


@dataclass
class Window:
    """The steps since the last log line."""

    loss: float = 0.0
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)
    # the last step's input shape: {"batch_shape": [B, 3, T, H, W]} (videos, before the VAE) or
    # {"latent_shape": [B, C, T, h, w]} (a latent cache)
    shape: dict[str, list[int]] = field(default_factory=dict)


def build_train_state(cfg: Config, model: nn.Module, state: ParallelState, latest: Path | None,
                      run_dir: Path) -> TrainState:  # fmt: skip
    """Parallelise, optimiser, lr schedule, EMA and random streams, then resume from `latest` if given."""
    tcfg = cfg.train
    train_model = parallelize(model, state, cfg.parallel.strategy, cfg.model.grad_checkpoint, tcfg.compile)
    optimizer = build_optimizer(
        model, tcfg.lr, tcfg.weight_decay
    )  # after parallelize: FSDP2 swaps parameters
    lr_schedule = build_lr_schedule(optimizer, tcfg.warmup_steps, tcfg.decay_steps, tcfg.max_steps)
    ts = TrainState(
        model=model, train_model=train_model, params=[p for p in model.parameters() if p.requires_grad],
        optimizer=optimizer, lr_schedule=lr_schedule, ema=EMA(model, tcfg.ema_decay, trainable_only=lora.enabled(cfg)),
        generators={"train": torch.Generator().manual_seed(tcfg.seed),
                    "vae": torch.Generator(device=state.device).manual_seed(tcfg.seed * 1000 + state.dp_rank)},
        skip=SkipReport(max_fraction=cfg.data.max_bad_fraction),
        scaler=torch.amp.GradScaler("cuda") if tcfg.mixed_precision == "fp16" else None,
        masker=_mask_generator(cfg, model),
    )  # fmt: skip
    torch.manual_seed(tcfg.seed + state.dp_rank)  # anything left inside the model (drop path)
    if latest is not None:
        _resume(latest, ts, state)
        log.info(
            "resumed from %s (step %d, epoch %d, batch %d)", latest, ts.step, ts.epoch, ts.batch_in_epoch
        )
        if state.is_main:
            _truncate_metrics(run_dir / "metrics.jsonl", ts.step)
    return ts


def train_step(
    cfg: Config, ts: TrainState, batch: dict[str, Any], data: DataSource, components: Components, objective: Any,
    state: ParallelState,
) -> tuple[float, torch.Tensor, float]:  # fmt: skip
    """One optimiser step on one global batch -> (the global batch's mean loss, grad norm, the lr it used).
    `ts.epoch` / `ts.batch_in_epoch` are the batch's position (a bucketed micro-batch's draws depend on it)."""
    tcfg, dev = cfg.train, state.device
    if not data.cached:
        _count_skipped(batch, ts.skip, len(batch["index"]), state)
    if data.bucketed:  # this micro-batch's own shape and random streams
        rand = micro_batch_random(
            tcfg.seed, ts.epoch, ts.batch_in_epoch - 1, state.dp_rank, state.dp_size, dev
        )
        x0, y, mask = _conditions(batch, data, components, dev, rand.device)
        t, noise, drop, x_mask = draw_micro_batch(objective, rand.cpu, tuple(x0.shape), tcfg.caption_dropout,
                                                  batch_geometry(batch, data.downsample)[1], ts.masker)  # fmt: skip
    else:
        x0, y, mask = _conditions(batch, data, components, dev, ts.generators["vae"])
        part = slice(state.dp_rank * tcfg.batch_size, (state.dp_rank + 1) * tcfg.batch_size)
        shape = (data.latent_channels, *data.latent_size)
        t, noise, drop, x_mask = _draw_global(objective, ts.generators["train"], tcfg.batch_size * state.dp_size,
                                              shape, tcfg.caption_dropout, part, ts.masker)  # fmt: skip
    drop = drop.to(dev) if drop is not None else None
    loss_kw = {} if x_mask is None else {"x_mask": x_mask.to(dev)}  # condition frames: clean, out of the loss
    horizon = batch.get("horizon") if getattr(ts.model, "h_embedder", None) is not None else None
    horizon = None if horizon is None else horizon.to(dev, torch.float32)
    model_fn = _model_fn(
        ts.train_model, y, mask, drop, dev.type, autocast_dtype(tcfg.mixed_precision), horizon
    )
    ts.train_model.train()
    if tcfg.loss_channel_weights:
        loss_kw["channel_weights"] = torch.tensor(tcfg.loss_channel_weights, device=dev)
    loss = objective.training_losses(model_fn, x0, t.to(dev), noise.to(dev), **loss_kw)["loss"].mean()
    if not torch.isfinite(loss):
        raise RuntimeError(
            f"loss is {loss.item()} at step {ts.step}: lower train.lr or use bf16 instead of fp16"
        )
    grad_norm, lr = _optimizer_step(ts, loss, tcfg.grad_clip)
    ts.ema.update(ts.model)
    ts.step += 1
    (global_loss,) = all_reduce_mean([loss.item()], state)
    return global_loss, grad_norm, lr


def _count_skipped(batch: dict[str, Any], skip: SkipReport, batch_size: int, state: ParallelState) -> None:
    # batch_size: this rank's samples this step (a bucket's own batch size with buckets)
    """Unreadable videos of this step (all ranks): too many of them stop the run."""
    fails = len(batch["skipped"])
    attempts, fails = all_reduce_sum([fails + batch_size, fails], state)
    skip.update(batch["skipped"], int(attempts), int(fails))
    skip.check()


def _optimizer_step(ts: TrainState, loss: torch.Tensor, grad_clip: float) -> tuple[torch.Tensor, float]:
    """Backward, clip, step (through the fp16 scaler when there is one) -> (grad norm, the lr used)."""
    if ts.scaler is not None:
        ts.scaler.scale(loss).backward()
        ts.scaler.unscale_(ts.optimizer)
    else:
        loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(ts.params, grad_clip if grad_clip > 0 else math.inf)
    if ts.scaler is not None:
        ts.scaler.step(ts.optimizer)
        ts.scaler.update()
    else:
        ts.optimizer.step()
    lr = ts.optimizer.param_groups[0]["lr"]  # the rate this step used (the schedule moves on next)
    ts.lr_schedule.step()
    ts.optimizer.zero_grad(set_to_none=True)
    return grad_norm, lr


def build_throughput(cfg: Config, model: nn.Module, data: DataSource, state: ParallelState) -> Throughput:
    """Tokens and FLOPs per sample, and the device peak MFU is measured against (rank 0 logs it)."""
    flops = training_flops_per_sample(model, data.latent_size, data.text_len)
    peak = None
    if state.is_main and flops:
        low = cfg.train.mixed_precision != "fp32"
        peak, source = known_peak_tflops(state.device, low, cfg.train.peak_tflops)
        if peak:
            log.info(
                "MFU against %.4g TFLOP/s per device (%s); %.3g training FLOPs per sample",
                peak,
                source,
                flops,
            )
        else:
            log.info("MFU not reported: %s (set train.peak_tflops=TFLOPS to get it)", source)
    return Throughput(
        cfg.train.batch_size * state.dp_size, tokens_per_sample(model, data.latent_size), flops, peak
    )


def log_window(metrics: MetricsLogger, ts: TrainState, window: Window, grad_norm: torch.Tensor, lr: float,
               tp: Throughput, state: ParallelState) -> Window:  # fmt: skip
    """Log the window's mean loss, lr, grad norm, throughput and MFU; returns a fresh window."""
    elapsed = time.perf_counter() - window.start
    gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    sps = tp.global_batch * window.steps / max(elapsed, 1e-9)
    m = {"loss": window.loss / window.steps, "lr": lr, "grad_norm": float(gn), "samples_per_s": sps,
         "tokens_per_s": sps * tp.tokens, "epoch": ts.epoch}  # fmt: skip
    m.update(window.shape)
    if tp.flops and tp.peak:
        m["mfu"] = sps * tp.flops / (tp.peak * 1e12 * state.world_size)
    if state.device.type == "cuda":
        m["peak_mem_gib"] = torch.cuda.max_memory_allocated(state.device) / 2**30
    metrics.log(ts.step, m)
    return Window()


def save(cfg: Config, run_dir: Path, ts: TrainState, state: ParallelState) -> Path:
    """A complete checkpoint of `ts` under `run_dir` (rank 0 writes the tensors; every rank its RNG)."""
    msd, osd, esd = _gather_states(ts.model, ts.optimizer, ts.ema)
    msd, esd = (
        lora.checkpoint_tensors(ts.model, msd),
        lora.checkpoint_tensors(ts.model, esd),
    )  # LoRA: adapter only
    main = state.is_main
    path = ckpt.save_checkpoint(
        run_dir, ts.step, state, model_state=msd if main else None, ema_state=esd if main else None,
        optimizer_state=osd if main else None, lr_schedule_state=ts.lr_schedule.state_dict(),
        rng_state=ckpt.capture_rng(ts.generators),
        train_state={"epoch": ts.epoch, "batch_in_epoch": ts.batch_in_epoch, "skipped": ts.skip.state_dict(),
                     "model": model_spec(ts.model), **lora.train_state(ts.model)},
        config_text=cfg.dump(), keep_last=cfg.train.keep_last,
    )  # fmt: skip
    log.info("saved checkpoint %s", path)
    return path


def _resume(path: Path, ts: TrainState, state: ParallelState) -> None:
    info = ckpt.load_train_state(path)
    if int(info.get("dp_size", 1)) != state.dp_size:
        log.warning(
            "resuming with %d data-parallel ranks instead of %d: the data order stays the same per global batch "
            "only if the global batch size is unchanged", state.dp_size, info.get("dp_size"),
        )  # fmt: skip
    lora.check_resume(ts.model, info, path)
    adapter_only = lora.spec_of(ts.model) is not None  # the base came from --init
    try:  # a checkpoint of another model shape (model.* changed since) fails in here, named
        set_model_state_dict(
            ts.model,
            ckpt.load_tensors(path, "model.safetensors"),
            options=_full_options(strict=not adapter_only),
        )
        optimizer_state = ckpt.load_pickled(path, "optimizer.pt")
        set_optimizer_state_dict(ts.model, ts.optimizer, optimizer_state, options=_full_options())
        ts.lr_schedule.load_state_dict(ckpt.load_pickled(path, "scheduler.pt"))
        ts.ema.load_state_dict(ckpt.load_tensors(path, "ema.safetensors"))
    except (RuntimeError, KeyError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UserError(
            f"checkpoint {path} does not fit the configured model (changed model.* settings?): {detail}"
        ) from None
    rng = ckpt.load_rng(path, state.rank)
    if rng is None:
        log.warning("checkpoint %s has no RNG state for rank %d: continuing with fresh random streams", path,
                    state.rank)  # fmt: skip
    else:
        ckpt.restore_rng(rng, ts.generators)
    ts.skip.load_state_dict(info.get("skipped", {}))
    ts.step, ts.epoch, ts.batch_in_epoch = (
        int(info["step"]),
        int(info.get("epoch", 0)),
        int(info.get("batch_in_epoch", 0)),
    )


# --------------------------------------------------------------------------------------------------
# The run: top to bottom


def train(
    cfg: Config,
    run_dir: str | Path,
    resume: bool = False,
    components: Components | None = None,
) -> TrainResult:
    """Train according to `cfg`, writing logs and checkpoints under `run_dir`."""
    validate_config(cfg)  # a Config built in Python gets the checks a file or override gets
    state = init_distributed(cfg.parallel.sp_size, cfg.parallel.backend)
    try:
        return _train(cfg, Path(run_dir), resume, components or Components(), state)
    finally:
        shutdown(state)


def _train(
    cfg: Config, run_dir: Path, resume: bool, components: Components, state: ParallelState
) -> TrainResult:
    _validate(cfg, state)
    _resolve_precision(cfg, state)
    latest = prepare_run_dir(run_dir, resume, state)
    handler = _add_file_log(run_dir) if state.is_main else None
    try:
        data = build_data(cfg, state, components)
        _check_channel_weights(cfg, data)
        save_config(cfg, run_dir, state)  # after the data settled it: the config this run actually uses
        model = components.model if components.model is not None else build_model(cfg, data)
        init_weights(cfg, model, data, state, from_init=latest is None and components.model is None)
        objective = components.objective if components.objective is not None else build_objective(cfg)
        ts = build_train_state(cfg, model, state, latest, run_dir)
        tp = build_throughput(cfg, model, data, state)
        metrics = MetricsLogger(run_dir, state.is_main, cfg.train.tensorboard)
        result = TrainResult(run_dir=run_dir, step=ts.step, checkpoint=latest)
        if ts.step >= cfg.train.max_steps:
            log.info("nothing to do: step %d >= train.max_steps %d", ts.step, cfg.train.max_steps)
            metrics.close()
            return result

        stream, window = _batches(data, cfg, ts.epoch, ts.batch_in_epoch), Window()
        log.info(
            "training from step %d to %d (global batch %d)", ts.step, cfg.train.max_steps, tp.global_batch
        )
        while ts.step < cfg.train.max_steps:
            ts.epoch, b, batch = next(stream)
            ts.batch_in_epoch = b + 1
            loss, grad_norm, lr = train_step(cfg, ts, batch, data, components, objective, state)
            result.losses.append(loss)
            window.loss, window.steps = window.loss + loss, window.steps + 1
            window.shape = {
                "latent_shape" if data.cached else "batch_shape": batch_geometry(batch, data.downsample)[0]
            }
            last = ts.step == cfg.train.max_steps
            if ts.step % cfg.train.log_every == 0 or last:
                window = log_window(metrics, ts, window, grad_norm, lr, tp, state)
            if ts.step % cfg.train.ckpt_every == 0 or last:
                result.checkpoint = save(cfg, run_dir, ts, state)
        metrics.close()
        result.step, result.skipped = ts.step, _report_skipped(ts.skip, run_dir, state)
        log.info("done: step %d, checkpoint %s", ts.step, result.checkpoint)
        return result
    finally:
        if handler is not None:
            logging.getLogger("sorakit").removeHandler(handler)
            handler.close()


def _validate(cfg: Config, state: ParallelState) -> None:
    t = cfg.train
    if t.batch_size < 1:
        raise ConfigError(f"train.batch_size must be >= 1, got {t.batch_size}")
    if t.max_steps < 1:
        raise ConfigError(f"train.max_steps must be >= 1, got {t.max_steps}")
    if t.ckpt_every < 1:
        raise ConfigError(f"train.ckpt_every must be >= 1, got {t.ckpt_every}")
    if not 0 <= t.decay_steps <= t.max_steps:
        raise ConfigError(
            f"train.decay_steps must be in [0, train.max_steps={t.max_steps}], got {t.decay_steps} (set both)"
        )
    if t.mixed_precision not in ("bf16", "fp16", "fp32", "auto"):
        raise ConfigError(
            f"train.mixed_precision: unknown '{t.mixed_precision}' (valid: bf16, fp16, fp32, auto)"
        )
    if not 0.0 <= t.caption_dropout < 1.0:
        raise ConfigError(f"train.caption_dropout must be in [0, 1), got {t.caption_dropout}")
    if t.mixed_precision == "fp16" and (
        state.device.type != "cuda" or cfg.parallel.strategy.startswith("fsdp")
    ):
        raise ConfigError("train.mixed_precision='fp16' needs a GPU and strategy ddp/none; use bf16")
    lora.validate(cfg)
    if t.compile:
        compile_backend(state.device)  # an unknown backend or no C++ compiler: one line, before any work
    if t.mask_ratios:
        normalise_ratios(t.mask_ratios)
    if t.timestep_shift is not None and t.objective != "rflow":
        raise ConfigError(f"train.timestep_shift applies to rflow training, not {t.objective!r}")


def _resolve_precision(cfg: Config, state: ParallelState) -> None:
    """``train.mixed_precision = "auto"`` becomes the concrete choice for this device, in the run's saved config.
    Under torchrun every rank takes the same: bf16 only where every rank computes it natively (ranks on
    different CPUs would otherwise train in different precisions)."""
    setting = cfg.train.mixed_precision
    choice = resolve_mixed_precision(setting, state.device)
    if setting == "auto" and state.distributed:
        choices: list[Any] = [None] * state.world_size
        dist.all_gather_object(choices, choice)
        choice = "bf16" if all(c == "bf16" for c in choices) else "fp32"
    cfg.train.mixed_precision = choice
    if setting == "auto" and state.is_main:
        log.info("train.mixed_precision auto -> %s on %s", choice, state.device.type)


def _check_channel_weights(cfg: Config, data: DataSource) -> None:
    """``train.loss_channel_weights``: one weight per latent channel of the data, or none."""
    weights = cfg.train.loss_channel_weights
    if weights and len(weights) != data.latent_channels:
        raise ConfigError(
            f"train.loss_channel_weights has {len(weights)} values; the latents have {data.latent_channels} channels"
        )


def _mask_generator(cfg: Config, model: nn.Module) -> Any:
    """``train.mask_ratios`` -> a MaskGenerator (None when empty); the model must take ``x_mask`` (STDiT)."""
    if not cfg.train.mask_ratios:
        return None

    if "x_mask" not in inspect.signature(model.forward).parameters:
        raise ConfigError(
            f"train.mask_ratios needs a model with reference frames (STDiT), not {type(model).__name__}"
        )
    masker = MaskGenerator(cfg.train.mask_ratios)
    log.info("reference-frame masks: %s", ", ".join(f"{k} {v:g}" for k, v in masker.ratios.items()))
    return masker


# the files a run writes or appends to directly in its folder (checkpoints go to fresh step-N folders)
RUN_FILES = ("config.toml", "train.log", "metrics.jsonl", "skipped_files.txt")


def prepare_run_dir(run_dir: Path, resume: bool, state: ParallelState) -> Path | None:
    """The checkpoint to resume from (None: a fresh run); refuses to train over a run without --resume."""
    if ckpt.list_checkpoints(run_dir) and not resume:
        raise UserError(
            f"{run_dir} already holds checkpoints: pass --resume to continue, or choose a new --output"
        )
    # every rank looks (so all stop together): a planted link would send a write to its target
    refuse_links(run_dir, RUN_FILES, folders=(ckpt.CHECKPOINTS, "tensorboard"))
    latest = ckpt.resume_checkpoint(run_dir, state) if resume else None  # the newest that verifies
    if resume and latest is None:
        log.warning("--resume: no intact checkpoint in %s, starting from step 0", run_dir)
    state.barrier()  # every rank has looked before rank 0 writes anything
    if state.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    state.barrier()
    return latest


def save_config(cfg: Config, run_dir: Path, state: ParallelState) -> None:
    """RUN_DIR/config.toml: the resolved config of the run (written by rank 0)."""
    if state.is_main:
        write_text_atomic(run_dir / "config.toml", cfg.dump())


def init_weights(
    cfg: Config, model: nn.Module, data: DataSource, state: ParallelState, from_init: bool
) -> None:
    """`--init` weights (a fresh run only), the frozen parts (`train.freeze`), and a line about the model."""
    init = cfg.train.init_from or cfg.model.from_pretrained
    if init and (
        from_init or lora.enabled(cfg)
    ):  # a LoRA checkpoint holds only the adapter: base on resume too
        load_init_weights(model, init)
    if lora.enabled(cfg):
        lora.attach(cfg, model, init)
    n_train = freeze(model, cfg.train.freeze)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "model %s: %.2fM parameters (%.2fM trainable), latents %s x %d ch, data %s (%d samples%s)",
        type(model).__name__, n_params / 1e6, n_train / 1e6, list(data.latent_size), data.latent_channels,
        "latent cache" if data.cached else "videos", len(data.dataset),
        f", {state.world_size} processes: dp {state.dp_size} x sp {state.sp_size}" if state.distributed else "",
    )  # fmt: skip


def _report_skipped(skip: SkipReport, run_dir: Path, state: ParallelState) -> dict[str, str]:
    """Collect every rank's unreadable files; rank 0 logs them and writes RUN_DIR/skipped_files.txt."""
    files = dict(skip.files)
    if state.distributed:
        gathered: list[Any] = [None] * state.world_size
        dist.all_gather_object(gathered, files)
        for g in gathered:
            files.update(g)
    if state.is_main and files:
        listed = "; ".join(f"{p} ({r})" for p, r in files.items())
        log.warning("%d unreadable file(s) skipped (%d failed loads): %s", len(files), skip.failures, listed)
        with atomic_write(run_dir / "skipped_files.txt") as fh:
            for path, reason in files.items():
                fh.write(f"{path}\t{reason}\n")
    return files
