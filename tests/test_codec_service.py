"""The Codec gRPC service over real grpc.aio on 127.0.0.1 with a tiny untrained codec: batched
serving equals the codec's own math, streams are isolated, bad input gets the right status
without hurting other streams, slots run out cleanly, health/metrics work, drains are graceful."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import urllib.request
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.codec.service import SERVICE_NAME, CodecServer, CodecServiceConfig, load_config, serve_codec
from services.common.config import ServerConfig
from services.common.logs import configure_logging
from services.common.server import CALL_ID_METADATA, channel_options, server_options
from tests.support.models import TINY_CODEC

from maata.audio import float_to_pcm16, pcm16_to_float
from maata_protos.v1.codec_pb2 import AudioChunk, CodeFrames, InfoRequest
from maata_protos.v1.codec_pb2_grpc import CodecStub
from maata_protos.v1.common_pb2 import CodeFrame

torch.set_num_threads(1)

TIMEOUT = 10.0
RATE = 16000
HOP = 640
TINY = TINY_CODEC
Body = Callable[[CodecStub, CodecServer, grpc.aio.Channel], Awaitable[None]]


def serve(body: Body, *, server: dict[str, Any] | None = None, **config: Any) -> None:
    """Run ``body(stub, server, channel)`` against a codec service with the tiny codec."""
    cfg = CodecServiceConfig(server=ServerConfig(**{"grace_seconds": 5.0, **(server or {})}),
                             preset_overrides=TINY, **{"max_streams": 4, **config})

    async def main() -> None:
        handle = await serve_codec(cfg, port=0, host="127.0.0.1")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}",
                                                 options=channel_options(cfg.server)) as channel:
                await body(CodecStub(channel), handle, channel)
        finally:
            await handle.drain()

    asyncio.run(main())


def speech_like(seconds: float, seed: int) -> bytes:
    """PCM16 of a noisy harmonic signal with pauses (so frames differ in level)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.3 * np.sin(2 * np.pi * (120 + 40 * seed) * t) * (np.sin(2 * np.pi * 2 * t) > -0.3)
    return float_to_pcm16((tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32))


def chunks(pcm16: bytes, samples: int, **fields: Any) -> list[AudioChunk]:
    return [AudioChunk(pcm16=pcm16[i:i + 2 * samples], sample_rate=fields.get("sample_rate", RATE), seq=n)
            for n, i in enumerate(range(0, len(pcm16), 2 * samples))]


async def iterate(messages: list[Any], pause: float = 0.0) -> AsyncIterator[Any]:
    for message in messages:
        yield message
        if pause:
            await asyncio.sleep(pause)


async def encode(stub: CodecStub, pcm16: bytes, samples: int, pause: float = 0.0) -> tuple[torch.Tensor, list[int]]:
    """Stream ``pcm16`` in chunks of ``samples``; returns the codes [n_q, F] and the replies' seqs."""
    replies = [r async for r in stub.Encode(iterate(chunks(pcm16, samples), pause))]
    codes = [torch.tensor([list(f.codes) for f in r.frames]).T for r in replies]
    return torch.cat(codes, -1), [r.seq for r in replies]


async def decode(stub: CodecStub, codes: torch.Tensor, frames: int) -> np.ndarray:
    """Send codes [n_q, F] in messages of ``frames`` frames; returns the float audio."""
    messages = [CodeFrames(frames=[CodeFrame(codes=c) for c in codes[:, i:i + frames].T.tolist()], seq=i)
                for i in range(0, codes.shape[-1], frames)]
    replies = [r async for r in stub.Decode(iterate(messages))]
    assert [r.seq for r in replies] == [m.seq for m in messages]
    assert all(r.sample_rate == RATE for r in replies)
    return pcm16_to_float(b"".join(r.pcm16 for r in replies))


def offline(codec: torch.nn.Module, pcm16: bytes) -> tuple[torch.Tensor, np.ndarray]:
    """The codec's offline codes [n_q, F] and decoded audio of the same PCM16 input."""
    wav = torch.from_numpy(pcm16_to_float(pcm16))[None, None]
    codes = codec.encode(wav)
    return codes[0], codec.decode(codes)[0, 0].numpy()


PCM16_TOLERANCE = 1e-4 + 0.5 / 32768  # float streaming tolerance plus the PCM16 rounding


