"""The Generation gRPC service over real grpc.aio on 127.0.0.1 with a tiny untrained LM:
batching, slot isolation, admission, silence for late frames, idle timeout, bad input, and the
fault path: a killed or drained server's calls resume on a new instance from the session store
(in memory, Redis restarted mid-call, or the SessionStore service) exactly as if uninterrupted."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import torch

from maata.lm import LM
from services.common.config import ServerConfig
from services.generation.engine import CallSpec, GenerationEngine, history_from_frames
from services.generation.service import (GenerationServer, GenerationServiceConfig, load_config, serve_generation)
from services.session import MemorySessionStore, RedisSessionStore, SessionConfig, serve_session
from services.session.redis_server import RedisServer

from maata_protos.v1.common_pb2 import CodeFrame, Sampling, Style
from maata_protos.v1.generation_pb2 import AgentFrame, CallConfig, UserFrame
from maata_protos.v1.generation_pb2_grpc import GenerationStub
from tests.support.models import tiny_lm

torch.set_num_threads(1)

TIMEOUT = 10.0
K, CARD, VT = 8, 32, 40
SILENCE = [5] * K
CODE = grpc.StatusCode


LM_ = tiny_lm()


def frames_of(T: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, CARD, (T, K), generator=g).tolist()


def config(call_id: str, seed: int = 42, **kw: Any) -> UserFrame:
    sampling = kw.pop("sampling", Sampling(temperature=1.0, top_k=10, seed=seed))
    return UserFrame(config=CallConfig(call_id=call_id, sampling=sampling, text=kw.pop("text", True),
                                       style=Style(**kw)))


def codes(values: list[int], seq: int, **kw: Any) -> UserFrame:
    return UserFrame(codes=CodeFrame(codes=values), seq=seq, **kw)


async def start(store: Any = None, **overrides: Any) -> GenerationServer:
    settings = {"manual_clock": True, "max_calls": 4, "history_flush_frames": 5, "silence_codes": SILENCE,
                "idle_timeout_s": 30.0, **overrides}
    cfg = GenerationServiceConfig(server=ServerConfig(grace_seconds=2.0), **settings)
    return await serve_generation(cfg, port=0, host="127.0.0.1", store=store, lm=LM_)


@contextlib.asynccontextmanager
async def channel_to(server: GenerationServer):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


async def until(condition: Callable[[], Any], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.002)


class Caller:
    """One Converse stream driven message by message."""

    def __init__(self, stub: GenerationStub, server: GenerationServer, call_id: str) -> None:
        self.call = stub.Converse()
        self.server = server
        self.call_id = call_id
        self.sent = 0

    async def open(self, first: UserFrame) -> None:
        await self.call.write(first)
        await until(lambda: self.server.calls.streams.get(self.call_id) is not None)

    @property
    def engine_call(self):
        return self.server.engine.get(self.call_id)

    async def send(self, values: list[int], seq: int, wait: bool = True, **kw: Any) -> None:
        """Send one frame; with ``wait``, until the server has queued it (manual ticks)."""
        call = self.engine_call
        before = call.received if call else 0
        await self.call.write(codes(values, seq, **kw))
        if wait:
            await until(lambda: self.engine_call is not None and self.engine_call.received > before)

    async def recv(self) -> AgentFrame:
        reply = await asyncio.wait_for(self.call.read(), TIMEOUT)
        assert reply is not grpc.aio.EOF, await self.status()
        return reply

    async def status(self) -> tuple[grpc.StatusCode, str]:
        """How the stream ended (replies still unread are read and dropped first: gRPC surfaces
        the status only after them)."""

        async def drain() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                while await self.call.read() is not grpc.aio.EOF:
                    pass

        await asyncio.wait_for(drain(), TIMEOUT)
        return await asyncio.wait_for(self.call.code(), TIMEOUT), await self.call.details()

    async def hang_up(self) -> None:
        await self.call.done_writing()


async def status_of(stub: GenerationStub, messages: list[Any], raw: grpc.aio.Channel | None = None
                    ) -> tuple[grpc.StatusCode, str]:
    """The status a stream sending ``messages`` (then half-closing) ends with."""
    if raw is not None:
        call = raw.stream_stream("/maata.v1.Generation/Converse", request_serializer=lambda b: b,
                                 response_deserializer=lambda b: b)()
    else:
        call = stub.Converse()
    for message in messages:
        await call.write(message)
    await call.done_writing()
    return await asyncio.wait_for(call.code(), TIMEOUT), await call.details()


def reference(spec: CallSpec, frames: list[list[int]], styles: dict[int, dict[str, str]] | None = None,
              history=None):
    """The outputs of a direct engine run: ``frames`` stepped one per tick (after ``history``)."""
    engine = GenerationEngine(LM_, 4, silence_codes=SILENCE)
    call = engine.join(spec, history)
    outs = []
    for t, values in enumerate(frames):
        engine.push(call, values, t)
        if styles and t in styles:
            engine.set_style(call, **styles[t])
        outs.append(engine.tick().outputs[0])
    return outs


def agent(reply: AgentFrame) -> list[int] | None:
    return list(reply.codes.codes) if reply.HasField("codes") else None


def matches(replies: list[AgentFrame], outs) -> bool:
    return [(agent(r), r.text_token, r.frame) for r in replies] == [(o.agent_codes, o.text_token, o.frame)
                                                                  for o in outs]


# -- batching and isolation -------------------------------------------------------------------------
def test_three_calls_share_one_step_per_tick_in_real_time() -> None:
    """Real 40 ms clock: three paced callers' frames go through ~one model step per tick."""

    async def main() -> None:
        server = await start(manual_clock=False, frame_ms=40.0, max_queued_frames=10)  # tolerate a busy CPU
        try:
            async with channel_to(server) as channel:
                stub = GenerationStub(channel)
                callers = [Caller(stub, server, f"rt{i}") for i in range(3)]
                for i, c in enumerate(callers):
                    await c.open(config(c.call_id, seed=i))
                n = 20

                async def talk(c: Caller, i: int) -> list[AgentFrame]:
                    replies = []

                    async def read() -> None:
                        while (reply := await c.call.read()) is not grpc.aio.EOF:
                            replies.append(reply)

                    reader = asyncio.create_task(read())
                    for t, values in enumerate(frames_of(n, seed=i)):
                        await c.send(values, t, wait=False)
                        await asyncio.sleep(0.04)
                    await c.hang_up()
                    await asyncio.wait_for(reader, TIMEOUT)
                    assert (await c.status())[0] == CODE.OK
                    return replies

                results = await asyncio.gather(*(talk(c, i) for i, c in enumerate(callers)))
            engine = server.engine
            for replies in results:  # each frame answered once, in order (or dropped if ticks ran late)
                seqs = [r.seq for r in replies if not r.filled]
                assert seqs == sorted(set(seqs)) and set(seqs) <= set(range(n))
                assert [r.frame for r in replies] == list(range(len(replies)))
            answered = sum(not r.filled for replies in results for r in replies)
            assert answered + engine.dropped == 3 * n == engine.frames_stepped - engine.missed + engine.dropped
            assert engine.frames_stepped >= 2.5 * engine.steps  # batched: one step per tick for all three calls
            assert max(r.batch for replies in results for r in replies) == 3
        finally:
            await server.drain()

    asyncio.run(main())


