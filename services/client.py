"""The Python partner client of the Conversation API (protos/maata/v1/conversation.proto).

    result = await converse("127.0.0.1:7100", api_key, audio, rate=16000, voice="female_1")
    write_wav("reply.wav", result.audio, result.out_rate)

or from the shell::

    maata client --in q.wav --out reply.wav [--voice female_1] [--emotion HAPPY] [--addr HOST:PORT]
                 [--api-key KEY | env MAATA_API_KEY] [--rate 16000] [--out-rate R] [--fast] [--text]

The audio is streamed in 40 ms chunks in real time (``--fast``: as fast as the server takes it,
with ``lossless`` set so the server applies flow control instead of dropping frames). A file
whose rate the API does not take (e.g. espeak-ng's 22,050 Hz) is resampled with soxr to
``--rate`` (16 kHz by default) before sending. The agent's audio is written at the output rate
(default: the input rate); events are printed as they come.

Resume: the client names the call (a random call_id unless given). When the stream ends
UNAVAILABLE (a server drained or restarted: the call's history is kept), it reconnects with the
same call_id and ``resume`` set, up to ``retries`` times with backoff, and goes on streaming
from where it was; audio that was in flight when the stream broke is lost, as on a phone line.
Agent frames are kept by their ``seq``: a resume that continues from an earlier frame (a crash
lost the last unflushed steps) replaces the frames after it.

Channel options are ``services.common.server.channel_options`` (keepalive pings every 20 s,
never more often than the server allows) plus a reconnect backoff capped at 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from maata.audio import float_to_pcm16, pcm16_to_float
from services.common.config import ServerConfig
from services.common.server import channel_options
from services.gateway.auth import API_KEY_METADATA
from services.gateway.backends import RECONNECT_OPTIONS

from maata_protos.v1.common_pb2 import Sampling, Style
from maata_protos.v1.conversation_pb2 import AudioFormat, ClientAudio, ClientConfig, ClientEvent, HangUp, ServerEvent
from maata_protos.v1.conversation_pb2_grpc import ConversationStub

SUPPORTED_RATES = (8000, 16000, 24000, 48000)
CHUNK_MS = 40
RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})


@dataclass
class FrameLatency:
    """One agent frame answering one user chunk: the client's round trip and the server's timing."""

    user_seq: int
    client_ms: float  # chunk sent -> the answering ServerAudio received
    encode_ms: float
    generate_ms: float
    step_ms: float
    decode_ms: float
    server_ms: float  # the gateway's total
    at: float  # seconds since the call started (client clock)


@dataclass
class CallResult:
    call_id: str
    out_rate: int
    frames: dict[int, bytes] = field(default_factory=dict)  # agent frame seq -> PCM16
    events: list[ServerEvent] = field(default_factory=list)  # everything but audio
    latencies: list[FrameLatency] = field(default_factory=list)
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    attempts: int = 0
    resumes: int = 0
    sent_samples: int = 0

    @property
    def seqs(self) -> list[int]:
        return sorted(self.frames)

    @property
    def audio(self) -> np.ndarray:
        """The agent's audio, frames in seq order, float32 at ``out_rate``."""
        data = b"".join(self.frames[s] for s in sorted(self.frames))
        return pcm16_to_float(data) if data else np.zeros(0, np.float32)


class _Attempt:
    """One Converse stream of a call."""

    def __init__(self) -> None:
        self.started = False
        self.sent_at: dict[int, float] = {}
        self.seen: set[int] = set()