async def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
    """The status (and details) a streaming call ends with."""
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def test_round_trip_equals_offline_codec() -> None:
    async def body(stub: CodecStub, server: CodecServer, channel: grpc.aio.Channel) -> None:
        info = await stub.Info(InfoRequest(), timeout=TIMEOUT)
        assert (info.sample_rate, info.hop, info.num_codebooks, info.codebook_size) == (RATE, HOP, 4, 64)
        pcm16 = speech_like(1.3, seed=0)  # 32.5 frames: the last one is padded
        ref_codes, ref_audio = offline(server.codec, pcm16)
        codes, seqs = await encode(stub, pcm16, 320)  # 20 ms chunks: a reply every second chunk
        assert torch.equal(codes, ref_codes)
        assert seqs == list(range(1, 64, 2)) + [64]  # chunks 0..64; the flush reply carries the last seq
        audio = await decode(stub, codes, frames=3)
        assert audio.shape == ref_audio.shape
        assert np.abs(audio - ref_audio).max() <= PCM16_TOLERANCE

    serve(body)


def test_concurrent_streams_each_get_their_own_result() -> None:
    """Streams batched together with different chunk sizes, start times and pacing each get
    exactly what they would get alone (the offline codec)."""

    async def body(stub: CodecStub, server: CodecServer, channel: grpc.aio.Channel) -> None:
        inputs = [speech_like(0.8 + 0.15 * i, seed=i) for i in range(4)]
        sizes, pauses = (160, 640, 1000, 5000), (0.0, 0.002, 0.0, 0.01)
        refs = [offline(server.codec, pcm16) for pcm16 in inputs]
        encoded = await asyncio.gather(*(encode(stub, p, n, s) for p, n, s in zip(inputs, sizes, pauses)))
        for (codes, _), (ref_codes, _) in zip(encoded, refs):
            assert torch.equal(codes, ref_codes)
        decoded = await asyncio.gather(*(decode(stub, ref_codes, k) for (ref_codes, _), k in zip(refs, (1, 2, 4, 7))))
        for audio, (_, ref_audio) in zip(decoded, refs):
            assert np.abs(audio - ref_audio).max() <= PCM16_TOLERANCE

    serve(body)


