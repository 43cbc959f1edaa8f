"""The browser front end: the call page, WebRTC signalling and one aiortc peer connection per
call; a thin front end over ``services.gateway.core.Gateway``, like the partner API.

    server = await serve_webrtc(gateway, config.webrtc, host="127.0.0.1")
    # GET  /             the call page (services/gateway/static)
    # GET  /api/config   voices, emotions, ICE servers, modes (what the page offers)
    # POST /api/offer    {"sdp", "type": "offer", "voice", "emotion", "mode": "model"|"echo", "text", "token"?}
    #                    -> {"sdp", "type": "answer", "call_id"} once ICE gathering is complete
    # GET  /api/calls    live browser calls and their counters (operations, tests)
    # GET  /healthz
    await server.stop()

Admission (a browser cannot take capacity it does not use, nor lock out paying callers):

* at the offer (cheap checks, no model resources): draining (503), the body (413/400), the offer
  rate of the client address (``offers_per_minute_per_client``) and of all addresses
  (``offers_per_minute``) (429),
  the call token when the offer carries one (401 when it is invalid, see
  ``services.gateway.tokens``; without one the call is charged to the anonymous pool, 401 when
  ``anonymous.max_calls`` is 0), the address's live and connecting calls
  (``max_calls_per_client``) and the connecting calls of all (``max_pending``) (503). An answered
  offer costs a peer connection and a ``connect_timeout_s`` timer, nothing else;
* once ICE and DTLS are up and the first audio frame arrives: ``Gateway.admit`` (the tenant's
  limits -- the token's API key or the anonymous pool --, the gateway's capacity and its reserve),
  then the generation's slot. Only then is the call registered and the pipeline started; a
  refusal there ends the call with an ``ended`` data-channel message (RESOURCE_EXHAUSTED) and
  closes it. A call with no audio flowing within ``connect_timeout_s`` is closed.

Every refusal is counted (``maata_refusals_total{front_end="browser", reason}`` and
``maata_rpc_errors_total{method="browser", code}``).

A browser call is the same conversation path as a partner call: the browser's Opus (aiortc
decodes it to 48 kHz stereo frames, one per packet) is mixed to mono, resampled to 16 kHz and
pushed into a ``services.gateway.pipeline.Pipeline``; the pipeline's agent frames are resampled
to 48 kHz and sent on an outgoing track; its events go to the page on the data channel. Mode
``echo`` swaps the model for ``EchoBackends`` (the user's codes come straight back): the
codec-only path, for latency measurements and microphone checks.

Latency by design, both ways bounded (each setting is a lever ``bench/browser_latency.py``
measures against the others; docs/webrtc.md has the budget):

* in: the answer asks the browser for ``ptime_in_ms`` Opus packets (``a=ptime``, ``minptime``:
  ``media.set_ptime``); aiortc's receive jitter buffer is cut from 4 packets to
  ``in_jitter_packets`` (0: each packet goes to the decoder as it arrives,
  ``media.ArrivalJitterBuffer``); ``resample_quality: LD`` resamples with
  ``maata.resample_stream.FirResampleStream``, which returns every sample as soon as its input is
  there (soxr releases its output in blocks, so a codec frame could wait a packet or two for its
  last samples); a frame that arrives more than ``in_stale_ms`` behind real time (the event loop
  or the network stalled and frames piled up in aiortc's receiver) is dropped instead of being
  fed late, so the model always hears the present;
* out: ``AgentTrack`` sends ``ptime_out_ms`` packets (``media.PacketOpusEncoder``, Opus
  ``opus_application``) on a regular clock; frames waiting beyond ``out_queue_ms`` are dropped
  oldest first (``dropped_out``), and a standing backlog (the queue's minimum depth over half a
  second, beyond the packet at hand) is trimmed, so neither a burst nor a start-up backlog turns
  into lasting delay. ``out_pacing: anchored`` starts the clock with the first agent audio (the
  frames then meet their ticks instead of waiting a chance 0..ptime), waits up to
  ``out_late_ms`` for a late frame and sends it the moment it exists with its own RTP time, and
  moves the clock later when every frame of a window came late; ``fixed`` starts it with the
  media and sends silence when a tick finds no audio (which pushes the agent's audio one packet
  later until the trim removes it).

Data channel (label ``events``, JSON text messages). Server -> page: ``ready`` (call id, mode,
style, frame ms), ``speaking`` (agent started/stopped), ``text`` (inner-monologue pieces),
``turn`` (turn latency: the user stopped -> the agent started), ``stats`` (every
``stats_interval_s``: server frame time p50/p99, output queue, frames and voiced frames in/out,
drops), ``style`` (a style change took effect), ``error`` (a control message was refused; the
call goes on), ``ended`` (code and reason; the connection closes next). Page -> server:
``{"type": "style", "voice"?, "emotion"?}``, ``{"type": "hangup"}``, ``{"type": "ping", "t"}``
(answered with ``pong``).

Clean-up. A call ends on hang-up (data channel or the browser closing the connection), on ICE
or DTLS failure, when it is not connected within ``connect_timeout_s``, when its pipeline ends
(e.g. the generation service's idle timeout or a drain), or when the server stops; every path
closes the peer connection, the pipeline and the slot, once.

UDP. aiortc has no port-range option: each call binds ephemeral UDP ports on the addresses of
``host_addresses`` (default: every non-loopback interface). Behind NAT or in Kubernetes, either
give the pods a TURN relay (``ice_servers`` with a ``turn:`` URL; both ends relay through it,
only the TURN server is exposed) or run the gateway with host networking and a fixed
``net.ipv4.ip_local_port_range`` whose ports the firewall publishes. See docs/webrtc.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fractions
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioice.ice
import av
import grpc
import numpy as np
import soxr
from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

from maata.audio import float_to_int16, int16_to_float, rms_dbfs
from maata.resample_stream import FirResampleStream
from services.common.errors import StatusError
from services.gateway.admission import RateLimiter, Tenant, Ticket
from services.gateway.backends import SAMPLE_RATE, EchoBackends
from services.gateway.config import WebRTCConfig
from services.gateway.core import Gateway
from services.gateway.media import ArrivalJitterBuffer, PacketOpusEncoder, set_ptime, use_encoder
from services.gateway.pipeline import AgentAudio, CallSetup, Ended, Latency, Pipeline, Speaking, Text
from services.gateway.tokens import TokenError, TokenVerifier

from maata_protos.v1.common_pb2 import Style

log = logging.getLogger("maata.services.gateway.webrtc")

STATIC = Path(__file__).parent / "static"
RTC_RATE = 48000  # WebRTC's Opus clock
MODES = ("model", "echo")
PACINGS = ("fixed", "anchored")  # AgentTrack's send clock
TRIM_WINDOW_S = 0.5  # the window over which a standing backlog in the outgoing queue is measured
TRIM_KEEP = 1  # packets the queue may hold at every tick (measured before the tick's packet leaves)
MAX_CONTROL_BYTES = 4096  # one data-channel control message
VOICED_DBFS = -50.0  # a frame counts as voiced above this level (the counters the page and tests read)
Code = grpc.StatusCode
FRONT_END = "browser"
HTTP_STATUS = {Code.INVALID_ARGUMENT: 400, Code.UNAUTHENTICATED: 401, Code.RESOURCE_EXHAUSTED: 503,
               Code.UNAVAILABLE: 503}
HTTP_CODE = {400: Code.INVALID_ARGUMENT, 401: Code.UNAUTHENTICATED, 413: Code.INVALID_ARGUMENT,
             429: Code.RESOURCE_EXHAUSTED, 500: Code.INTERNAL, 503: Code.RESOURCE_EXHAUSTED}


def _error(status: int, message: str, code: str = "") -> web.Response:
    body = {"error": message, "code": code or {400: "BAD_REQUEST", 413: "PAYLOAD_TOO_LARGE", 503: "BUSY"}.get(status, "ERROR")}
    headers = {"Retry-After": "5"} if status in (429, 503) else None
    return web.json_response(body, status=status, headers=headers)


# -- the outgoing audio -------------------------------------------------------------------------------
class AgentTrack(MediaStreamTrack):
    """The agent's audio as an aiortc track: ``ptime_ms`` mono s16 frames at 48 kHz on a regular
    send clock. ``put`` queues PCM (int16, 48 kHz); at most ``max_frames`` packets wait, older ones
    are dropped, and a standing backlog is trimmed (``_trim``).

    ``pacing`` places the clock. ``"fixed"``: it starts at the first ``recv`` (when media starts)
    and an empty queue at a tick sends silence at once. ``"anchored"``: it starts at the first
    ``put`` (the first agent audio), so the agent frames land just before their ticks instead of
    a chance 0..ptime before; a tick that finds the queue empty waits up to ``late_ms`` for the
    frame and sends it the moment it exists, with the RTP timestamp it would have had (the
    browser sees ordinary network jitter, and the audio keeps its place instead of being pushed
    one packet later behind a silence packet); and when every frame of a trim window arrived late,
    the clock moves to the earliest of them, so the packets go out regularly again."""

    kind = "audio"

    def __init__(self, max_frames: int, ptime_ms: int = 20, pacing: str = "fixed", late_ms: float = 0.0) -> None:
        super().__init__()
        if pacing not in PACINGS:
            raise ValueError(f"pacing must be one of {PACINGS}, got {pacing!r}")
        self.max_frames = max_frames
        self.samples = RTC_RATE * ptime_ms // 1000
        self.packet_s = self.samples / RTC_RATE
        self.pacing = pacing
        self.late_s = late_ms / 1e3 if pacing == "anchored" else 0.0
        self.window = max(1, round(TRIM_WINDOW_S / self.packet_s))
        self._queue: deque[np.ndarray] = deque()
        self._queued_at: deque[float] = deque()  # when each queued packet's audio arrived
        self.waits_ms: deque[float] = deque(maxlen=500)  # per packet sent: its audio's arrival -> handed to the encoder
        self._partial = np.zeros(0, np.int16)
        self._start: float | None = None
        self._sent = 0
        self._window, self._min_depth = 0, 1 << 30
        self._arrived = asyncio.Event()
        self._lateness: list[float] = []  # this window: how late each frame that found its tick passed was (s)
        self._frames_in_window = 0
        self.dropped = 0  # packets dropped: the queue was full, or a standing backlog was trimmed
        self.voiced = 0  # voiced packets sent
        self.late = 0  # packets sent after their tick (anchored: the frame came late)
        self.silent = 0  # ticks that found no audio and sent silence
        self.moved_ms = 0.0  # how far the anchored clock moved later in all
        self.clock = time.monotonic  # seconds; the event loop's own clock when it runs in virtual time (bench)

    @property
    def queued_ms(self) -> float:
        return len(self._queue) * self.packet_s * 1e3

    def _trim(self) -> None:
        """Every trim window (0.5 s): the queue's minimum depth over the window is a standing
        backlog (audio that only adds delay); drop it down to ``TRIM_KEEP`` packets. Anchored:
        when every frame of the window came after its tick, move the clock later by the least
        lateness, so the frames meet their ticks again."""
        self._min_depth = min(self._min_depth, len(self._queue))
        self._window += 1
        if self._window >= self.window:
            for _ in range(max(0, self._min_depth - TRIM_KEEP)):
                self._pop()
                self.dropped += 1
            if self._start is not None and self._frames_in_window and len(self._lateness) >= self._frames_in_window:
                move = min(self._lateness)
                self._start += move
                self.moved_ms += move * 1e3
            self._window, self._min_depth = 0, 1 << 30
            self._lateness, self._frames_in_window = [], 0

    def _pop(self) -> tuple[np.ndarray, float]:
        return self._queue.popleft(), self._queued_at.popleft()

    def put(self, pcm: np.ndarray) -> None:
        now = self.clock()
        if self._start is None and self.pacing == "anchored":
            self._start = now
        pcm = np.concatenate([self._partial, pcm]) if self._partial.size else pcm
        whole = pcm.size // self.samples * self.samples
        for i in range(0, whole, self.samples):
            self._queue.append(pcm[i:i + self.samples])
            self._queued_at.append(now)
        self._partial = pcm[whole:].copy()
        while len(self._queue) > self.max_frames:
            self._pop()
            self.dropped += 1
        self._frames_in_window += 1
        self._arrived.set()

    def stop(self) -> None:
        super().stop()
        self._arrived.set()  # a recv waiting for audio ends now

    async def _wait_audio(self, timeout: float | None) -> bool:
        """Wait until audio is queued (or the track stops); False after ``timeout`` seconds."""
        while not self._queue and self.readyState == "live":
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except asyncio.TimeoutError:
                return False
        return bool(self._queue)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None and self.pacing == "anchored":
            await self._wait_audio(None)  # the clock starts with the first agent audio
            if self.readyState != "live":
                raise MediaStreamError
        now = self.clock()
        if self._start is None:
            self._start = now
        else:
            due = self._start + self._sent * self.packet_s
            if due > now:
                await asyncio.sleep(due - now)
            elif due < now - 5 * self.packet_s - self.late_s:  # the loop stalled: re-anchor instead of bursting
                self._start = now - self._sent * self.packet_s
            if not self._queue and self.late_s > 0:
                if await self._wait_audio(self.late_s):
                    self.late += 1
                    self._lateness.append(max(0.0, self.clock() - due))
        self._trim()
        if self._queue:
            pcm, arrived = self._pop()
            self.waits_ms.append((self.clock() - arrived) * 1e3)
        else:
            pcm = np.zeros(self.samples, np.int16)
            self.silent += 1
        if pcm.any() and rms_dbfs(int16_to_float(pcm)) > VOICED_DBFS:
            self.voiced += 1
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RTC_RATE
        frame.pts = self._sent * self.samples
        frame.time_base = fractions.Fraction(1, RTC_RATE)
        self._sent += 1
        return frame


def to_mono_float(frame: av.AudioFrame) -> np.ndarray:
    """An aiortc audio frame (s16 or float, packed or planar, any channels) as mono float32 [-1, 1]."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.name.startswith("s16"):
        data = int16_to_float(data)
    x = data.astype(np.float32)
    return x.reshape(channels, -1).mean(axis=0) if frame.format.is_planar else x.reshape(-1, channels).mean(axis=1)


