"""The session store service: each call's configuration and frame history, in memory or in
Redis, behind the ``maata.v1.SessionStore`` gRPC API.

* ``store``: the async ``SessionStore`` interface and its backends (key layout documented there)
* ``errors``: the errors every backend raises
* ``service``: the grpc.aio servicer, ``SessionConfig`` and ``serve_session``
* ``redis_server``: a private ``redis-server`` child process for tests and ``maata serve``
"""

from services.session.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    SessionError,
    StoreUnavailable,
)
from services.session.store import MemorySessionStore, RedisSessionStore, SessionStore, StoreLimits
from services.session.service import SessionConfig, SessionServer, serve_session

__all__ = [
    "AlreadyExists", "Conflict", "InvalidArgument", "LimitExceeded", "NotFound", "SessionError",
    "StoreUnavailable", "MemorySessionStore", "RedisSessionStore", "SessionStore", "StoreLimits",
    "SessionConfig", "SessionServer", "serve_session",
]
