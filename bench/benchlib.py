"""What the bench scripts share: the bytes of the tensors a model or a streaming state holds,
and writing a result as JSON. Imported by name (``from benchlib import ...``): a script's own
folder is first on its path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor inside nested lists/tuples/dicts/dataclasses."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(tensor_bytes(o) for o in obj.values())
    if hasattr(obj, "__dataclass_fields__"):
        return sum(tensor_bytes(getattr(obj, f)) for f in obj.__dataclass_fields__)
    return 0


def write_json(path: Path | None, result: Any, announce: bool = True) -> None:
    """``result`` as indented JSON at ``path`` (its folder made first), and with ``announce`` a
    line saying so; nothing without a path."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    if announce:
        print(f"wrote {path}")


__all__ = ["tensor_bytes", "write_json"]
