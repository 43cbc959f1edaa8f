"""The one conversation path: user audio -> codec encode -> generation -> codec decode -> agent audio.

Every front end (the partner gRPC API in ``services.gateway.partner``, the browser in
``services.gateway.webrtc``) drives a call through one ``Pipeline``: it takes float32 PCM at 16 kHz in any
chunking (``push``) and gives agent PCM frames and events (``events``). Front ends own their
transport, formats and resampling; the pipeline owns framing, the three backend streams, the
ordering of agent frames, speech detection, turn latency and per-stage timing.

    pipeline = Pipeline(backends, CallSetup(call_id="k:c1"), config, metrics)
    await pipeline.start()
    await pipeline.push(pcm)          # float32 [n] at 16 kHz, any n
    await pipeline.set_style(voice="female_1")
    await pipeline.hang_up()          # or pipeline.fail(code, details); pipeline.close() always
    async for event in pipeline.events():   # AgentAudio | Speaking | Text | Latency, Ended last
        ...

Flow of one 40 ms frame (one hop of the codec, 640 samples)::

    push -> [frame f] -> Encode stream -> codes f -> Generation stream (seq f)
         -> AgentFrame (step k, answering f) -> Decode stream -> PCM of step k -> AgentAudio(k)

* The agent speaks from the call's first user frame on, one frame per generation step; a step
  whose codes are not drawn yet (the first ``acoustic_delay`` steps) is silence. So the agent's
  audio is as long as the call, frame for frame.
* **Backends** (``services.gateway.backends``) give the three streams as ``Duplex`` objects:
  over gRPC (``GrpcBackends``) or in process (``InprocBackends``: the very same servicer code
  called directly; ``maata serve``'s default). Both paths run the same validation and the same
  status codes, so a call behaves the same either way.
* **Input policy.** Live audio (the default) is forwarded as it comes: frames that arrive faster
  than real time wait in the generation service's short queue and the oldest is dropped when it
  is full (low latency over completeness); a backlog that stands for a whole ``backlog_window``
  (every frame found more than ``backlog_keep`` unanswered ones ahead of it) is cleared by not
  sending a frame, so a burst cannot leave a lasting 40-120 ms of extra delay. With
  ``CallSetup.lossless`` (files, tests) the pipeline keeps at most ``max_ahead_frames`` frames ahead of the agent and ``push`` waits
  (flow control back to the sender), so nothing is dropped.
* **Failures.** A backend stream that ends with an error ends the call with a status
  (``Ended``): UNAVAILABLE ("reconnect with the same call_id to resume") for a backend that went
  away, drained or broke; its own status for what the caller can act on (INVALID_ARGUMENT,
  FAILED_PRECONDITION, RESOURCE_EXHAUSTED, ABORTED, DEADLINE_EXCEEDED, DATA_LOSS, NOT_FOUND).
  When the generation stream ends, the agent frames it already sent are still decoded and
  delivered first. Closing the pipeline cancels its streams, which leaves the generation
  session live (flushed) and resumable.
* **Events.** ``Speaking`` when the agent starts/stops speaking (decoded frame energy with
  hysteresis, ``services.gateway.speech``); ``Latency`` when the agent starts speaking after the user
  stopped (user speech from the input's energy with the same detector): wall time from the
  arrival of the user's last voiced frame to the sending of the agent's first voiced frame.
* **Timing.** Each agent frame that answers a user frame carries a ``Timing`` (encode, generate
  incl. the wait for the frame clock, model step, decode, total), and the stages are observed
  in the gateway's ``ServiceMetrics`` (``maata_stage_latency_seconds{service="gateway",
  stage="encode"|"generate"|"decode"|"frame"}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from maata.audio import float_to_pcm16, pcm16_to_float, rms_dbfs
from services.common.errors import RESUME_HINT, StatusError
from services.common.metrics import ServiceMetrics
from services.gateway.backends import SAMPLE_RATE, Backends, Duplex
from services.gateway.speech import SpeechConfig, SpeechDetector, TurnTracker

from maata_protos.v1.codec_pb2 import AudioChunk, CodeFrames
from maata_protos.v1.common_pb2 import Sampling, Style
from maata_protos.v1.generation_pb2 import AgentFrame, CallConfig, UserFrame

log = logging.getLogger("maata.services.gateway")

Code = grpc.StatusCode
# backend statuses the caller can act on pass through; anything else is the backend's trouble: UNAVAILABLE
PASS_THROUGH = frozenset({Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.RESOURCE_EXHAUSTED, Code.ABORTED,
                          Code.DEADLINE_EXCEEDED, Code.DATA_LOSS, Code.NOT_FOUND})
RESUMABLE = frozenset({Code.UNAVAILABLE, Code.INVALID_ARGUMENT, Code.CANCELLED, Code.INTERNAL, Code.UNKNOWN})


# -- the pipeline -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PipelineConfig:
    max_ahead_frames: int = 3  # lossless input: user frames ahead of the agent (< generation's queue, 4)
    user_speech: SpeechConfig = field(default_factory=SpeechConfig)
    agent_speech: SpeechConfig = field(default_factory=SpeechConfig)
    backlog_window: int = 25  # live input: frames (1 s) over which a standing backlog is measured
    backlog_keep: int = 1  # live input: unanswered frames that are normal (the one waiting for its tick)
    admit_timeout_s: float = 30.0  # how long start() waits for the generation to admit the call

    def __post_init__(self) -> None:
        if self.max_ahead_frames < 1:
            raise ValueError(f"max_ahead_frames must be >= 1, got {self.max_ahead_frames}")
        if self.backlog_window < 2 or self.backlog_keep < 1:
            raise ValueError("backlog_window must be >= 2 and backlog_keep >= 1")


@dataclass(frozen=True)
class CallSetup:
    """One call as the backends see it (``call_id`` is the store's id, already namespaced)."""

    call_id: str
    style: Style = field(default_factory=Style)
    sampling: Sampling | None = None
    text: bool = False
    lossless: bool = False
    timing: bool = False


@dataclass
class Timing:
    user_seq: int
    encode_ms: float
    generate_ms: float
    step_ms: float
    decode_ms: float
    total_ms: float


@dataclass
class AgentAudio:
    frame: int  # the call's step index
    pcm: np.ndarray  # float32 [hop] at 16 kHz
    timing: Timing | None = None


@dataclass
class Speaking:
    agent_speaking: bool
    frame: int


@dataclass
class Text:
    text: str
    frame: int


@dataclass
class Latency:
    ms: float
    frame_ms: float


@dataclass
class Ended:
    code: grpc.StatusCode
    details: str

    @property
    def ok(self) -> bool:
        return self.code == Code.OK

    @property
    def resumable(self) -> bool:
        return self.code in RESUMABLE


Event = AgentAudio | Speaking | Text | Latency | Ended


@dataclass
class _Out:
    """An agent frame on its way out (in step order)."""

    frame: int
    pcm: np.ndarray | None  # None: waiting for the decoder
    user_seq: int | None  # the user frame it answers (None: filled or no user frame)
    received: float  # when the generation reply came
    step_ms: float
    decoded: float = 0.0


def backend_ending(err: StatusError) -> Ended:
    """How a backend's error ends the call (see the module docstring)."""
    if err.code in PASS_THROUGH:
        return Ended(err.code, err.details)
    return Ended(Code.UNAVAILABLE, f"the {err.stage} stage failed ({err.code.name}: {err.details}); {RESUME_HINT}")


class Pipeline:
    """One call through the backends (see the module docstring)."""

    def __init__(self, backends: Backends, setup: CallSetup, config: PipelineConfig | None = None,
                 metrics: ServiceMetrics | None = None) -> None:
        self.backends = backends
        self.setup = setup
        self.config = config or PipelineConfig()
        self.metrics = metrics
        self.hop = backends.hop
        self.frame_s = self.hop / SAMPLE_RATE
        self.ended: Ended | None = None
        self.started = False  # the generation admitted the call (start() returned)
        self.frames_in = 0  # user frames sent to the encoder
        self.voiced_in = 0  # of them, frames with sound (above the user speech detector's off level)
        self.backlog_dropped = 0  # live input frames not sent, to clear a standing backlog
        self.answered = 0  # user frames the agent answered (each once)
        self._backlog_min = 1 << 30
        self._backlog_seen = 0
        self.frames_out = 0  # agent frames emitted
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._buffer = np.zeros(0, np.float32)
        self._answered = -1  # the highest user frame the agent answered
        self._answer = asyncio.Event()
        self._t_in: dict[int, float] = {}
        self._t_codes: dict[int, float] = {}
        self._pending: deque[_Out] = deque()
        self._gen_error: StatusError | None = None
        self._hung_up = False
        self._streams: list[Duplex] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._user = SpeechDetector(self.config.user_speech)
        self._agent = SpeechDetector(self.config.agent_speech)
        self._turn = TurnTracker()
        self._last_voiced_at = 0.0
        self._sent_at: dict[int, tuple[float, float]] = {}  # recent agent frames: (sent at, total ms)
        self._turn_frame_ms = 0.0  # total ms of the agent's first frame of its latest turn
        self._closed = False

    # -- driving the call ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the three streams, send the generation its call config and wait until it holds a
        slot for the call; ``StatusError`` (its refusal, as ``backend_ending`` words it) if not.
        After this returns the call is admitted (``started``)."""
        s = self.setup
        self._enc = self.backends.encoder(s.call_id)
        self._gen = self.backends.generator(s.call_id)
        self._dec = self.backends.decoder(s.call_id)
        self._streams = [self._enc, self._gen, self._dec]
        config = CallConfig(call_id=s.call_id, style=s.style, text=s.text)
        if s.sampling is not None:
            config.sampling.CopyFrom(s.sampling)
        await self._gen.send(UserFrame(config=config))
        try:
            await asyncio.wait_for(self._gen.admitted(), self.config.admit_timeout_s)
        except StatusError as err:
            ending = backend_ending(err)
            raise StatusError(ending.code, ending.details) from None
        except asyncio.TimeoutError:
            raise StatusError(Code.UNAVAILABLE, f"the generation service did not admit the call within "
                                                f"{self.config.admit_timeout_s:g} s; retry") from None
        self.started = True
        self._tasks = [asyncio.create_task(self._guard(loop(), name), name=f"pipeline-{name}")
                       for name, loop in (("encode", self._encoded), ("generate", self._generated),
                                          ("decode", self._decoded))]

    async def push(self, pcm: np.ndarray) -> None:
        """User audio: float32 [n] at 16 kHz, any n. Whole frames go on at once; with ``lossless``
        this waits while the agent is ``max_ahead_frames`` frames behind."""
        if self.ended is not None or self._hung_up:
            return
        if pcm.size:
            self._buffer = np.concatenate([self._buffer, np.asarray(pcm, np.float32)])
        while self._buffer.size >= self.hop and self.ended is None:
            frame, self._buffer = self._buffer[:self.hop], self._buffer[self.hop:]
            await self._send_frame(frame)

    async def set_style(self, voice: str = "", emotion: str = "") -> None:
        """Change the agent's voice and/or emotion from its next step on (empty: unchanged)."""
        if self.ended is None:
            await self._gen.send(UserFrame(style=Style(voice=voice, emotion=emotion)))

    async def keep_alive(self) -> None:
        """Tell the generation service the caller is still there (no audio)."""
        if self.ended is None:
            await self._gen.send(UserFrame())

    async def hang_up(self) -> None:
        """The user is done: the partial last frame is padded with silence, every frame sent is
        answered, then the call ends OK (its session ended)."""
        if self._hung_up or self.ended is not None:
            return
        if self._buffer.size:
            await self._send_frame(np.concatenate([self._buffer, np.zeros(self.hop - self._buffer.size, np.float32)]))
            self._buffer = np.zeros(0, np.float32)
        self._hung_up = True
        await self._enc.done_writing()

    def fail(self, code: grpc.StatusCode, details: str) -> None:
        """End the call now with ``code`` (the front end's verdict, e.g. bad input or a drain)."""
        self._finish(Ended(code, details))

    async def events(self) -> AsyncIterator[Event]:
        """Agent audio and events in order; ``Ended`` is the last one."""
        while (event := await self._events.get()) is not None:
            yield event

    async def close(self) -> None:
        """Cancel the streams and tasks (idempotent). A generation stream cancelled here is
        flushed by the service and stays resumable."""
        if self._closed:
            return
        self._closed = True
        if self.ended is None:
            self._finish(Ended(Code.CANCELLED, "the call was closed"))
        for task in self._tasks:
            task.cancel()
        for stream in self._streams:
            await stream.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @property
    def dropped_frames(self) -> int:
        """User frames that got no answer of their own: dropped here to clear a standing backlog,
        or by the generation's queue (oldest first) when live input came faster than real time.
        Complete once the call has ended."""
        return self.backlog_dropped + max(0, self.frames_in - self.answered)

    # -- internals ------------------------------------------------------------------------------
    async def _send_frame(self, frame: np.ndarray) -> None:
        if self.setup.lossless:
            while self.ended is None and self.frames_in - (self._answered + 1) >= self.config.max_ahead_frames:
                self._answer.clear()
                await self._answer.wait()
            if self.ended is not None:
                return
        elif self._standing_backlog():
            self.backlog_dropped += 1
            return
        f = self.frames_in
        self.frames_in += 1
        now = time.perf_counter()
        self._t_in[f] = now
        self._detect_user(f, frame, now)
        await self._enc.send(AudioChunk(pcm16=float_to_pcm16(frame), sample_rate=SAMPLE_RATE, seq=f))

    def _standing_backlog(self) -> bool:
        """Live input: True when every frame of the last ``backlog_window`` found more than
        ``backlog_keep`` earlier frames still unanswered -- a queue that never drains (left by a
        burst or a stall) and only adds delay; then this frame is dropped, which removes one
        frame (40 ms) of it. Frames that arrive on time never trigger it."""
        c = self.config
        self._backlog_min = min(self._backlog_min, self.frames_in - (self._answered + 1))
        self._backlog_seen += 1
        if self._backlog_seen < c.backlog_window:
            return False
        standing = self._backlog_min > c.backlog_keep
        self._backlog_min, self._backlog_seen = 1 << 30, 0
        return standing

    async def _guard(self, loop: Any, name: str) -> None:
        try:
            await loop
        except StatusError as err:
            await self._on_stage_error(err)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a bug: this call fails, the others go on
            log.exception("pipeline %s loop failed", name, extra={"call_id": self.setup.call_id})
            self._finish(Ended(Code.INTERNAL, f"gateway {name} stage: {type(err).__name__}: {err}"))

    async def _on_stage_error(self, err: StatusError) -> None:
        if self._gen_error is not None and err.stage == "encode":
            return  # cancelled below, after the generation stream failed
        if err.stage == "generate" and self.ended is None:
            # deliver what the agent already said (the decoder finishes its frames), then end with this error
            self._gen_error = err
            await self._dec.done_writing()
            await self._enc.cancel()
            return
        self._finish(backend_ending(err))

    async def _encoded(self) -> None:
        while (message := await self._enc.recv()) is not None:
            now = time.perf_counter()
            n = len(message.frames)
            for i, frame in enumerate(message.frames):
                seq = message.seq - (n - 1 - i)
                self._t_codes[seq] = now
                if (t_in := self._t_in.get(seq)) is not None and self.metrics:
                    self.metrics.observe("encode", now - t_in, self.frame_s)
                await self._gen.send(UserFrame(codes=frame, seq=seq))
        await self._gen.done_writing()  # every frame is in: the generation answers them, then ends OK

    async def _generated(self) -> None:
        while (reply := await self._gen.recv()) is not None:
            await self._on_agent_frame(reply, time.perf_counter())
        await self._dec.done_writing()

    async def _on_agent_frame(self, reply: AgentFrame, now: float) -> None:
        user_seq = None
        if not reply.filled and reply.seq in self._t_codes:
            user_seq = reply.seq
            if self.metrics:
                self.metrics.observe("generate", now - self._t_codes[user_seq], 2 * self.frame_s)
        if not reply.filled and reply.seq > self._answered:
            self._answered = reply.seq
            self.answered += 1
            self._answer.set()
        if reply.text:
            self._events.put_nowait(Text(reply.text, reply.frame))
        out = _Out(reply.frame, None, user_seq, now, reply.step_ms)
        self._pending.append(out)
        if reply.HasField("codes"):
            await self._dec.send(CodeFrames(frames=[reply.codes], seq=reply.frame))
        else:  # the first acoustic_delay steps: no codes drawn yet, the agent is silent
            out.pcm = np.zeros(self.hop, np.float32)
            out.decoded = now
            self._emit_ready()

    async def _decoded(self) -> None:
        while (chunk := await self._dec.recv()) is not None:
            now = time.perf_counter()
            out = next((o for o in self._pending if o.frame == chunk.seq and o.pcm is None), None)
            if out is None:
                continue
            out.pcm = pcm16_to_float(chunk.pcm16)
            out.decoded = now
            if self.metrics:
                self.metrics.observe("decode", now - out.received, self.frame_s)
            self._emit_ready()
        self._emit_ready()
        if self._gen_error is not None:
            self._finish(backend_ending(self._gen_error))
        else:
            self._finish(Ended(Code.OK, "hangup"))

    def _emit_ready(self) -> None:
        while self._pending and self._pending[0].pcm is not None and self.ended is None:
            out = self._pending.popleft()
            now = time.perf_counter()
            timing = None
            if out.user_seq is not None and (t_in := self._t_in.get(out.user_seq)) is not None:
                t_codes = self._t_codes.get(out.user_seq, t_in)
                timing = Timing(out.user_seq, (t_codes - t_in) * 1e3, (out.received - t_codes) * 1e3, out.step_ms,
                                (out.decoded - out.received) * 1e3, (now - t_in) * 1e3)
                if self.metrics:
                    self.metrics.observe("frame", now - t_in, 2 * self.frame_s)
                for seq in [s for s in self._t_in if s <= out.user_seq]:
                    self._t_in.pop(seq, None)
                    self._t_codes.pop(seq, None)
            assert out.pcm is not None
            self._events.put_nowait(AgentAudio(out.frame, out.pcm, timing if self.setup.timing else None))
            self.frames_out += 1
            self._detect_agent(out, now, timing)

    def _detect_user(self, f: int, frame: np.ndarray, now: float) -> None:
        dbfs = rms_dbfs(frame)
        if dbfs > self.config.user_speech.off_dbfs:
            self._last_voiced_at = now
            self.voiced_in += 1
        change = self._user.update(f, dbfs)
        if change is None:
            return
        if change[0]:
            self._turn.user_started()
        elif (latency := self._turn.user_stopped(self._last_voiced_at)) is not None:
            self._latency(latency, self._turn_frame_ms)

    def _detect_agent(self, out: _Out, now: float, timing: Timing | None) -> None:
        self._sent_at[out.frame] = (now, timing.total_ms if timing else 0.0)
        keep = self.config.agent_speech.on_frames + 2
        for old in [k for k in self._sent_at if k <= out.frame - keep]:
            del self._sent_at[old]
        change = self._agent.update(out.frame, rms_dbfs(out.pcm))
        if change is None:
            return
        speaking, first = change
        self._events.put_nowait(Speaking(speaking, first))
        if speaking:
            at, self._turn_frame_ms = self._sent_at.get(first, (now, timing.total_ms if timing else 0.0))
            if (latency := self._turn.agent_started(at)) is not None:
                self._latency(latency, self._turn_frame_ms)
        else:
            self._turn.agent_stopped()

    def _latency(self, seconds: float, frame_ms: float) -> None:
        self._events.put_nowait(Latency(seconds * 1e3, frame_ms))

    def _finish(self, ended: Ended) -> None:
        if self.ended is not None:
            return
        self.ended = ended
        self._answer.set()
        self._events.put_nowait(ended)
        self._events.put_nowait(None)
        if ended.code != Code.OK:
            log.info("call pipeline ended: %s: %s", ended.code.name, ended.details,
                     extra={"call_id": self.setup.call_id})


__all__ = ["AgentAudio", "CallSetup", "Ended", "Event", "Latency", "Pipeline", "PipelineConfig", "Speaking", "Text",
           "Timing", "backend_ending"]
