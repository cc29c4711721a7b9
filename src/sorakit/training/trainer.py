"""The training loop, written out: build -> parallelise -> optimiser / EMA -> (resume) -> loop -> checkpoint.

Reproducibility contract: a run stopped at any point (even by ``kill -9``) and resumed with ``--resume``
ends with exactly the weights of an uninterrupted run (bit for bit on CPU). What makes it hold:

- the data order is a function of ``(seed, epoch)`` and each sample's random choices of
  ``(seed, epoch, index)`` (``sorakit.data.dataset``); the checkpoint stores ``(epoch, batch)``;
- timesteps, noise and caption-dropout decisions come from one trainer generator, drawn for the
  *global* batch and sliced per data-parallel rank -- so 2 ranks x batch 2 train exactly like
  1 rank x batch 4 -- and its state is checkpointed with every other RNG state;
- model, EMA, optimizer and scheduler state are saved losslessly (float32 safetensors / torch.save).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sorakit.config import Config
from sorakit.data.dataset import ResumableBatchSampler, SkipReport, collate
from sorakit.errors import ConfigError, UserError
from sorakit.logging import get_logger
from sorakit.models import build_from_config, load_checkpoint, model_spec
from sorakit.parallel.mesh import ParallelState, all_reduce_mean, all_reduce_sum, init_distributed, shutdown
from sorakit.parallel.parallelize import parallelize
from sorakit.training import checkpoint as ckpt
from sorakit.training.ema import EMA
from sorakit.training.mfu import known_peak_tflops, tokens_per_sample, training_flops_per_sample
from sorakit.training.optim import build_optimizer, build_scheduler, freeze

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
    from sorakit.diffusion import build_objective as factory

    name = cfg.train.objective
    extra = {"shift": cfg.scheduler.shift} if name == "rflow" else {}
    return factory(name, num_timesteps=cfg.scheduler.num_timesteps, **extra)


@dataclass
class DataSource:
    """What the loop iterates: a dataset, its sampler, and how latents / conditions are obtained."""

    dataset: Any
    sampler: ResumableBatchSampler
    cached: bool
    latent_size: tuple[int, int, int]
    latent_channels: int
    caption_channels: int | None
    text_len: int | None
    label: bool
    loader_factory: Callable[[], Iterator[dict[str, Any]]] | None = None


def _is_label_model(cfg: Config) -> bool:
    return cfg.text_encoder.type == "classes"


def build_data(cfg: Config, state: ParallelState, components: Components) -> DataSource:
    """Validate and open the training data (before any heavy building)."""
    from sorakit.data.cache import LatentCacheDataset, is_cache_dir

    source = cfg.data.cache_dir or cfg.data.csv
    if not source:
        raise UserError(
            "no training data: pass --data CSV (or a latent cache directory from `sorakit data encode`)"
        )
    sampler_args = dict(
        batch_size=cfg.train.batch_size, rank=state.dp_rank, num_replicas=state.dp_size, seed=cfg.train.seed
    )
    if cfg.data.cache_dir or is_cache_dir(source):
        ds = LatentCacheDataset(source)
        c, t, h, w = ds.latent_shape
        meta = ds.meta
        return DataSource(
            dataset=ds, sampler=ResumableBatchSampler(len(ds), **sampler_args), cached=True,
            latent_size=(t, h, w), latent_channels=c, caption_channels=meta.get("text_dim") or None,
            text_len=meta.get("model_max_length") or None, label=not ds.has_text,
        )  # fmt: skip
    if Path(source).is_dir():
        raise UserError(f"{source} is a directory but not a latent cache (no meta.json)")
    from sorakit.data.dataset import VideoTextDataset

    label = _is_label_model(cfg)
    ds = VideoTextDataset(
        source, cfg.data.num_frames, cfg.data.frame_interval, cfg.data.image_size, data_root=cfg.data.data_root,
        seed=cfg.train.seed, flip=cfg.data.random_flip, label_column=label,
    )  # fmt: skip
    vae, text = components.vae, components.text_encoder
    f = int(getattr(vae, "downsample_factor", 8)) if vae is not None else None
    return DataSource(
        dataset=ds, sampler=ResumableBatchSampler(len(ds), **sampler_args), cached=False,
        latent_size=(cfg.data.num_frames, cfg.data.image_size[0] // (f or 8), cfg.data.image_size[1] // (f or 8)),
        latent_channels=int(getattr(vae, "latent_channels", 4)) if vae is not None else 4,
        caption_channels=None if label else (getattr(text, "output_dim", None) if text is not None else None),
        text_len=None if label else cfg.text_encoder.model_max_length, label=label,
    )  # fmt: skip


def _adopt_cache_encoders(cfg: Config, meta: dict[str, Any]) -> None:
    """A model trained on a cache is tied to the VAE and text encoder that wrote it: record those in the
    run's config (what `sorakit export` passes on to `sorakit generate`)."""
    from sorakit.config import apply_dict

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
        from sorakit.encoders import build_vae

        vcfg = copy.deepcopy(cfg.vae)
        if cfg.train.vae_micro_batch_size:
            vcfg.micro_batch_size = cfg.train.vae_micro_batch_size
        components.vae = build_vae(vcfg, device=state.device, dtype=dtype)
    if components.text_encoder is None:
        from sorakit.encoders import build_text_encoder

        components.text_encoder = build_text_encoder(cfg.text_encoder, device=state.device, dtype=dtype)


