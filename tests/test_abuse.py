"""The abuse suite: the attacks of issue 15 against a real ``maata serve`` process (every service in
one process, tiny untrained models, the partner API over loopback gRPC and the browser front end
over loopback HTTP; the attackers and the honest caller are clients in this test process), each while an honest partner places a call. Every test asserts that the
honest call is admitted (``started``, then OK) and keeps real-time latency: an agent frame for
most of its 40 ms chunks sent in real time, and a median server time per frame of at most twice
the same call's with no attack (measured once per module; at least 40 ms) plus ``REALTIME_MS``
-- a shared CI machine's noise passes, an attack that backs the frame clock up does not.

* quick-call flood: hundreds of connect/hang-up calls from one key (its ended sessions never fill
  the store; its calls per minute are capped), and calls abandoned mid-way (their resumable
  sessions stay within the key's budget);
* fake browser offers with a garbage DTLS fingerprint from 8 source addresses (answered, but no
  slot is taken before audio flows; the connecting pool is capped; each is dropped on its timer);
* over-quota bursts from two keys at once (per-key caps, and the reserve keeps room for a tenant
  with no call);
* slow-loris HTTP on the browser front end (many connections trickling one header);
* many idle gRPC streams (with no message, and admitted calls that then go silent: the idle
  timeout ends them).

Plus the status codes of issue 15: oversized chunks, dropped frames, a client's deadline, call
tokens. Bounded in time and count; loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from maata.audio import float_to_pcm16
from services.client import converse
from services.gateway.auth import ApiKey, Authenticator, hash_key
from services.gateway.tokens import TokenError, TokenVerifier, mint_call_token
from services.session.client import RemoteSessionStore

from maata_protos.v1.conversation_pb2 import AudioFormat, ClientAudio, ClientConfig, ClientEvent, HangUp
from maata_protos.v1.conversation_pb2_grpc import ConversationStub

CODE = grpc.StatusCode
HONEST, FLOOD, LEAVER = "mk_honest-partner", "mk_quick-call-flood", "mk_abandons-calls"
GREEDY, BURST = "mk_greedy-tenant", "mk_second-bursting-tenant"
CAPACITY, RESERVE = 8, 2
REALTIME_MS = 150.0  # an honest call's median server time may be twice the no-attack one plus this
KEPT_UP = 0.6  # share of the honest call's 40 ms chunks that must get an agent frame (live input on a
#                shared CPU drops some frames to stay real-time rather than fall behind)
TIMEOUT = 30.0
ROOT = Path(__file__).resolve().parents[1]


# -- the stack -----------------------------------------------------------------------------------------
KEYS = [{"id": "honest", "sha256": hash_key(HONEST), "max_calls": 2},
        {"id": "flood", "sha256": hash_key(FLOOD), "max_calls": 4, "calls_per_minute": 60, "max_sessions": 3},
        {"id": "leaver", "sha256": hash_key(LEAVER), "max_calls": 4, "max_sessions": 3},
        {"id": "greedy", "sha256": hash_key(GREEDY), "max_calls": 4},
        {"id": "burst", "sha256": hash_key(BURST), "max_calls": 4}]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclasses.dataclass
class Server:
    """A ``maata serve --untrained`` process and its ports."""

    process: subprocess.Popen[bytes]
    ports: dict[str, int]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports['gateway']}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['webrtc']}/"

    def metrics_text(self, service: str = "gateway") -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{self.ports[service + '_metrics']}/metrics",
                                      timeout=10).read().decode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    names = ("gateway", "codec", "generation", "session", "webrtc", "gateway_metrics", "codec_metrics",
             "generation_metrics", "session_metrics")
    ports = dict(zip(names, free_ports(len(names))))

    def server(name: str, **extra: Any) -> dict[str, Any]:
        return {"server": {"port": ports[name], "metrics_port": ports[name + "_metrics"], **extra}}

    config = {
        "threads": 1,
        "session": {**server("session"), "max_sessions": 40, "max_ended_sessions": 20},
        "codec": server("codec"),
        "generation": {**server("generation"), "max_calls": CAPACITY, "idle_timeout_s": 3.0},
        "gateway": {**server("gateway"), "max_calls": CAPACITY, "reserve_calls": RESERVE,
                    "auth": {"keys": KEYS}, "anonymous": {"max_calls": 2},
                    "webrtc": {"port": ports["webrtc"], "max_pending": 6, "connect_timeout_s": 3.0,
                               "offers_per_minute_per_client": 12, "offers_per_minute": 600, "max_calls_per_client": 2,
                               "host_addresses": ["127.0.0.1"]}},
    }
    where = tmp_path_factory.mktemp("abuse")
    (where / "serve.yaml").write_text(yaml.safe_dump(config))
    log = (where / "serve.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MAATA_API_KEY", None)
    process = subprocess.Popen([sys.executable, "-m", "maata.cli", "serve", "--untrained", "--config",
                                str(where / "serve.yaml")], env=env, stdout=log, stderr=subprocess.STDOUT)
    server_ = Server(process, ports)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (where / "serve.log").read_text()[-4000:]
            with contextlib.suppress(OSError):
                urllib.request.urlopen(server_.url + "healthz", timeout=1).read()
                break
            assert time.monotonic() < deadline, "maata serve did not start"
            time.sleep(0.3)
        yield server_
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def address(stack: Server) -> str:
    return stack.address


def metric(stack: Server, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics (0 when absent)."""
    want = {"service": "gateway", **labels}
    for family in text_string_to_metric_families(stack.metrics_text()):
        for sample in family.samples:
            if sample.name == name and sample.labels == want:
                return float(sample.value)
    return 0.0


