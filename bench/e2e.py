#!/usr/bin/env python
"""End-to-end latency and capacity of a Maata call through the real services on loopback.

    python bench/e2e.py [--quick] [--minutes 10] [--max-calls 8] [--target microservices|one_process]
                        [--json out/bench/e2e.json] [--untrained] [--no-triton]

Runs the services as real processes (``maata serve``) and drives calls through the partner API
from this process with ``services.client.converse`` (40 ms chunks of 16 kHz PCM16 in real time,
per-frame server timings on):

1. **Per-frame latency breakdown**, p50 / p99 (ms), for one live call, in four deployments:
   *microservices* (session, codec, generation and gateway each ``maata serve --role ...``, the
   gateway calling codec and generation over loopback gRPC), *one process* (``maata serve``: the
   gateway calling the engines in process, the default) and *one process, loopback*
   (``maata serve --loopback``), and the baseline *one process, fixed phase* (the generation
   clock's ``PhaseAligner`` off: the tick's phase is left to chance). Columns follow a frame:
   client -> gateway -> codec encode -> generation (the wait for the frame clock's tick + the
   batched step) -> codec decode -> client. "client<->gateway" is the client's round trip minus
   the gateway's total (both network legs and the client's own work). The difference (ms) and
   ratio of the microservices' and the one process's round trips are the microservice overhead
   (below 1: the split processes win).
2. **Real-time capacity** (``--target``, default microservices): 1, 2, 4, 8 ... concurrent live
   calls for a few seconds each (every level up to ``--max-calls``, unless over half the frames
   missed), to see where frames miss the 40 ms deadline. A user frame misses it
   when a stage of its work took longer than one 40 ms frame: codec encode, the batched model
   step, codec decode, or its wait at the generation service beyond one extra tick (generation
   minus step over 80 ms: the frame clock fell behind real time) -- or when it was never
   answered (dropped from a full queue). A level passes with at most 1 % of frames missed; the
   capacity is the largest level that passes with every level below it.
2b. **Triton** (unless ``--no-triton``): the same one-process deployment with the codec and the S2S
   step on a real ``tritonserver`` (``maata triton export`` of the same checkpoints, one python-
   backend instance per model, 1 torch thread each like the services; ``maata serve
   --model-backend triton``): its latency row beside in-process, the overhead in ms and as a ratio
   (one process on Triton / one process in process), and both deployments' capacity ramps; at
   each level, the mean batch Triton's sequence batcher formed for ``s2s_step`` (from its
   :8002 metrics: inferences / executions) against our own batched step (every live call).
3. **Long call** (``--target``): one live call for ``--minutes`` (``--quick``: 30 s); the p99
   round trip of its last minute against its first (``--quick``: the last 10 s against the first
   10 s), which shows drift (growing queues, state, memory).

Models: the served pair (:mod:`maata.served`) when
present, else ``--untrained`` tiny random models (said in the table title and the JSON). The
machine is shared: the JSON records the load average; timings move with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maata.served import SERVED_CODEC, SERVED_LM  # noqa: E402
from services.client import FrameLatency, converse  # noqa: E402
from services.gateway.auth import hash_key, new_key  # noqa: E402
from services.session.redis_server import free_port  # noqa: E402

FRAME_MS = 40.0  # the frame, and every stage's deadline
MISS_BUDGET = 0.01
RATE = 16000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs (a ~2 minute smoke; the long call is 30 s)")
    p.add_argument("--minutes", type=float, default=10.0, help="the long call's length (default 10)")
    p.add_argument("--max-calls", type=int, default=8, help="the ramp's last level (default 8)")
    p.add_argument("--untrained", action="store_true", help="tiny random models even if checkpoints exist")
    p.add_argument("--target", choices=["microservices", "one_process"], default="microservices",
                   help="the deployment the ramp and the long call run on (default: microservices)")
    p.add_argument("--json", type=Path, default=ROOT / "out" / "bench" / "e2e.json", help="write the results here")
    p.add_argument("--deployments", default="",
                   help="comma-separated subset of the latency rows to run (e.g. one_process,one_process_triton: "
                        "the Triton comparison alone); default: all")
    p.add_argument("--no-triton", dest="triton", action="store_false",
                   help="skip the Triton deployment (tritonserver from the nvidia-pytriton wheel)")
    return p.parse_args(argv)


# -- the services ---------------------------------------------------------------------------------
def terminate(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM (a service drains), then SIGKILL if it has not exited within ``timeout_s``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Deployment:
    """``maata serve`` processes on free loopback ports, with one API key."""

    def __init__(self, roles: list[str], untrained: bool, key: str, loopback: bool = False,
                 env: dict[str, str] | None = None) -> None:
        self.roles = roles
        self.loopback = loopback
        self.ports = {name: free_port() for name in ("gateway", "codec", "generation", "session")}
        self.env = {**os.environ, "PYTHONPATH": str(ROOT),
                    "MAATA_SERVE__GATEWAY__AUTH__KEYS":
                        f"[{{id: bench, sha256: {hash_key(key)}, max_calls: 64, calls_per_minute: 100000}}]",
                    "MAATA_SERVE__GATEWAY__MAX_CALLS": "64", "MAATA_SERVE__GATEWAY__RESERVE_CALLS": "0",  # one tenant: no reserve
                    "MAATA_SERVE__GATEWAY__SERVER__PORT": str(self.ports["gateway"]),
                    "MAATA_SERVE__CODEC__SERVER__PORT": str(self.ports["codec"]),
                    "MAATA_SERVE__GENERATION__SERVER__PORT": str(self.ports["generation"]),
                    "MAATA_SERVE__SESSION__SERVER__PORT": str(self.ports["session"]),
                    "MAATA_SERVE__GENERATION__MAX_CALLS": "64", "MAATA_SERVE__CODEC__MAX_STREAMS": "64",
                    **(env or {})}
        self.untrained = untrained
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports['gateway']}"

    def __enter__(self) -> Deployment:
        for role in self.roles:
            cmd = [sys.executable, "-m", "maata.cli", "serve", "--role", role]
            cmd += (["--untrained"] if self.untrained else []) + (["--loopback"] if self.loopback else [])
            self.processes.append(subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL))
        self._wait_serving(180.0)
        return self

    def _wait_serving(self, timeout: float) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        async def serving() -> bool:
            async with grpc.aio.insecure_channel(self.address) as channel:
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                            timeout=1.0)
                except grpc.aio.AioRpcError:
                    return False
                return reply.status == health_pb2.HealthCheckResponse.SERVING

        deadline = time.monotonic() + timeout
        while not asyncio.run(serving()):
            if any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"a `maata serve` process of {self.roles} exited; run it by hand to see why")
            if time.monotonic() > deadline:
                raise TimeoutError(f"maata serve {self.roles} did not become SERVING in {timeout:.0f} s")
            time.sleep(0.25)

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self.processes):  # gateway first, session last
            terminate(process)


# -- calls ----------------------------------------------------------------------------------------
def speech(seconds: float) -> np.ndarray:
    """A Telugu sentence from espeak-ng, tiled to ``seconds`` (a speech-like signal without it)."""
    import shutil
    import tempfile

    from maata.audio import load_audio, resample

    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "q.wav"
            subprocess.run(["espeak-ng", "-v", "te", "-w", str(path), "మీ పేరు ఏమిటి? నేను బాగున్నాను."], check=True)
            x, rate = load_audio(path)
        x = np.concatenate([resample(x, rate, RATE), np.zeros(RATE // 2, np.float32)])
    else:
        t = np.arange(RATE * 2) / RATE
        x = (0.3 * np.sin(2 * np.pi * 150 * t) * (np.sin(2 * np.pi * 1.5 * t) > 0)).astype(np.float32)
    reps = int(np.ceil(seconds * RATE / len(x)))
    return np.tile(x, reps)[:int(seconds * RATE)]


async def live_calls(address: str, key: str, n: int, seconds: float) -> list[Any]:
    audio = speech(seconds)
    results = await asyncio.gather(*(converse(address, key, audio, RATE, timing=True, retries=0) for _ in range(n)))
    return list(results)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def breakdown(latencies: list[FrameLatency]) -> dict[str, dict[str, float]]:
    columns = {
        "client_rtt": [x.client_ms for x in latencies],
        "client_gateway": [x.client_ms - x.server_ms for x in latencies],
        "encode": [x.encode_ms for x in latencies],
        "generate": [x.generate_ms for x in latencies],
        "step": [x.step_ms for x in latencies],
        "decode": [x.decode_ms for x in latencies],
        "server_total": [x.server_ms for x in latencies],
    }
    return {k: {"p50": pct(v, 50), "p99": pct(v, 99), "mean": float(np.mean(v)) if v else float("nan")}
            for k, v in columns.items()}


def missed(x: FrameLatency) -> bool:
    """A stage of the frame took longer than one frame (see the module docstring)."""
    return (x.encode_ms > FRAME_MS or x.step_ms > FRAME_MS or x.decode_ms > FRAME_MS
            or x.generate_ms - x.step_ms > 2 * FRAME_MS)


def misses(result: Any, seconds: float) -> tuple[int, int]:
    """(user frames sent, frames that missed the deadline or were never answered)."""
    sent = int(np.ceil(result.sent_samples / (RATE * FRAME_MS / 1000)))
    on_time = {x.user_seq for x in result.latencies if not missed(x)}
    return sent, sent - len(on_time)


# -- the runs -------------------------------------------------------------------------------------
async def run_latency(address: str, key: str, seconds: float) -> dict[str, Any]:
    await live_calls(address, key, 1, 2.0)  # warm-up
    (result,) = await live_calls(address, key, 1, seconds)
    sent, missed = misses(result, seconds)
    return {"status": result.code.name, "frames": len(result.latencies), "sent": sent, "missed": missed,
            "breakdown": breakdown(result.latencies)}


async def run_ramp(address: str, key: str, seconds: float, max_calls: int, triton: Any = None) -> dict[str, Any]:
    """The capacity ramp; with ``triton`` (a running TritonServer), each level also records the
    mean batch Triton formed for s2s_step during it."""
    from services.triton.launcher import batch_stats

    levels: list[dict[str, Any]] = []
    n = 1
    capacity = 0
    while n <= max_calls:
        before = batch_stats(triton.metrics(), "s2s_step") if triton is not None else None
        results = await live_calls(address, key, n, seconds)
        sent = missed = 0
        for r in results:
            s, m = misses(r, seconds)
            sent, missed = sent + s, missed + m
        rtts = [x.client_ms for r in results for x in r.latencies]
        level = {"calls": n, "sent": sent, "missed": missed, "miss_rate": missed / max(sent, 1),
                 "p50": pct(rtts, 50), "p99": pct(rtts, 99),
                 "statuses": sorted({r.code.name for r in results})}
        level["ok"] = level["miss_rate"] <= MISS_BUDGET and level["statuses"] == ["OK"]
        if before is not None:
            after = batch_stats(triton.metrics(), "s2s_step")
            inferences, executions = (after[k] - before[k] for k in ("inferences", "executions"))
            level["triton_batch"] = inferences / executions if executions else float("nan")
        levels.append(level)
        if level["ok"] and capacity == n // 2:
            capacity = n
        if level["miss_rate"] > 0.5:  # far past the limit: more calls only miss more
            break
        n *= 2
    return {"levels": levels, "capacity": capacity, "deadline_ms": FRAME_MS, "miss_budget": MISS_BUDGET}


async def run_long(address: str, key: str, seconds: float, window: float) -> dict[str, Any]:
    (result,) = await live_calls(address, key, 1, seconds)
    lat = result.latencies
    end = max((x.at for x in lat), default=0.0)
    first = [x.client_ms for x in lat if x.at <= window]
    last = [x.client_ms for x in lat if x.at >= end - window]
    sent, missed = misses(result, seconds)
    return {"seconds": seconds, "window_s": window, "status": result.code.name, "sent": sent, "missed": missed,
            "first": {"p50": pct(first, 50), "p99": pct(first, 99), "frames": len(first)},
            "last": {"p50": pct(last, 50), "p99": pct(last, 99), "frames": len(last)},
            "p99_ratio": pct(last, 99) / pct(first, 99) if first and last else float("nan")}


# -- report ---------------------------------------------------------------------------------------
def report(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    title = (f"Per-frame latency, ms (p50 / p99), one live call: {r['models']} models, "
             f"{r['machine']['cpus']} CPUs, load {r['machine']['load_1m']:.1f}")
    t = Table(title=title)
    t.add_column("deployment")
    cols = [("client_rtt", "client round trip"), ("client_gateway", "client<->gateway"), ("encode", "codec encode"),
            ("generate", "generation (wait+step)"), ("step", "model step"), ("decode", "codec decode"),
            ("server_total", "gateway total")]
    for _, name in cols:
        t.add_column(name, justify="right")
    for mode, b in ((m, x["breakdown"]) for m, x in r["latency"].items()):
        t.add_row(mode.replace("_", " "), *(f"{b[k]['p50']:.1f} / {b[k]['p99']:.1f}" for k, _ in cols))
    console.print(t)
    if "overhead" in r:
        console.print(f"microservice overhead: client round trip p50 {r['overhead']['p50_ms']:+.1f} ms, "
                      f"x{r['overhead']['p50_ratio']:.2f}, p99 x{r['overhead']['p99_ratio']:.2f} "
                      "(microservices / one process)")
    if "triton_overhead" in r:
        o = r["triton_overhead"]
        console.print(f"Triton overhead: client round trip p50 {o['p50_ms']:+.1f} ms (x{o['p50_ratio']:.2f}), "
                      f"p99 {o['p99_ms']:+.1f} ms (x{o['p99_ratio']:.2f}) (one process on Triton / in process)")
        t = Table(title="Capacity, one process: in process vs Triton (mean s2s_step batch Triton formed vs ours)")
        for name in ("calls", "in-process miss rate", "rtt p50 / p99", "our batch", "Triton miss rate",
                     "rtt p50 / p99", "Triton batch"):
            t.add_column(name, justify="right")
        for a, b in zip(r["ramp_one_process"]["levels"], r["ramp_triton"]["levels"]):
            t.add_row(str(a["calls"]), f"{a['miss_rate']:.1%}", f"{a['p50']:.1f} / {a['p99']:.1f}", str(a["calls"]),
                      f"{b['miss_rate']:.1%}", f"{b['p50']:.1f} / {b['p99']:.1f}", f"{b.get('triton_batch', 0):.2f}")
        console.print(t)
        console.print(f"capacity: in process {r['ramp_one_process']['capacity']}, Triton {r['ramp_triton']['capacity']}")

    if "ramp" not in r:
        return
    t = Table(title=f"Real-time capacity ({r['target'].replace('_', ' ')}): a stage over {FRAME_MS:.0f} ms or "
                    f"a dropped frame is a miss; <= {MISS_BUDGET:.0%} missed")
    for name in ("calls", "frames sent", "missed", "miss rate", "rtt p50", "rtt p99", "status", "ok"):
        t.add_column(name, justify="right")
    for lv in r["ramp"]["levels"]:
        t.add_row(str(lv["calls"]), str(lv["sent"]), str(lv["missed"]), f"{lv['miss_rate']:.1%}", f"{lv['p50']:.1f}",
                  f"{lv['p99']:.1f}", ",".join(lv["statuses"]), "yes" if lv["ok"] else "NO")
    console.print(t)
    console.print(f"most concurrent real-time calls: {r['ramp']['capacity']}")

    lg = r["long"]
    t = Table(title=f"Long call ({r['target'].replace('_', ' ')}): {lg['seconds']:.0f} s, first vs last "
                    f"{lg['window_s']:.0f} s")
    for name in ("window", "frames", "rtt p50", "rtt p99"):
        t.add_column(name, justify="right")
    for name in ("first", "last"):
        t.add_row(name, str(lg[name]["frames"]), f"{lg[name]['p50']:.1f}", f"{lg[name]['p99']:.1f}")
    console.print(t)
    console.print(f"p99 last / first: x{lg['p99_ratio']:.2f}; missed {lg['missed']} of {lg['sent']} frames")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    have = all((ROOT / p).exists() for p in (SERVED_CODEC, SERVED_LM))
    untrained = args.untrained or not have
    latency_s, ramp_s = (8.0, 4.0) if args.quick else (30.0, 10.0)
    long_s = 30.0 if args.quick else args.minutes * 60.0
    window = 10.0 if args.quick else 60.0
    key = new_key()
    r: dict[str, Any] = {
        "models": "untrained tiny" if untrained else "checkpoint",
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "load_1m": os.getloadavg()[0], "python": platform.python_version()},
        "latency": {},
    }
    r["target"] = args.target
    fixed_phase = {"MAATA_SERVE__GENERATION__ALIGN_PHASE": "false"}  # the baseline: a clock at a chance phase
    deployments = {"microservices": (["session", "codec", "generation", "gateway"], False, None),
                   "one_process": (["all"], False, None), "one_process_loopback": (["all"], True, None),
                   "one_process_fixed_phase": (["all"], False, fixed_phase)}
    triton = None
    if args.triton:
        if untrained:
            raise SystemExit("bench/e2e: the Triton deployment needs the checkpoints (or pass --no-triton)")
        from services.triton.export import ExportConfig, export_repository
        from services.triton.launcher import TritonServer

        repo = args.json.parent / "triton_repo"
        export_repository(repo, ROOT / SERVED_CODEC, ROOT / SERVED_LM, ExportConfig(slots=64, threads=1))
        print("bench/e2e: starting tritonserver", file=sys.stderr)
        triton = TritonServer(repo, log_path=args.json.parent / "tritonserver.log").start()
        on_triton = {f"MAATA_SERVE__{svc}__MODEL_BACKEND__{k}": v for svc in ("CODEC", "GENERATION")
                     for k, v in (("KIND", "triton"), ("TRITON_URL", triton.grpc_url))}
        deployments["one_process_triton"] = (["all"], False, on_triton)
    if args.deployments:
        wanted = set(args.deployments.split(","))
        unknown = wanted - set(deployments)
        if unknown:
            raise SystemExit(f"bench/e2e: unknown deployments {sorted(unknown)}; known: {sorted(deployments)}")
        deployments = {k: v for k, v in deployments.items() if k in wanted}
    try:
        for mode, (roles, loopback, env) in deployments.items():
            print(f"bench/e2e: {mode.replace('_', ' ')} ({r['models']} models)", file=sys.stderr)
            with Deployment(roles, untrained, key, loopback, env) as d:
                r["latency"][mode] = asyncio.run(run_latency(d.address, key, latency_s))
                if mode == args.target:
                    print("bench/e2e: ramp", file=sys.stderr)
                    r["ramp"] = asyncio.run(run_ramp(d.address, key, ramp_s, args.max_calls))
                    print(f"bench/e2e: long call ({long_s:.0f} s)", file=sys.stderr)
                    r["long"] = asyncio.run(run_long(d.address, key, long_s, window))
                if triton is not None and mode in ("one_process", "one_process_triton"):
                    print(f"bench/e2e: ramp ({mode.replace('_', ' ')})", file=sys.stderr)
                    r["ramp_triton" if mode == "one_process_triton" else "ramp_one_process"] = asyncio.run(
                        run_ramp(d.address, key, ramp_s, args.max_calls,
                                 triton if mode == "one_process_triton" else None))
    finally:
        if triton is not None:
            triton.close()
    lat = r["latency"]
    if "microservices" in lat and "one_process" in lat:
        micro, one = (lat[m]["breakdown"]["client_rtt"] for m in ("microservices", "one_process"))
        r["overhead"] = {"p50_ratio": micro["p50"] / one["p50"], "p99_ratio": micro["p99"] / one["p99"],
                         "p50_ms": micro["p50"] - one["p50"]}
    if triton is not None and "one_process_triton" in lat and "one_process" in lat:
        one = lat["one_process"]["breakdown"]["client_rtt"]
        tri = r["latency"]["one_process_triton"]["breakdown"]["client_rtt"]
        r["triton_overhead"] = {"p50_ms": tri["p50"] - one["p50"], "p99_ms": tri["p99"] - one["p99"],
                                "p50_ratio": tri["p50"] / one["p50"], "p99_ratio": tri["p99"] / one["p99"]}
    r["machine"]["load_1m_end"] = os.getloadavg()[0]
    report(r)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(r, indent=2))
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
