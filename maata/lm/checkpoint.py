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
    """An LMConfig from its JSON form. A config written before the user-transcript head existed
    (no ``text.user_stream``) describes a model without one, so it loads with ``False``."""
    data = dict(data)
    text = dict(data.get("text") or {})
    text.setdefault("user_stream", False)
    data["text"] = text
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
    # the export also holds non-persistent buffers (index offsets the model rebuilds itself)
    rebuilt = {n for n, _ in lm.named_buffers()} - set(lm.state_dict())
    sd = {k: v.float() if v.is_floating_point() else v for k, v in load_weights(path).items() if k not in rebuilt}
    try:  # strict, after the modules' load hooks have renamed keys saved under earlier layouts
        lm.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit this LM config: {' '.join(str(e).split())[:400]}") from e
    return lm.to(device).eval()
