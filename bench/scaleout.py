#!/usr/bin/env python
"""Scale-out: calls spread over generation replicas by the gateway's client-side balancing, and what
that balancing costs per frame.

    python bench/scaleout.py [--seconds 15] [--calls 4] [--rounds 3] [--untrained] [--json out/bench/scaleout.json]

Real processes on loopback (``maata serve --role ...``): a session service, a codec service, two
generation replicas (A, B) and a gateway, restarted for each row with its generation target and
``gateway.lb_policy``. Calls go through the partner API from this process (``services.client``,
16 kHz speech in 40 ms chunks in real time, per-frame server timings on).

* **Balancing overhead**: one call at a time against replica A alone, addressed two ways: a plain
  ``host:port`` target with gRPC's default ``pick_first``, and an ``ipv4:`` multi-address target with
  ``round_robin`` (the policy that spreads calls; here over one address, so the rows differ only in
  the balancing). Interleaved ``--rounds`` times; the overhead is the median over rounds of the
  round_robin row's p50 round trip minus pick_first's (target: <= 1 ms per frame).
* **Balancing overhead on the wire**: the same comparison on one gRPC hop alone, without models or
  frame clock (whose jitter hides sub-millisecond effects on a loaded machine): a bidirectional
  stream to a byte-echo server in another process, one 200-byte message per "frame" (a frame's
  codes and timings are about that size), ``--echo-frames`` per run, interleaved ``--rounds`` times.
* **Spreading**: ``--calls`` concurrent calls against A and B behind one target, round_robin versus
  pick_first; calls per replica are read from each replica's ``maata_live_calls`` gauge mid-call.

Models: the committed checkpoints when present, else ``--untrained`` tiny random models. The
machine is shared (2 cores here): the JSON records the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from e2e import RATE, breakdown, speech, terminate  # noqa: E402
from maata.served import SERVED_CODEC, SERVED_LM  # noqa: E402
from services.client import converse  # noqa: E402
from services.gateway.auth import hash_key, new_key  # noqa: E402
from services.session.redis_server import free_port  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=15.0, help="length of each measured call (default 15)")
    p.add_argument("--calls", type=int, default=4, help="concurrent calls of the spreading rows (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved pick_first/round_robin rounds (default 3)")
    p.add_argument("--echo-frames", type=int, default=2000, help="messages per echo run (default 2000)")
    p.add_argument("--untrained", action="store_true", help="tiny random models even if checkpoints exist")
    p.add_argument("--json", type=Path, default=ROOT / "out" / "bench" / "scaleout.json")
    return p.parse_args(argv)


class Processes:
    """``maata serve --role`` processes: session, codec, generation A and B; a gateway per row."""

    def __init__(self, untrained: bool, key: str) -> None:
        self.untrained = untrained
        self.session, self.codec = free_port(), free_port()
        self.generation = [free_port(), free_port()]
        self.metrics = [free_port(), free_port()]
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                    "MAATA_SERVE__SESSION__SERVER__PORT": str(self.session),
                    "MAATA_SERVE__CODEC__SERVER__PORT": str(self.codec),
                    "MAATA_SERVE__CODEC__MAX_STREAMS": "64", "MAATA_SERVE__GENERATION__MAX_CALLS": "64",
                    "MAATA_SERVE__GATEWAY__AUTH__KEYS":
                        f"[{{id: bench, sha256: {hash_key(key)}, max_calls: 64, calls_per_minute: 100000}}]",
                    "MAATA_SERVE__GATEWAY__MAX_CALLS": "64", "MAATA_SERVE__GATEWAY__RESERVE_CALLS": "0",  # one tenant: no reserve
                    "MAATA_SERVE__GATEWAY__WEBRTC__ENABLED": "false"}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.gateway: subprocess.Popen[bytes] | None = None
        self.gateway_port = 0

    def _spawn(self, role: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "maata.cli", "serve", "--role", role] + (["--untrained"] if self.untrained else [])
        return subprocess.Popen(cmd, cwd=ROOT, env={**self.env, **env}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def start(self) -> None:
        self.procs.append(self._spawn("session", {}))
        self.procs.append(self._spawn("codec", {}))
        for port, metrics in zip(self.generation, self.metrics):
            self.procs.append(self._spawn("generation", {"MAATA_SERVE__GENERATION__SERVER__PORT": str(port),
                                                         "MAATA_SERVE__GENERATION__SERVER__METRICS_PORT": str(metrics)}))
        for port in (self.session, self.codec, *self.generation):
            self._wait(port)

    def start_gateway(self, target: str, lb_policy: str) -> str:
        self.stop_gateway()
        self.gateway_port = free_port()
        self.gateway = self._spawn("gateway", {"MAATA_SERVE__GATEWAY__SERVER__PORT": str(self.gateway_port),
                                               "MAATA_SERVE__GATEWAY__CODEC": f"127.0.0.1:{self.codec}",
                                               "MAATA_SERVE__GATEWAY__GENERATION": target,
                                               "MAATA_SERVE__GATEWAY__LB_POLICY": lb_policy})
        self._wait(self.gateway_port)
        return f"127.0.0.1:{self.gateway_port}"

    def _wait(self, port: int, timeout_s: float = 240.0) -> None:
        from services.probe import check_health

        deadline = time.monotonic() + timeout_s
        while True:
            if any(p.poll() is not None for p in [*self.procs, *([self.gateway] if self.gateway else [])]):
                raise RuntimeError("a `maata serve` process exited; run it by hand to see why")
            try:
                if asyncio.run(check_health(f"127.0.0.1:{port}", timeout_s=1.0)) == "SERVING":
                    return
            except Exception:  # not listening yet
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing SERVING on port {port} after {timeout_s:.0f} s")
            time.sleep(0.25)

    def live_calls(self) -> list[int]:
        out = []
        for port in self.metrics:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            m = re.search(r'^maata_live_calls\{rpc="Converse",service="generation"\} (\S+)$', text, re.M)
            out.append(int(float(m.group(1))) if m else 0)
        return out

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            terminate(self.gateway)
        self.gateway = None

    def stop(self) -> None:
        self.stop_gateway()
        for proc in reversed(self.procs):
            terminate(proc)


async def calls(address: str, key: str, n: int, seconds: float, procs: Processes | None = None) -> dict[str, Any]:
    audio = speech(seconds)
    tasks = [asyncio.create_task(converse(address, key, audio, RATE, timing=True, retries=0)) for _ in range(n)]
    spread = None
    if procs is not None:
        await asyncio.sleep(min(2.0, seconds / 2))
        spread = await asyncio.to_thread(procs.live_calls)
    results = await asyncio.gather(*tasks)
    latencies = [x for r in results for x in r.latencies]
    return {"calls": n, "status": sorted({r.code.name for r in results}), "frames": len(latencies),
            "spread": spread, "breakdown": breakdown(latencies)}


# -- one gRPC hop: per-message round trip with pick_first vs round_robin ---------------------------
ECHO_METHOD = "/maata.bench.Echo/Stream"


async def echo_server(port: int) -> None:
    """A stream-stream byte echo (the server side of the hop), until killed."""
    import grpc

    async def echo(requests, context):  # noqa: ANN001 - grpc's handler signature
        async for message in requests:
            yield message

    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(echo)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("maata.bench.Echo", {"Stream": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def echo_run(target: str, policy: str, frames: int) -> list[float]:
    """Per-message round trips (ms) of one stream opened through a channel with ``policy``."""
    import grpc

    from services.common.config import ServerConfig
    from services.common.server import channel_options
    from services.gateway.backends import RECONNECT_OPTIONS

    options = [*channel_options(ServerConfig()), *RECONNECT_OPTIONS, ("grpc.lb_policy_name", policy)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        await channel.channel_ready()
        call = channel.stream_stream(ECHO_METHOD)(wait_for_ready=True)
        payload = bytes(200)
        out = []
        for _ in range(frames):
            t0 = time.perf_counter()
            await call.write(payload)
            await call.read()
            out.append((time.perf_counter() - t0) * 1000)
        await call.done_writing()
        return out


def echo_bench(frames: int, rounds: int) -> dict[str, Any]:
    ports = [free_port(), free_port()]
    servers = [subprocess.Popen([sys.executable, __file__, "--echo-server", str(p)], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}) for p in ports]
    try:
        time.sleep(2.0)
        runs: dict[str, list[dict[str, float]]] = {"pick_first": [], "round_robin": [], "round_robin_2": []}
        for _ in range(rounds):
            for name, target, policy in (("pick_first", f"127.0.0.1:{ports[0]}", "pick_first"),
                                         ("round_robin", f"ipv4:127.0.0.1:{ports[0]}", "round_robin"),
                                         ("round_robin_2", f"ipv4:127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}",
                                          "round_robin")):
                ms = asyncio.run(echo_run(target, policy, frames))
                runs[name].append({"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))})
    finally:
        for s in servers:
            s.kill()
            s.wait()
    diffs = [rr["p50"] - pf["p50"] for pf, rr in zip(runs["pick_first"], runs["round_robin"])]
    return {"frames": frames, "runs": runs, "overhead_ms_p50_per_round": diffs, "overhead_ms_p50": float(np.median(diffs))}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    untrained = args.untrained or not ((ROOT / SERVED_CODEC).exists() and (ROOT / SERVED_LM).exists())
    key = new_key()
    procs = Processes(untrained, key)
    load = os.getloadavg()[0]
    a, b = procs.generation
    rows: dict[str, list[dict[str, Any]]] = {"pick_first_1": [], "round_robin_1": []}
    try:
        procs.start()
        for _ in range(args.rounds):
            for name, target, policy in (("pick_first_1", f"127.0.0.1:{a}", "pick_first"),
                                         ("round_robin_1", f"ipv4:127.0.0.1:{a}", "round_robin")):
                address = procs.start_gateway(target, policy)
                asyncio.run(calls(address, key, 1, 2.0))  # warm-up
                rows[name].append(asyncio.run(calls(address, key, 1, args.seconds)))
                print(f"{name}: p50 {rows[name][-1]['breakdown']['client_rtt']['p50']:.1f} ms", flush=True)
        spread_rows = {}
        for name, policy in (("round_robin_2", "round_robin"), ("pick_first_2", "pick_first")):
            address = procs.start_gateway(f"ipv4:127.0.0.1:{a},127.0.0.1:{b}", policy)
            asyncio.run(calls(address, key, 1, 2.0))
            spread_rows[name] = asyncio.run(calls(address, key, args.calls, args.seconds, procs))
            print(f"{name}: calls per replica {spread_rows[name]['spread']}", flush=True)
    finally:
        procs.stop()
    diffs = [rr["breakdown"]["client_rtt"]["p50"] - pf["breakdown"]["client_rtt"]["p50"]
             for pf, rr in zip(rows["pick_first_1"], rows["round_robin_1"])]
    echo = echo_bench(args.echo_frames, args.rounds)
    result = {"models": "untrained" if untrained else "checkpoints", "load_avg_1m": load,
              "machine": platform.platform(), "cpus": os.cpu_count(), "seconds": args.seconds,
              "rounds": rows, "spreading": spread_rows, "overhead_ms_p50_per_round": diffs,
              "overhead_ms_p50": float(np.median(diffs)), "echo": echo}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    report(result)
    return 0


def report(r: dict[str, Any]) -> None:
    def med(name: str, col: str, q: str) -> float:
        return float(np.median([x["breakdown"][col][q] for x in r["rounds"][name]]))

    print(f"\nScale-out ({r['models']} models, {r['seconds']:g} s calls, load {r['load_avg_1m']:.2f}; ms p50 / p99)\n")
    print("| gateway -> generation | replicas | calls | calls per replica | client round trip | generation (wait + step) |")
    print("|---|---|---|---|---|---|")
    for name, label in (("pick_first_1", "`host:port`, pick_first"), ("round_robin_1", "`ipv4:` list, round_robin")):
        print(f"| {label} (median of {len(r['rounds'][name])} rounds) | 1 | 1 | 1 | {med(name, 'client_rtt', 'p50'):.1f} / "
              f"{med(name, 'client_rtt', 'p99'):.1f} | {med(name, 'generate', 'p50'):.1f} / {med(name, 'generate', 'p99'):.1f} |")
    for name, label in (("round_robin_2", "`ipv4:` A,B, round_robin"), ("pick_first_2", "`ipv4:` A,B, pick_first")):
        row = r["spreading"][name]
        bd = row["breakdown"]
        print(f"| {label} | 2 | {row['calls']} | {' + '.join(map(str, row['spread']))} | "
              f"{bd['client_rtt']['p50']:.1f} / {bd['client_rtt']['p99']:.1f} | "
              f"{bd['generate']['p50']:.1f} / {bd['generate']['p99']:.1f} |")
    per_round = ", ".join(f"{d:+.2f}" for d in r["overhead_ms_p50_per_round"])
    print(f"\nround_robin overhead per frame, whole call (p50, median of rounds): {r['overhead_ms_p50']:+.2f} ms "
          f"({per_round}); target <= 1 ms")
    echo = r["echo"]
    print(f"\nOne gRPC hop, {echo['frames']} messages per run (ms per message round trip, median of rounds)\n")
    print("| channel | p50 | p99 |")
    print("|---|---|---|")
    for name, label in (("pick_first", "`host:port`, pick_first"), ("round_robin", "`ipv4:` one address, round_robin"),
                        ("round_robin_2", "`ipv4:` two servers, round_robin")):
        p50 = float(np.median([x["p50"] for x in echo["runs"][name]]))
        p99 = float(np.median([x["p99"] for x in echo["runs"][name]]))
        print(f"| {label} | {p50:.3f} | {p99:.3f} |")
    per_round = ", ".join(f"{d:+.3f}" for d in echo["overhead_ms_p50_per_round"])
    print(f"\nround_robin overhead per message (p50, median of rounds): {echo['overhead_ms_p50']:+.3f} ms ({per_round})")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--echo-server":
        asyncio.run(echo_server(int(sys.argv[2])))
    else:
        raise SystemExit(main())
