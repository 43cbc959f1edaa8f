"""The gateway's core, shared by every front end: ``Gateway`` -- the backends, the keys, admission
(``services.gateway.admission``: draining, per-tenant caps and rates, the gateway-wide cap with
its reserve, each tenant's resumable-history budget), the registry of live calls (a drain ends
them all; the live-call gauge per front end), refusals counted by reason, style checks, and the
resume check against the session store.

Front ends (``partner``: the gRPC partner API; ``webrtc``: the browser) import this module and
``pipeline``; this module imports neither of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import grpc
import numpy as np

from maata.audio import pcm16_to_float
from maata.speech import decoded_silence_dbfs, frame_levels
from services.common.errors import RESUME_HINT, StatusError
from services.common.metrics import ServiceMetrics
from services.gateway.admission import ANONYMOUS, Admission, HistoryBudget, Refused, Tenant, Ticket
from services.gateway.auth import AuthError, Authenticator
from services.gateway.backends import SAMPLE_RATE, Backends
from services.gateway.config import GatewayConfig
from services.gateway.pipeline import Pipeline, PipelineConfig
from services.session.errors import Conflict, NotFound, SessionError
from services.session.store import ENDED, SessionStore

from maata_protos.v1.codec_pb2 import AudioChunk, CodeFrames
from maata_protos.v1.common_pb2 import Style

log = logging.getLogger("maata.services.gateway")

Code = grpc.StatusCode


class Gateway:
    """The calls of one gateway, whatever front end they came through: backends, keys,
    admission, the live-call registry, drain."""

    def __init__(self, config: GatewayConfig, backends: Backends, store: SessionStore | None = None,
                 metrics: ServiceMetrics | None = None, auth: Authenticator | None = None) -> None:
        self.config = config
        self.backends = backends
        self.store = store
        self.metrics = metrics or ServiceMetrics("gateway")
        self.auth = auth or Authenticator.from_config(config.auth)
        self.voices = tuple(config.voices) or backends.voices
        self.emotions = tuple(config.emotions) or backends.emotions
        self.calls: dict[int, Pipeline] = {}  # live calls by a running number
        self.admission = Admission(config.max_calls, config.reserve_calls)
        self.histories = HistoryBudget(self._end_session)
        self.anonymous = Tenant(ANONYMOUS, config.anonymous.max_calls, config.anonymous.calls_per_minute, 0)
        self._next = 0
        self._front_ends: dict[int, str] = {}
        self._pipeline_config = config.pipeline()
        self.agent_silence_dbfs: float | None = None  # the codec's decoded silence (``calibrate``)

    @property
    def draining(self) -> bool:
        return self.admission.draining

    def check_style(self, style: Style) -> None:
        """INVALID_ARGUMENT (``StatusError``) for a voice or emotion the model does not have."""
        if style.voice and self.voices and style.voice not in self.voices:
            raise StatusError(Code.INVALID_ARGUMENT, f"unknown voice {style.voice!r}; known: {', '.join(self.voices)}")
        if style.emotion and self.emotions and style.emotion not in self.emotions:
            raise StatusError(Code.INVALID_ARGUMENT, f"unknown emotion {style.emotion!r}; known: {', '.join(self.emotions)}")

    async def session_state(self, store_id: str, call_id: str, resume: bool) -> tuple[bool, int]:
        """(resumed, stored frames) of the call stored as ``store_id`` (named ``call_id`` to the
        caller); StatusError for an ended call and for ``resume`` of an unknown one."""
        if self.store is None:
            return False, 0
        try:
            session = await self.store.get(store_id)
        except NotFound:
            if resume:
                raise StatusError(Code.NOT_FOUND, f"no live call {call_id!r} to resume") from None
            return False, 0
        except SessionError as err:
            if resume:
                raise StatusError(Code.UNAVAILABLE, f"the session store cannot be read ({err}); retry") from None
            log.warning("session store unavailable; starting the call without a resume check",
                        extra={"call_id": store_id, "error": str(err)})
            return False, 0
        if session.state == ENDED:
            raise StatusError(Code.FAILED_PRECONDITION, f"call {call_id!r} has ended; use a new call_id")
        return True, session.frames

    def refused(self, front_end: str, reason: str, code: grpc.StatusCode) -> None:
        """Count a call refused before it started (``maata_refusals_total``, and the front end's
        entry point in ``maata_rpc_errors_total``)."""
        self.metrics.refusal(front_end, reason)
        if front_end != "partner":  # the partner API's errors are counted by its gRPC handler
            self.metrics.rpc_error(front_end, code.name)

    def admit(self, tenant: Tenant, front_end: str) -> Ticket:
        """A call of ``tenant`` through ``front_end`` ("partner", "browser"), or ``Refused``
        (counted). The ticket holds its place until ``ticket.release()``."""
        try:
            return self.admission.admit(tenant, front_end)
        except Refused as err:
            self.refused(front_end, err.reason, err.code)
            log.info("call refused", extra={"tenant": tenant.name, "front_end": front_end, "reason": err.reason})
            raise

    def register(self, pipeline: Pipeline, front_end: str = "partner") -> int:
        """Count ``pipeline`` as a live call of ``front_end`` (drains end it); returns its slot
        for ``unregister``."""
        slot = self._next
        self._next += 1
        self.calls[slot] = pipeline
        self._front_ends[slot] = front_end
        self.metrics.live_calls.labels(self.metrics.service, front_end).inc()
        return slot

    def unregister(self, slot: int) -> None:
        if self.calls.pop(slot, None) is not None:
            self.metrics.live_calls.labels(self.metrics.service, self._front_ends.pop(slot)).dec()

    async def call_ended(self, ticket: Ticket, store_id: str, pipeline: Pipeline, resumable: bool = True) -> None:
        """Release ``ticket``. A call that ended without hanging up left its session live in the
        store: it joins the tenant's history budget (``admission.HistoryBudget``), or, for a
        caller that never resumes (``resumable`` False: browsers), is ended at once."""
        ticket.release()
        ended = pipeline.ended
        if not pipeline.started or (ended is not None and not ended.resumable):
            return
        if resumable:
            await self.histories.left_resumable(ticket.tenant, store_id)
        else:
            try:
                await self._end_session(store_id)
            except Exception as err:  # an unreachable store: the session expires on its TTL instead
                log.warning("could not end a browser call's session", extra={"call_id": store_id, "error": str(err)})

    async def _end_session(self, store_id: str) -> None:
        if self.store is None:
            return
        try:
            await asyncio.wait_for(self.store.end(store_id), self.config.store_timeout_s)
        except (NotFound, Conflict):
            pass  # expired or already ended

    def pipeline_config(self) -> PipelineConfig:
        """Every call's pipeline settings, the agent's speech detector calibrated (``calibrate``)."""
        return self._pipeline_config

    async def calibrate(self, frames: int = 20, timeout_s: float = 15.0) -> float | None:
        """Measure the codec's decoded digital silence (dBFS, the median level of the second half
        of ``frames`` frames of zeros through encode and decode) and calibrate the agent's speech
        detector on it (``SpeechConfig.calibrated``). Returns the level, or None (logged) when the
        codec cannot be reached: the configured thresholds stay."""
        hop = self.backends.hop
        encoder, decoder = self.backends.encoder("calibration"), self.backends.decoder("calibration")
        try:
            async with asyncio.timeout(timeout_s):
                for seq in range(frames):
                    await encoder.send(AudioChunk(pcm16=bytes(2 * hop), sample_rate=SAMPLE_RATE, seq=seq))
                await encoder.done_writing()
                codes = []
                while (message := await encoder.recv()) is not None:
                    codes.extend(message.frames)
                for seq, frame in enumerate(codes):
                    await decoder.send(CodeFrames(frames=[frame], seq=seq))
                await decoder.done_writing()
                pcm = []
                while (chunk := await decoder.recv()) is not None:
                    pcm.append(pcm16_to_float(chunk.pcm16))
        except (StatusError, TimeoutError) as err:
            log.warning("could not measure the codec's decoded silence; the agent's speech thresholds stay as "
                        "configured", extra={"error": str(err)})
            return None
        finally:
            await encoder.cancel()
            await decoder.cancel()
        levels = frame_levels(np.concatenate(pcm) if pcm else np.zeros(0, np.float32), hop)
        if not levels.size:
            return None
        silence = decoded_silence_dbfs(levels)
        self.agent_silence_dbfs = silence
        agent = self.config.agent_speech.calibrated(silence)
        self._pipeline_config = dataclasses.replace(self._pipeline_config, agent_speech=agent)
        log.info("agent speech detector calibrated", extra={"silence_dbfs": round(silence, 1),
                                                             "on_dbfs": agent.on_dbfs, "off_dbfs": agent.off_dbfs})
        return silence

    async def drain(self) -> None:
        """Refuse new calls and end the live ones UNAVAILABLE (resumable: their generation
        streams are cancelled, which flushes them)."""
        self.admission.draining = True
        await self.end_calls(Code.UNAVAILABLE, f"the gateway is draining; {RESUME_HINT}")

    async def end_calls(self, code: grpc.StatusCode, details: str, timeout_s: float = 10.0) -> None:
        """End every live call with ``code`` (a drain) and wait for them to be gone."""
        for pipeline in list(self.calls.values()):
            pipeline.fail(code, details)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.calls and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)


__all__ = ["Gateway"]