def test_replies_are_the_same_alone_or_in_a_crowd() -> None:
    async def main() -> None:
        server = await start()
        frames = frames_of(10)
        try:
            async with channel_to(server) as channel:
                stub = GenerationStub(channel)
                alone = Caller(stub, server, "alone")
                await alone.open(config("alone", seed=9))
                solo = []
                for t, values in enumerate(frames):
                    await alone.send(values, t)
                    await server.tick()
                    solo.append(await alone.recv())
                await alone.hang_up()
                assert (await alone.status())[0] == CODE.OK

                others = [Caller(stub, server, f"other{i}") for i in range(2)]
                for i, c in enumerate(others):
                    await c.open(config(c.call_id, seed=100 + i, voice="female_1", emotion="HAPPY"))
                crowd_call = Caller(stub, server, "crowd")
                await crowd_call.open(config("crowd", seed=9))
                assert crowd_call.engine_call.slot == 2
                crowd = []
                for t, values in enumerate(frames):
                    for i, c in enumerate(others):
                        await c.send(frames_of(1, seed=50 + 3 * t + i)[0], t)
                    await crowd_call.send(values, t)
                    await server.tick()
                    for c in others:
                        await c.recv()
                    crowd.append(await crowd_call.recv())
            assert [(agent(r), r.text_token) for r in solo] == [(agent(r), r.text_token) for r in crowd]
            assert {r.batch for r in solo} == {1} and {r.batch for r in crowd} == {3}
            assert solo[0].codes.codes == [] and len(solo[1].codes.codes) == K  # acoustic delay of 1
            assert [r.seq for r in crowd] == list(range(10)) and [r.frame for r in crowd] == list(range(10))
        finally:
            await server.drain()

    asyncio.run(main())