def test_bad_input_ends_only_its_own_stream() -> None:
    async def body(stub: CodecStub, server: CodecServer, channel: grpc.aio.Channel) -> None:
        good_pcm = speech_like(1.0, seed=5)
        good = asyncio.create_task(encode(stub, good_pcm, 640, pause=0.005))
        frame = CodeFrame(codes=[1, 2, 3, 4])
        bad_audio = [
            (chunks(good_pcm, 640, sample_rate=8000)[:2], "sample_rate 8000 Hz is not the codec's 16000 Hz"),
            ([AudioChunk(pcm16=b"\x00" * 641, sample_rate=RATE)], "odd number of bytes (641)"),
            ([AudioChunk(pcm16=b"\x00" * 2 * 4001, sample_rate=RATE)], "chunk of 4001 samples exceeds the limit 4000"),
        ]
        bad_codes = [
            ([CodeFrames(frames=[frame, CodeFrame(codes=[1, 2, 3, 64])])], "code values must be in [0, 63]"),
            ([CodeFrames(frames=[CodeFrame(codes=[-2, 0, 0, 0])])], "code values must be in [0, 63]"),
            ([CodeFrames(frames=[CodeFrame(codes=[0] * 5)])], "codes have 5 codebooks; this codec decodes 1..4"),
            ([CodeFrames(frames=[CodeFrame()])], "codes have 0 codebooks"),
            ([CodeFrames(frames=[frame, CodeFrame(codes=[1, 2])])], "same number of codebooks, got [2, 4]"),
        ]
        for messages, message in bad_audio:
            code, details = await status_of(stub.Encode(iterate([AudioChunk(sample_rate=RATE), *messages])))
            assert (code, message in details) == (grpc.StatusCode.INVALID_ARGUMENT, True), details
        for messages, message in bad_codes:
            code, details = await status_of(stub.Decode(iterate([CodeFrames(frames=[frame]), *messages])))
            assert (code, message in details) == (grpc.StatusCode.INVALID_ARGUMENT, True), details
        garbage = channel.stream_stream("/maata.v1.Codec/Encode", request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        code, _ = await status_of(garbage(iterate([b"\xff\xff garbage"])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        codes, _ = await good
        assert torch.equal(codes, offline(server.codec, good_pcm)[0])
        assert server.engine.encoder.open_slots == 0 and server.engine.decoder.open_slots == 0  # all freed

    serve(body, max_chunk_samples=4000)


def test_slots_run_out_with_resource_exhausted() -> None:
    async def body(stub: CodecStub, server: CodecServer, channel: grpc.aio.Channel) -> None:
        frame = AudioChunk(pcm16=b"\x00" * 2 * HOP, sample_rate=RATE)
        calls = [stub.Encode() for _ in range(2)]
        for call in calls:  # a reply proves the handler holds its slot
            await call.write(frame)
            await call.read()
        code, details = await status_of(stub.Encode(iterate([frame])))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "all 2 encoder slots are in use" in details
        audio = await decode(stub, torch.zeros(4, 2, dtype=torch.long), frames=1)  # decode slots are separate
        assert audio.shape == (2 * HOP,)
        calls[0].cancel()  # a client going away frees its slot
        for _ in range(500):
            if server.engine.encoder.open_slots < 2:
                break
            await asyncio.sleep(0.01)
        codes, _ = await encode(stub, bytes(2 * HOP), HOP)
        assert codes.shape == (4, 1)
        await calls[1].done_writing()
        assert await calls[1].code() == grpc.StatusCode.OK

    serve(body, max_streams=2)


def test_health_reflection_metrics_and_logs() -> None:
    async def body(stub: CodecStub, server: CodecServer, channel: grpc.aio.Channel) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        listing = reflection.ServerReflectionInfo(iterate([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = {s.name async for r in listing for s in r.list_services_response.service}
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= services
        await encode(stub, speech_like(0.3, seed=1), 640)
        logs = io.StringIO()
        root = logging.getLogger()
        handler, level = configure_logging(stream=logs), root.level
        try:
            await status_of(stub.Encode(iterate([AudioChunk(sample_rate=8000)]), metadata=((CALL_ID_METADATA, "c1"),)))
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
        record = next(r for r in map(json.loads, logs.getvalue().splitlines()) if r.get("method") == "Encode")
        assert (record["service"], record["call_id"], record["code"]) == ("codec", "c1", "INVALID_ARGUMENT")
        assert server.metrics_port > 0
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=TIMEOUT).read().decode())
        for needle in ('maata_stage_latency_seconds_bucket{le="0.005",service="codec",stage="encode"}',
                       'maata_stage_latency_seconds_count{service="codec",stage="encode_step"}',
                       'maata_rpc_errors_total{code="INVALID_ARGUMENT",method="Encode",service="codec"} 1.0',
                       'maata_live_calls{rpc="Encode",service="codec"} 0.0',
                       'maata_missed_frame_deadlines_total'):
            assert needle in text, needle

    serve(body, server={"metrics_port": -1})


NOTICE = 0.5


def test_drain_lets_an_in_flight_stream_finish() -> None:
    async def body(stub: CodecStub, server: CodecServer, channel: grpc.aio.Channel) -> None:
        pcm16 = speech_like(0.6, seed=2)
        call = stub.Encode()
        replies = []
        for n, chunk in enumerate(chunks(pcm16, HOP)):
            await call.write(chunk)
            replies.append(await call.read())
            if n == 2:
                draining = asyncio.create_task(server.drain())
                await asyncio.sleep(0.05)  # within the drain notice: NOT_SERVING, still answering
                health = health_pb2_grpc.HealthStub(channel)
                reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=TIMEOUT)
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
                await asyncio.sleep(NOTICE)  # past the notice: new streams are refused
                code, _ = await status_of(stub.Encode(iterate([chunk])))
                assert code == grpc.StatusCode.UNAVAILABLE
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
        await draining
        codes = torch.cat([torch.tensor([list(f.codes) for f in r.frames]).T for r in replies], -1)
        assert torch.equal(codes, offline(server.codec, pcm16)[0])

    serve(body, server={"drain_notice_seconds": NOTICE})


def test_sigterm_drains() -> None:
    async def main() -> None:
        cfg = CodecServiceConfig(preset_overrides=TINY, max_streams=2)
        handle = await serve_codec(cfg, port=0)
        handle.grpc.install_signal_handlers()
        signal.raise_signal(signal.SIGTERM)
        await asyncio.wait_for(handle.wait(), TIMEOUT)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            code, _ = await status_of(CodecStub(channel).Encode(iterate([AudioChunk(sample_rate=RATE)])))
            assert code == grpc.StatusCode.UNAVAILABLE

    asyncio.run(main())


def test_config_from_environment_and_validation() -> None:
    cfg = load_config(environ={"MAATA_CODEC_SERVICE__SERVER__PORT": "7001", "MAATA_CODEC_SERVICE__MAX_STREAMS": "8"},
                      frame_batch_window_ms=2)
    assert (cfg.server.port, cfg.max_streams, cfg.frame_batch_window_ms) == (7001, 8, 2.0)
    with pytest.raises(ValueError, match="does not fit in server.max_message_bytes"):
        CodecServiceConfig(max_chunk_samples=4_000_000)
    with pytest.raises(ValueError, match="must not exceed keepalive_time_s"):
        ServerConfig(keepalive_time_s=5.0, min_client_ping_interval_s=10.0)
    # the client pings no more often than the server tolerates, with the same message limit
    server, client = dict(server_options(cfg.server)), dict(channel_options(cfg.server))
    assert client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_ping_interval_without_data_ms"]
    assert client["grpc.max_send_message_length"] == server["grpc.max_receive_message_length"]
