"""Loading the speech LM's inference export (``maata.checkpoint.save_model(..., kind="lm")``).

    save_model(out / "lm.safetensors", lm, lm.cfg, kind="lm")   # what training/lm_trainer.py writes
    lm = load_lm(out / "lm.safetensors")                          # eval mode, float32, on ``device``

Mirrors :func:`maata.checkpoint.load_codec`: the LMConfig travels as JSON in the safetensors
header, so one file rebuilds the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from maata import config as cfglib
from maata.checkpoint import load_weights, read_metadata
from maata.lm.model import LM, LMConfig


def lm_config_from_dict(data: dict[str, Any]) -> LMConfig:
    return cfglib.from_dict(LMConfig, data).validate()


def read_lm_config(path: str | Path) -> LMConfig:
    """The LMConfig stored in an LM export (no weights are read)."""
    meta = read_metadata(path)
    if meta.get("kind") != "lm":
        raise ValueError(f"{path} is not an LM checkpoint (kind={meta.get('kind')!r})")
    return lm_config_from_dict(json.loads(meta["config"]))


def load_lm(path: str | Path, device: str | torch.device = "cpu") -> LM:
    """Rebuild an :class:`maata.lm.LM` from an export, ready for inference (eval mode, float32)."""
    cfg = read_lm_config(path)
    lm = LM(cfg)
    expected = lm.state_dict()
    weights = load_weights(path)
    # the export also holds non-persistent buffers (index offsets the model rebuilds itself)
    persistent = {k: v for k, v in weights.items() if k in expected}
    extra = sorted(set(weights) - set(expected) - {n for n, _ in lm.named_buffers()})
    if extra:
        raise ValueError(f"{path}: unexpected tensors for this LM config: {extra[:5]}")
    sd = {k: v.float() if v.is_floating_point() else v for k, v in persistent.items()}
    lm.load_state_dict(sd, strict=True)
    return lm.to(device).eval()
