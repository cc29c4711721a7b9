"""Import Open-Sora v1.0's own STDiT (hpcaitech/Open-Sora, tag v1.0.0) on a CPU-only machine, for side-by-side
benchmarks against sorakit's. The upstream source is not part of this repository: `load_upstream_stdit(DIR)`
reads it from a git directory (a clone or a bare mirror: the files are read at `ref` with `git show`, whatever is
checked out; nothing is written) or from a plain copy of the v1.0 source tree (DIR/opensora/...).

Only two upstream files are executed, unchanged: `opensora/models/layers/blocks.py` and
`opensora/models/stdit/stdit.py` (plus `opensora/acceleration/checkpoint.py`, pure torch). Everything else they
import is replaced, only while they are imported, by the small stand-ins below:

- `xformers.ops.memory_efficient_attention` with `fmha.BlockDiagonalMask` (upstream's cross-attention; its
  captions are packed `[1, sum(y_lens), H, K]`, only valid tokens): one `F.scaled_dot_product_attention` per
  sample on that sample's N image tokens and its own y_lens[b] caption tokens, without any mask. That is what
  the xformers kernel computes (it skips the blocks outside the diagonal and never sees padding), so upstream
  is charged neither for padding nor for a dense `[B*N, sum(y_lens)]` mask. Scale head_dim^-0.5, dropout 0.
- timm `Mlp` (fc1 -> act -> fc2, same parameter names) and `DropPath` (drop_path is 0 in the benchmarks);
- mmengine's `Registry` (`opensora.registry.MODELS`): a name -> class table;
- sequence-parallel communication and `load_checkpoint`: raise if called (not used on one device).

Upstream's self-attention is its own code (q*scale @ k^T, float32 softmax, cast back, @ v), run as written:
`enable_flashattn=False` is its only CPU path.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

UPSTREAM_REF = "v1.0.0"
_FILES = {
    "opensora.acceleration.checkpoint": "opensora/acceleration/checkpoint.py",
    "opensora.models.layers.blocks": "opensora/models/layers/blocks.py",
    "opensora.models.stdit.stdit": "opensora/models/stdit/stdit.py",
}
HOW_TO_GET = (
    "git clone https://github.com/hpcaitech/Open-Sora /tmp/Open-Sora, then pass --upstream /tmp/Open-Sora "
    "(files are read from git at v1.0.0; a bare clone works too)"
)


class UpstreamMissing(RuntimeError):
    """The upstream source could not be found at the given path."""


# ------------------------------------------------------------------------------------------------ stand-ins


class BlockDiagonalMask:
    """xformers' `fmha.BlockDiagonalMask`: query block b (q_seqlen[b] rows) sees only key block b."""

    def __init__(self, q_seqlen: list[int], kv_seqlen: list[int]) -> None:
        self.q_seqlen, self.kv_seqlen = list(q_seqlen), list(kv_seqlen)

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None) -> BlockDiagonalMask:
        return cls(q_seqlen, q_seqlen if kv_seqlen is None else kv_seqlen)


def memory_efficient_attention(q, k, v, attn_bias=None, p: float = 0.0, scale=None):
    """xformers layout: q `[1, Mq, H, K]`, k/v `[1, Mk, H, K]` -> `[1, Mq, H, K]` (contiguous)."""
    if p != 0.0:
        raise NotImplementedError("attention dropout is 0 in Open-Sora 1.0")
    if attn_bias is None:
        q_lens, kv_lens = [q.shape[1]], [k.shape[1]]
    else:
        q_lens, kv_lens = attn_bias.q_seqlen, attn_bias.kv_seqlen
    outs = []
    for qb, kb, vb in zip(q.split(q_lens, 1), k.split(kv_lens, 1), v.split(kv_lens, 1)):
        o = F.scaled_dot_product_attention(
            qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2), scale=scale
        )
        outs.append(o.transpose(1, 2))
    return torch.cat(outs, dim=1)


class Mlp(nn.Module):
    """timm's `Mlp` as Open-Sora 1.0 builds it (no norm, dropout 0): fc1 -> act -> fc2."""

    def __init__(
        self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0, **_
    ):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class DropPath(nn.Module):
    """timm's `DropPath` (stochastic depth per sample)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)


class Registry:
    """mmengine's `Registry`, reduced to the decorator upstream uses."""

    def __init__(self, name: str = "") -> None:
        self.name, self.table = name, {}

    def register_module(self, name=None, force=False, module=None):
        def register(obj):
            self.table[name or obj.__name__] = obj
            return obj

        return register


