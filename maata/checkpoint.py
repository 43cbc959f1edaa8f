"""Model weights on disk: safetensors with the model's config (and anything else) as metadata.

One file holds everything needed to rebuild a model: ``save_model(path, model, cfg)`` writes
the weights and the config dataclass as JSON in the safetensors header; ``load_codec(path)``
rebuilds the codec from it. Training state (optimisers, step, RNG) lives elsewhere
(``training/checkpointing.py``); these files are what services and tools load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from maata import config as cfglib


def inference_state_dict(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """State dict with weight norm folded into plain weights (smaller, faster to load)."""
    from torch.nn.utils import parametrize

    sd: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if parametrize.is_parametrized(module):
            for pname in module.parametrizations:
                sd[prefix + pname] = getattr(module, pname).detach()
        for pname, p in module.named_parameters(recurse=False):
            sd[prefix + pname] = p.detach()
        for bname, b in module.named_buffers(recurse=False):
            if bname not in module._non_persistent_buffers_set:  # derived tables (DFT bases) are rebuilt
                sd[prefix + bname] = b.detach()
    out = {}
    for k, v in sd.items():
        if ".parametrizations." in k:
            continue
        v = v.contiguous()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.cpu()
    return out


def save_model(path: str | Path, model: nn.Module, cfg: Any, *, kind: str, metadata: dict[str, Any] | None = None,
               dtype: torch.dtype | None = None) -> Path:
    """Write inference weights + ``cfg`` (a dataclass) to ``path`` (safetensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"kind": kind, "config": json.dumps(cfglib.to_dict(cfg))}
    for k, v in (metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(inference_state_dict(model, dtype), str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def fold_weight_norm(model: nn.Module) -> nn.Module:
    """Replace weight-norm parametrisations by their current weights (inference speed)."""
    from torch.nn.utils import parametrize

    for module in model.modules():
        if parametrize.is_parametrized(module):
            for pname in list(module.parametrizations):
                parametrize.remove_parametrizations(module, pname, leave_parametrized=True)
    return model


def load_codec(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a :class:`maata.codec.Codec` from a checkpoint, ready for inference (eval, folded)."""
    from maata.codec.model import Codec, CodecConfig

    meta = read_metadata(path)
    if meta.get("kind") != "codec":
        raise ValueError(f"{path} is not a codec checkpoint (kind={meta.get('kind')!r})")
    cfg = cfglib.from_dict(CodecConfig, json.loads(meta["config"]))
    codec = fold_weight_norm(Codec(cfg))
    sd = {k: v.float() if v.is_floating_point() else v for k, v in load_weights(path).items()}
    codec.load_state_dict(sd, strict=True)
    return codec.to(device).eval()
