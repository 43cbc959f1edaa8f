"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a folder ``<run>/checkpoints/step_<00000123>/`` holding

* ``<name>.safetensors`` for each module (codec, discriminator): the full training state dict
  (weight-norm parametrisations and quantizer buffers included), not the inference export;
* ``state.pt``: optimisers, LR schedulers, step, data position (epoch and batches consumed in
  it), every rank's RNG states (python, numpy, torch, CUDA), the loss history and the config —
  only plain tensors, numbers, strings, lists and dicts, so it loads with
  ``torch.load(weights_only=True)`` (no pickled code).

The folder is written under a temporary name and renamed into place, so a crash mid-write never
leaves a half checkpoint that ``latest()`` would pick. The newest ``keep_last`` are kept.
Restoring the RNG states and data position makes a resumed CPU run bit-identical to one that
never stopped (tests/test_codec_training.py checks it).
"""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

STATE_FILE = "state.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


# -- RNG ------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """This process's RNG states as plain tensors and numbers."""
    version, mt, gauss = random.getstate()
    np_name, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_name, "key": torch.from_numpy(np_key.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (validation, plotting) without disturbing the training RNG streams."""
    saved = capture_rng()
    try:
        yield
    finally:
        restore_rng(saved)


# -- folders --------------------------------------------------------------------------------
def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, folder), oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / STATE_FILE).exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


# -- save / load ----------------------------------------------------------------------------
def _module_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save(run_dir: str | Path, step: int, modules: Mapping[str, nn.Module], state: Mapping[str, Any],
         keep_last: int = 3) -> Path:
    """Write checkpoint ``step`` atomically and prune all but the newest ``keep_last``."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, module in modules.items():
        save_file(_module_tensors(module), str(tmp / f"{name}.safetensors"), metadata={"step": str(step)})
    torch.save(dict(state, step=step), tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    tmp.replace(final)
    _prune(run_dir, keep_last)
    return final


def _prune(run_dir: str | Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for _, path in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def load_weights(path: str | Path, modules: Mapping[str, nn.Module], device: torch.device | str = "cpu") -> Path:
    """Load module weights (strictly) from checkpoint folder ``path``, nothing else (evaluating a
    checkpoint needs no optimiser state). Returns the folder."""
    path = Path(path)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"not a training checkpoint (no {STATE_FILE}): {path}")
    for name, module in modules.items():
        module.load_state_dict(load_file(str(path / f"{name}.safetensors"), device=str(device)), strict=True)
    return path


def load(path: str | Path, modules: Mapping[str, nn.Module], device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load module weights from checkpoint folder ``path`` (strictly) and return its state dict."""
    path = load_weights(path, modules, device)
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