async def converse(address: str, api_key: str, audio: np.ndarray, rate: int, *, out_rate: int = 0, voice: str = "",
                   emotion: str = "", call_id: str = "", fast: bool = False, text: bool = False,
                   timing: bool = False, sampling: Sampling | None = None, retries: int = 5,
                   styles: dict[int, Style] | None = None, on_event: Callable[[ServerEvent], Any] | None = None,
                   channel: grpc.aio.Channel | None = None, options: list[tuple[str, Any]] | None = None,
                   connect_timeout_s: float = 10.0) -> CallResult:
    """Stream ``audio`` (float32 mono at ``rate``, one of 8/16/24/48 kHz) as one call and collect
    the agent's audio and events. ``styles``: style changes keyed by the chunk index they go
    before. ``on_event(ServerEvent)`` sees every event as it arrives. Reconnects (resume) on
    UNAVAILABLE up to ``retries`` times; the result's ``code`` is how the call finally ended."""
    if rate not in SUPPORTED_RATES:
        raise ValueError(f"rate {rate} Hz is not one the API takes ({SUPPORTED_RATES}); resample first")
    out_rate = out_rate or rate
    result = CallResult(call_id or uuid.uuid4().hex, out_rate)
    chunk = rate * CHUNK_MS // 1000
    pcm16 = float_to_pcm16(np.asarray(audio, np.float32))
    n_chunks = -(-(len(pcm16) // 2) // chunk)
    position = 0  # next chunk to send
    own_channel = channel is None
    if channel is None:
        channel = grpc.aio.insecure_channel(address, options=options or [*channel_options(ServerConfig()),
                                                                           *RECONNECT_OPTIONS])
    stub = ConversationStub(channel)
    clock0 = time.perf_counter()
    resumable_started = False
    try:
        while True:
            result.attempts += 1
            attempt = _Attempt()
            call = stub.Converse(metadata=((API_KEY_METADATA, api_key),), wait_for_ready=result.attempts == 1)
            config = ClientConfig(call_id=result.call_id, style=Style(voice=voice, emotion=emotion),
                                  input=AudioFormat(sample_rate=rate), output=AudioFormat(sample_rate=out_rate),
                                  text=text, resume=resumable_started, lossless=fast, timing=timing)
            if sampling is not None:
                config.sampling.CopyFrom(sampling)

            stop = False  # set once the server ended the call: no more writes (grpc#36066, see below)

            async def write(first: int) -> None:
                nonlocal position
                start = time.perf_counter()
                for k in range(first, n_chunks):
                    if not fast:
                        delay = start + (k - first) * CHUNK_MS / 1000 - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    if stop:
                        return
                    if styles and k in styles:
                        await call.write(ClientEvent(style=styles[k]))
                    attempt.sent_at[k - first] = time.perf_counter()
                    await call.write(ClientEvent(audio=ClientAudio(pcm16=pcm16[2 * k * chunk:2 * (k + 1) * chunk],
                                                                   seq=k)))
                    position = k + 1
                    result.sent_samples = min(position * chunk, len(pcm16) // 2)
                if not stop:
                    await call.write(ClientEvent(hangup=HangUp()))
                    await call.done_writing()

            writer: asyncio.Task[None] | None = None
            ended: Any = None
            try:
                await asyncio.wait_for(call.write(ClientEvent(config=config)), connect_timeout_s)
                while (event := await call.read()) is not grpc.aio.EOF:
                    kind = event.WhichOneof("event")
                    _on_event(result, attempt, event, clock0)
                    if kind == "started":
                        attempt.started = resumable_started = True
                        writer = asyncio.create_task(write(position))  # audio only once the call is accepted
                    elif kind == "ended":
                        ended, stop = event.ended, True
                    if on_event is not None:
                        on_event(event)
                code, details = await call.code(), await call.details()
            except grpc.aio.AioRpcError as err:
                code, details = err.code(), err.details() or ""
            except (asyncio.TimeoutError, TimeoutError):
                code, details = grpc.StatusCode.UNAVAILABLE, f"no connection to {address} in {connect_timeout_s} s"
                call.cancel()
            finally:
                stop = True
                if writer is not None:
                    writer.cancel()
                    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, asyncio.InvalidStateError,
                                             Exception):
                        await writer
            if code == grpc.StatusCode.INTERNAL and ended is not None and ended.code in grpc.StatusCode.__members__:
                # grpc.aio reports INTERNAL when a write races the server's end of the stream (grpc#36066);
                # CallEnded carries the real status
                code, details = grpc.StatusCode[ended.code], ended.reason
            result.code, result.details = code, details
            if code not in RETRY_CODES or result.attempts > retries:
                return result
            await asyncio.sleep(min(0.2 * 2 ** (result.attempts - 1), 2.0))
    finally:
        if own_channel:
            await channel.close()


def _on_event(result: CallResult, attempt: _Attempt, event: ServerEvent, clock0: float) -> None:
    kind = event.WhichOneof("event")
    if kind == "audio":
        audio = event.audio
        if audio.seq in attempt.seen:
            result.frames[audio.seq] += audio.pcm16  # the final resampler tail of the last frame
        else:
            attempt.seen.add(audio.seq)
            result.frames[audio.seq] = audio.pcm16
        if audio.HasField("timing"):
            t = audio.timing
            now = time.perf_counter()
            sent = attempt.sent_at.get(t.user_seq)
            if sent is not None:
                result.latencies.append(FrameLatency(t.user_seq, (now - sent) * 1e3, t.encode_ms, t.generate_ms,
                                                     t.step_ms, t.decode_ms, t.total_ms, now - clock0))
        return
    if kind == "started" and event.started.resumed:
        result.resumes += 1
        for seq in [s for s in result.frames if s >= event.started.frames]:
            del result.frames[seq]  # the stored history ends earlier: the call continues from there
    result.events.append(event)


def describe(event: ServerEvent) -> str | None:
    """One printable line for an event (None for audio)."""
    kind = event.WhichOneof("event")
    if kind == "started":
        s = event.started
        return (f"started   call_id={s.call_id} resumed={s.resumed} frames={s.frames} frame_ms={s.frame_ms} "
                f"rate={s.sample_rate}")
    if kind == "speaking":
        return f"speaking  agent={'started' if event.speaking.agent_speaking else 'stopped'} frame={event.speaking.frame}"
    if kind == "text":
        return f"text      {event.text.text!r} frame={event.text.frame}"
    if kind == "latency":
        return f"latency   turn={event.latency.ms:.0f} ms frame={event.latency.frame_ms:.1f} ms"
    if kind == "ended":
        return f"ended     reason={event.ended.reason!r} resumable={event.ended.resumable}"
    return None


__all__ = ["CallResult", "FrameLatency", "SUPPORTED_RATES", "converse", "describe"]
