"""Local paths or Hugging Face hub ids for weights: resolve either to a local file or directory.

A name that exists on disk is used as it is. Otherwise a name shaped like a hub id
(``owner/repo`` for a directory, ``owner/repo/file.pth`` for one file, or one of the known upstream
checkpoint names in :data:`KNOWN_CHECKPOINTS` such as ``OpenSora-v1-HQ-16x256x256.pth``) is looked up
in the huggingface_hub cache and downloaded there on first use. Offline (or with ``HF_HUB_OFFLINE=1``)
a missing download is a one-line :class:`UserError` telling what to download and which flag takes it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

from sorakit.errors import UserError

# Upstream checkpoint file names Open-Sora 1.0 accepted for --ckpt-path -> (hub repo, file in the repo)
# or a plain URL for weights that live outside the hub.
KNOWN_CHECKPOINTS: dict[str, tuple[str, str] | str] = {
    "OpenSora-v1-16x256x256.pth": ("hpcai-tech/Open-Sora", "OpenSora-v1-16x256x256.pth"),
    "OpenSora-v1-HQ-16x256x256.pth": ("hpcai-tech/Open-Sora", "OpenSora-v1-HQ-16x256x256.pth"),
    "OpenSora-v1-HQ-16x512x512.pth": ("hpcai-tech/Open-Sora", "OpenSora-v1-HQ-16x512x512.pth"),
    "PixArt-XL-2-256x256.pth": ("PixArt-alpha/PixArt-alpha", "PixArt-XL-2-256x256.pth"),
    "PixArt-XL-2-SAM-256x256.pth": ("PixArt-alpha/PixArt-alpha", "PixArt-XL-2-SAM-256x256.pth"),
    "PixArt-XL-2-512x512.pth": ("PixArt-alpha/PixArt-alpha", "PixArt-XL-2-512x512.pth"),
    "PixArt-XL-2-1024-MS.pth": ("PixArt-alpha/PixArt-alpha", "PixArt-XL-2-1024-MS.pth"),
    "Latte-XL-2-256x256-ucf101.pt": ("maxin-cn/Latte", "ucf101.pt"),
    "DiT-XL-2-256x256.pt": "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt",
    "DiT-XL-2-512x512.pt": "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-512x512.pt",
}

# Short names of the components Open-Sora 1.0 uses -> their hub repositories.
KNOWN_COMPONENTS: dict[str, str] = {
    "t5-v1_1-xxl": "DeepFloyd/t5-v1_1-xxl",
    "sd-vae-ft-ema": "stabilityai/sd-vae-ft-ema",
    "sd-vae-ft-mse": "stabilityai/sd-vae-ft-mse",
    "clip-vit-base-patch32": "openai/clip-vit-base-patch32",
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_HUB_FILE = re.compile(r"^([A-Za-z0-9][\w.\-]*/[\w.\-]+)/(.+\.(?:pt|pth|bin|safetensors|ckpt))$")


def names_local_path(name: str) -> bool:
    """True when `name` can only mean a local path: not ``owner/repo``, not ``owner/repo/file.pt``, not a
    known upstream checkpoint name, not ``builtin:...`` (those are fetched when loading)."""
    return not (
        _HUB_ID.match(name)
        or _HUB_FILE.match(name)
        or name in KNOWN_CHECKPOINTS
        or name.startswith("builtin:")
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@functools.lru_cache(maxsize=4)
def _reachable(endpoint: str) -> bool:
    """Whether a TCP connection to the hub's host opens within 3 s (answered once per process).

    Without this check an unreachable hub costs ~25 s of huggingface_hub's retries and ten lines of
    warnings before the one-line error. Behind a proxy the hub's host is not dialled directly, so the
    check is skipped there."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=3):
            return True
    except OSError:
        return False


def _unavailable() -> str | None:
    """Why the hub cannot be used right now, or None when a download may be tried."""
    if _offline():
        return "offline (HF_HUB_OFFLINE is set)"
    if not _reachable(_endpoint()):
        return f"the hub ({urlsplit(_endpoint()).hostname}) is unreachable"
    return None


