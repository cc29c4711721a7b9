"""TextToVideoPipeline: prompts -> caption embeddings -> sampled latents -> decoded uint8 frames.

    pipe = TextToVideoPipeline.from_pretrained("path/to/model_dir")      # or None: the built-in model
    frames = pipe("a red circle moving to the right", num_frames=16, seed=0)  # uint8 [B, T, H, W, 3]

The denoising loop lives in :meth:`TextToVideoPipeline.__call__`: encode the prompts (then move the
text encoder off the accelerator), draw the starting noise from a seeded CPU generator (the same
numbers on every device), wrap the transformer in classifier-free guidance and run the sampler over
its steps, decode with the VAE frame by frame, and convert to uint8.

Precision: the transformer and VAE run in the pipeline's dtype (bf16/fp16 on GPU, fp32 or bf16 on
CPU); the sampler's arithmetic stays in float32 (see sorakit.diffusion.common.compute_dtype). T5 runs in
fp32 (``text_encoder.dtype``; never fp16, where it overflows).

``inference.parity = "opensora-1.0"`` reproduces Open-Sora 1.0's samples exactly (see sorakit.parity).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sorakit import parity
from sorakit.config import Config, apply_overrides
from sorakit.diffusion import build_sampler, guidance_model_fn, sampler_name
from sorakit.diffusion.common import randn
from sorakit.diffusion.guidance import horizon_guided
from sorakit.diffusion.rflow import rflow_options, velocity_as_eps
from sorakit.diffusion.step_cache import CacheSpec, StepCache
from sorakit.encoders.text import ClassLabelEncoder, build_text_encoder, peek_output_dim
from sorakit.encoders.vae import VideoVAE, build_vae
from sorakit.errors import UserError
from sorakit.hub import resolve_file
from sorakit.logging import get_logger
from sorakit.lora import (
    apply_adapters,
    base_fingerprint,
    check_adapters,
    parse_lora_arg,
    sampler_overrides,
    vae_adapter,
)
from sorakit.masks import split_loop_prompt
from sorakit.modeldir import builtin_model_dir, read_model_dir, save_model_dir
from sorakit.models import build_from_config, from_pretrained, load_checkpoint, prediction_type_of_objective
from sorakit.pipelines.reference import ConditionBuilder, join_segments, load_references, plan_references
from sorakit.pipelines.validate import ModelSource, check_cache, check_guidance_interval, validate
from sorakit.runtime import resolve_device, resolve_dtype

log = get_logger(__name__)

OUTPUT_TYPES = ("np", "pt", "latent")


def null_caption(transformer: nn.Module, n: int) -> torch.Tensor:
    """The unconditional caption ``[n, 1, L, C]``: the model's learned ``y_embedder.y_embedding``
    (``[L, C]``), as in Open-Sora."""
    emb = transformer.y_embedder.y_embedding
    return emb[None, None].expand(n, 1, *emb.shape)


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """``[B, 3, T, H, W]`` in ``[-1, 1]`` -> uint8 ``[B, T, H, W, 3]`` (clamped, rounded)."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).contiguous()


# --------------------------------------------------------------------------------------------------
# Loading helpers


def load_transformer_checkpoint(
    transformer: nn.Module, ckpt: str | os.PathLike, name: str = "the model"
) -> None:
    """``sorakit.models.load_checkpoint`` behind hub-id resolution, with any mismatch as one UserError line."""
    path = resolve_file(str(ckpt), what="checkpoint", flag="--ckpt")
    try:
        load_checkpoint(transformer, path)
    except UserError as exc:
        raise UserError(f"checkpoint does not match {name}: {str(exc).splitlines()[0][:300]}") from exc
    except (RuntimeError, KeyError, ValueError, OSError, EOFError) as exc:
        raise UserError(
            f"cannot load checkpoint {path} into {name}: {str(exc).splitlines()[0][:300]}"
        ) from exc


