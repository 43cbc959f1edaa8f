"""Clients of the session store: ``RemoteSessionStore`` (the ``SessionStore`` interface over the
``maata.v1.SessionStore`` gRPC service) and ``open_store``, which turns an address into a store.

    store = open_store("")                          # in process (MemorySessionStore)
    store = open_store("redis://127.0.0.1:6379/0")  # Redis (RedisSessionStore)
    store = open_store("127.0.0.1:7103")            # the SessionStore service (RemoteSessionStore)

The generation service keeps each call's history through one of these; the gateway reads a
call's session through one to tell a partner whether a call resumes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.common.config import UNARY_DEADLINE_S
from services.session.errors import (AlreadyExists, Conflict, InvalidArgument, LimitExceeded, NotFound, SessionError,
                                     StoreUnavailable)
from services.session.store import MemorySessionStore, RedisSessionStore, SessionStore, StoreLimits

from maata_protos.v1.session_pb2 import AppendRequest, ListRequest, ReadRequest, Session, SessionRef, StoredFrame
from maata_protos.v1.session_pb2_grpc import SessionStoreStub

Code = grpc.StatusCode

_STORE_ERRORS: dict[grpc.StatusCode, type[SessionError]] = {
    Code.NOT_FOUND: NotFound, Code.ALREADY_EXISTS: AlreadyExists, Code.FAILED_PRECONDITION: Conflict,
    Code.INVALID_ARGUMENT: InvalidArgument, Code.RESOURCE_EXHAUSTED: LimitExceeded,
}


class RemoteSessionStore(SessionStore):
    """The ``SessionStore`` interface over the ``maata.v1.SessionStore`` gRPC service, so the
    generation service can use a shared session service instead of a Redis of its own. Status
    codes map back to the store's errors (anything unexpected is StoreUnavailable); a Conflict
    carries no frame count (re-read it with ``get``)."""

    def __init__(self, address: str, limits: StoreLimits | None = None, *, timeout_s: float = UNARY_DEADLINE_S,
                 options: list[tuple[str, Any]] | None = None) -> None:
        super().__init__(limits)
        self.address = address
        self.timeout_s = timeout_s
        self._channel = grpc.aio.insecure_channel(address, options=options)
        self._stub = SessionStoreStub(self._channel)

    def _error(self, err: grpc.aio.AioRpcError) -> SessionError:
        cls = _STORE_ERRORS.get(err.code(), StoreUnavailable)
        if cls is StoreUnavailable:
            return StoreUnavailable(f"session service at {self.address}: {err.code().name}: {err.details()}")
        return cls(err.details() or err.code().name)

    async def _call(self, method: Callable[..., Awaitable[Any]], request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as err:
            raise self._error(err) from None

    async def _create(self, call_id: str, config: bytes) -> Session:
        return await self._call(self._stub.Create, Session.FromString(config))

    async def _get(self, call_id: str) -> Session:
        return await self._call(self._stub.Get, SessionRef(call_id=call_id))

    async def _update(self, call_id: str, config: bytes) -> Session:
        return await self._call(self._stub.Update, Session.FromString(config))

    async def _append(self, call_id: str, first_index: int, blobs: list[bytes]) -> int:
        request = AppendRequest(call_id=call_id, first_index=first_index,
                                frames=[StoredFrame.FromString(b) for b in blobs])
        return (await self._call(self._stub.AppendFrames, request)).frames

    async def _read_pages(self, call_id: str, start: int, limit: int) -> AsyncIterator[list[bytes]]:
        page: list[bytes] = []
        try:
            async for frame in self._stub.ReadFrames(ReadRequest(call_id=call_id, start=start, limit=limit),
                                                     timeout=self.timeout_s * 10):
                page.append(frame.SerializeToString())
                if len(page) >= 512:
                    yield page
                    page = []
        except grpc.aio.AioRpcError as err:
            raise self._error(err) from None
        if page:
            yield page

    async def _end(self, call_id: str) -> Session:
        return await self._call(self._stub.End, SessionRef(call_id=call_id))

    async def _list(self, state: str, limit: int) -> list[Session]:
        return list((await self._call(self._stub.List, ListRequest(state=state, limit=limit))).sessions)

    async def ping(self) -> None:
        await self._call(self._stub.List, ListRequest(limit=1))

    async def close(self) -> None:
        await self._channel.close()


def open_store(where: str, *, timeout_s: float = UNARY_DEADLINE_S, limits: StoreLimits | None = None,
               options: list[tuple[str, Any]] | None = None) -> SessionStore:
    """The store ``where`` names: "" in process, a redis:// (rediss://, unix://) URL, or the
    host:port of a SessionStore service (``options``: its channel arguments)."""
    if not where:
        return MemorySessionStore(limits)
    if where.startswith(("redis://", "rediss://", "unix://")):
        return RedisSessionStore(where, limits, timeout_seconds=timeout_s)
    return RemoteSessionStore(where, limits, timeout_s=timeout_s, options=options)


__all__ = ["RemoteSessionStore", "open_store"]