def _unavailable(what: str):
    def fn(*args, **kwargs):
        raise NotImplementedError(f"{what} is not available in the upstream benchmark stand-ins")

    return fn


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__path__ = []  # lets submodules be looked up under it
    return mod


def _stand_ins() -> dict[str, types.ModuleType]:
    fmha = _module("xformers.ops.fmha", BlockDiagonalMask=BlockDiagonalMask)
    ops = _module("xformers.ops", fmha=fmha, memory_efficient_attention=memory_efficient_attention)
    vit = _module("timm.models.vision_transformer", Mlp=Mlp)
    layers = _module("timm.models.layers", DropPath=DropPath)
    comm = _module(
        "opensora.acceleration.communications",
        all_to_all=_unavailable("all_to_all"),
        split_forward_gather_backward=_unavailable("split_forward_gather_backward"),
        gather_forward_split_backward=_unavailable("gather_forward_split_backward"),
    )
    states = _module(
        "opensora.acceleration.parallel_states",
        get_sequence_parallel_group=_unavailable("sequence parallelism"),
    )
    return {
        "xformers": _module("xformers", ops=ops),
        "xformers.ops": ops,
        "xformers.ops.fmha": fmha,
        "timm": _module("timm"),
        "timm.models": _module("timm.models", layers=layers, vision_transformer=vit),
        "timm.models.layers": layers,
        "timm.models.vision_transformer": vit,
        "opensora": _module("opensora"),
        "opensora.acceleration": _module("opensora.acceleration"),
        "opensora.acceleration.communications": comm,
        "opensora.acceleration.parallel_states": states,
        "opensora.registry": _module("opensora.registry", MODELS=Registry("model")),
        "opensora.utils": _module("opensora.utils"),
        "opensora.utils.ckpt_utils": _module(
            "opensora.utils.ckpt_utils", load_checkpoint=_unavailable("load")
        ),
        "opensora.models": _module("opensora.models"),
        "opensora.models.layers": _module("opensora.models.layers"),
        "opensora.models.stdit": _module("opensora.models.stdit"),
    }


@contextlib.contextmanager
def _patched_modules(mods: dict[str, types.ModuleType]):
    """Put `mods` into sys.modules for the duration, then restore whatever was there (the upstream modules keep
    their references to the stand-ins; nothing else in the process sees them)."""
    saved = {name: sys.modules.get(name) for name in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


# ------------------------------------------------------------------------------------------------ loading


def upstream_sources(path: str | Path, ref: str = UPSTREAM_REF) -> dict[str, str]:
    """Module name -> source text of the upstream files, from a checkout or (at `ref`) a git directory."""
    root = Path(path)
    git_dir = _git_dir(root)
    if git_dir is None:  # a plain copy of the source tree: taken as it is
        if not all((root / rel).is_file() for rel in _FILES.values()):
            raise UpstreamMissing(f"{root} is neither an Open-Sora v1.0 source tree nor a git repository")
        return {name: (root / rel).read_text() for name, rel in _FILES.items()}
    out = {}
    for name, rel in _FILES.items():  # from git at `ref`, whatever the work tree has checked out
        res = subprocess.run(
            ["git", "--git-dir", str(git_dir), "show", f"{ref}:{rel}"], capture_output=True, text=True
        )
        if res.returncode != 0:
            raise UpstreamMissing(f"{rel} not found in {root} at {ref}: {res.stderr.strip()}")
        out[name] = res.stdout
    return out


def _git_dir(root: Path) -> Path | None:
    if (root / ".git").exists():
        return root / ".git"
    if (root / "HEAD").is_file() and (root / "objects").is_dir():
        return root  # bare repository
    return None


def load_upstream_stdit(path: str | Path, ref: str = UPSTREAM_REF) -> type[nn.Module]:
    """Upstream's `STDiT` class, executed from its own source with the stand-ins above."""
    sources = upstream_sources(path, ref)
    mods = _stand_ins()
    for name in sources:
        mods[name] = _module(name)
        mods[name].__file__ = f"<Open-Sora {ref}>/{_FILES[name]}"
    with _patched_modules(mods):
        for name, src in sources.items():  # in dependency order
            exec(compile(src, mods[name].__file__, "exec"), mods[name].__dict__)
    return mods["opensora.models.stdit.stdit"].STDiT