def _check_text_width(cfg: Config, transformer: nn.Module) -> None:
    """Compare the text encoder's width (read from its config.json, no weights) with the transformer's
    ``caption_channels`` before the (possibly huge) encoder is loaded."""
    width = getattr(transformer, "caption_channels", None)
    if width is None or cfg.text_encoder.type == "classes" or getattr(transformer, "num_classes", None):
        return
    dim = peek_output_dim(cfg.text_encoder)
    if dim is not None and dim != width:
        raise UserError(
            f"the {cfg.text_encoder.type} text encoder at {cfg.text_encoder.path} gives {dim}-d embeddings but "
            f"{cfg.model.type} expects {width}: wrong --text-encoder for this model?"
        )


# --------------------------------------------------------------------------------------------------


class TextToVideoPipeline:
    """Text (or class label) -> video with a diffusion transformer, a per-frame VAE and a frozen encoder.

    Args:
        transformer: STDiT / PixArt / DiT / Latte (sorakit.models), moved to ``device`` and ``dtype``.
        vae: :class:`VideoVAE`.
        text_encoder: a sorakit text encoder (``encode(list[str]) -> (emb, mask)``) or class labels.
        config: defaults for every ``__call__`` argument (sampler and inference sections).
        device, dtype: where and in which precision the transformer and VAE run ('auto' picks).
        offload_text_encoder: keep the text encoder on the CPU between calls, moving it to the
            accelerator only while encoding (so T5-XXL does not sit in GPU memory while sampling).
        offload: keep every module on the CPU and move each to the accelerator only while it works: the
            text encoder while encoding, the transformer while sampling, the VAE while decoding (or
            encoding references); peak accelerator memory is then the largest module's, not their sum.
            None = ``inference.offload``. On the CPU the moves are to the CPU (outputs unchanged).
        compile: ``torch.compile`` the transformer for sampling (compiled at the first call, after LoRA
            and parallelism are applied); None = ``inference.compile``.
    """

    def __init__(
        self,
        transformer: nn.Module,
        vae: VideoVAE,
        text_encoder: nn.Module,
        config: Config | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        offload_text_encoder: bool = True,
        offload: bool | None = None,
        compile: bool | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.config = config or Config()
        self.model_name = (
            self.config.model.type
        )  # how LoRA errors name this model (from_pretrained: its folder)
        # a LoRA names its base by a fingerprint of float16-rounded weights: taken before a bf16 cast loses them
        lossy = self.dtype == torch.bfloat16 and next(transformer.parameters()).dtype != torch.bfloat16
        self._base_fingerprint = base_fingerprint(transformer) if lossy else None
        self._vae_fingerprint = base_fingerprint(vae.autoencoder) if lossy else None  # for VAE adapters
        self._loras: list[str] = []
        self.offload = self.config.inference.offload if offload is None else bool(offload)
        self.compile = self.config.inference.compile if compile is None else bool(compile)
        self._compiled: Any = None  # torch.compile(self.transformer), made at the first sampling call
        self.last_step_caches: list[StepCache] = []  # the step caches of the last call, one per sampling run
        home = "cpu" if self.offload else self.device  # where the transformer and VAE wait between uses
        self.transformer = transformer.to(home, self.dtype).eval().requires_grad_(False)
        self.vae = vae.to(home, self.dtype)
        self.text_encoder = text_encoder
        self.offload_text_encoder = self.offload or (offload_text_encoder and self.device.type != "cpu")
        self.text_encoder.to("cpu" if self.offload_text_encoder else self.device)
        self._check_components()

    # -- loading ----------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        text_encoder: str | None = None,
        vae: str | None = None,
        overrides: list[str] | None = None,
        ckpt: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> TextToVideoPipeline:
        """Load a sorakit model directory (see :mod:`sorakit.modeldir`); ``None`` = the
        built-in model. ``text_encoder`` / ``vae`` replace the directory's references with local paths
        or hub ids; ``overrides`` are ``section.key=value`` config overrides; ``ckpt`` replaces the
        transformer's weights (loaded before the text encoder, so a mismatch fails early)."""
        root = builtin_model_dir() if path is None else Path(path)
        transformer_dir, cfg = read_model_dir(root, deep=True)  # every file against its sha256
        apply_overrides(cfg, overrides or [])
        if text_encoder:
            cfg.text_encoder.path = text_encoder
        if vae:
            cfg.vae.path = vae
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        try:
            # folders written before the transformer recorded its prediction type: the training objective
            prediction_type = prediction_type_of_objective(cfg.train.objective)
            transformer = from_pretrained(transformer_dir, prediction_type=prediction_type)
        except UserError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise UserError(
                f"{transformer_dir}: cannot load the transformer: {str(exc).splitlines()[0]}"
            ) from exc
        if ckpt is not None:
            load_transformer_checkpoint(transformer, ckpt, cfg.model.type)
        _check_text_width(cfg, transformer)
        video_vae = build_vae(cfg.vae, "cpu", torch.float32)
        encoder = build_text_encoder(cfg.text_encoder, "cpu", dt if dt == torch.bfloat16 else torch.float32)
        pipe = cls(transformer, video_vae, encoder, cfg, device=dev, dtype=dt, **kwargs)
        pipe.model_name = "the built-in model" if path is None else str(Path(path).resolve())
        return pipe

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        ckpt: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        **kwargs: Any,
    ) -> TextToVideoPipeline:
        """Build the components a preset names (text encoder and VAE from their paths/hub ids, the
        transformer from ``cfg.model`` and ``ckpt``: an upstream checkpoint or a sorakit model directory).

        Order: VAE (small), transformer + checkpoint (a mismatch fails here), text encoder (largest) last.
        Without ``ckpt`` the transformer keeps its random initialisation (useful for timing only)."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        video_vae = build_vae(cfg.vae, "cpu", torch.float32)
        h, w = cfg.inference.image_size
        latent = video_vae.latent_size(cfg.inference.num_frames, h, w)
        transformer = build_from_config(
            cfg,
            latent,
            caption_channels=peek_output_dim(cfg.text_encoder),
            in_channels=video_vae.latent_channels,
        )
        if ckpt is not None:
            load_transformer_checkpoint(transformer, ckpt, cfg.model.type)
        _check_text_width(cfg, transformer)
        encoder = build_text_encoder(cfg.text_encoder, "cpu", dt if dt == torch.bfloat16 else torch.float32)
        return cls(transformer, video_vae, encoder, cfg, device=dev, dtype=dt, **kwargs)

    # Weight-free checks of a request (see sorakit.pipelines.validate): call before `load`.
    validate = staticmethod(validate)

    @classmethod
    def load(
        cls, source: ModelSource, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
    ) -> TextToVideoPipeline:
        """The pipeline `source` names: a model directory (or the built-in one) or a preset with `ckpt`."""
        if source.kind == "preset":
            pipe = cls.from_config(source.config(), ckpt=source.ckpt, device=device, dtype=dtype)
        else:
            pipe = cls.from_pretrained(
                source.model if source.kind == "model" else None, device=device, dtype=dtype,
                text_encoder=source.text_encoder, vae=source.vae, overrides=source.all_overrides(), ckpt=source.ckpt,
            )  # fmt: skip
        if source.loras:  # their sampler settings are in the config already, under the user's own
            pipe.load_lora(source.loras, sampler=False)
        return pipe

    def load_lora(
        self,
        adapters: str | os.PathLike | list[Any],
        scale: float = 1.0,
        merge: bool = True,
        sampler: bool = True,
    ) -> list[str]:
        """Load LoRA adapter folders (peft format, e.g. from ``sorakit export`` of a LoRA run) onto the
        transformer: one folder, or a list of folders, ``"DIR:SCALE"`` strings or ``(DIR, scale)`` pairs;
        `scale` applies to entries without their own. ``merge`` (default): each ``scale * B @ A`` is added
        into the weights, so sampling costs what it did without the adapter; else the adapters stay separate
        layers. An adapter trained on another base model is refused (UserError naming both), before any is
        applied. A folder's ``vae/`` subfolder (a VAE decoder adapter, ``sorakit.training.vae_lora``) is
        applied to the VAE with the same scale. ``sampler`` (default): a folder's ``sampler.json`` (settings it
        was made for, e.g. a guidance interval) replaces ``config.sampler``'s values, later folders last; the
        arguments of a call still override them. Returns the names the adapters got (``lora0``, ``lora1``, ...)."""
        items = adapters if isinstance(adapters, list) else [adapters]
        pairs = [(str(a[0]), float(a[1])) if isinstance(a, tuple) else parse_lora_arg(str(a)) for a in items]
        pairs = [(d, s * scale) for d, s in pairs]
        settings = [o for d, _ in pairs for o in sampler_overrides(d)] if sampler else []
        # checked on a copy, before any weight changes
        sampler_cfg = apply_overrides(copy.deepcopy(self.config), settings).sampler
        if self._base_fingerprint is None:  # the base before the first adapter changes it
            self._base_fingerprint = base_fingerprint(self.transformer)
        vae_pairs = [(str(sub), s) for d, s in pairs if (sub := vae_adapter(d)) is not None]
        vae_name = f"the VAE of {self.model_name}"
        if vae_pairs:
            if self._vae_fingerprint is None:
                self._vae_fingerprint = base_fingerprint(self.vae.autoencoder)
            # the VAE's bases are checked here, before the transformer changes (apply_adapters checks its own)
            check_adapters(vae_pairs, self._vae_fingerprint, vae_name)
        names = apply_adapters(self.transformer, pairs, self._base_fingerprint, self.model_name, merge=merge,
                               first_index=len(self._loras))  # fmt: skip
        self.transformer.to(self.device, self.dtype)
        if vae_pairs:
            apply_adapters(self.vae.autoencoder, vae_pairs, self._vae_fingerprint, vae_name, merge=merge,
                           first_index=len(self._loras))  # fmt: skip
            self.vae.to(self.vae.device, self.dtype)
        self._loras += [f"{d}:{s!r}" for d, s in pairs]
        self.config.sampler = sampler_cfg
        log.info("LoRA: %s%s", ", ".join(f"{d} (scale {s:g})" for d, s in pairs), " merged" if merge else "")
        if settings:
            log.info("LoRA sampler settings: %s", ", ".join(settings))
        return names

    def load_transformer_checkpoint(self, ckpt: str | os.PathLike) -> None:
        """Load weights (a file, an upstream checkpoint name, a hub id or a model directory) into the
        transformer; a checkpoint that does not fit is a UserError."""
        load_transformer_checkpoint(self.transformer, ckpt, self.config.model.type)

    def save_pretrained(
        self, out_dir: str | os.PathLike, text_encoder_dir: str | os.PathLike | None = None
    ) -> Path:
        """Write this pipeline as a model directory (transformer + VAE weights + config)."""
        return save_model_dir(
            out_dir, self.transformer, self.config, vae=self.vae, text_encoder_dir=text_encoder_dir
        )

    # -- checks -----------------------------------------------------------------------------------

    @property
    def is_class_conditional(self) -> bool:
        return isinstance(self.text_encoder, ClassLabelEncoder)

    def _check_components(self) -> None:
        """The pieces must fit together: latent channels, caption width and length."""
        t = self.transformer
        if getattr(t, "in_channels", self.vae.latent_channels) != self.vae.latent_channels:
            raise UserError(
                f"the transformer takes {t.in_channels} latent channels but the VAE makes {self.vae.latent_channels}"
            )
        if self.is_class_conditional:
            num = getattr(t, "num_classes", None)
            if num is None:
                raise UserError("class labels given but the model is text-conditioned: use a text encoder")
            if num != self.text_encoder.num_classes:
                raise UserError(
                    f"the model has {num} classes but the labels are for {self.text_encoder.num_classes}"
                )
            return
        width = getattr(t, "caption_channels", None)
        if width is not None and width != self.text_encoder.output_dim:
            raise UserError(
                f"the text encoder gives {self.text_encoder.output_dim}-d embeddings but the model expects "
                f"{width} (caption_channels): wrong --text-encoder for this model?"
            )
        y_embedding = getattr(getattr(t, "y_embedder", None), "y_embedding", None)
        if y_embedding is not None and y_embedding.shape[0] not in (1, self.text_encoder.model_max_length):
            raise UserError(
                f"the model's null caption has {y_embedding.shape[0]} tokens but the text encoder makes "
                f"{self.text_encoder.model_max_length}: set text_encoder.model_max_length={y_embedding.shape[0]}"
            )

    def check_inputs(
        self,
        prompts: list[str],
        num_frames: int,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        sampler: str,
        output_type: str,
        allow_empty: bool = False,
    ) -> tuple[int, int, int]:
        """Validate everything before any heavy work; returns the latent size ``(T, h, w)``."""
        if not prompts:
            raise UserError("no prompts given")
        if self.is_class_conditional:
            self.text_encoder.labels(prompts)
        elif any(not isinstance(p, str) or not (p.strip() or allow_empty) for p in prompts):
            raise UserError("empty prompt: every prompt must contain text")
        if num_frames < 1:
            raise UserError(f"number of frames must be positive, got {num_frames}")
        if height < 1 or width < 1:
            raise UserError(f"resolution must be positive, got {height}x{width}")
        if num_inference_steps < 1:
            raise UserError(f"number of steps must be positive, got {num_inference_steps}")
        if not 0 <= guidance_scale < float("inf"):  # NaN fails this too
            raise UserError(f"guidance scale must be a finite number >= 0, got {guidance_scale}")
        sampler_name(sampler)  # a UserError naming the valid samplers
        if output_type not in OUTPUT_TYPES:
            raise UserError(f"unknown output_type '{output_type}' (valid: {', '.join(OUTPUT_TYPES)})")
        latent = self.vae.latent_size(num_frames, height, width)
        patch = tuple(getattr(self.transformer, "patch_size", (1, 1, 1)))
        f = self.vae.downsample_factor
        if any(s % p for s, p in zip(latent, patch)):
            raise UserError(
                f"{num_frames} frames at {height}x{width} cannot be split into the model's patches: frames must be "
                f"a multiple of {patch[0]} and height/width multiples of {f * patch[1]}x{f * patch[2]}"
            )
        return latent

    # -- generation -------------------------------------------------------------------------------

    def encoded_prompt(self, prompt: str) -> str:
        """The text the encoder tokenises for `prompt` (T5: the cleaned caption)."""
        preprocess = getattr(self.text_encoder, "preprocess", None)
        return preprocess([prompt])[0] if preprocess is not None else prompt

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(caption ``[B, 1, L, C]`` or labels ``[B]``, mask ``[B, L]`` or None, null caption/labels),
        on the pipeline's device. The text encoder goes back to the CPU afterwards when offloading."""
        encoder = self.text_encoder
        with self.on_device(encoder, self.offload_text_encoder):
            y, mask = encoder.encode(prompts)
        n = len(prompts)
        if self.is_class_conditional:
            y_null = encoder.null(n)
        else:
            y_null = null_caption(self.transformer, n)
        y, y_null = y.to(self.device), y_null.to(self.device)
        if y.is_floating_point():
            y, y_null = y.to(self.dtype), y_null.to(self.dtype)
        return y, (None if mask is None else mask.to(self.device)), y_null

    @contextlib.contextmanager
    def on_device(self, module: nn.Module, offload: bool | None = None) -> Iterator[nn.Module]:
        """`module` on the pipeline's device for the block, then back on the CPU when offloading (`offload`:
        default ``self.offload``); without offloading it stays where it is."""
        offload = self.offload if offload is None else offload
        if offload:
            module.to(self.device)
        try:
            yield module
        finally:
            if offload:
                module.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # give the freed blocks back before the next module arrives

    def _denoiser(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, **kw: Any
    ):
        """The transformer (compiled with ``compile``) in the pipeline's dtype, returning float32 for the
        sampler's arithmetic (`kw`: the samplers' `x_mask` of reference frames)."""
        model = self.transformer
        if self.compile:
            if self._compiled is None:
                self._compiled = torch.compile(self.transformer)
            model = self._compiled
        return model(x.to(self.dtype), t, y, mask=mask, **kw).float()

    @torch.no_grad()
    def prepare_references(
        self,
        reference: Any,
        mask_strategy: str | None,
        num_frames: int,
        height: int,
        width: int,
        condition_frames: int = 4,
        loop: int = 1,
    ) -> Any:
        """References (paths, PIL images, uint8 arrays or loaded `Reference`s) -> a `ConditionBuilder` holding
        their VAE latents (posterior mean), or None for plain text-to-video. Checks everything first."""
        refs = load_references(reference, height, width)
        plan = plan_references(refs, mask_strategy, num_frames, condition_frames, loop)
        if plan is None:
            return None
        if "x_mask" not in inspect.signature(self.transformer.forward).parameters:
            raise UserError(f"reference frames need an STDiT model, not {type(self.transformer).__name__}")
        with self.on_device(self.vae):
            latents = [self.vae.encode(r.frames[None].to(self.device, self.dtype), sample=False)[0].float()
                       for r in refs]  # fmt: skip
        return ConditionBuilder(plan, latents)

    def _generator(
        self, profile: parity.ParityProfile | None, generator: torch.Generator | None, seed: int | None
    ) -> torch.Generator | None:
        """The generator of this call: ``generator``, else a CPU one seeded with ``seed`` (default
        ``inference.seed``). Under a parity profile: None (the global RNG), reseeded only when ``seed`` is
        given, so that consecutive calls continue one stream as the original's batches did."""
        if profile is not None:
            if seed is not None:
                parity.seed_everything(int(seed))
            return None
        if generator is None:
            generator = torch.Generator("cpu").manual_seed(
                self.config.inference.seed if seed is None else int(seed)
            )
        return generator

    def _starting_noise(
        self, shape: tuple[int, ...], generator: torch.Generator | None, profile: parity.ParityProfile | None
    ) -> torch.Tensor:
        """``z`` float32 ``[B, C, T, h, w]``: drawn on the generator's device (a CPU generator gives the same
        numbers on every accelerator), or under a parity profile from the device's global generator."""
        if profile is not None:
            return parity.initial_noise(shape, self.device)
        return randn(shape, generator=generator, device=self.device, dtype=torch.float32)

    def _denoise(
        self,
        prompts: list[str],
        shape: tuple[int, ...],
        solver: Any,
        generator: torch.Generator | None,
        scale: float,
        how: tuple[str, str, Any, Any, Any, CacheSpec | None],
        condition: Any,
        progress: bool,
        horizon: float | None = None,
    ) -> torch.Tensor:
        """Latents `shape` `[B, C, T, h, w]` for `prompts`: captions, starting noise, the sampler's steps.
        `how` = (sampler name, the model's prediction type, parity profile or None, step callback or None,
        guidance interval or None, step cache setting or None). `horizon`: the frames this segment's motion is
        planned for (a model with a horizon embedding; None: the segment's own length)."""
        cfg = self.config
        sampler, prediction, profile, report, interval, cache = how
        # 1. prompts -> caption embeddings (and the null caption for guidance)
        y, mask, y_null = self.encode_prompt(prompts)

        # 2. starting noise
        z = self._starting_noise(shape, generator, profile)

        # 3. denoise: guided model function, then the sampler's steps (reference frames held by the sampler)
        channels = cfg.sampler.guidance_channels if profile is None else profile.guided_channels.get(sampler)
        # step caching: a fresh cache for every sampling run, one model call per sampler step
        step_cache = (
            {} if cache is None else {"step_cache": StepCache(cache.threshold, total_calls=solver.num_steps)}
        )
        self.last_step_caches += list(step_cache.values())
        denoiser = self._denoiser
        if horizon is not None and getattr(self.transformer, "h_embedder", None) is not None:
            denoiser = horizon_guided(self._denoiser, horizon, cfg.sampler.horizon_guidance)
        model_fn = guidance_model_fn(
            denoiser,
            y,
            y_null,
            scale,
            mask=mask,
            guided_channels=channels,
            interval=interval,
            **step_cache,
        )
        if prediction == "flow" and sampler != "rflow":
            model_fn = velocity_as_eps(
                model_fn, cfg.sampler.num_timesteps, sampler=solver
            )  # DDPM samplers on a flow model
        noise_kw = parity.sampler_kwargs(sampler, z) if profile is not None else {}
        model_fn = model_fn if report is None else _report_calls(model_fn, solver.num_steps, report)
        with self.on_device(self.transformer):
            latents = solver.sample(
                model_fn, z, generator=generator, progress=progress, condition=condition, **noise_kw
            )
        for c in step_cache.values():
            log.info("step cache %s: the blocks ran at %d of %d steps", cache, c.computed, c.calls)
        return latents

    def _video_size(
        self, num_frames: int | None, height: int | None, width: int | None
    ) -> tuple[int, int, int]:
        """(frames, height, width) of a call, each None taken from the ``inference`` settings."""
        inference = self.config.inference
        return (
            inference.num_frames if num_frames is None else int(num_frames),
            inference.image_size[0] if height is None else int(height),
            inference.image_size[1] if width is None else int(width),
        )

    def _build_sampler(self, sampler: str, steps: int, prediction: str, shape: tuple[int, int, int]) -> Any:
        """The sampler `sampler` with `steps` steps for a model predicting `prediction` (rflow: flow only);
        `shape` (frames, height, width in pixels) sets rflow's resolution-aware shift when the config has it."""
        if sampler == "rflow" and prediction != "flow":
            raise UserError(
                f"the rflow sampler needs a model trained with rectified flow; this one predicts"
                f" {prediction!r}: choose iddpm, ddim or dpm-solver"
            )
        extra = rflow_options(self.config.sampler, shape[1], shape[2], shape[0]) if sampler == "rflow" else {}
        return build_sampler(sampler, steps, num_timesteps=self.config.sampler.num_timesteps, **extra)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        sampler: str | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        output_type: str = "np",
        progress: bool = True,
        callback: Callable[[int, int], None] | None = None,
        reference: Any = None,
        mask_strategy: str | None = None,
        condition_frames: int = 4,
        loop: int = 1,
        guidance_interval: tuple[float, float] | None = None,
        vae_batch: int | None = None,
        cache: str | CacheSpec | None = None,
    ) -> Any:
        """Generate one video per prompt.

        Args:
            prompt: a prompt or a list of prompts (class indices as strings for class-conditional models).
            num_frames, height, width: video size (defaults: the model's ``inference`` settings).
            num_inference_steps, guidance_scale, sampler: defaults from the ``sampler`` settings.
            generator: a torch.Generator for the starting noise and the sampler's noise; when None one is
                made on the CPU from ``seed`` (default ``inference.seed``). Under ``inference.parity`` the
                global RNG is used instead (see :mod:`sorakit.parity`).
            output_type: "np" -> numpy uint8 ``[B, T, H, W, 3]``; "pt" -> torch uint8 ``[B, T, H, W, 3]``;
                "latent" -> the sampled latents ``[B, C, T, h, w]`` (float32).
            progress: show a progress bar over the sampling steps.
            callback: ``callback(done, total)`` after each sampler step; an exception raised in it stops sampling.
            reference: reference image(s) / video(s) (paths, PIL images, uint8 arrays), shared by every prompt.
            mask_strategy: where they go (`loop,ref_idx,ref_start,target_start,length,edit_ratio;...`, see
                docs/masks.md); None = an image conditions frame 0, a video the first `condition_frames` frames.
            condition_frames, loop: K of the default strategy; `loop` segments of `num_frames`, each after the
                first starting with the previous one's last K frames: loop * num_frames - (loop - 1) * K frames
                in all. Prompts may be per segment (`|0|first text|2|from segment 2 on`).
            guidance_interval: ``(lo, hi)`` model timesteps (0..num_timesteps) where guidance applies; the other
                steps run the conditional rows only. Default ``sampler.guidance_interval`` (None: every step).
            vae_batch: frames decoded at once (less memory, same frames); default ``vae.micro_batch_size``.
            cache: step caching ``"teacache[:THRESHOLD]"`` or ``"none"`` (STDiT; :mod:`sorakit.diffusion.step_cache`);
                default ``sampler.cache``. ``last_step_caches`` then holds each sampling run's cache.
        """
        cfg = self.config
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        num_frames, height, width = self._video_size(num_frames, height, width)
        steps = cfg.sampler.num_sampling_steps if num_inference_steps is None else int(num_inference_steps)
        scale = cfg.sampler.guidance_scale if guidance_scale is None else float(guidance_scale)
        interval, cache = self._check_speed_options(guidance_interval, vae_batch, cache)
        sampler = sampler_name(sampler or cfg.sampler.type)
        profile = parity.get_profile(cfg.inference.parity)  # None: sorakit's own defaults
        latent_size = self.check_inputs(
            prompts, num_frames, height, width, steps, scale, sampler, output_type, profile is not None
        )
        generator = self._generator(profile, generator, seed)

        prediction = getattr(self.transformer, "prediction_type", "epsilon")
        solver = self._build_sampler(sampler, steps, prediction, (num_frames, height, width))
        refs = self.prepare_references(reference, mask_strategy, num_frames, height, width, condition_frames, loop)  # fmt: skip
        shape = (len(prompts), self.vae.latent_channels, *latent_size)
        texts = [split_loop_prompt(p, loop) for p in prompts]  # [prompt][segment]
        segments, self.last_step_caches = [], []
        for seg in range(loop):  # one segment unless looping: each later one starts with the last one's end
            condition = refs.condition(seg, shape, self.device) if refs is not None else None
            report = None if callback is None else _segment_callback(callback, seg, steps, loop)
            segments.append(self._denoise([t[seg] for t in texts], shape, solver, generator, scale,
                                          (sampler, prediction, profile, report, interval, cache), condition, progress,
                                          self._loop_horizon(num_frames, condition_frames, loop, seg)))  # fmt: skip
            if seg + 1 < loop:
                refs.add_segment(segments[-1], seg + 1)
        latents = join_segments(segments, condition_frames)
        if output_type == "latent":
            return latents
        frames = self.decode_latents(latents, vae_batch, profile)
        return frames if output_type == "pt" else frames.numpy()

    def _loop_horizon(self, num_frames: int, condition_frames: int, loop: int, segment: int) -> float:
        """The frames segment `segment` of a `loop`-segment video is planned for: the frames left from its start
        (``loop * T - (loop - 1) * K`` for the first), times ``sampler.horizon_margin`` in a loop; a video of
        one segment: its own `num_frames`."""
        left = (loop - segment) * (num_frames - condition_frames) + condition_frames
        return float(left) if loop == 1 else left * float(self.config.sampler.horizon_margin)

    def _check_speed_options(
        self,
        guidance_interval: tuple[float, float] | None,
        vae_batch: int | None,
        cache: str | CacheSpec | None,
    ) -> tuple[tuple[float, float] | None, CacheSpec | None]:
        """The guidance interval (default ``sampler.guidance_interval``) and step cache setting (default
        ``sampler.cache``; only STDiT models have one) of a call, all checked."""
        if vae_batch is not None and int(vae_batch) < 1:
            raise UserError(f"the VAE batch must be positive, got {vae_batch}")
        interval = self.config.sampler.guidance_interval if guidance_interval is None else guidance_interval
        spec = (
            cache
            if isinstance(cache, CacheSpec)
            else check_cache(self.config.sampler.cache if cache is None else cache)
        )
        if spec is not None and "step_cache" not in inspect.signature(self.transformer.forward).parameters:
            raise UserError(f"step caching needs an STDiT model, not {type(self.transformer).__name__}")
        return check_guidance_interval(interval), spec

    @torch.no_grad()
    def decode_latents(
        self, latents: torch.Tensor, vae_batch: int | None = None, profile: parity.ParityProfile | None = None
    ) -> torch.Tensor:
        """Latents ``[B, C, T, h, w]`` -> uint8 ``[B, T, H, W, 3]`` on the CPU, decoded `vae_batch` frames at a
        time (default ``vae.micro_batch_size``; with offloading the VAE visits the accelerator for it)."""
        per_call = {} if vae_batch is None else {"micro_batch_size": vae_batch}  # else decode(z) as before
        with self.on_device(self.vae):
            video = self.vae.decode(latents.to(self.dtype), **per_call)
        return (to_uint8 if profile is None else parity.to_uint8)(video).cpu()


def _segment_callback(
    callback: Callable[[int, int], None], segment: int, steps: int, loop: int
) -> Callable[[int, int], None]:
    """A segment's `callback(done, steps)` as the whole loop's `callback(segment * steps + done, loop * steps)`."""
    return lambda done, _total: callback(segment * steps + done, loop * steps)


def _report_calls(model_fn: Callable[..., torch.Tensor], total: int, callback: Callable[[int, int], None]):
    """``model_fn`` that reports ``callback(calls so far, total)`` after each call (every sampler makes
    one guided model call per step, so this counts steps; capped at ``total``)."""
    done = 0

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        nonlocal done
        out = model_fn(*args, **kwargs)
        done += 1
        callback(min(done, total), total)
        return out

    return counted