# -- one browser call ------------------------------------------------------------------------------
@dataclass
class Counters:
    frames_in: int = 0  # frames (one per Opus packet) received from the browser
    in_frame_ms: float = 0.0  # the length of the last one: the browser's packet length
    voiced_in: int = 0  # of them, above VOICED_DBFS
    stale_in: int = 0  # dropped: later than in_stale_ms behind real time
    frames_out: int = 0  # 40 ms agent frames from the pipeline
    voiced_out: int = 0
    server_ms: deque[float] = field(default_factory=lambda: deque(maxlen=250))  # per agent frame: arrival -> out
    stages_ms: deque[tuple[float, ...]] = field(default_factory=lambda: deque(maxlen=250))  # enc, gen, step, dec


class BrowserCall:
    """One browser call: its peer connection, pipeline, resamplers, tracks and data channel."""

    def __init__(self, server: WebRTCServer, pc: RTCPeerConnection, client: str, mode: str, style: Style,
                 text: bool, tenant: Tenant) -> None:
        self.server = server
        self.tenant = tenant
        self.pc = pc
        self.client = client
        self.mode = mode
        self.style = style
        self.call_id = uuid.uuid4().hex[:16]
        self.started = time.time()
        cfg = server.config
        backends = server.gateway.backends if mode == "model" else EchoBackends(server.gateway.backends)
        self.pipeline = Pipeline(backends, CallSetup(f"webrtc:{self.call_id}", style, None, text, False, True),
                                 server.gateway.pipeline_config(), server.gateway.metrics)
        self.track = AgentTrack(max(2, cfg.out_queue_ms // cfg.ptime_out_ms), cfg.ptime_out_ms, cfg.out_pacing,
                                cfg.out_late_ms)
        self.counters = Counters()
        self.state = "new"
        self.channel: Any = None
        self._in: Any = None  # the 48 -> 16 kHz stream (the rate the browser's frames come at)
        self._in_rate = 0
        self._out = resample_stream(SAMPLE_RATE, RTC_RATE, cfg.resample_quality)
        self._anchor: float | None = None  # min over frames of (arrival - media time): the real-time reference
        self._tasks: list[asyncio.Task[Any]] = []
        self._closed = asyncio.Event()
        self._closing = False
        self._ended: Ended | None = None
        self._slot: int | None = None
        self._ticket: Ticket | None = None
        self._hung_up = False
        self.admitted = False  # connected, audio flowing, admitted: the pipeline runs

    # -- set-up -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Arm the connect timer (before the answer is sent); nothing else is held until audio flows."""
        self._spawn(self._watchdog(), "watchdog")

    async def _admit(self) -> bool:
        """The first audio frame arrived (ICE and DTLS are up): admit the call, register it and
        start its pipeline; a refusal ends the call (False)."""
        gateway = self.server.gateway
        self.server.pending.discard(self.call_id)
        try:
            self._ticket = gateway.admit(self.tenant, FRONT_END)
            self.admitted = True  # from here on the pipeline's Ended closes the call
            self._slot = gateway.register(self.pipeline, FRONT_END)
            self._spawn(self._events(), "events")
            try:
                await self.pipeline.start()
            except StatusError as err:
                gateway.refused(FRONT_END, "backend", err.code)
                raise
        except StatusError as err:
            log.info("browser call refused", extra={"call_id": self.call_id, "code": err.code.name})
            if self.admitted:
                self.pipeline.fail(err.code, err.details)  # the events task says so and closes the call
            else:
                self._ended = Ended(err.code, err.details)
                self.send({"type": "ended", "code": err.code.name, "reason": err.details})
                await asyncio.sleep(0.05)  # let the data channel carry the message
                await self.close()
            return False
        log.info("browser call admitted", extra={"call_id": self.call_id, "tenant": self.tenant.name})
        return True

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(self._guard(coro, name), name=f"webrtc-{name}-{self.call_id}"))

    async def _guard(self, coro: Any, name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a bug in one call: that call ends, the others go on
            log.exception("browser call %s task failed", name, extra={"call_id": self.call_id})
            self.pipeline.fail(Code.INTERNAL, f"gateway webrtc {name}: {type(err).__name__}: {err}")
            if not self.admitted:  # no events task to close it
                await self.close()

    def on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._listen(track), "listen")

    def on_datachannel(self, channel: Any) -> None:
        self.channel = channel
        channel.on("message", lambda message: self._spawn(self._control(message), "control"))
        if channel.readyState == "open":
            self._ready()
        else:
            channel.on("open", self._ready)

    def on_state(self) -> None:
        self.state = self.pc.connectionState
        log.info("browser call connection %s", self.state, extra={"call_id": self.call_id})
        if self.state in ("failed", "closed"):
            self.pipeline.fail(Code.CANCELLED, f"the browser connection {self.state}")
            if not self.admitted:  # no events task yet to close it
                self._spawn(self.close(), "close")

    # -- audio in -----------------------------------------------------------------------------------
    async def _listen(self, track: MediaStreamTrack) -> None:
        stale_s = self.server.config.in_stale_ms / 1e3
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:  # the browser's track ended: the user hung up
                break
            if self._hung_up:
                return
            if not self.admitted and not await self._admit():
                return
            now = time.monotonic()
            c = self.counters
            c.frames_in += 1
            c.in_frame_ms = frame.samples / frame.sample_rate * 1e3 if frame.sample_rate else 0.0
            lag = self._lag(frame, now)
            if lag > stale_s:
                c.stale_in += 1
                continue
            x = to_mono_float(frame)
            if rms_dbfs(x) > VOICED_DBFS:
                c.voiced_in += 1
            if frame.sample_rate != self._in_rate:
                self._in_rate = frame.sample_rate
                self._in = (resample_stream(self._in_rate, SAMPLE_RATE, self.server.config.resample_quality)
                            if self._in_rate != SAMPLE_RATE else None)
            await self.pipeline.push(self._in.resample_chunk(x) if self._in is not None else x)
        await self.hang_up()

    def _lag(self, frame: av.AudioFrame, now: float) -> float:
        """How far behind real time ``frame`` arrives (s): arrival minus media time, against the
        best (smallest) offset seen so far; a gap in the media (DTX, loss) only lowers the anchor."""
        if frame.pts is None or frame.time_base is None:
            return 0.0
        offset = now - float(frame.pts * frame.time_base)
        if self._anchor is None or offset < self._anchor:
            self._anchor = offset
        return offset - self._anchor

    async def hang_up(self) -> None:
        if self._hung_up:
            return
        self._hung_up = True
        if not self.admitted:
            await self.close()
            return
        if self._in is not None:
            await self.pipeline.push(self._in.resample_chunk(np.zeros(0, np.float32), last=True))
        await self.pipeline.hang_up()

    # -- audio and events out -----------------------------------------------------------------------
    async def _events(self) -> None:
        c = self.counters
        next_stats = time.monotonic() + self.server.config.stats_interval_s
        async for event in self.pipeline.events():
            if isinstance(event, AgentAudio):
                c.frames_out += 1
                if rms_dbfs(event.pcm) > VOICED_DBFS:
                    c.voiced_out += 1
                if event.timing is not None:
                    t = event.timing
                    c.server_ms.append(t.total_ms)
                    c.stages_ms.append((t.encode_ms, t.generate_ms, t.step_ms, t.decode_ms))
                pcm = self._out.resample_chunk(event.pcm)
                self.track.put(float_to_int16(pcm))
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + self.server.config.stats_interval_s
                    self.send(self.stats())
            elif isinstance(event, Speaking):
                self.send({"type": "speaking", "agent": event.agent_speaking, "frame": event.frame})
            elif isinstance(event, Text):
                self.send({"type": "text", "text": event.text, "frame": event.frame})
            elif isinstance(event, Latency):
                self.send({"type": "turn", "ms": round(event.ms, 1), "frame_ms": round(event.frame_ms, 1)})
            elif isinstance(event, Ended):
                self._ended = event
                break
        ended = self._ended or self.pipeline.ended
        if ended is not None:
            self.send({"type": "ended", "code": ended.code.name, "reason": ended.details})
        await asyncio.sleep(0.05)  # let the data channel carry the last message
        await self.close()

    def stats(self) -> dict[str, Any]:
        c = self.counters
        ms = sorted(c.server_ms)
        pick = (lambda q: round(ms[min(len(ms) - 1, int(q * len(ms)))], 1)) if ms else (lambda q: None)
        stages = np.median(np.asarray(c.stages_ms), axis=0).round(1).tolist() if c.stages_ms else [None] * 4
        return {"type": "stats", "server_ms_p50": pick(0.5), "server_ms_p99": pick(0.99),
                "encode_ms_p50": stages[0], "generate_ms_p50": stages[1], "step_ms_p50": stages[2],
                "decode_ms_p50": stages[3], "backlog_dropped": self.pipeline.backlog_dropped,
                "out_queue_ms": round(self.track.queued_ms, 1), **self._out_wait(), "frame_ms": round(self.pipeline.frame_s * 1e3),
                "frames_in": c.frames_in, "in_frame_ms": round(c.in_frame_ms, 1), "voiced_in": c.voiced_in, "stale_in": c.stale_in,
                "frames_out": c.frames_out, "voiced_out": c.voiced_out, "dropped_out": self.track.dropped,
                "late_out": self.track.late, "silent_out": self.track.silent,
                "clock_moved_ms": round(self.track.moved_ms, 1)}

    def _out_wait(self) -> dict[str, float | None]:
        waits = sorted(self.track.waits_ms)
        if not waits:
            return {"out_wait_ms_p50": None, "out_wait_ms_p99": None}
        return {"out_wait_ms_p50": round(waits[len(waits) // 2], 1),
                "out_wait_ms_p99": round(waits[min(len(waits) - 1, int(0.99 * len(waits)))], 1)}

    def send(self, message: dict[str, Any]) -> None:
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            with contextlib.suppress(Exception):  # a closing channel: the call is ending anyway
                channel.send(json.dumps(message, ensure_ascii=False))

    def _ready(self) -> None:
        self.send({"type": "ready", "call_id": self.call_id, "mode": self.mode, "voice": self.style.voice,
                   "emotion": self.style.emotion, "frame_ms": round(self.pipeline.frame_s * 1e3)})

    # -- control ------------------------------------------------------------------------------------
    async def _control(self, message: Any) -> None:
        if not isinstance(message, str) or len(message) > MAX_CONTROL_BYTES:
            self.send({"type": "error", "code": "INVALID_ARGUMENT",
                       "message": f"control messages are JSON text of at most {MAX_CONTROL_BYTES} bytes"})
            return
        try:
            data = json.loads(message)
            kind = data.get("type") if isinstance(data, dict) else None
        except ValueError:
            kind, data = None, {}
        if kind == "ping":
            self.send({"type": "pong", "t": data.get("t")})
        elif kind == "hangup":
            await self.hang_up()
        elif kind == "style":
            voice, emotion = str(data.get("voice") or ""), str(data.get("emotion") or "")
            try:
                self.server.gateway.check_style(Style(voice=voice, emotion=emotion))
            except StatusError as err:
                self.send({"type": "error", "code": err.code.name, "message": err.details})
                return
            self.style = Style(voice=voice or self.style.voice, emotion=emotion or self.style.emotion)
            if self.pipeline.started:
                await self.pipeline.set_style(voice, emotion)
            else:  # not admitted yet: the call starts with it
                self.pipeline.setup = dataclasses.replace(self.pipeline.setup, style=self.style)
            self.send({"type": "style", "voice": self.style.voice, "emotion": self.style.emotion})
        else:
            self.send({"type": "error", "code": "INVALID_ARGUMENT",
                       "message": "unknown control message; expected JSON with type style, hangup or ping"})

    # -- ending -------------------------------------------------------------------------------------
    async def _watchdog(self) -> None:
        timeout = self.server.config.connect_timeout_s
        await asyncio.sleep(timeout)
        if not self.admitted and not self._closing:
            connected = self.pc.connectionState == "connected"
            self._ended = Ended(Code.DEADLINE_EXCEEDED,
                                f"no audio within {timeout:g} s of the answer" if connected else
                                f"not connected within {timeout:g} s (ICE/DTLS); check the network path (TURN?)")
            self.server.gateway.refused(FRONT_END, "connect_timeout", Code.DEADLINE_EXCEEDED)
            self.send({"type": "ended", "code": "DEADLINE_EXCEEDED", "reason": self._ended.details})
            await self.close()

    async def close(self) -> None:
        """Close everything once (any task may call it; the others are cancelled)."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            self.pipeline.fail(Code.CANCELLED, "the call was closed")
            self.track.stop()
            with contextlib.suppress(Exception):
                await self.pc.close()
            current = asyncio.current_task()
            for task in self._tasks:
                if task is not current:
                    task.cancel()
            await self.pipeline.close()
        finally:
            if self._slot is not None:
                self.server.gateway.unregister(self._slot)
            if self._ticket is not None:
                await self.server.gateway.call_ended(self._ticket, self.pipeline.setup.call_id, self.pipeline,
                                                     resumable=False)  # a browser never resumes
            self.server.calls.pop(self.call_id, None)
            self.server.pending.discard(self.call_id)
            ended = self._ended or self.pipeline.ended
            log.info("browser call ended", extra={"call_id": self.call_id, "mode": self.mode,
                                                   "code": ended.code.name if ended else "CANCELLED",
                                                   "frames_in": self.counters.frames_in,
                                                   "frames_out": self.counters.frames_out})
            self._closed.set()

    def describe(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "mode": self.mode, "state": self.state, "admitted": self.admitted,
                "tenant": self.tenant.name, "voice": self.style.voice,
                "emotion": self.style.emotion, "age_s": round(time.time() - self.started, 1),
                "model_frames_in": self.pipeline.frames_in, "model_voiced_in": self.pipeline.voiced_in,
                **{k: v for k, v in self.stats().items() if k != "type"}}


# -- the server --------------------------------------------------------------------------------------
def resample_stream(in_rate: int, out_rate: int, quality: str) -> Any:
    """A streaming resampler: ``"LD"`` the low-delay FIR (every sample out as soon as it can be,
    1.25 ms fixed delay), else soxr at that quality (which releases its output in blocks)."""
    if quality == "LD":
        return FirResampleStream(in_rate, out_rate)
    return soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)


def shorten_jitter_buffers(pc: RTCPeerConnection, packets: int) -> None:
    """aiortc's audio receivers hold back each packet until 4 later ones arrived (80 ms at 20 ms
    packets); ``packets`` sets that prefetch (1: a packet goes on when the next arrives), and 0
    hands each packet on as it arrives (``media.ArrivalJitterBuffer``). aiortc has no option for
    it, so the receiver's buffer is replaced before media flows."""
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if transceiver.kind == "audio" and hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):
            receiver._RTCRtpReceiver__jitter_buffer = (ArrivalJitterBuffer() if packets == 0 else
                                                       JitterBuffer(capacity=16, prefetch=packets))
        elif transceiver.kind == "audio":
            log.warning("this aiortc has no receiver jitter buffer to shorten; audio input keeps its default delay")