def test_admission_hang_up_and_ended_calls() -> None:
    async def main() -> None:
        store = MemorySessionStore()
        server = await start(store, max_calls=2)
        try:
            async with channel_to(server) as channel:
                stub = GenerationStub(channel)
                a, b = Caller(stub, server, "a"), Caller(stub, server, "b")
                await a.open(config("a"))
                await b.open(config("b"))
                code, details = await status_of(stub, [config("c")])
                assert code == CODE.RESOURCE_EXHAUSTED and "all 2 generation slots are in use" in details
                await a.send(frames_of(1)[0], 0)
                await a.hang_up()  # the waiting frame is still answered, then the call ends OK
                await server.tick()
                assert (await a.recv()).seq == 0
                assert (await a.status())[0] == CODE.OK
                assert (await store.get("a")).state == "ended" and (await store.get("a")).frames == 1
                code, details = await status_of(stub, [config("a")])
                assert code == CODE.FAILED_PRECONDITION and "has ended" in details
                c = Caller(stub, server, "c")
                await c.open(config("c"))  # a's slot is free again
                await b.hang_up()
                await c.hang_up()
                assert [(await b.status())[0], (await c.status())[0]] == [CODE.OK, CODE.OK]
            assert server.engine.live == 0
        finally:
            await server.drain()

    asyncio.run(main())


def test_lagging_call_is_filled_with_silence_and_counted() -> None:
    async def main() -> None:
        store = MemorySessionStore()
        server = await start(store, history_flush_frames=1)
        try:
            async with channel_to(server) as channel:
                stub = GenerationStub(channel)
                fast, slow = Caller(stub, server, "fast"), Caller(stub, server, "slow")
                await fast.open(config("fast"))
                await slow.open(config("slow"))
                frames = frames_of(3)
                for t in range(3):
                    await fast.send(frames[t], t)
                    if t != 1:
                        await slow.send(frames[t], t)
                    await server.tick()
                    await fast.recv()
                    reply = await slow.recv()
                    assert (reply.filled, reply.seq, reply.batch) == (t == 1, 0 if t == 1 else t, 2)
            stored = [f async for f in store.read("slow")]
            assert [list(f.user.codes) for f in stored] == [frames[0], SILENCE, frames[2]]
            registry = server.grpc.metrics.registry
            assert registry.get_sample_value("maata_missed_frame_deadlines_total",
                                             {"service": "generation", "stage": "user_frame"}) == 1.0
        finally:
            await server.drain()

    asyncio.run(main())


def test_idle_call_is_ended_with_deadline_exceeded() -> None:
    async def main() -> None:
        store = MemorySessionStore()
        server = await start(store, idle_timeout_s=0.3)
        try:
            async with channel_to(server) as channel:
                stub = GenerationStub(channel)
                quiet, busy = Caller(stub, server, "quiet"), Caller(stub, server, "busy")
                await quiet.open(config("quiet"))
                await busy.open(config("busy"))
                frames = frames_of(12)
                await quiet.send(frames[0], 0)
                start_time = time.monotonic()
                for t in range(12):
                    await busy.send(frames[t], t)
                    await server.tick()
                    await busy.recv()
                    await asyncio.sleep(0.04)
                assert time.monotonic() - start_time > 0.3
                code, details = await quiet.status()
                assert code == CODE.DEADLINE_EXCEEDED and "no message for 0.3 s" in details
                assert (await store.get("quiet")).state == "ended"
                assert server.engine.get("quiet") is None and server.engine.get("busy") is not None
        finally:
            await server.drain()

    asyncio.run(main())