def store_list(stack: Server, state: str) -> list[Any]:
    async def go() -> list[Any]:
        store = RemoteSessionStore(f"127.0.0.1:{stack.ports['session']}")
        try:
            return await store.list(state)
        finally:
            await store.close()

    return asyncio.run(go())


def speech(seconds: float, rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(7)
    return (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32)


async def honest_call(stack: Server, seconds: float = 2.0) -> tuple[Any, float]:
    """The honest partner's live call (real-time pacing); (result, median server ms per frame)."""
    result = await converse(address(stack), HONEST, speech(seconds), 16000, timing=True, retries=0)
    assert result.code == CODE.OK, (result.code, result.details)
    kinds = [e.WhichOneof("event") for e in result.events]
    assert kinds[0] == "started" and kinds[-1] == "ended", kinds
    chunks = round(seconds * 1000 / 40)
    assert len(result.frames) >= KEPT_UP * chunks, (len(result.frames), chunks)  # the agent kept up in real time
    server = [t.server_ms for t in result.latencies]
    assert len(server) >= KEPT_UP * chunks
    return result, statistics.median(server)


@pytest.fixture(scope="module")
def baseline_ms(stack: Server) -> float:
    """The honest call's median server time per frame with no attack."""
    warm_up = asyncio.run(converse(address(stack), HONEST, speech(1.0), 16000, retries=0))  # the first call of a
    assert warm_up.code == CODE.OK, warm_up.details  # fresh process runs cold (lazy init): not measured
    return asyncio.run(honest_call(stack))[1]


def assert_realtime(median_ms: float, baseline: float) -> None:
    attack = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0]
    print(f"honest call during {attack}: median server time {median_ms:.1f} ms per frame "
          f"(no attack: {baseline:.1f} ms)")  # the README's table (pytest -s)
    assert median_ms <= 2 * max(baseline, 40.0) + REALTIME_MS, (median_ms, baseline)


async def quick_call(target: str | grpc.aio.Channel, key: str, call_id: str = "") -> grpc.StatusCode:
    """Connect (or reuse ``target``'s channel), config, hang up as soon as the call started: the flood's unit."""
    async with contextlib.AsyncExitStack() as stack:
        channel = target if isinstance(target, grpc.aio.Channel) else \
            await stack.enter_async_context(grpc.aio.insecure_channel(target))
        call = ConversationStub(channel).Converse(metadata=(("x-api-key", key),))
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.write(ClientEvent(config=ClientConfig(call_id=call_id, input=AudioFormat(sample_rate=16000))))
            first = await asyncio.wait_for(call.read(), TIMEOUT)
            if first is not grpc.aio.EOF:
                await call.write(ClientEvent(hangup=HangUp()))
                await call.done_writing()
                while await asyncio.wait_for(call.read(), TIMEOUT) is not grpc.aio.EOF:
                    pass
        return await call.code()


