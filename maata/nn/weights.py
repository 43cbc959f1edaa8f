"""A digest of model weights: whether two models (or a model and what a dataset was made with)
hold the same numbers."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch


def weights_digest(tensors: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> str:
    """A 16-hex SHA-256 digest of named tensors (in name order; floating ones cast to ``dtype``
    first when given): equal weights give equal digests, whatever device or module order."""
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        h.update(name.encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


__all__ = ["weights_digest"]