@contextlib.contextmanager
def host_candidates(addresses: list[str]) -> Iterator[None]:
    """Gather ICE host candidates on exactly ``addresses`` (aioice offers no per-connection
    option, so its address lookup is swapped while the server runs and restored after)."""
    if not addresses:
        yield
        return
    original = aioice.ice.get_host_addresses

    def pinned(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = pinned
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


class WebRTCServer:
    """The HTTP app (page + signalling) and the live browser calls of one gateway."""

    def __init__(self, gateway: Gateway, config: WebRTCConfig) -> None:
        self.gateway = gateway
        self.config = config
        self.calls: dict[str, BrowserCall] = {}
        self.pending: set[str] = set()  # answered calls not yet admitted (no audio yet)
        self.rates = RateLimiter()
        self.tokens = TokenVerifier(gateway.auth, config.call_token_max_ttl_s)
        self._per_client: dict[str, int] = {}
        self._releasers: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._pins = contextlib.ExitStack()
        self.port = 0
        self.host = ""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_offer_bytes)
        app.router.add_get("/", self.index)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/api/config", self.describe_config)
        app.router.add_post("/api/offer", self.offer)
        app.router.add_get("/api/calls", self.list_calls)
        app.router.add_static("/static/", STATIC, show_index=False)
        return app

    async def start(self, host: str, port: int) -> None:
        self._pins.enter_context(host_candidates(list(self.config.host_addresses)))
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port)
        await self._site.start()
        sockets = self._site._server.sockets if self._site._server else []  # type: ignore[union-attr]
        self.host, self.port = host, (sockets[0].getsockname()[1] if sockets else port)
        log.info("webrtc front end ready", extra={"url": self.url})

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def stop(self) -> None:
        """End every browser call (closing its connection) and stop the HTTP server."""
        await asyncio.gather(*(call.close() for call in list(self.calls.values())), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        self._pins.close()

    # -- routes -------------------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def health(self, request: web.Request) -> web.Response:
        status = 503 if self.gateway.draining else 200
        return web.json_response({"status": "draining" if self.gateway.draining else "serving"}, status=status)

    async def describe_config(self, request: web.Request) -> web.Response:
        ice = [{"urls": s.urls, **({"username": s.username, "credential": s.credential} if s.username else {})}
               for s in self.config.ice_servers]
        return web.json_response({"voices": list(self.gateway.voices), "emotions": list(self.gateway.emotions),
                                  "modes": [m for m in MODES if m != "echo" or self.config.echo],
                                  "ice_servers": ice, "ptime_ms": self.config.ptime_out_ms,
                                  "jitter_buffer_target_ms": self.config.browser_jitter_target_ms})

    async def list_calls(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": [call.describe() for call in self.calls.values()],
                                  "gateway_calls": len(self.gateway.calls), "pending": len(self.pending)})

    def _refuse(self, status: int, reason: str, message: str, code: str = "") -> web.Response:
        """An offer refused before a call exists: counted by reason, answered ``status``."""
        self.gateway.refused(FRONT_END, reason, HTTP_CODE.get(status, Code.UNKNOWN))
        return _error(status, message, code)

    async def offer(self, request: web.Request) -> web.Response:
        cfg = self.config
        client = request.remote or "unknown"
        if self.gateway.draining:
            return self._refuse(503, "draining", "the gateway is draining; call again (another replica)", "UNAVAILABLE")
        if request.content_length is not None and request.content_length > cfg.max_offer_bytes:
            return self._refuse(413, "invalid", f"the offer is {request.content_length} bytes; the limit is "
                                                f"{cfg.max_offer_bytes}")
        try:
            body = await request.json()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(413, "invalid", f"the offer exceeds the limit of {cfg.max_offer_bytes} bytes")
        except ValueError as err:
            return self._refuse(400, "invalid", f"the body must be JSON ({err})")
        try:
            mode, style, text = self._parse(body)
        except StatusError as err:
            return self._refuse(HTTP_STATUS.get(err.code, 400), "invalid", err.details, err.code.name)
        # the rates count well-formed offers (a malformed one costs a JSON parse, no peer connection)
        if not self.rates.take(f"client:{client}", cfg.offers_per_minute_per_client):
            return self._refuse(429, "client_rate", "this client is making offers faster than its limit of "
                                                    f"{cfg.offers_per_minute_per_client} a minute; retry in a few seconds",
                                "RESOURCE_EXHAUSTED")
        if not self.rates.take("all", cfg.offers_per_minute):
            return self._refuse(429, "offer_rate", "the gateway is receiving too many offers; retry in a few seconds",
                                "RESOURCE_EXHAUSTED")
        try:
            tenant = self._tenant(body)
        except TokenError as err:
            return self._refuse(401, "token", str(err), "UNAUTHENTICATED")
        if self._per_client.get(client, 0) >= cfg.max_calls_per_client:
            return self._refuse(503, "client_calls", f"this client already has {cfg.max_calls_per_client} calls (the "
                                                     "limit); hang one up first", "RESOURCE_EXHAUSTED")
        if len(self.pending) >= cfg.max_pending:
            return self._refuse(503, "pending", f"{cfg.max_pending} calls are connecting (the limit); retry in a few "
                                                "seconds", "RESOURCE_EXHAUSTED")
        ice = [RTCIceServer(urls=s.urls, username=s.username or None, credential=s.credential or None)
               for s in self.config.ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        call = BrowserCall(self, pc, client, mode, style, text, tenant)
        pc.on("track", call.on_track)
        pc.on("datachannel", call.on_datachannel)
        pc.on("connectionstatechange", call.on_state)
        # counted before the first await, so concurrent offers cannot all pass the checks above
        self.calls[call.call_id] = call
        self.pending.add(call.call_id)
        self._per_client[client] = self._per_client.get(client, 0) + 1
        try:
            audio = [m for m in SessionDescription.parse(body["sdp"]).media if m.kind == "audio"]
            if not audio:
                raise ValueError("the offer has no audio section (m=audio)")
            if audio[0].direction not in ("sendrecv", "sendonly"):
                raise ValueError(f"the offer's audio is {audio[0].direction}; the call needs the microphone "
                                 "(sendrecv)")
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
            shorten_jitter_buffers(pc, self.config.in_jitter_packets)
        except Exception as err:  # aiortc raises ValueError and others for unparsable SDP
            await call.close()
            self._release(client)
            return self._refuse(400, "invalid", f"bad SDP offer: {type(err).__name__}: {err}", "INVALID_ARGUMENT")
        try:
            sender = pc.addTrack(call.track)
            use_encoder(sender, PacketOpusEncoder(self.config.ptime_out_ms, self.config.opus_application))
            await call.start()
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)  # aiortc gathers every candidate here (no trickle ICE)
            sdp = pc.localDescription.sdp
            if self.config.ptime_in_ms:  # ask the browser for packets of that length
                sdp = set_ptime(sdp, self.config.ptime_in_ms)
        except Exception as err:
            log.exception("browser call set-up failed", extra={"call_id": call.call_id})
            await call.close()
            self._release(client)
            return self._refuse(500, "internal", f"the call could not be set up: {type(err).__name__}: {err}",
                                "INTERNAL")
        releaser = asyncio.create_task(self._release_when_closed(call, client))
        self._releasers.add(releaser)  # the loop keeps only weak references to tasks
        releaser.add_done_callback(self._releasers.discard)
        log.info("browser call answered", extra={"call_id": call.call_id, "mode": mode, "voice": style.voice,
                                                 "emotion": style.emotion, "tenant": tenant.name})
        return web.json_response({"sdp": sdp, "type": pc.localDescription.type, "call_id": call.call_id})

    def _tenant(self, body: dict[str, Any]) -> Tenant:
        """The tenant a call is charged to: the key of its call token, else the anonymous pool."""
        token = body.get("token")
        if token:
            return self.tokens.verify(token).tenant
        if self.gateway.anonymous.max_calls < 1:
            raise TokenError("this gateway takes browser calls with a call token only (\"token\" in the offer)")
        return self.gateway.anonymous

    def _parse(self, body: Any) -> tuple[str, Style, bool]:
        if not isinstance(body, dict):
            raise StatusError(Code.INVALID_ARGUMENT, "the body must be a JSON object {sdp, type, voice, emotion, mode}")
        if body.get("type") != "offer":
            raise StatusError(Code.INVALID_ARGUMENT, f"type must be \"offer\", got {body.get('type')!r}")
        if not isinstance(body.get("sdp"), str) or not body["sdp"].strip():
            raise StatusError(Code.INVALID_ARGUMENT, "sdp (the browser's offer, a string) is required")
        mode = body.get("mode") or "model"
        if mode not in MODES or (mode == "echo" and not self.config.echo):
            allowed = [m for m in MODES if m != "echo" or self.config.echo]
            raise StatusError(Code.INVALID_ARGUMENT, f"mode must be one of {allowed}, got {mode!r}")
        voice, emotion = body.get("voice") or "", body.get("emotion") or ""
        if not isinstance(voice, str) or not isinstance(emotion, str):
            raise StatusError(Code.INVALID_ARGUMENT, "voice and emotion must be strings")
        style = Style(voice=voice, emotion=emotion)
        self.gateway.check_style(style)
        return mode, style, bool(body.get("text", True))

    async def _release_when_closed(self, call: BrowserCall, client: str) -> None:
        await call._closed.wait()
        self._release(client)

    def _release(self, client: str) -> None:
        left = self._per_client.get(client, 0) - 1
        if left > 0:
            self._per_client[client] = left
        else:
            self._per_client.pop(client, None)


async def serve_webrtc(gateway: Gateway, config: WebRTCConfig, host: str, port: int | None = None) -> WebRTCServer:
    """Start the browser front end of ``gateway`` on ``host:port`` (default ``config.port``; 0: any free one)."""
    server = WebRTCServer(gateway, config)
    await server.start(host, config.port if port is None else port)
    return server


__all__ = ["AgentTrack", "BrowserCall", "WebRTCServer", "serve_webrtc", "to_mono_float"]
