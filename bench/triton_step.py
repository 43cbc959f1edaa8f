#!/usr/bin/env python
"""The S2S step on Triton against the in-process batched step, per frame tick.

    python bench/triton_step.py [--calls 1,4,16] [--ticks 50] [--delays-us 0,2000] [--json out/bench/triton_step.json]

For each number of live calls N: N calls step in lockstep for ``--ticks`` frames, as the
generation service's frame clock drives them. In process: ONE batched ``lm.step`` per tick
(``GenerationEngine.tick``, our own batch = N). On Triton: N concurrent ``s2s_step`` requests per
tick (``TritonLMBackend``'s traffic), on a real tritonserver whose sequence batcher forms the
batches; the mean batch it formed comes from its :8002 metrics (inferences / executions). One
server per ``--delays-us`` value (the direct strategy's ``max_queue_delay_microseconds``, with
``minimum_slot_utilization`` = N / slots so that a batch runs as soon as all N are in). The two
run interleaved per N (in process, then Triton), one torch thread each. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maata.lm.checkpoint import load_lm  # noqa: E402
from maata.served import SERVED_CODEC, SERVED_LM  # noqa: E402
from services.generation.engine import CallSpec, GenerationEngine  # noqa: E402
from services.triton.client import TritonModels, new_sequence_id  # noqa: E402
from services.triton.export import ExportConfig, export_repository  # noqa: E402
from services.triton.launcher import TritonServer, batch_stats  # noqa: E402

CODEC = ROOT / SERVED_CODEC
LM = ROOT / SERVED_LM
SLOTS = 16


def pct(v: list[float], q: float) -> float:
    return float(np.percentile(v, q)) if v else float("nan")


def inprocess(lm, n: int, ticks: int, frames: np.ndarray) -> list[float]:
    engine = GenerationEngine(lm, n, silence_codes=[0] * lm.n_q)
    calls = [engine.join(CallSpec(f"c{i}", 100 + i, voice="female_1")) for i in range(n)]
    times = []
    for t in range(ticks):
        for i, call in enumerate(calls):
            engine.push(call, frames[i, t].tolist(), t)
        start = time.perf_counter()
        engine.tick()
        times.append((time.perf_counter() - start) * 1000)
    return times


async def on_triton(server: TritonServer, lm, n: int, ticks: int, frames: np.ndarray) -> tuple[list[float], dict]:
    models = TritonModels(server.grpc_url, timeout_s=30.0)
    ids = [new_sequence_id() for _ in range(n)]
    before = batch_stats(server.metrics(), "s2s_step")
    times = []
    for t in range(ticks):
        start = time.perf_counter()
        kw = [dict(start=True, seed=100 + i, temperature=1.0, top_k=250, voice="female_1", emotion="NEUTRAL")
              if t == 0 else {} for i in range(n)]
        await asyncio.gather(*(models.s2s_step(ids[i], frames[i, t].tolist(), **kw[i]) for i in range(n)))
        times.append((time.perf_counter() - start) * 1000)
    after = batch_stats(server.metrics(), "s2s_step")
    await asyncio.gather(*(models.end("s2s", i) for i in ids))
    await models.close()
    inf, ex = (after[k] - before[k] for k in ("inferences", "executions"))
    return times, {"mean_batch": inf / ex if ex else float("nan"), "executions": ex, "inferences": inf}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", default="1,4,16")
    p.add_argument("--ticks", type=int, default=50)
    p.add_argument("--delays-us", default="0,2000")
    p.add_argument("--json", type=Path, default=ROOT / "out" / "bench" / "triton_step.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    lm = load_lm(LM)
    calls = [int(x) for x in args.calls.split(",")]
    rng = np.random.default_rng(0)
    frames = rng.integers(0, lm.card, (max(calls), args.ticks, lm.n_q))
    rows = []
    for delay in (int(x) for x in args.delays_us.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            ns = [n for n in calls if n > 1 or delay == 0]  # a delay cannot gather a batch of one
            for n in ns:
                export_repository(Path(tmp) / f"repo{n}", CODEC, LM,
                                  ExportConfig(slots=SLOTS, threads=1, batch_delay_us=delay,
                                               min_slot_utilization=n / SLOTS if delay else 0.0))
            for n in ns:
                print(f"bench/triton_step: delay {delay} us, {n} calls", file=sys.stderr)
                with TritonServer(Path(tmp) / f"repo{n}") as server:
                    asyncio.run(on_triton(server, lm, n, 5, frames))  # warm-up
                    local = inprocess(lm, n, args.ticks, frames)
                    remote, stats = asyncio.run(on_triton(server, lm, n, args.ticks, frames))
                rows.append({"calls": n, "delay_us": delay, "inproc_p50": pct(local, 50), "inproc_p99": pct(local, 99),
                             "triton_p50": pct(remote, 50), "triton_p99": pct(remote, 99), **stats,
                             "load_1m": os.getloadavg()[0]})
    from rich.console import Console
    from rich.table import Table

    t = Table(title="S2S step per tick, ms (p50 / p99): in process (one batched lm.step) vs Triton (one request per "
                    f"call; sequence batcher), demo LM, 1 thread each, load {os.getloadavg()[0]:.1f}")
    for name in ("calls", "batch delay", "in process", "Triton", "overhead p50", "ratio p50", "Triton's mean batch",
                 "ours"):
        t.add_column(name, justify="right")
    for r in rows:
        t.add_row(str(r["calls"]), f"{r['delay_us']} us", f"{r['inproc_p50']:.1f} / {r['inproc_p99']:.1f}",
                  f"{r['triton_p50']:.1f} / {r['triton_p99']:.1f}", f"{r['triton_p50'] - r['inproc_p50']:+.1f}",
                  f"x{r['triton_p50'] / r['inproc_p50']:.2f}", f"{r['mean_batch']:.2f}", str(r["calls"]))
    Console(width=160).print(t)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "ticks": args.ticks}, indent=2))
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