@contextlib.contextmanager
def _quiet_hub():
    """huggingface_hub's retry warnings off for the duration: a failure ends in sorakit's own one line."""
    logger = logging.getLogger("huggingface_hub")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _download_error(name: str, what: str, flag: str, exc: Exception) -> UserError:
    reason = _unavailable() or f"download failed ({type(exc).__name__})"
    return UserError(
        f"{what} '{name}' is not on disk and {reason}: run `huggingface-cli download {name} --local-dir DIR` "
        f"on a connected machine and pass {flag} DIR"
    )


def download_hint(name: str) -> str:
    """For a missing local path named like a known component or checkpoint (``./t5-v1_1-xxl``,
    ``PixArt-XL-2-512x512.pth``): what to download into it, as a sentence fragment; else ''."""
    base = Path(str(name).rstrip("/")).name
    if base in KNOWN_COMPONENTS:
        repo = KNOWN_COMPONENTS[base]
        return f" (download it: `huggingface-cli download {repo} --local-dir {name}`)"
    known = KNOWN_CHECKPOINTS.get(base)
    if isinstance(known, str):
        return f" (download it from {known})"
    if known is not None:
        return f" (download it: `huggingface-cli download {known[0]} {known[1]} --local-dir DIR`)"
    return ""


def resolve_dir(name: str | os.PathLike, what: str = "model", flag: str = "--model") -> Path:
    """A local directory, or a hub repository id fetched into the hub cache (weights and configs only).

    Raises :class:`UserError` (one line) when it is neither on disk nor obtainable.
    """
    path = Path(os.path.expanduser(str(name)))
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{what}: expected a directory, got a file: {name}")
    text = KNOWN_COMPONENTS.get(str(name), str(name))
    if not _HUB_ID.match(text):
        raise UserError(f"{what}: no such directory: {name}")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*tokenizer*"]
    try:
        return Path(snapshot_download(text, allow_patterns=patterns + ["*.bin"], local_files_only=True))
    except Exception:
        pass
    if _unavailable():
        raise _download_error(text, what, flag, RuntimeError("unavailable"))
    try:
        from huggingface_hub import list_repo_files

        with _quiet_hub():
            # weights as safetensors when the repository has them, else its PyTorch .bin files
            if not any(f.endswith(".safetensors") for f in list_repo_files(text)):
                patterns.append("*.bin")
            return Path(snapshot_download(text, allow_patterns=patterns))
    except Exception as exc:
        raise _download_error(text, what, flag, exc) from exc


def resolve_file(name: str | os.PathLike, what: str = "checkpoint", flag: str = "--ckpt") -> Path:
    """A local file, a known upstream checkpoint name, or ``owner/repo/path/file.pth`` on the hub.

    Raises :class:`UserError` (one line) when it is neither on disk nor obtainable.
    """
    path = Path(os.path.expanduser(str(name)))
    if path.is_file():
        return path
    if path.is_dir():
        return path  # a sorakit model directory; the caller decides
    text = str(name)
    known = KNOWN_CHECKPOINTS.get(Path(text).name) if text == Path(text).name else None
    if isinstance(known, str):
        raise UserError(f"{what} '{text}' is not on disk: download {known} and pass {flag} PATH")
    if known is not None:
        repo, filename = known
    else:
        match = _HUB_FILE.match(text)
        if not match:
            raise UserError(f"{what}: no such file: {name}")
        repo, filename = match.group(1), match.group(2)
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, local_files_only=True))
    except Exception:
        pass
    reason = _unavailable()
    if reason:
        raise _file_error(text, repo, filename, what, flag, reason)
    try:
        with _quiet_hub():
            return Path(hf_hub_download(repo, filename))
    except Exception as exc:
        raise _file_error(
            text, repo, filename, what, flag, f"download failed ({type(exc).__name__})"
        ) from exc


def _file_error(name: str, repo: str, filename: str, what: str, flag: str, reason: str) -> UserError:
    return UserError(
        f"{what} '{name}' is not on disk and {reason}: run `huggingface-cli download {repo} {filename} "
        f"--local-dir DIR` on a connected machine and pass {flag} DIR/{filename}"
    )