def test_bad_input_ends_only_its_own_stream() -> None:
    async def main() -> None:
        server = await start()
        frames = frames_of(8)
        try:
            async with channel_to(server) as channel:
                stub = GenerationStub(channel)
                good = Caller(stub, server, "good")
                await good.open(config("good", seed=3))
                spec = good.engine_call.spec
                replies = []
                bad_streams = [
                    ([codes(frames[0], 0)], "first message must be the call config"),
                    ([UserFrame()], "first message must be the call config"),
                    ([config("")], "call_id is empty"),
                    ([config("no spaces")], "may only contain"),
                    ([config("v", voice="robot")], "unknown voice 'robot'"),
                    ([config("v", voice="custom")], "unknown voice 'custom'"),
                    ([config("e", emotion="ANGRY")], "unknown emotion 'ANGRY'"),
                    ([config("s", sampling=Sampling(temperature=-1.0))], "temperature must be"),
                    ([config("k1"), codes(frames[0][:7], 0)], "must be shaped [n_q] = [8]"),
                    ([config("k2"), codes([0] * 7 + [CARD], 0)], "values must be in [-1, 31]"),
                    ([config("k3"), codes([-2] + [0] * 7, 0)], "values must be in [-1, 31]"),
                    ([config("st"), UserFrame(style=Style(emotion="ANGRY"))], "unknown emotion"),
                    ([config("twice"), config("twice")], "config may only be sent in the first message"),
                ]
                for t, (messages, message) in enumerate(bad_streams):
                    code, details = await status_of(stub, messages)
                    assert (code, message in details) == (CODE.INVALID_ARGUMENT, True), (message, details)
                    await good.send(frames[t % 8], t)  # the good call goes on meanwhile
                    await server.tick()
                    replies.append(await good.recv())
                garbage = [b"\xff\xff garbage"]
                code, _ = await status_of(stub, garbage, raw=channel)
                assert code == CODE.INVALID_ARGUMENT
                code, details = await status_of(stub, [config("g").SerializeToString(), b"\xff\xff"], raw=channel)
                assert code == CODE.INVALID_ARGUMENT and "malformed maata.v1.UserFrame" in details
                await good.send(frames[13 % 8], 13)
                await server.tick()
                replies.append(await good.recv())
                await good.hang_up()
                assert (await good.status())[0] == CODE.OK
            ref = reference(spec, [frames[t % 8] for t in range(14)])
            assert matches(replies, ref)
            assert server.engine.live == 0 and not server.calls.streams  # every slot was freed
            errors = server.grpc.metrics.registry.get_sample_value(
                "maata_rpc_errors_total", {"service": "generation", "method": "Converse", "code": "INVALID_ARGUMENT"})
            assert errors == len(bad_streams) + 2
        finally:
            await server.drain()

    asyncio.run(main())