async def hold(target: str, key: str, seconds: float) -> grpc.StatusCode:
    """Take a call and hold it for ``seconds`` with keep-alives (no audio: the slot, not the CPU,
    is what a lock-out attack goes for), then hang up."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = ConversationStub(channel).Converse(metadata=(("x-api-key", key),))
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.write(ClientEvent(config=ClientConfig(input=AudioFormat(sample_rate=16000))))
            if await asyncio.wait_for(call.read(), TIMEOUT) is not grpc.aio.EOF:
                for _ in range(int(seconds)):
                    await asyncio.sleep(1.0)
                    await call.write(ClientEvent())
                await call.write(ClientEvent(hangup=HangUp()))
                await call.done_writing()
                while await asyncio.wait_for(call.read(), TIMEOUT) is not grpc.aio.EOF:
                    pass
        return await call.code()


# -- the attacks -----------------------------------------------------------------------------------------
def test_quick_call_flood_cannot_fill_the_store(stack: Server, baseline_ms: float) -> None:
    """300 quick calls from one key (store limit: 40 live sessions; 20 ended kept): before this
    issue's fix the ended sessions filled the store and every other caller was refused."""
    async def main() -> None:
        codes: list[grpc.StatusCode] = []

        async def worker() -> None:
            async with grpc.aio.insecure_channel(address(stack)) as channel:
                for _ in range(75):
                    codes.append(await quick_call(channel, FLOOD))

        async def flood() -> None:
            await asyncio.gather(*(worker() for _ in range(4)))

        t0 = time.monotonic()
        flooding = asyncio.create_task(flood())
        await asyncio.sleep(1.0)
        _, median = await honest_call(stack)
        await flooding
        elapsed = time.monotonic() - t0
        assert_realtime(median, baseline_ms)
        ok, limited = codes.count(CODE.OK), codes.count(CODE.RESOURCE_EXHAUSTED)
        assert ok >= 6 and limited >= 200 and ok + limited == len(codes), (ok, limited, set(codes))
        # the key's calls per minute (60: a burst of 6, then 1 a second) capped the flood; refusals are counted
        assert ok <= 6 + elapsed + 2, (ok, elapsed)
        assert metric(stack, "maata_refusals_total", front_end="partner", reason="rate") >= 100
        assert await quick_call(address(stack), HONEST) == CODE.OK

    asyncio.run(main())
    assert len(store_list(stack, "ended")) <= 20  # the oldest ended sessions were evicted, never refusing a live one


def test_abandoned_calls_stay_within_the_keys_history_budget(stack: Server, baseline_ms: float) -> None:
    """Calls that go away without hanging up keep a resumable session each; a key keeps at most
    its budget (leaver: 3) of them, so abandoning calls cannot fill the store's live capacity."""
    async def abandon(i: int) -> None:
        async with grpc.aio.insecure_channel(address(stack)) as channel:
            call = ConversationStub(channel).Converse(metadata=(("x-api-key", LEAVER),))
            await call.write(ClientEvent(config=ClientConfig(call_id=f"gone-{i}", input=AudioFormat(sample_rate=16000))))
            assert (await asyncio.wait_for(call.read(), TIMEOUT)).WhichOneof("event") == "started"
            await call.write(ClientEvent(audio=ClientAudio(pcm16=float_to_pcm16(speech(0.2)))))
            await asyncio.sleep(0.2)
            call.cancel()  # the client vanishes

    async def main() -> None:
        honest = asyncio.create_task(honest_call(stack, 4.0))  # placed during the attack
        for batch in range(3):
            await asyncio.gather(*(abandon(4 * batch + i) for i in range(4)))
            await asyncio.sleep(1.5)  # the server notices the clients are gone and frees their places
        _, median = await honest
        assert_realtime(median, baseline_ms)

    asyncio.run(main())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        live = [s.call_id for s in store_list(stack, "live") if s.call_id.startswith("leaver:")]
        if len(live) <= 3:
            break
        time.sleep(0.2)
    assert len(live) <= 3, live
    assert set(live) <= {f"leaver:gone-{i}" for i in range(8, 12)}  # the newest are the ones kept


