#!/usr/bin/env python
"""Before/after speed of the model code: two revisions side by side, their calls interleaved.

    python bench/ab_speed.py --base REV [--head DIR] [--threads 1] [--reps 60] [--json out.json]

A shared machine's speed drifts by more than most code changes move it, so runs of two
revisions one after the other compare the load, not the code. Here one worker process per
revision (``--base``: a git revision, exported to a temporary folder; ``--head``: a source tree,
default this one) loads the same checkpoints, and the two workers take turns: one call of A,
one of B, the order swapped every round. Each row reports both medians and the median of the
per-round ratios head/base (< 1: head is faster), which cancels drift slower than a round.

Rows: an LM step (serving sampling defaults) at batch 1 and 16, a codec streaming frame
(encode_step + decode_step of 40 ms) at batch 1 and 16, offline codec encode+decode of 4 s,
and an LM teacher-forced forward (batch 4 × 200 frames). Only public model APIs are used, so
any two revisions with the same checkpoints compare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import write_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maata.served import SERVED_CODEC, SERVED_LM  # noqa: E402
ROWS = ("lm_step_b1", "lm_step_b16", "codec_frame_b1", "codec_frame_b16", "codec_offline_4s", "lm_forward_b4_t200")


# -- worker: one revision's models, one call per request -----------------------------------------------
def worker(lm_path: str, codec_path: str, threads: int) -> None:
    import torch

    from maata.checkpoint import load_codec
    from maata.lm.checkpoint import load_lm

    torch.set_num_threads(threads)
    lm, codec = load_lm(lm_path), load_codec(codec_path)
    g = torch.Generator().manual_seed(0)
    calls: dict[str, Any] = {}
    for b in (1, 16):
        state = lm.init_state(b)
        lm.reset(state, torch.ones(b, dtype=torch.bool), seed=1)
        user, active = torch.randint(0, lm.card, (b, lm.n_q), generator=g), torch.ones(b, dtype=torch.bool)
        calls[f"lm_step_b{b}"] = lambda s=state, u=user, a=active: lm.step(s, u, a)
        cs, x = codec.init_state(b), torch.randn(b, codec.hop, generator=g) * 0.1
        calls[f"codec_frame_b{b}"] = lambda s=cs, x=x: codec.decode_step(s, codec.encode_step(s, x))
    wav = torch.randn(1, 1, 4 * codec.cfg.sample_rate, generator=g) * 0.1
    calls["codec_offline_4s"] = lambda: codec.decode(codec.encode(wav))
    codes = torch.randint(0, lm.card, (4, lm.n_q, 200), generator=g)
    text = torch.randint(0, max(lm.text_vocab, 1), (4, 200), generator=g) if lm.text_enabled else None
    calls["lm_forward_b4_t200"] = lambda: lm(codes, codes, text)
    print("ready", flush=True)
    with torch.no_grad():
        for line in sys.stdin:
            name = line.strip()
            if not name:
                break
            t = time.perf_counter()
            calls[name]()
            print(time.perf_counter() - t, flush=True)


# -- coordinator ------------------------------------------------------------------------------------
class Worker:
    def __init__(self, tree: Path, args: argparse.Namespace):
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", "--threads", str(args.threads),
                                      "--lm", str(args.lm), "--codec", str(args.codec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the worker for {tree} did not start (see its errors above)")

    def call(self, name: str) -> float:
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def export(rev: str, dest: Path) -> Path:
    """``rev``'s tracked files (the model library is all a worker needs) into ``dest``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "maata"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def compare(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="maata-ab-") as tmp:
        base_tree = export(args.base, Path(tmp))
        workers = {"base": Worker(base_tree, args), "head": Worker(Path(args.head), args)}
        rows = {}
        try:
            for name in ROWS:
                reps = args.reps if "step" in name or "frame" in name else max(4, args.reps // 8)
                times: dict[str, list[float]] = {"base": [], "head": []}
                for r in range(args.warmup + reps):
                    for side in (("base", "head") if r % 2 == 0 else ("head", "base")):
                        t = workers[side].call(name)
                        if r >= args.warmup:
                            times[side].append(t)
                ratio = statistics.median(h / b for b, h in zip(times["base"], times["head"]))
                rows[name] = {"base_p50_ms": statistics.median(times["base"]) * 1e3,
                              "head_p50_ms": statistics.median(times["head"]) * 1e3,
                              "head_over_base": ratio, "rounds": reps}
                print(f"{name:20s} base {rows[name]['base_p50_ms']:9.2f} ms   head {rows[name]['head_p50_ms']:9.2f} ms"
                      f"   head/base {ratio:.3f}", flush=True)
        finally:
            for w in workers.values():
                w.close()
    return {"base": args.base, "head": str(args.head), "threads": args.threads, "load_avg": os.getloadavg(),
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="HEAD~1", help="git revision to compare against (default HEAD~1)")
    p.add_argument("--head", type=Path, default=ROOT, help="source tree measured against it (default: this one)")
    p.add_argument("--lm", type=Path, default=ROOT / SERVED_LM)
    p.add_argument("--codec", type=Path, default=ROOT / SERVED_CODEC)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--reps", type=int, default=60, help="rounds per per-frame row (offline rows: reps / 8)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(str(args.lm), str(args.codec), args.threads)
        return 0
    result = compare(args)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