def build_model(cfg: Config, data: DataSource) -> nn.Module:
    """The diffusion transformer for this data's latent size (float32, random init, seeded)."""
    torch.manual_seed(cfg.train.seed)
    return build_from_config(
        cfg, data.latent_size, in_channels=data.latent_channels, caption_channels=data.caption_channels,
        text_len=data.text_len, class_dropout_prob=cfg.train.caption_dropout,
        # rectified flow predicts a velocity: there is no variance to learn
        learn_variance=False if cfg.train.objective == "rflow" else None,
    )  # fmt: skip


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
    autocast_dtype: torch.dtype | None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:  # fmt: skip
    """``model_fn(x_t, t)`` for the objective: the model under autocast (weights stay float32), output float32."""

    def model_fn(x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(x_t, timestep, y, mask, drop)
        return out.float()

    return model_fn


def _draw_global(
    objective: Any,
    gen: torch.Generator,
    global_batch: int,
    shape: tuple[int, ...],
    p_drop: float,
    part: slice,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Timesteps, noise and caption-dropout decisions for the whole global batch, then this rank's part."""
    t = objective.sample_timesteps(global_batch, gen, "cpu")
    noise = torch.randn((global_batch, *shape), generator=gen)
    drop = (torch.rand(global_batch, generator=gen) < p_drop).long() if p_drop > 0 else None
    return t[part], noise[part], (drop[part] if drop is not None else None)


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
                data.dataset.get_batch([i for i, _ in keys]) for keys in data.sampler
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
        self.file = open(run_dir / "metrics.jsonl", "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                log.warning("tensorboard is not installed: no event files written")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        parts = [f"step {step}"]
        for k, v in metrics.items():
            parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
        log.info(" | ".join(parts))
        assert self.file is not None
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after `step` by a run that died before its next checkpoint."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                keep.append(line)
        except (ValueError, KeyError):
            continue
    path.write_text("".join(f"{x}\n" for x in keep))


def _add_file_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger("sorakit").addHandler(handler)
    return handler


# --------------------------------------------------------------------------------------------------
# State dicts that work for plain, DDP and FSDP2 models alike


def _full_options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def _gather_states(
    model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    msd = get_model_state_dict(model, options=_full_options(cpu_offload=True))
    osd = get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))
    return msd, osd, ema.state_dict(model)


# --------------------------------------------------------------------------------------------------
# The loop


def train(
    cfg: Config,
    run_dir: str | Path,
    resume: bool = False,
    components: Components | None = None,
) -> TrainResult:
    """Train according to `cfg`, writing logs and checkpoints under `run_dir`."""
    state = init_distributed(cfg.parallel.sp_size, cfg.parallel.backend)
    try:
        return _train(cfg, Path(run_dir), resume, components or Components(), state)
    finally:
        shutdown(state)


def _validate(cfg: Config) -> None:
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
    if t.mixed_precision not in ("bf16", "fp16", "fp32"):
        raise ConfigError(f"train.mixed_precision: unknown '{t.mixed_precision}' (valid: bf16, fp16, fp32)")
    if not 0.0 <= t.caption_dropout < 1.0:
        raise ConfigError(f"train.caption_dropout must be in [0, 1), got {t.caption_dropout}")


def _train(
    cfg: Config, run_dir: Path, resume: bool, components: Components, state: ParallelState
) -> TrainResult:
    _validate(cfg)
    tcfg = cfg.train
    if tcfg.mixed_precision == "fp16" and (
        state.device.type != "cuda" or cfg.parallel.strategy.startswith("fsdp")
    ):
        raise ConfigError("train.mixed_precision='fp16' needs a GPU and strategy ddp/none; use bf16")

    # -- where we start from ------------------------------------------------------------------------
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise UserError(
            f"{run_dir} already holds checkpoints: pass --resume to continue, or choose a new --output"
        )
    if resume and latest is None:
        log.warning("--resume: no complete checkpoint in %s, starting from step 0", run_dir)
    state.barrier()  # every rank has looked before rank 0 writes anything
    if state.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(cfg.dump())
    state.barrier()
    handler = _add_file_log(run_dir) if state.is_main else None

    try:
        # -- data, encoders, model ------------------------------------------------------------------
        data = build_data(cfg, state, components)
        if data.cached:
            _adopt_cache_encoders(cfg, data.dataset.meta)
        else:
            build_encoders(cfg, state, components)
            data = build_data(cfg, state, components)  # now with the encoders' shapes
        model = components.model if components.model is not None else build_model(cfg, data)
        init = tcfg.init_from or cfg.model.from_pretrained
        if init and latest is None and components.model is None:
            load_init_weights(model, init)
        n_train = freeze(model, tcfg.freeze)
        objective = components.objective if components.objective is not None else build_objective(cfg)
        n_params = sum(p.numel() for p in model.parameters())
        log.info(
            "model %s: %.2fM parameters (%.2fM trainable), latents %s x %d ch, data %s (%d samples%s)",
            type(model).__name__, n_params / 1e6, n_train / 1e6, list(data.latent_size), data.latent_channels,
            "latent cache" if data.cached else "videos", len(data.dataset),
            f", {state.world_size} processes: dp {state.dp_size} x sp {state.sp_size}" if state.distributed else "",
        )  # fmt: skip

        # -- parallelise, optimiser, EMA -----------------------------------------------------------
        train_model = parallelize(model, state, cfg.parallel.strategy, cfg.model.grad_checkpoint)
        optimizer = build_optimizer(model, tcfg.lr, tcfg.weight_decay)
        scheduler = build_scheduler(optimizer, tcfg.warmup_steps, tcfg.decay_steps, tcfg.max_steps)
        ema = EMA(model, tcfg.ema_decay)
        gen = torch.Generator().manual_seed(tcfg.seed)  # timesteps / noise / dropout (global batch)
        vae_gen = torch.Generator(device=state.device).manual_seed(tcfg.seed * 1000 + state.dp_rank)
        generators = {"train": gen, "vae": vae_gen}
        torch.manual_seed(tcfg.seed + state.dp_rank)  # anything left inside the model (drop path)
        skip = SkipReport(max_fraction=cfg.data.max_bad_fraction)

        step, epoch, batch_in_epoch = 0, 0, 0
        if latest is not None:
            step, epoch, batch_in_epoch = _resume(
                latest, model, optimizer, scheduler, ema, generators, skip, state
            )
            log.info("resumed from %s (step %d, epoch %d, batch %d)", latest, step, epoch, batch_in_epoch)
            if state.is_main:
                _truncate_metrics(run_dir / "metrics.jsonl", step)

        # -- accounting for throughput / MFU --------------------------------------------------------
        global_batch = tcfg.batch_size * state.dp_size
        tokens = tokens_per_sample(model, data.latent_size)
        flops = training_flops_per_sample(model, data.latent_size, data.text_len)
        low = tcfg.mixed_precision != "fp32"
        peak, peak_src = (None, "")
        if state.is_main and flops:
            peak, peak_src = known_peak_tflops(state.device, low, tcfg.peak_tflops)
            if peak:
                log.info("MFU against %.4g TFLOP/s per device (%s); %.3g training FLOPs per sample",
                         peak, peak_src, flops)  # fmt: skip
            else:
                log.info("MFU not reported: %s (set train.peak_tflops=TFLOPS to get it)", peak_src)
        metrics = MetricsLogger(run_dir, state.is_main, tcfg.tensorboard)

        autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tcfg.mixed_precision)
        scaler = torch.amp.GradScaler("cuda") if tcfg.mixed_precision == "fp16" else None
        part = slice(state.dp_rank * tcfg.batch_size, (state.dp_rank + 1) * tcfg.batch_size)
        shape = (data.latent_channels, *data.latent_size)
        params = [p for p in model.parameters() if p.requires_grad]
        result = TrainResult(run_dir=run_dir, step=step)

        if step >= tcfg.max_steps:
            log.info("nothing to do: step %d >= train.max_steps %d", step, tcfg.max_steps)
            result.checkpoint = latest
            return result

        stream = _batches(data, cfg, epoch, batch_in_epoch)
        window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
        last_saved = step if latest is not None else -1
        log.info("training from step %d to %d (global batch %d)", step, tcfg.max_steps, global_batch)
        while step < tcfg.max_steps:
            epoch, b, batch = next(stream)
            batch_in_epoch = b + 1
            if not data.cached:
                fails = len(batch["skipped"])
                attempts, fails = all_reduce_sum([fails + tcfg.batch_size, fails], state)
                skip.update(batch["skipped"], int(attempts), int(fails))
                skip.check()

            x0, y, mask = _conditions(batch, data, components, state.device, vae_gen)
            t, noise, drop = _draw_global(objective, gen, global_batch, shape, tcfg.caption_dropout, part)
            t, noise = t.to(state.device), noise.to(state.device)
            if drop is not None:
                drop = drop.to(state.device)

            model_fn = _model_fn(train_model, y, mask, drop, state.device.type, autocast_dtype)
            train_model.train()
            loss = objective.training_losses(model_fn, x0, t, noise)["loss"].mean()
            if not torch.isfinite(loss):
                raise RuntimeError(
                    f"loss is {loss.item()} at step {step}: lower train.lr or use bf16 instead of fp16"
                )
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            max_norm = tcfg.grad_clip if tcfg.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            step_lr = optimizer.param_groups[0]["lr"]  # the rate this step used (the scheduler moves on next)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            ema.update(model)
            step += 1

            (global_loss,) = all_reduce_mean([loss.item()], state)  # the loss of the global batch
            window_loss += global_loss
            window_steps += 1
            result.losses.append(global_loss)
            if step % tcfg.log_every == 0 or step == tcfg.max_steps:
                elapsed = time.perf_counter() - window_start
                mean_loss = window_loss / window_steps
                gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
                sps = global_batch * window_steps / max(elapsed, 1e-9)
                m = {
                    "loss": mean_loss, "lr": step_lr, "grad_norm": float(gn),
                    "samples_per_s": sps, "tokens_per_s": sps * tokens, "epoch": epoch,
                }  # fmt: skip
                if flops and peak:
                    m["mfu"] = sps * flops / (peak * 1e12 * state.world_size)
                if state.device.type == "cuda":
                    m["peak_mem_gib"] = torch.cuda.max_memory_allocated(state.device) / 2**30
                metrics.log(step, m)
                window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()

            if step % tcfg.ckpt_every == 0 or step == tcfg.max_steps:
                result.checkpoint = _save(
                    cfg,
                    run_dir,
                    step,
                    epoch,
                    batch_in_epoch,
                    model,
                    optimizer,
                    scheduler,
                    ema,
                    generators,
                    skip,
                    state,
                )
                last_saved = step
        if last_saved != step:  # pragma: no cover - the loop always saves at max_steps
            result.checkpoint = _save(
                cfg,
                run_dir,
                step,
                epoch,
                batch_in_epoch,
                model,
                optimizer,
                scheduler,
                ema,
                generators,
                skip,
                state,
            )
        metrics.close()
        result.step = step
        result.skipped = _report_skipped(skip, run_dir, state)
        log.info("done: step %d, checkpoint %s", step, result.checkpoint)
        return result
    finally:
        if handler is not None:
            logging.getLogger("sorakit").removeHandler(handler)
            handler.close()


def _report_skipped(skip: SkipReport, run_dir: Path, state: ParallelState) -> dict[str, str]:
    """Collect every rank's unreadable files; rank 0 logs them and writes RUN_DIR/skipped_files.txt."""
    files = dict(skip.files)
    if state.distributed:
        import torch.distributed as dist

        gathered: list[Any] = [None] * state.world_size
        dist.all_gather_object(gathered, files)
        for g in gathered:
            files.update(g)
    if state.is_main and files:
        listed = "; ".join(f"{p} ({r})" for p, r in files.items())
        log.warning("%d unreadable file(s) skipped (%d failed loads): %s", len(files), skip.failures, listed)
        with open(run_dir / "skipped_files.txt", "w") as fh:
            for path, reason in files.items():
                fh.write(f"{path}\t{reason}\n")
    return files


def _save(
    cfg: Config, run_dir: Path, step: int, epoch: int, batch_in_epoch: int, model: nn.Module,
    optimizer: torch.optim.Optimizer, scheduler: Any, ema: EMA, generators: dict[str, torch.Generator],
    skip: SkipReport, state: ParallelState,
) -> Path:  # fmt: skip
    msd, osd, esd = _gather_states(model, optimizer, ema)
    path = ckpt.save_checkpoint(
        run_dir, step, state,
        model_state=msd if state.is_main else None, ema_state=esd if state.is_main else None,
        optimizer_state=osd if state.is_main else None, scheduler_state=scheduler.state_dict(),
        rng_state=ckpt.capture_rng(generators),
        train_state={
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "skipped": skip.state_dict(),
            "model": model_spec(model),
        },
        config_text=cfg.dump(), keep_last=cfg.train.keep_last,
    )  # fmt: skip
    log.info("saved checkpoint %s", path)
    return path


def _resume(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, ema: EMA,
    generators: dict[str, torch.Generator], skip: SkipReport, state: ParallelState,
) -> tuple[int, int, int]:  # fmt: skip
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    info = ckpt.load_train_state(path)
    if int(info.get("dp_size", 1)) != state.dp_size:
        log.warning(
            "resuming with %d data-parallel ranks instead of %d: the data order stays the same per global batch "
            "only if the global batch size is unchanged", state.dp_size, info.get("dp_size"),
        )  # fmt: skip
    set_model_state_dict(model, ckpt.load_tensors(path, "model.safetensors"), options=_full_options())
    set_optimizer_state_dict(
        model, optimizer, ckpt.load_pickled(path, "optimizer.pt"), options=_full_options()
    )
    scheduler.load_state_dict(ckpt.load_pickled(path, "scheduler.pt"))
    ema.load_state_dict(ckpt.load_tensors(path, "ema.safetensors"))
    rng = ckpt.load_rng(path, state.rank)
    if rng is None:
        log.warning(
            "checkpoint %s has no RNG state for rank %d: continuing with fresh random streams",
            path,
            state.rank,
        )
    else:
        ckpt.restore_rng(rng, generators)
    skip.load_state_dict(info.get("skipped", {}))
    return int(info["step"]), int(info.get("epoch", 0)), int(info.get("batch_in_epoch", 0))
