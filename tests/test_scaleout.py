"""Scale-out of long-lived calls: one gateway, two generation replicas behind one multi-address target.

Real processes and real gRPC on loopback: a session service and a codec service (this process, tiny
untrained models), two generation services (separate processes, so one can be SIGKILLed), and a
gateway whose generation target is ``ipv4:127.0.0.1:A,127.0.0.1:B`` with round_robin (what
``dns:///`` a headless Service resolves to in Kubernetes). Partner calls (the real client, paced in
real time) spread across both replicas; killing one mid-call ends its calls UNAVAILABLE, the client
resumes them, the gateway's channel puts them on the surviving replica, which continues each from
the session store: every frame that was stored before the kill is still there, unchanged, at the
start of the final history, and every call ends OK.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from services.gateway.auth import ApiKey, hash_key
from services.serve import BackgroundStack, load_config

ROOT = Path(__file__).resolve().parents[1]
KEY = "mk_scaleout_test_key"
CALLS, CALL_SECONDS = 4, 4.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _live_calls(metrics_port: int) -> int:
    """The generation process's live Converse streams, from its Prometheus /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    m = re.search(r'^maata_live_calls\{rpc="Converse",service="generation"\} (\S+)$', text, re.M)
    return int(float(m.group(1))) if m else 0


def _generation(port: int, metrics_port: int, session_port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MAATA_SERVE__GENERATION__SERVER__PORT": str(port),
           "MAATA_SERVE__GENERATION__SERVER__METRICS_PORT": str(metrics_port),
           "MAATA_SERVE__SESSION__SERVER__PORT": str(session_port)}
    return subprocess.Popen([sys.executable, "-m", "maata.cli", "serve", "--role", "generation", "--untrained"],
                            env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _wait_serving(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 180) -> None:
    from services.probe import check_health

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if asyncio.run(check_health(f"127.0.0.1:{port}", timeout_s=1.0)) == "SERVING":
                return
        except Exception:  # not listening yet
            pass
        time.sleep(0.2)
    raise TimeoutError(f"generation on {port} did not start:\n{log.read_text()[-3000:]}")


class Deployment:
    """Session + codec (this process), two generation processes, a gateway over both."""

    def __init__(self, tmp: Path, lb_policy: str = "round_robin", replicas: int = 2) -> None:
        base = {"gateway": {"server": {"port": 0}}, "codec": {"server": {"port": 0}},
                "session": {"server": {"port": 0}}}
        self.session = BackgroundStack(load_config(environ={}, **base), "session")
        session_port = self.session.stack.ports["session"]
        self.codec = BackgroundStack(load_config(environ={}, **base), "codec", untrained=True)
        self.ports = [_free_port() for _ in range(replicas)]
        self.metrics = [_free_port() for _ in range(replicas)]
        self.logs = [tmp / f"generation{i}.log" for i in range(replicas)]
        self.procs = [_generation(p, m, session_port, log) for p, m, log in zip(self.ports, self.metrics, self.logs)]
        for port, proc, log in zip(self.ports, self.procs, self.logs):
            _wait_serving(port, proc, log)
        target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in self.ports)
        gateway = {"server": {"port": 0}, "codec": f"127.0.0.1:{self.codec.stack.ports['codec']}",
                   "generation": target, "session_store": f"127.0.0.1:{session_port}", "lb_policy": lb_policy,
                   "auth": {"keys": [{"id": "scale", "sha256": hash_key(KEY), "max_calls": 16}]},
                   "max_calls": 16, "webrtc": {"enabled": False}}
        self.gateway = BackgroundStack(load_config(environ={}, **{**base, "gateway": gateway}), "gateway")
        self.address = f"127.0.0.1:{self.gateway.stack.ports['gateway']}"
        self.store_address = f"127.0.0.1:{session_port}"

    def stop(self) -> None:
        for stack in (self.gateway, self.codec, self.session):
            stack.stop()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def deployment(tmp_path: Path):
    d = Deployment(tmp_path)
    try:
        yield d
    finally:
        d.stop()


async def _stored(store_address: str, store_id: str) -> list[bytes]:
    from services.session.client import open_store

    store = open_store(store_address)
    try:
        return [frame.SerializeToString() async for frame in store.read(store_id)]
    finally:
        await store.close()


def test_calls_spread_and_resume_on_the_surviving_replica(deployment: Deployment) -> None:
    from services.client import converse

    rate = 16000
    rng = np.random.default_rng(0)
    audio = [0.1 * rng.standard_normal(int(CALL_SECONDS * rate)).astype(np.float32) for _ in range(CALLS)]
    ids = [f"scale{i}" for i in range(CALLS)]

    async def scenario() -> tuple[list, list[int], dict[str, list[bytes]]]:
        calls = [asyncio.create_task(converse(deployment.address, KEY, a, rate, call_id=cid, retries=5))
                 for a, cid in zip(audio, ids)]
        await asyncio.sleep(1.2)
        spread = [await asyncio.to_thread(_live_calls, m) for m in deployment.metrics]
        await asyncio.sleep(0.8)  # let the generation services flush some history (every 25 frames)
        before = {cid: await _stored(deployment.store_address, f"scale:{cid}") for cid in ids}
        deployment.procs[0].send_signal(signal.SIGKILL)  # replica A dies mid-call, nothing flushed on its way out
        results = await asyncio.gather(*calls)
        return results, spread, before

    results, spread, before = asyncio.run(scenario())
    assert sorted(spread) == [CALLS // 2, CALLS // 2], f"calls per replica while both were up: {spread}"
    assert all(r.code.name == "OK" for r in results), [(r.code.name, r.details) for r in results]
    resumed = [r for r in results if r.resumes]
    assert len(resumed) == spread[0], f"the calls of the killed replica resumed: {[r.resumes for r in results]}"
    for result in results:
        after = asyncio.run(_stored(deployment.store_address, f"scale:{result.call_id}"))
        kept = before[result.call_id]
        assert kept, "history was stored before the kill"
        assert after[:len(kept)] == kept, f"{result.call_id}: a stored frame was lost or changed"
        assert len(after) > len(kept), f"{result.call_id}: the call went on after the kill"
        # the client holds one agent frame per step, with no gap
        seqs = sorted(result.frames)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert _live_calls(deployment.metrics[1]) == 0  # every call ended on the survivor too


def test_balancing_settings_are_checked() -> None:
    from services.common.config import ServerConfig
    from services.common.server import server_options
    from services.gateway.config import GatewayConfig

    with pytest.raises(ValueError, match="lb_policy must be one of"):
        GatewayConfig(lb_policy="random")
    with pytest.raises(ValueError, match="max_connection_age_s must be >= 0"):
        ServerConfig(max_connection_age_s=-1)
    options = dict(server_options(ServerConfig(max_connection_age_s=300)))
    assert options["grpc.max_connection_age_ms"] == 300_000
    assert options["grpc.max_connection_age_grace_ms"] == 86_400_000  # calls are not cut by the age limit
    assert "grpc.max_connection_age_ms" not in dict(server_options(ServerConfig()))


def test_scaleout_bench_measures_the_hop() -> None:
    """bench/scaleout.py's wire measurement runs end to end against real echo servers."""
    import importlib.util

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("scaleout_bench", ROOT / "bench" / "scaleout.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        result = bench.echo_bench(frames=100, rounds=1)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert set(result["runs"]) == {"pick_first", "round_robin", "round_robin_2"}
    for runs in result["runs"].values():
        assert 0 < runs[0]["p50"] <= runs[0]["p99"]
    assert np.isfinite(result["overhead_ms_p50"])