# -- faults: resume from the session store ----------------------------------------------------------
async def fault_run(store_of: Callable[[], Any], graceful: bool, redis: RedisServer | None = None,
                    **overrides: Any) -> None:
    """A call (and a bystander) talk for S steps with a style change, the server is killed or
    drained, a new server on the same store resumes the call: the stored history is what the
    call produced (up to the last flush), and the continuation equals both a direct engine run
    from that history and the uninterrupted call."""
    N, S, extra = 5, 13, 7
    frames = frames_of(S + extra)
    styles = {3: {"emotion": "LAUGH"}}
    server = await start(store_of(), history_flush_frames=N, **overrides)
    before: list[AgentFrame] = []
    async with channel_to(server) as channel:
        stub = GenerationStub(channel)
        call, bystander = Caller(stub, server, "call-1"), Caller(stub, server, "bystander")
        await call.open(config("call-1", seed=77, voice="female_2"))
        await bystander.open(config("bystander", seed=5))
        spec = call.engine_call.spec
        for t in range(S):
            if redis is not None and t == 6:
                redis.stop()  # Redis goes away mid-call: the flush after step 9 fails and is retried
            if redis is not None and t == 11:
                await asyncio.to_thread(redis.start)
            kw = {"style": Style(**styles[t])} if t in styles else {}
            await call.send(frames[t], t, **kw)
            await bystander.send(frames[t], t)
            await server.tick()
            before.append(await call.recv())
            await bystander.recv()
        if graceful:
            await server.drain()
        else:
            await server.kill()
        code, details = await call.status()
        assert code == CODE.UNAVAILABLE  # a drain says so; a crash looks like a connection lost
        if graceful:
            assert "reconnect with the same call_id (resume)" in details

    store = store_of()
    session = await store.get("call-1")
    stored = [f async for f in store.read("call-1")]
    F = len(stored)
    assert session.state == "live" and session.frames == F
    # a drain loses nothing; a crash loses what came after the last flush: at most N-1 steps (with
    # Redis down from step 6 to 11 the flush due after step 9 is retried every step until it lands)
    assert F == (S if graceful else 12 if redis else S - S % N) and S - F < N
    assert session.labels["maata.agent_layout"] == "steps"
    # the stored history is exactly what the call did
    uninterrupted = reference(spec, frames, styles)
    assert matches(before, uninterrupted[:S])
    assert [list(f.user.codes) for f in stored] == frames[:F]
    assert [f.text_token for f in stored] == [o.text_token for o in uninterrupted[:F]]
    assert [t for t, f in enumerate(stored) if f.HasField("style")] == [3]
    history = history_from_frames(LM_, stored, "female_2", "NEUTRAL")
    frame_layout = history.agent_frames(LM_)  # frame t is complete one step later (acoustic delay 1)
    assert [frame_layout[:, t].tolist() for t in range(F - 1)] == [o.agent_codes for o in uninterrupted[1:F]]

    server2 = await start(store, history_flush_frames=N, **overrides)
    try:
        async with channel_to(server2) as channel:
            stub = GenerationStub(channel)
            call = Caller(stub, server2, "call-1")
            await call.open(config("call-1", seed=1, voice=""))  # the stored seed and style win
            after = []
            for t in range(F, S + extra):
                await call.send(frames[t], t)
                await server2.tick()
                after.append(await call.recv())
            await call.hang_up()
            assert (await call.status())[0] == CODE.OK
        assert after[0].resumed and after[0].frame == F and not any(r.resumed for r in after[1:])
        direct = reference(dataclasses.replace(spec, voice=history.final_style[0], emotion=history.final_style[1]),
                           frames[F:], history=history)
        assert matches(after, direct)
        assert matches(after, uninterrupted[F:])  # = the call as if never interrupted
        final = await store.get("call-1")
        assert final.state == "ended" and final.frames == S + extra
    finally:
        await server2.drain()


@pytest.mark.parametrize("graceful", [False, True], ids=["crash", "drain"])
def test_fault_resume_with_memory_store(graceful: bool) -> None:
    store = MemorySessionStore()
    asyncio.run(fault_run(lambda: store, graceful))


@pytest.mark.parametrize("graceful", [False, True], ids=["crash", "drain"])
def test_fault_resume_with_redis_restarted_mid_call(graceful: bool) -> None:
    with RedisServer() as redis:
        stores: list[RedisSessionStore] = []

        def store_of() -> RedisSessionStore:
            stores.append(RedisSessionStore(redis.url, timeout_seconds=0.5))
            return stores[-1]

        async def main() -> None:
            try:
                await fault_run(store_of, graceful, redis=redis)
            finally:
                for store in stores:
                    await store.close()

        asyncio.run(main())


def test_resume_through_the_session_service_and_takeover() -> None:
    """The store is the SessionStore gRPC service (session_store = host:port); a second stream
    with a live call's id takes it over and continues it exactly."""

    async def main() -> None:
        session_server = await serve_session(SessionConfig(), port=0)
        address = f"127.0.0.1:{session_server.port}"
        frames = frames_of(12)
        server = await start(session_store=address)
        try:
            async with channel_to(server) as channel:
                stub = GenerationStub(channel)
                first = Caller(stub, server, "taken")
                await first.open(config("taken", seed=11))
                spec = first.engine_call.spec
                replies = []
                for t in range(7):
                    await first.send(frames[t], t)
                    await server.tick()
                    replies.append(await first.recv())
                second = Caller(stub, server, "taken")
                await second.call.write(config("taken"))
                code, details = await first.status()
                assert code == CODE.ABORTED and "taken over" in details
                await until(lambda: server.engine.get("taken") is not None)
                for t in range(7, 12):
                    await second.send(frames[t], t)
                    await server.tick()
                    replies.append(await second.recv())
                await second.hang_up()
                assert (await second.status())[0] == CODE.OK
            assert replies[7].resumed and replies[7].frame == 7
            assert matches(replies, reference(spec, frames))
        finally:
            await server.drain()
            await session_server.drain()

    asyncio.run(main())


