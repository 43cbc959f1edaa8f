"""Two-process DDP training on CPU for the trainers' replica tests (tests/test_ddp.py, the codec;
tests/test_lm_training.py, the LM): a test module run under ``torchrun`` (gloo), where each
rank trains and dumps its replica, and the digest of a module's weights that shows training
moved them."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
RANKS = 2


def run_two_ranks(script: str | Path, data: Path, out: Path, timeout: float = 240) -> list[dict[str, Any]]:
    """Run ``script data out`` as two CPU processes under ``python -m torch.distributed.run``
    (this tree first on PYTHONPATH, one thread each); fails with the processes' output when the
    run fails. Returns what each rank saved with ``dump_rank``, by rank."""
    from services.session.redis_server import free_port  # (the ranks need none of the services)

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(RANKS),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), str(data), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [torch.load(Path(out) / f"rank{r}.pt", weights_only=True) for r in range(RANKS)]


def dump_rank(out: str | Path, rank: int, **dump: Any) -> None:
    """One rank's dump (tensors, numbers, strings) for ``run_two_ranks`` to return."""
    torch.save(dump, Path(out) / f"rank{rank}.pt")


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``module`` (as float32 bytes, in state-dict order)."""
    h = hashlib.sha256()
    for v in module.state_dict().values():
        h.update(v.detach().float().numpy().tobytes())
    return h.hexdigest()


__all__ = ["dump_rank", "run_two_ranks", "weights_digest"]
