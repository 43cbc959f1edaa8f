"""``StatusError``: how a call, a stream or a stage of one ends with a gRPC status, and the one
wording of the resume hint that a resumable ending carries.

Every layer that refuses or ends something says it the same way: ``StatusError(code, details)``
-- a backend stream that failed (``stage`` names it: encode, generate, decode), a servicer
aborting an in-process stream, the gateway refusing a call or a message, the generation service
failing a call. The gRPC edge turns it into the stream's status (``abort_with``); a WebRTC edge
into an HTTP status.
"""

from __future__ import annotations

from typing import NoReturn

import grpc

# What a caller is told when a call ends but its history is kept (UNAVAILABLE endings: a drain,
# a restart, a backend that went away).
RESUME_HINT = "reconnect with the same call_id (resume) to continue the call"


class StatusError(Exception):
    """Something ended with gRPC status ``code`` and ``details`` (what to do is in the details);
    ``stage`` names the backend stream it came from, when it came from one."""

    def __init__(self, code: grpc.StatusCode, details: str, stage: str = "") -> None:
        super().__init__(f"{stage}: {code.name}: {details}" if stage else f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.stage = stage


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    """End the RPC with ``code`` and ``details`` (typed ``NoReturn``: ``context.abort`` raises)."""
    await context.abort(code, details)
    raise AssertionError("context.abort returned")  # it always raises


async def abort_with(context: grpc.aio.ServicerContext, err: StatusError) -> NoReturn:
    """End the RPC with ``err``'s status."""
    await abort(context, err.code, err.details)


__all__ = ["RESUME_HINT", "StatusError", "abort", "abort_with"]
