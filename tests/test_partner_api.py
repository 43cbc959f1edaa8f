"""The partner API (maata.v1.Conversation) over real gRPC on 127.0.0.1, with the session, codec,
generation and gateway services running as separate gRPC servers in this process (tiny
untrained models): a Telugu WAV in and a reply of the right length out, style changes, bad
input and auth/quota refusals with the right status while another call goes on, the generation
service drained mid-call and restarted (the client resumes with the same call id, no history
lost), and Redis restarted under the Redis-backed store (calls' data intact)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from maata.audio import float_to_pcm16, resample
from services.client import converse
from services.codec.service import CodecServiceConfig, load_model as load_codec_model, serve_codec
from services.common.config import ServerConfig
from services.common.server import ADMITTED_METADATA, channel_options
from services.gateway.admission import Admission, Refused
from services.gateway.auth import ApiKey, AuthConfig, Authenticator, hash_key
from services.gateway.config import GatewayConfig
from services.gateway.server import serve_gateway
from services.gateway.backends import GrpcBackends
from services.gateway.speech import SpeechConfig, SpeechDetector, TurnTracker
from services.generation.service import GenerationServiceConfig, load_model as load_lm_model, serve_generation
from services.serve import UNTRAINED_CODEC, UNTRAINED_LM
from services.session import RedisSessionStore, SessionConfig, serve_session
from services.session.client import RemoteSessionStore
from services.session.redis_server import RedisServer
from tests.support.speech import espeak_audio

from maata_protos.v1.common_pb2 import CodeFrame, Sampling, Style
from maata_protos.v1.conversation_pb2 import AudioFormat, ClientAudio, ClientConfig, ClientEvent, HangUp
from maata_protos.v1.conversation_pb2_grpc import ConversationStub
from maata_protos.v1.generation_pb2 import CallConfig, UserFrame
from maata_protos.v1.generation_pb2_grpc import GenerationStub

torch.set_num_threads(1)

CODE = grpc.StatusCode
TIMEOUT = 20.0
KEY, OTHER_KEY, SMALL_KEY = "mk_test-key-1", "mk_test-key-2", "mk_small-quota"
KEYS = [ApiKey("test", hash_key(KEY), 8), ApiKey("other", hash_key(OTHER_KEY), 8),
        ApiKey("small", hash_key(SMALL_KEY), 1)]
CODEC = load_codec_model(CodecServiceConfig(preset_overrides=UNTRAINED_CODEC))
LM = load_lm_model(GenerationServiceConfig(preset="tiny", preset_overrides=UNTRAINED_LM))
HOP = 640


@pytest.fixture(scope="module")
def telugu(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """`espeak-ng -v te "మీ పేరు ఏమిటి?"` at 16 kHz."""
    return espeak_audio(tmp_path_factory.mktemp("wav"))


@dataclasses.dataclass
class Services:
    session: Any
    codec: Any
    generation: Any
    gateway: Any
    store: Any  # the session service's own store (checks read it; a Redis-backed run checks Redis)
    generation_config: GenerationServiceConfig

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    async def restart_generation(self) -> None:
        self.generation = await serve_generation(self.generation_config, port=self.generation.port,
                                                 host="127.0.0.1", lm=LM, codec=CODEC)


@contextlib.asynccontextmanager
async def services_running(session_store: str = "", **generation: Any):
    """Session, codec, generation and gateway as separate gRPC servers; the gateway reaches the
    others over loopback gRPC. The generation store: the session service, or ``session_store``."""
    session = await serve_session(SessionConfig(), port=0)
    session_address = f"127.0.0.1:{session.port}"
    server = ServerConfig(grace_seconds=2.0)
    codec = await serve_codec(CodecServiceConfig(server=server, max_streams=16), port=0, host="127.0.0.1",
                              codec=CODEC)
    gen_config = GenerationServiceConfig(server=server, session_store=session_store or session_address,
                                         history_flush_frames=5, store_timeout_s=0.5,
                                         **{"max_calls": 16, **generation})
    gen = await serve_generation(gen_config, port=0, host="127.0.0.1", lm=LM, codec=CODEC)
    gateway_store = (RedisSessionStore(session_store, timeout_seconds=0.5) if session_store
                     else RemoteSessionStore(session_address))
    gw_config = GatewayConfig(server=server, auth=AuthConfig(keys=KEYS), connect_timeout_s=10.0)
    backends = GrpcBackends(f"127.0.0.1:{codec.port}", f"127.0.0.1:{gen.port}", channel_options(server))
    gateway = await serve_gateway(gw_config, backends, store=gateway_store, port=0, host="127.0.0.1",
                                  owns_store=True)
    handle = Services(session, codec, gen, gateway, session.store, gen_config)  # checks read the store directly
    try:
        yield handle
    finally:
        await gateway.drain()
        await handle.generation.drain()
        await codec.drain()
        await session.drain()


async def status_of(address: str, messages: list[Any], key: str | None = KEY, raw: bool = False,
                    half_close: bool = True) -> tuple[grpc.StatusCode, str, list[Any]]:
    """Send ``messages`` on one Converse stream as a well-behaved client does (the rest only once
    the first is answered), then half-close: (status, details, events)."""
    metadata = (("x-api-key", key),) if key is not None else ()
    async with grpc.aio.insecure_channel(address) as channel:
        if raw:
            call = channel.stream_stream("/maata.v1.Conversation/Converse", request_serializer=lambda b: b,
                                         response_deserializer=lambda b: b)(metadata=metadata)
        else:
            call = ConversationStub(channel).Converse(metadata=metadata)
        events: list[Any] = []

        async def read_all() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                while (event := await asyncio.wait_for(call.read(), TIMEOUT)) is not grpc.aio.EOF:
                    events.append(event)

        await call.write(messages[0])
        with contextlib.suppress(grpc.aio.AioRpcError):
            if (event := await asyncio.wait_for(call.read(), TIMEOUT)) is not grpc.aio.EOF:
                events.append(event)
                reader = asyncio.create_task(read_all())
                for message in messages[1:]:  # a write after the server ended the stream fails: status below
                    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                        await call.write(message)
                if half_close:
                    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                        await call.done_writing()
                await reader
        code, details = await call.code(), await call.details()
        ended = [e.ended for e in events if not raw and e.WhichOneof("event") == "ended"]
        if code == CODE.INTERNAL and ended:  # grpc#36066: a write raced the end; CallEnded has the status
            code, details = CODE[ended[0].code], ended[0].reason
        return code, details, events


def config(**kw: Any) -> ClientEvent:
    kw.setdefault("input", AudioFormat(sample_rate=16000))
    return ClientEvent(config=ClientConfig(**kw))


def audio(samples: int, value: float = 0.1) -> ClientEvent:
    return ClientEvent(audio=ClientAudio(pcm16=float_to_pcm16(np.full(samples, value, np.float32))))


def frames_for(samples_16k: int) -> int:
    return -(-samples_16k // HOP)


def assert_complete(result: Any, user_frames: int) -> int:
    """A lossless call's reply: every user frame answered once, in order, by one agent frame each;
    the agent's other frames are steps where the user's next frame was late (silence stood in).
    Returns the number of agent frames."""
    n = len(result.seqs)
    assert result.seqs == list(range(n))
    assert [t.user_seq for t in result.latencies] == list(range(user_frames))
    assert user_frames <= n <= user_frames + 5
    return n


# -- happy path --------------------------------------------------------------------------------------
def test_telugu_call_round_trip_with_style_change(telugu: np.ndarray) -> None:
    """A Telugu WAV at 16 kHz in (lossless: no frame dropped), one agent frame per user frame out,
    a style change mid-call, timings and events; then the same WAV at 24 kHz in real time with
    48 kHz out: resampled both ways, the reply is as long as the call."""

    async def main() -> None:
        async with services_running() as svc:
            result = await converse(svc.address, KEY, telugu, 16000, fast=True, timing=True, text=True,
                                    voice="female_1", styles={10: Style(emotion="HAPPY")}, call_id="hello-1",
                                    sampling=Sampling(temperature=0.8, top_k=50, seed=7))
            assert result.code == CODE.OK, result.details
            n = assert_complete(result, frames_for(len(telugu)))
            assert len(result.audio) == n * HOP and np.abs(result.audio).max() > 0
            kinds = [e.WhichOneof("event") for e in result.events]
            assert kinds[0] == "started" and kinds[-1] == "ended" and result.events[-1].ended.reason == "hangup"
            started = result.events[0].started
            assert (started.call_id, started.resumed, started.frame_ms, started.sample_rate) == ("hello-1", False,
                                                                                                 40, 16000)
            assert all(0 < t.server_ms < 5000 and t.client_ms >= t.server_ms - 1 for t in result.latencies)
            session = await svc.store.get("test:hello-1")  # namespaced by the API key id
            assert session.state == "ended" and session.frames == n
            assert session.style.voice == "female_1" and session.sampling.seed == 7
            stored = [f async for f in svc.store.read("test:hello-1")]
            assert [f.style.emotion for f in stored if f.HasField("style")] == ["HAPPY"]

            audio24 = resample(telugu, 16000, 24000)
            result = await converse(svc.address, KEY, audio24, 24000, out_rate=48000)
            assert result.code == CODE.OK, result.details
            n = len(result.seqs)
            # live audio: a frame that came late is a silence step, one that came in a burst past the queue
            # is dropped (latency first); on a loaded machine both happen, so the length is near, not exact
            assert result.seqs == list(range(n)) and abs(n - frames_for(len(telugu))) <= 0.25 * n
            assert len(result.audio) == n * HOP * 3  # 48 kHz: exactly one 40 ms frame per message
            registry = svc.gateway.grpc.metrics.registry
            for stage in ("encode", "generate", "decode", "frame"):
                count = registry.get_sample_value("maata_stage_latency_seconds_count",
                                                  {"service": "gateway", "stage": stage})
                assert count and count >= n, stage

    asyncio.run(main())


# -- bad input -----------------------------------------------------------------------------------------
def test_bad_input_and_auth_get_the_right_status_while_another_call_goes_on(telugu: np.ndarray) -> None:
    async def main() -> None:
        async with services_running() as svc:
            address = svc.address
            ended = await converse(address, KEY, telugu[:8000], 16000, fast=True, call_id="done-call")
            assert ended.code == CODE.OK
            # a good call talks through everything below (lossless: paced by the agent, nothing dropped)
            good = asyncio.create_task(converse(address, OTHER_KEY, np.tile(telugu, 3), 16000, call_id="good",
                                                fast=True, timing=True))
            cases = [
                ([config()], None, CODE.UNAUTHENTICATED, "missing API key"),
                ([config()], "mk_wrong", CODE.UNAUTHENTICATED, "invalid API key"),
                ([audio(640), config()], KEY, CODE.INVALID_ARGUMENT, "first event must be `config`"),
                ([ClientEvent()], KEY, CODE.INVALID_ARGUMENT, "first event must be `config`"),
                ([config(input=AudioFormat(sample_rate=44100))], KEY, CODE.INVALID_ARGUMENT,
                 "44100 Hz is not supported; use one of 8000, 16000, 24000, 48000"),
                ([config(output=AudioFormat(sample_rate=22050))], KEY, CODE.INVALID_ARGUMENT, "output sample_rate"),
                ([ClientEvent(config=ClientConfig())], KEY, CODE.INVALID_ARGUMENT, "input.sample_rate is required"),
                ([config(), audio(16001)], KEY, CODE.INVALID_ARGUMENT, "exceeds the limit of 1 s (16000 samples)"),
                ([config(input=AudioFormat(sample_rate=8000)), audio(8001)], KEY, CODE.INVALID_ARGUMENT,
                 "exceeds the limit of 1 s (8000 samples)"),
                ([config(), ClientEvent(audio=ClientAudio(pcm16=b"\x01\x02\x03"))], KEY, CODE.INVALID_ARGUMENT,
                 "odd number of bytes (3)"),
                ([config(), audio(640), config()], KEY, CODE.INVALID_ARGUMENT, "config may only be sent as the first"),
                ([config(call_id="no spaces")], KEY, CODE.INVALID_ARGUMENT, "must be 1-96 characters"),
                ([config(sampling=Sampling(temperature=-1))], KEY, CODE.INVALID_ARGUMENT, "temperature must be"),
                ([config(style=Style(voice="robot")), audio(640)], KEY, CODE.INVALID_ARGUMENT, "unknown voice 'robot'"),
                ([config(), audio(640), ClientEvent(style=Style(emotion="ANGRY"))], KEY, CODE.INVALID_ARGUMENT,
                 "unknown emotion 'ANGRY'"),
                ([config(call_id="never-seen", resume=True)], KEY, CODE.NOT_FOUND, "no live call 'never-seen'"),
                ([config(call_id="done-call")], KEY, CODE.FAILED_PRECONDITION, "has ended; use a new call_id"),
                ([config(call_id="done-call")], OTHER_KEY, CODE.OK, ""),  # call ids are per key: a new call
            ]
            for messages, key, code, message in cases:
                got, details, events = await status_of(address, messages, key)
                assert (got, message in details) == (code, True), (message, got, details)
                if events and got != CODE.OK:  # refused after it started: CallEnded says why first
                    assert events[-1].WhichOneof("event") == "ended" and events[-1].ended.reason == details
            got, details, _ = await status_of(address, [b"\xff\xff garbage"], raw=True)
            assert got == CODE.INVALID_ARGUMENT and "malformed maata.v1.ClientEvent" in details
            got, details, _ = await status_of(address, [config().SerializeToString(), b"\xff\xff"], raw=True,
                                              half_close=False)
            assert got == CODE.INVALID_ARGUMENT and "malformed maata.v1.ClientEvent" in details

            # quota: a key with max_calls=1 holds one call; a second one is refused until it ends
            async with grpc.aio.insecure_channel(address) as channel:
                held = ConversationStub(channel).Converse(metadata=(("x-api-key", SMALL_KEY),))
                await held.write(config(call_id="held"))
                assert (await asyncio.wait_for(held.read(), TIMEOUT)).WhichOneof("event") == "started"
                got, details, _ = await status_of(address, [config()], SMALL_KEY)
                assert got == CODE.RESOURCE_EXHAUSTED and "'small' has 1 calls in progress, its limit" in details
                await held.write(ClientEvent(hangup=HangUp()))
                await held.done_writing()
                while await asyncio.wait_for(held.read(), TIMEOUT) is not grpc.aio.EOF:
                    pass  # gRPC surfaces the status after the last message is read
                assert await held.code() == CODE.OK
            assert (await status_of(address, [config(), audio(640)], SMALL_KEY))[0] == CODE.OK

            # out-of-range codes straight at the generation layer end only that stream
            async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.generation.port}") as channel:
                call = GenerationStub(channel).Converse()
                await call.write(UserFrame(config=CallConfig(call_id="raw-bad")))
                await call.write(UserFrame(codes=CodeFrame(codes=[0] * 7 + [LM.card]), seq=0))
                await call.done_writing()
                assert await asyncio.wait_for(call.code(), TIMEOUT) == CODE.INVALID_ARGUMENT
                assert "values must be in [-1, 63]" in await call.details()

            result = await asyncio.wait_for(good, 60)
            assert result.code == CODE.OK, result.details
            assert_complete(result, frames_for(3 * len(telugu)))
            assert not svc.gateway.gateway.calls and not svc.generation.calls.streams  # nothing leaked
            errors = svc.gateway.grpc.metrics.registry.get_sample_value(
                "maata_rpc_errors_total", {"service": "gateway", "method": "Converse", "code": "INVALID_ARGUMENT"})
            assert errors >= 14

    asyncio.run(main())


# -- faults --------------------------------------------------------------------------------------------
def test_generation_drained_mid_call_and_restarted_resumes_the_call(telugu: np.ndarray) -> None:
    """The generation service drains mid-call (history flushed, stream UNAVAILABLE): the partner
    sees CallEnded(resumable) + UNAVAILABLE, the client reconnects with the same call id while the
    service restarts on the same port, the call resumes at the stored frame and goes on; the stored
    history has every frame, contiguous."""

    async def main() -> None:
        async with services_running() as svc:
            received: list[int] = []
            drained = asyncio.Event()

            def on_event(event: Any) -> None:
                if event.WhichOneof("event") == "audio":
                    received.append(event.audio.seq)
                    if len(received) == 12:
                        drained.set()

            call = asyncio.create_task(converse(svc.address, KEY, np.tile(telugu, 2), 16000, call_id="resumed",
                                                on_event=on_event, retries=8))
            await asyncio.wait_for(drained.wait(), TIMEOUT)
            await svc.generation.drain()
            stored = await svc.store.get("test:resumed")
            assert stored.state == "live"
            await asyncio.sleep(0.3)
            before = sorted(set(received))
            assert before == list(range(stored.frames))  # every agent frame the partner got is stored, none lost
            await svc.restart_generation()
            result = await asyncio.wait_for(call, 60)
            assert result.code == CODE.OK, result.details
            assert result.resumes >= 1 and result.attempts >= 2
            ends = [e.ended for e in result.events if e.WhichOneof("event") == "ended"]
            assert ends[0].resumable and "reconnect with the same call_id" in ends[0].reason
            resumed = [e.started for e in result.events if e.WhichOneof("event") == "started" and e.started.resumed]
            assert resumed[0].frames == stored.frames
            total = len(result.seqs)
            assert result.seqs == list(range(total)) and total > stored.frames + 5
            final = await svc.store.get("test:resumed")
            assert final.state == "ended" and final.frames == total
            frames = [f async for f in svc.store.read("test:resumed")]
            assert [f.index for f in frames] == list(range(total))

    asyncio.run(main())


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_restart_keeps_every_calls_data(telugu: np.ndarray) -> None:
    with RedisServer() as redis:

        async def main() -> None:
            async with services_running(session_store=redis.url) as svc:
                first = await converse(svc.address, KEY, telugu, 16000, fast=True, call_id="before-restart")
                assert first.code == CODE.OK
                n_first = len(first.seqs)
                halfway = asyncio.Event()

                def on_event(event: Any) -> None:
                    if event.WhichOneof("event") == "audio" and event.audio.seq == 10:
                        halfway.set()

                call = asyncio.create_task(converse(svc.address, KEY, np.tile(telugu, 2), 16000,
                                                    call_id="during-restart", on_event=on_event))
                await asyncio.wait_for(halfway.wait(), TIMEOUT)
                await asyncio.to_thread(redis.restart)  # the call goes on; its flushes wait for Redis
                result = await asyncio.wait_for(call, 60)
                assert result.code == CODE.OK, result.details
                total = len(result.seqs)
                assert result.seqs == list(range(total))
                store = RedisSessionStore(redis.url)
                try:
                    for call_id, frames in (("test:before-restart", n_first), ("test:during-restart", total)):
                        session = await store.get(call_id)
                        assert (session.state, session.frames) == ("ended", frames)
                        assert [f.index async for f in store.read(call_id)] == list(range(frames))
                finally:
                    await store.close()

        asyncio.run(main())


# -- pieces ------------------------------------------------------------------------------------------
def test_started_is_sent_only_once_the_generation_admitted_the_call() -> None:
    """The gateway admits by its own capacity, but the generation has one slot: a second call is
    refused RESOURCE_EXHAUSTED by the generation with no `started` before it, and the refusal is
    counted (reason "backend"); nothing is left registered."""

    async def main() -> None:
        async with services_running(max_calls=1) as svc:
            async with grpc.aio.insecure_channel(svc.address) as channel:
                held = ConversationStub(channel).Converse(metadata=(("x-api-key", KEY),))
                await held.write(config(call_id="holder"))
                assert (await asyncio.wait_for(held.read(), TIMEOUT)).WhichOneof("event") == "started"
                code, details, events = await status_of(svc.address, [config(), audio(640)], OTHER_KEY)
                assert code == CODE.RESOURCE_EXHAUSTED and "generation slots" in details, (code, details)
                assert not [e for e in events if e.WhichOneof("event") == "started"]
                held.cancel()
            registry = svc.gateway.grpc.metrics.registry
            assert registry.get_sample_value("maata_refusals_total", {"service": "gateway", "front_end": "partner",
                                                                      "reason": "backend"}) == 1
            deadline = asyncio.get_running_loop().time() + 10
            while svc.gateway.gateway.calls and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            assert not svc.gateway.gateway.calls and svc.gateway.gateway.admission.total == 0

    asyncio.run(main())


def test_speech_detection_hysteresis_and_turn_latency() -> None:
    d = SpeechDetector(SpeechConfig(on_dbfs=-40, off_dbfs=-50, on_frames=2, off_frames=3))
    levels = [-60, -30, -45, -30, -30, -45, -55, -45, -55, -55, -55, -30]
    changes = [(i, c) for i, level in enumerate(levels) if (c := d.update(i, level)) is not None]
    # -45 is between the thresholds: it breaks a run of voiced frames but keeps speech going
    assert changes == [(4, (True, 3)), (10, (False, 8))]
    turn = TurnTracker()
    turn.user_started()
    assert turn.agent_started(1.0) is None  # the agent talking over the user is no turn
    assert turn.user_stopped(2.0) is None
    turn.agent_stopped()
    assert turn.agent_started(2.5) == pytest.approx(0.5)
    assert turn.agent_started(3.0) is None  # once per user turn
    turn.user_started()
    turn.agent_stopped()
    assert turn.agent_started(4.0) is None
    assert turn.user_stopped(3.5) == pytest.approx(0.5)  # the agent began before the stop was confirmed


def test_api_keys_are_hashed_and_counted() -> None:
    key = ApiKey("p1", hash_key("secret"), max_calls=1)
    auth = Authenticator([key])
    assert auth.authenticate([("x-api-key", "secret")]) == key
    for metadata, message in (([], "missing API key"), ([("x-api-key", "nope")], "invalid API key")):
        with pytest.raises(Exception, match=message):
            auth.authenticate(metadata)
    admission = Admission(capacity=4)
    ticket = admission.admit(key.tenant, "partner")
    with pytest.raises(Refused, match="limit"):
        admission.admit(key.tenant, "partner")
    ticket.release()
    ticket.release()  # idempotent
    admission.admit(key.tenant, "partner")
    with pytest.raises(ValueError, match="never the key itself"):
        ApiKey("p2", "secret")  # a plaintext key in config is refused


def test_keys_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"- {{id: filed, sha256: {hash_key('k')}, max_calls: 2}}\n")
    auth = Authenticator.from_config(AuthConfig(keys=[KEYS[0]], keys_file=str(path)))
    assert auth.authenticate([("x-api-key", "k")]).id == "filed"
    assert auth.authenticate([("x-api-key", KEY)]).id == "test"


# -- the pipeline alone, over scripted backends ---------------------------------------------------------
class ScriptedBackends:
    """In-process stand-ins for the codec and generation servicers: the 'codec' codes a frame as 1
    (loud) or 0 (quiet) and decodes 1 to a loud frame; the 'generation' answers every user frame
    and, 3 frames after the user went quiet, speaks for 5 frames (a toy turn-taker); with
    ``fail_after`` it ends its stream with ``fail_code`` after that many frames."""

    hop = HOP
    voices: tuple[str, ...] = ()
    emotions: tuple[str, ...] = ()
    description = "scripted"

    def __init__(self, fail_after: int | None = None, fail_code: grpc.StatusCode = CODE.UNAVAILABLE) -> None:
        self.fail_after, self.fail_code = fail_after, fail_code
        self.max_ahead = 0

    async def connect(self, timeout_s: float = 0) -> None:
        pass

    async def close(self) -> None:
        pass

    def encoder(self, call_id: str) -> Any:
        from maata.audio import pcm16_to_float
        from maata_protos.v1.codec_pb2 import CodeFrames
        from services.gateway.backends import InprocDuplex

        async def encode(requests: Any, context: Any) -> Any:
            async for chunk in requests:
                loud = float(np.abs(pcm16_to_float(chunk.pcm16)).mean()) > 0.01
                yield CodeFrames(frames=[CodeFrame(codes=[int(loud)])], seq=chunk.seq)

        return InprocDuplex("encode", encode, call_id)

    def generator(self, call_id: str) -> Any:
        from maata_protos.v1.generation_pb2 import AgentFrame
        from services.gateway.backends import InprocDuplex

        backends = self

        async def generate(requests: Any, context: Any) -> Any:
            step, quiet, heard, speak = 0, 0, False, 0
            await context.send_initial_metadata(((ADMITTED_METADATA, "1"),))  # holds its slot, like the real one
            async for message in requests:
                if not message.HasField("codes"):
                    continue
                backends.max_ahead = max(backends.max_ahead, message.seq - step + 1)
                if backends.fail_after is not None and step == backends.fail_after:
                    await context.abort(backends.fail_code, "scripted failure")
                loud = message.codes.codes[0] == 1
                heard, quiet = (True, 0) if loud else (heard, quiet + 1)
                if heard and quiet == 3:
                    heard, speak = False, 5
                reply = AgentFrame(seq=message.seq, frame=step, step_ms=1.0)
                if step > 0:  # acoustic delay: no codes at the first step
                    reply.codes.CopyFrom(CodeFrame(codes=[int(speak > 0)]))
                    speak = max(speak - 1, 0)
                step += 1
                await asyncio.sleep(0.002)
                yield reply

        return InprocDuplex("generate", generate, call_id)

    def decoder(self, call_id: str) -> Any:
        from maata_protos.v1.codec_pb2 import AudioChunk
        from services.gateway.backends import InprocDuplex

        async def decode(requests: Any, context: Any) -> Any:
            async for message in requests:
                level = 0.3 if message.frames[0].codes[0] else 0.0
                yield AudioChunk(pcm16=float_to_pcm16(np.full(HOP, level, np.float32)), sample_rate=16000,
                                 seq=message.seq)

        return InprocDuplex("decode", decode, call_id)


async def run_pipeline(backends: Any, frames: np.ndarray, **setup: Any) -> list[Any]:
    from services.gateway.pipeline import CallSetup, Pipeline, PipelineConfig

    speech = SpeechConfig(on_dbfs=-40, off_dbfs=-50, on_frames=2, off_frames=3)
    pipeline = Pipeline(backends, CallSetup("k:c", **setup), PipelineConfig(3, speech, speech))
    await pipeline.start()

    async def feed() -> None:
        await pipeline.push(frames[:5000])  # any chunking: frames are cut by the pipeline
        await pipeline.push(frames[5000:])
        await pipeline.hang_up()

    feeder = asyncio.create_task(feed())
    events = [event async for event in pipeline.events()]
    await feeder
    await pipeline.close()
    return events


def test_pipeline_events_order_speaking_turn_latency_and_lossless_pacing() -> None:
    from services.gateway.pipeline import AgentAudio, Ended, Latency, Speaking

    user = np.concatenate([np.full(10 * HOP, 0.3, np.float32), np.zeros(20 * HOP + 100, np.float32)])
    backends = ScriptedBackends()
    events = asyncio.run(run_pipeline(backends, user, lossless=True, timing=True))
    audio = [e for e in events if isinstance(e, AgentAudio)]
    assert [a.frame for a in audio] == list(range(31))  # 30 frames and the padded partial one
    assert not audio[0].pcm.any() and audio[12].pcm.max() > 0.2  # silence at step 0 (no codes yet)
    assert [a.timing.user_seq for a in audio] == list(range(31)) and all(a.timing.total_ms > 0 for a in audio)
    assert backends.max_ahead <= 3  # lossless: never more than 3 frames ahead of the agent
    talk = [(type(e).__name__, getattr(e, "agent_speaking", None), getattr(e, "frame", None)) for e in events
            if isinstance(e, (Speaking, Latency))]
    # user quiet from frame 10 (stop confirmed at 12); the agent speaks frames 12-16 (confirmed at 13)
    assert talk == [("Speaking", True, 12), ("Latency", None, None), ("Speaking", False, 17)]
    latency = next(e for e in events if isinstance(e, Latency))
    assert 0 < latency.ms < 2000 and latency.frame_ms > 0
    assert isinstance(events[-1], Ended) and events[-1].ok


def test_pipeline_delivers_what_the_agent_said_before_a_backend_failure() -> None:
    from services.gateway.pipeline import AgentAudio, Ended

    user = np.full(20 * HOP, 0.3, np.float32)
    events = asyncio.run(run_pipeline(ScriptedBackends(fail_after=6), user, lossless=True))
    assert [e.frame for e in events if isinstance(e, AgentAudio)] == list(range(6))
    end = events[-1]
    assert isinstance(end, Ended) and end.code == CODE.UNAVAILABLE and end.resumable
    assert "the generate stage failed (UNAVAILABLE: scripted failure); reconnect with the same call_id" in end.details
    events = asyncio.run(run_pipeline(ScriptedBackends(fail_after=2, fail_code=CODE.INVALID_ARGUMENT), user))
    assert (events[-1].code, events[-1].details) == (CODE.INVALID_ARGUMENT, "scripted failure")  # passed through