def _offer_sdp() -> str:
    """A real browser-like offer (aiortc: audio sendrecv + a data channel) with a garbage DTLS
    fingerprint, so it can never connect."""
    from aiortc import RTCPeerConnection

    async def make() -> str:
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="sendrecv")
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    sdp = asyncio.run(make())
    lines = [("a=fingerprint:sha-256 " + ":".join(["AB"] * 32)) if line.startswith("a=fingerprint:") else line
             for line in sdp.splitlines()]
    return "\r\n".join(lines) + "\r\n"


async def post_offer(url: str, body: dict[str, Any], source: str = "127.0.0.1") -> tuple[int, dict[str, Any]]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(url + "api/offer", json=body, timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as reply:
            return reply.status, await reply.json()


def listing(stack: Server) -> dict[str, Any]:
    data = json.loads(urllib.request.urlopen(stack.url + "api/calls", timeout=10).read())
    return {"calls": len(data["calls"]), "pending": data["pending"], "gateway_calls": data["gateway_calls"],
            "listed": data["calls"]}


def test_fake_offers_take_no_slot(stack: Server, baseline_ms: float) -> None:
    """16 offers with a garbage DTLS fingerprint from 8 source addresses: at most ``max_pending``
    (6) are answered, none takes a call slot, each is dropped on its 3 s timer; the honest partner
    call is admitted meanwhile."""
    url = stack.url
    sdp = _offer_sdp()

    async def main() -> None:
        offers = [post_offer(url, {"type": "offer", "sdp": sdp}, f"127.0.0.{2 + i % 8}") for i in range(16)]
        replies = await asyncio.gather(*offers)
        statuses = sorted(status for status, _ in replies)
        assert statuses.count(200) == 6 and statuses.count(503) == 10, statuses
        assert all("connecting" in body["error"] for status, body in replies if status == 503)
        held = await asyncio.to_thread(listing, stack)
        assert held["pending"] == 6 and held["gateway_calls"] == 0, held  # answered, but no slot taken
        _, median = await honest_call(stack)
        assert_realtime(median, baseline_ms)
        deadline = time.monotonic() + 10
        while (held := await asyncio.to_thread(listing, stack))["calls"] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert (held["calls"], held["pending"], held["gateway_calls"]) == (0, 0, 0), held
        assert metric(stack, "maata_refusals_total", front_end="browser", reason="pending") >= 10
        assert metric(stack, "maata_refusals_total", front_end="browser", reason="connect_timeout") >= 6
        assert metric(stack, "maata_rpc_errors_total", method="browser", code="RESOURCE_EXHAUSTED") >= 10
        # one address offering faster than its limit (12 a minute, a burst of 2) gets 429 with Retry-After
        statuses = [(await post_offer(url, {"type": "offer", "sdp": "v=0\r\n"}, "127.0.1.1"))[0] for _ in range(6)]
        assert statuses[-1] == 429 and statuses.count(429) >= 4, statuses  # a burst of 2 (12 a minute)

    asyncio.run(main())


def test_over_quota_bursts_leave_the_reserve_to_a_tenant_with_no_call(stack: Server,
                                                                       baseline_ms: float) -> None:
    """Two keys burst 20 calls each at once and hold what they get: greedy takes its 4, burst
    takes 2 more (then 2 free slots are left: the reserve), and the honest partner still gets in."""

    async def main() -> None:
        greedy = [asyncio.create_task(hold(address(stack), GREEDY, 5.0)) for _ in range(20)]
        await asyncio.sleep(0.5)
        flood = [asyncio.create_task(hold(address(stack), BURST, 5.0)) for _ in range(20)]
        await asyncio.sleep(0.5)
        _, median = await honest_call(stack)
        codes_greedy, codes_flood = await asyncio.gather(asyncio.gather(*greedy), asyncio.gather(*flood))
        assert codes_greedy.count(CODE.OK) == 4 and codes_greedy.count(CODE.RESOURCE_EXHAUSTED) == 16
        assert codes_flood.count(CODE.OK) == CAPACITY - RESERVE - 4, codes_flood
        assert set(codes_flood) <= {CODE.OK, CODE.RESOURCE_EXHAUSTED}
        assert_realtime(median, baseline_ms)
        assert metric(stack, "maata_refusals_total", front_end="partner", reason="tenant_calls") >= 16
        assert metric(stack, "maata_refusals_total", front_end="partner", reason="reserve") >= 1

    asyncio.run(main())


def test_slow_loris_http_locks_no_one_out(stack: Server, baseline_ms: float) -> None:
    """60 connections trickle one request header a byte every 0.3 s: the page's API still
    answers at once and the honest partner call is admitted in real time."""
    url = stack.url
    port = stack.ports["webrtc"]

    async def loris(stop: asyncio.Event) -> None:
        socks = []
        for _ in range(60):
            s = socket.socket()
            s.setblocking(False)
            await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
            s.send(b"POST /api/offer HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(s)
        while not stop.is_set():
            for s in socks:
                with contextlib.suppress(OSError):
                    s.send(b"a")
            await asyncio.sleep(0.3)
        for s in socks:
            s.close()

    async def main() -> None:
        stop = asyncio.Event()
        attack = asyncio.create_task(loris(stop))
        await asyncio.sleep(1.0)
        t0 = time.perf_counter()
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "api/config", timeout=aiohttp.ClientTimeout(total=5)) as reply:
                assert reply.status == 200 and len((await reply.json())["voices"]) >= 1
        assert time.perf_counter() - t0 < 1.0
        _, median = await honest_call(stack)
        stop.set()
        await attack
        assert_realtime(median, baseline_ms)

    asyncio.run(main())


def test_many_idle_streams_lock_no_one_out(stack: Server, baseline_ms: float) -> None:
    """150 streams that send nothing, and 2 admitted calls that go silent: the silent ones end
    DEADLINE_EXCEEDED after the idle timeout (3 s); the honest partner call gets in meanwhile."""

    async def main() -> None:
        channels = [grpc.aio.insecure_channel(address(stack)) for _ in range(3)]
        idle = [ConversationStub(channels[i % 3]).Converse(metadata=(("x-api-key", GREEDY),)) for i in range(150)]
        silent = []
        for i in range(2):
            call = ConversationStub(channels[0]).Converse(metadata=(("x-api-key", GREEDY),))
            await call.write(ClientEvent(config=ClientConfig(input=AudioFormat(sample_rate=16000))))
            assert (await asyncio.wait_for(call.read(), TIMEOUT)).WhichOneof("event") == "started"
            silent.append(call)
        await asyncio.sleep(0.5)  # the streams are open and idle
        _, median = await honest_call(stack)
        assert_realtime(median, baseline_ms)
        for call in silent:
            with contextlib.suppress(grpc.aio.AioRpcError):
                while await asyncio.wait_for(call.read(), TIMEOUT) is not grpc.aio.EOF:
                    pass
            assert await call.code() == CODE.DEADLINE_EXCEEDED
        for call in idle:
            call.cancel()
        for channel in channels:
            await channel.close()
        deadline = time.monotonic() + 10
        while (await asyncio.to_thread(listing, stack))["gateway_calls"] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert (await asyncio.to_thread(listing, stack))["gateway_calls"] == 0

    asyncio.run(main())


# -- status codes and telemetry ----------------------------------------------------------------------------
def test_oversized_chunks_dropped_frames_and_client_deadlines(stack: Server) -> None:
    async def status(messages: list[ClientEvent], timeout: float | None = None,
                     half_close: bool = True) -> tuple[Any, str, list[Any]]:
        async with grpc.aio.insecure_channel(address(stack)) as channel:  # no client-side size limit
            call = ConversationStub(channel).Converse(metadata=(("x-api-key", HONEST),), timeout=timeout)
            events = []
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                for message in messages:
                    await call.write(message)
                if half_close:
                    await call.done_writing()
            with contextlib.suppress(grpc.aio.AioRpcError):
                while (event := await asyncio.wait_for(call.read(), TIMEOUT)) is not grpc.aio.EOF:
                    events.append(event)
            return await call.code(), await call.details(), events

    config = ClientEvent(config=ClientConfig(input=AudioFormat(sample_rate=16000)))

    async def main() -> None:
        big = ClientEvent(audio=ClientAudio(pcm16=bytes(2 * 1024 * 1024)))  # 65 s of audio, over 1 s
        code, details, _ = await status([config, big])
        assert code == CODE.INVALID_ARGUMENT and "exceeds the limit of 1 s" in details  # ours, not gRPC's
        huge = ClientEvent(audio=ClientAudio(pcm16=bytes(9 * 1024 * 1024)))  # over the 8 MiB hard cap
        code, _, _ = await status([config, huge])
        assert code == CODE.RESOURCE_EXHAUSTED
        # live (not lossless) audio sent all at once: frames are dropped, and `ended` says so
        burst = [ClientEvent(audio=ClientAudio(pcm16=float_to_pcm16(chunk))) for chunk in np.split(speech(4.0), 100)]
        code, _, events = await status([config, *burst])
        ended = events[-1].ended
        assert code == CODE.OK and ended.dropped_frames > 0 and ended.reason == "hangup_dropped_frames", ended
        assert metric(stack, "maata_dropped_frames_total", front_end="partner") >= ended.dropped_frames
        # the client's own deadline: DEADLINE_EXCEEDED for the client and in the metrics
        before = metric(stack, "maata_rpc_errors_total", method="Converse", code="DEADLINE_EXCEEDED")
        code, _, _ = await status([config], timeout=1.0, half_close=False)
        await asyncio.sleep(0.5)
        assert code == CODE.DEADLINE_EXCEEDED
        assert metric(stack, "maata_rpc_errors_total", method="Converse", code="DEADLINE_EXCEEDED") == before + 1

    asyncio.run(main())


def test_call_tokens(stack: Server) -> None:
    """A partner's backend mints a short-lived single-use token; a browser offer carrying it is
    charged to that key; bad, expired, replayed and over-long tokens are refused (401)."""
    now = 1_000_000.0
    auth = Authenticator([ApiKey(**key) for key in KEYS])
    verifier = TokenVerifier(auth, max_ttl_s=600, clock=lambda: now)
    token = mint_call_token(GREEDY, "greedy", ttl_s=60, now=now)
    sdp = _offer_sdp()
    assert verifier.verify(token).id == "greedy"
    for bad, why in ((token, "already used"), (mint_call_token("mk_wrong", "greedy", now=now), "signature"),
                     (mint_call_token(GREEDY, "nobody", now=now), "signature"),
                     (mint_call_token(GREEDY, "greedy", ttl_s=60, now=now - 200), "expired"),
                     (mint_call_token(GREEDY, "greedy", ttl_s=3600, now=now), "limit is 600"),
                     (token[:-3] + "AAA", "signature"), ("mct1.e30.AAAA", "malformed"), (17, "string")):
        with pytest.raises(TokenError, match=why):
            verifier.verify(bad)

    async def main() -> None:
        url = stack.url
        status, body = await post_offer(url, {"type": "offer", "sdp": "v=0\r\n", "token": "mct1.x.y"}, "127.0.2.1")
        assert status == 401 and body["code"] == "UNAUTHENTICATED"
        status, body = await post_offer(url, {"type": "offer", "sdp": sdp,
                                              "token": mint_call_token(GREEDY, "greedy")}, "127.0.2.2")
        assert status == 200, body
        (call,) = [c for c in (await asyncio.to_thread(listing, stack))["listed"] if c["call_id"] == body["call_id"]]
        assert call["tenant"] == "greedy" and not call["admitted"]

    asyncio.run(main())
    assert metric(stack, "maata_refusals_total", front_end="browser", reason="token") >= 1


def test_metrics_endpoints_and_live_call_gauges(stack: Server) -> None:
    """Every service of the stack serves /metrics on its own port; the gateway's families are there."""
    for service in ("gateway", "codec", "generation", "session"):
        assert "maata_live_calls" in stack.metrics_text(service), service
    text = stack.metrics_text()
    for family in ("maata_refusals_total", "maata_dropped_frames_total", "maata_live_calls"):
        assert family in text, family
    assert 'maata_live_calls{rpc="partner",service="gateway"} 0.0' in text or \
        'maata_live_calls{service="gateway",rpc="partner"} 0.0' in text
    assert listing(stack)["gateway_calls"] == 0


def test_config_refuses_a_reserve_as_large_as_capacity(tmp_path: Path) -> None:
    from services.gateway.config import GatewayConfig

    with pytest.raises(ValueError, match="reserve_calls"):
        GatewayConfig(max_calls=2, reserve_calls=2)