def test_config_from_environment_and_validation() -> None:
    cfg = load_config(environ={"MAATA_GENERATION__MAX_CALLS": "3", "MAATA_GENERATION__FRAME_MS": "20",
                               "MAATA_GENERATION__SILENCE_CODES": "[1, 2, 3, 4, 5, 6, 7, 8]",
                               "MAATA_GENERATION__SESSION_STORE": "redis://127.0.0.1:6390/0",
                               "MAATA_GENERATION__SERVER__PORT": "7003"}, history_flush_frames=10)
    assert (cfg.max_calls, cfg.frame_ms, cfg.silence_codes, cfg.history_flush_frames, cfg.server.port) == (
        3, 20.0, [1, 2, 3, 4, 5, 6, 7, 8], 10, 7003)
    assert cfg.session_store.startswith("redis://")
    for bad in ({"max_calls": 0}, {"frame_ms": 0}, {"history_flush_frames": 0}, {"idle_timeout_s": -1}):
        with pytest.raises(ValueError):
            GenerationServiceConfig(**bad)


def test_reply_text_holds_bytes_until_a_character_is_complete() -> None:
    """Each call's replies carry its inner monologue as text pieces, byte tokens included (held
    until they complete a UTF-8 character), the same pieces `maata talk` prints."""
    from maata.text.tokenizer import BYTE_OFFSET, EPAD_ID, N_BASE, TextStream, Tokenizer

    from services.generation.service import _Stream

    tok = Tokenizer.train(["నమస్కారం మాట", "మీరు ఎలా ఉన్నారు"] * 4, vocab_size=500, min_frequency=2)
    piece = next(i for i in range(N_BASE, tok.vocab_size) if tok.decode([i]))
    ta = [BYTE_OFFSET + b for b in "ట".encode()]  # one Telugu letter as 3 byte tokens
    ids = [piece, EPAD_ID, *ta, piece]
    a, b = _Stream(None, 4, tok), _Stream(None, 4, tok)  # two calls: byte runs never mix
    pieces = [a.text.push(i) for i in ids]
    assert pieces == [tok.decode([piece]), "", "", "", "ట", tok.decode([piece])]
    assert [TextStream(tok).push(i) for i in ids[:1]] == pieces[:1]
    assert b.text.push(ta[0]) == "" and a.text.push(piece) == tok.decode([piece])
    assert _Stream(None, 4).text is None  # no tokenizer: token ids only


def test_concurrent_writes_through_the_gateways_duplex_keep_the_stream_ok() -> None:
    """The gateway writes one generation stream from several tasks (user frames, a mid-call style
    change, keep-alives). Two grpc.aio writes in flight at once fail the whole RPC with INTERNAL
    ("Internal error from Core"); ``GrpcDuplex`` serialises them, so the call goes on."""
    from services.gateway.backends import GrpcDuplex

    async def main() -> None:
        server = await start(max_queued_frames=64)
        try:
            async with channel_to(server) as channel:
                duplex = GrpcDuplex("generate", GenerationStub(channel).Converse, "busy")
                await duplex.send(config("busy"))
                await until(lambda: server.engine.get("busy") is not None)
                frames = frames_of(40)
                sends = [duplex.send(codes(f, t)) for t, f in enumerate(frames)]
                sends += [duplex.send(UserFrame(style=Style(emotion="HAPPY"))) for _ in range(20)]
                sends += [duplex.send(UserFrame()) for _ in range(20)]  # keep-alives
                await asyncio.gather(*sends)
                await until(lambda: server.engine.get("busy").received == len(frames))
                for _ in range(len(frames)):
                    await server.tick()
                await duplex.done_writing()
                replies = []
                while (reply := await asyncio.wait_for(duplex.recv(), TIMEOUT)) is not None:
                    replies.append(reply)
                assert [r.seq for r in replies] == list(range(len(frames)))  # every frame, in order, none lost
                assert not any(r.filled for r in replies)
        finally:
            await server.drain()

    asyncio.run(main())
