"""The session store's errors: one class per outcome a caller must handle differently.

Both backends raise exactly these (never a backend's own exception), so the gRPC servicer maps
them to status codes in one table and a Python caller can catch them without knowing whether
the store is in memory or in Redis.
"""

from __future__ import annotations


class SessionError(Exception):
    """Base class of every error the session store raises on purpose."""


class NotFound(SessionError):
    """The call id is unknown, or its session expired (gRPC NOT_FOUND)."""


class AlreadyExists(SessionError):
    """``create`` was given a call id that is already stored (gRPC ALREADY_EXISTS)."""


class Conflict(SessionError):
    """The session's state forbids the write (gRPC FAILED_PRECONDITION): an append whose
    ``first_index`` is not the stored frame count (a gap or an overlap, e.g. a second writer),
    or a write to a session that has ended.

    ``frames`` is the stored count when known, so a writer can resynchronise without a ``get``.
    """

    def __init__(self, message: str, frames: int | None = None) -> None:
        super().__init__(message)
        self.frames = frames


class InvalidArgument(SessionError):
    """The request itself is malformed (gRPC INVALID_ARGUMENT): a bad call id, a bad list state,
    too many frames in one append, an oversized frame or config, a frame index out of place."""


class LimitExceeded(SessionError):
    """A configured capacity is full (gRPC RESOURCE_EXHAUSTED): too many stored sessions, or a
    session already holding ``max_frames`` frames. Retrying later (after expiry) may succeed."""


class StoreUnavailable(SessionError):
    """The backend cannot be reached or refused the command (gRPC UNAVAILABLE), e.g. Redis is
    down, restarting or still loading its AOF. Safe to retry: appends are gap-checked."""
