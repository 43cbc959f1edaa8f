"""Where the tests find the external programs they run (kubectl/helm/kubeconform from
``make k8s-tools``, hadolint and check-jsonschema from the venv's dev extra)."""

from __future__ import annotations

import shutil
from pathlib import Path


def find_program(name: str, first: Path) -> str | None:
    """``first/name`` when it exists (the copy the Makefile installs), else ``name`` on PATH;
    None when there is neither."""
    path = Path(first) / name
    if path.exists():
        return str(path)
    return shutil.which(name)


__all__ = ["find_program"]
