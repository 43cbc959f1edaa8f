"""The gateway's core, shared by every front end: ``Gateway`` -- the backends, the keys, admission
(draining, the gateway-wide cap on live calls, per-key quotas), the registry of live calls (a
drain ends them all), style checks, and the resume check against the session store.

Front ends (``partner``: the gRPC partner API; ``webrtc``: the browser) import this module and
``pipeline``; this module imports neither of them.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from services.common.errors import RESUME_HINT, StatusError
from services.common.metrics import ServiceMetrics
from services.gateway.auth import ApiKey, AuthError, Authenticator
from services.gateway.backends import Backends
from services.gateway.config import GatewayConfig
from services.gateway.pipeline import Pipeline
from services.session.errors import NotFound, SessionError
from services.session.store import ENDED, SessionStore

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
        self.draining = False
        self._next = 0

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

    def admit_call(self) -> None:
        """The gateway-wide checks every front end makes before a call: not draining, under ``max_calls``."""
        if self.draining:
            raise StatusError(Code.UNAVAILABLE, f"the gateway is draining; {RESUME_HINT} (or start it) on another replica")
        if len(self.calls) >= self.config.max_calls:
            raise StatusError(Code.RESOURCE_EXHAUSTED, f"the gateway is at its limit of {self.config.max_calls} calls; "
                                                   "retry later or use another replica")

    def admit(self, key: ApiKey) -> None:
        """A partner call of ``key``: the gateway-wide checks, then the key's quota (acquired here)."""
        self.admit_call()
        try:
            self.auth.acquire(key)
        except AuthError as err:
            raise StatusError(Code.RESOURCE_EXHAUSTED, err.details) from None

    def register(self, pipeline: Pipeline) -> int:
        """Count ``pipeline`` as a live call (drains end it); returns its slot for ``unregister``."""
        slot = self._next
        self._next += 1
        self.calls[slot] = pipeline
        return slot

    def unregister(self, slot: int) -> None:
        self.calls.pop(slot, None)

    async def drain(self) -> None:
        """Refuse new calls and end the live ones UNAVAILABLE (resumable: their generation
        streams are cancelled, which flushes them)."""
        self.draining = True
        await self.end_calls(Code.UNAVAILABLE, f"the gateway is draining; {RESUME_HINT}")

    async def end_calls(self, code: grpc.StatusCode, details: str, timeout_s: float = 10.0) -> None:
        """End every live call with ``code`` (a drain) and wait for them to be gone."""
        for pipeline in list(self.calls.values()):
            pipeline.fail(code, details)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.calls and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)


__all__ = ["Gateway"]
