"""The session store: each call's configuration and full frame history, so a restarted
generation service can rebuild a call's state and continue it (see protos/maata/v1/session.proto).

``SessionStore`` is the async interface. It validates every request once, for all backends
(call ids, append sizes, frame sizes, frame indices), then calls a backend hook:

* ``MemorySessionStore``: one process, the default. Every operation runs to completion without
  awaiting, so it is atomic under asyncio without a lock. Bounded by ``StoreLimits``.
* ``RedisSessionStore``: shared by many service replicas and surviving their restarts. Every
  write is one Lua script, so it is atomic on the server and two writers cannot corrupt a call.

Semantics shared by both backends
---------------------------------
* A live session expires ``ttl_seconds`` after its last write (create, update, append); ``end``
  marks it ended and it then expires ``ended_ttl_seconds`` later. An expired session is gone:
  NotFound. Ended sessions can still be read (``get``, ``read``, ``list``) but not written.
* ``append`` must start exactly at the stored frame count (``first_index == frames``), else
  Conflict: no gaps, no overlaps. The store sets each frame's ``index``; a caller may leave it 0
  or set it to its true position. An empty append is a keep-alive that refreshes the TTL.
* ``max_sessions`` counts live and ended sessions (both hold memory); ``max_frames`` caps one
  session's history. Both raise LimitExceeded; nothing is evicted early.
* ``list`` returns the most recently updated sessions first, at most ``LIST_CAP``.
* Server-owned fields of a ``Session`` (state, frames, created_at, updated_at) are ignored on
  create and update; every other field, unknown future fields included, is stored as given.

Redis key layout (``{p}`` is ``key_prefix``, default ``maata``; ``{id}`` the call id)
-------------------------------------------------------------------------------------
``{p}:session:{id}``   hash, the session's metadata:
                         ``config``      serialized ``Session`` holding only client-owned fields
                         ``state``       ``live`` | ``ended``
                         ``frames``      stored frame count (always equals LLEN of the list)
                         ``created_at``  ``updated_at``: unix seconds from the Redis clock
``{p}:frames:{id}``    list, serialized ``StoredFrame`` protobufs; list position == frame index
``{p}:sessions:live``  zset, live call ids scored by their expiry deadline (unix ms)
``{p}:sessions:ended`` zset, ended call ids scored by their expiry deadline (unix ms)

Both keys of a session carry the same ``PEXPIREAT`` deadline, set from the server clock
(``TIME``) by the script that wrote them, and the index zsets hold that same deadline, so
entries whose deadline has passed are pruned with one ``ZREMRANGEBYSCORE`` (on create and
list). The index zsets make ``list`` and the ``max_sessions`` check cheap, and cross-slot, so
the store needs a standalone Redis (or a primary with replicas), not Redis Cluster. Configure it
with ``maxmemory-policy noeviction``: an evicted key would leave a stale index entry until its
deadline. Scripts are re-loaded automatically after a Redis restart (NOSCRIPT).

Connection failures become StoreUnavailable after a few quick retries. A retried write that had
in fact been applied reports AlreadyExists (create) or Conflict (append): the caller re-reads.
"""

from __future__ import annotations

import abc
import contextlib
import re
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from services import protogen
from services.session.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    StoreUnavailable,
)

protogen.ensure()
from maata.v1.session_pb2 import Session, StoredFrame  # noqa: E402  (generated just above)

LIVE = "live"
ENDED = "ended"
STATES = ("", LIVE, ENDED)
MAX_CALL_ID_LENGTH = 128
CALL_ID_CHARS = re.compile(r"[A-Za-z0-9._:-]+")
LIST_CAP = 1000  # most sessions one list call returns
READ_PAGE = 512  # frames fetched per round trip while streaming a read
MAX_UINT64 = 2**64 - 1
SERVER_FIELDS = ("state", "frames", "created_at", "updated_at")


@dataclass(frozen=True)
class StoreLimits:
    """Expiry and capacity of a session store; every field must be positive."""

    ttl_seconds: float = 3600.0  # a live session expires this long after its last write
    ended_ttl_seconds: float = 300.0  # an ended session stays readable this long
    max_sessions: int = 1000  # live + ended sessions held at once
    max_frames: int = 90_000  # frames per session: one hour of 40 ms frames
    max_append: int = 500  # frames in one append: 20 s of audio
    max_frame_bytes: int = 1024  # one serialized StoredFrame (8 codebooks x 2 is ~60 bytes)
    max_config_bytes: int = 65_536  # one serialized session config (style, sampling, labels)

    def __post_init__(self) -> None:
        check_positive(self, StoreLimits.__dataclass_fields__)


def check_positive(config: object, names: Iterable[str]) -> None:
    """Raise ValueError naming the first of ``names`` whose value on ``config`` is not > 0."""
    for name in names:
        value = getattr(config, name)
        if not value > 0:
            raise ValueError(f"{type(config).__name__}.{name} must be positive, got {value!r}")


# ----------------------------------------------------------------------------- validation


def check_call_id(call_id: str) -> str:
    """Return ``call_id`` if it is a valid key: 1-128 characters of ``[A-Za-z0-9._:-]``.

    The charset keeps ids safe inside Redis keys, log lines and URLs."""
    if not call_id:
        raise InvalidArgument("call_id is empty")
    if len(call_id) > MAX_CALL_ID_LENGTH:
        raise InvalidArgument(f"call_id is {len(call_id)} characters long; the limit is {MAX_CALL_ID_LENGTH}")
    if not CALL_ID_CHARS.fullmatch(call_id):
        raise InvalidArgument(f"call_id {call_id!r} may only contain letters, digits and . _ : -")
    return call_id


def encode_config(session: Session, limits: StoreLimits) -> bytes:
    """Serialize the client-owned fields of ``session`` (server-owned ones cleared)."""
    config = Session()
    config.CopyFrom(session)
    for name in SERVER_FIELDS:
        config.ClearField(name)
    blob = config.SerializeToString()
    if len(blob) > limits.max_config_bytes:
        raise InvalidArgument(f"session config is {len(blob)} bytes; the limit is {limits.max_config_bytes}")
    return blob


def encode_frames(first_index: int, frames: Sequence[StoredFrame], limits: StoreLimits) -> list[bytes]:
    """Serialize ``frames`` with their indices set, checking count, size and placement."""
    if len(frames) > limits.max_append:
        raise InvalidArgument(f"{len(frames)} frames in one append; the limit is {limits.max_append}")
    if check_not_negative("first_index", first_index) + len(frames) > MAX_UINT64:
        raise InvalidArgument(f"first_index {first_index} is out of range")
    blobs = []
    for offset, frame in enumerate(frames):
        index = first_index + offset
        if frame.index not in (0, index):
            raise InvalidArgument(f"frame {offset} of the append has index {frame.index}, expected {index} (or 0)")
        stored = StoredFrame()
        stored.CopyFrom(frame)
        stored.index = index
        blob = stored.SerializeToString()
        if len(blob) > limits.max_frame_bytes:
            raise InvalidArgument(f"frame {index} is {len(blob)} bytes; the limit is {limits.max_frame_bytes}")
        blobs.append(blob)
    return blobs


def check_not_negative(name: str, value: int) -> int:
    """Return ``value`` if it is >= 0 (gRPC's uint fields always are; Python callers may not be)."""
    if value < 0:
        raise InvalidArgument(f"{name} must not be negative, got {value}")
    return value


def read_stop(count: int, start: int, limit: int) -> int:
    """The end (exclusive) of a read of ``limit`` frames (0: all) from ``start`` of ``count``."""
    return count if limit == 0 else min(count, start + limit)


def make_session(config: bytes, state: str, frames: int, created_at: float, updated_at: float) -> Session:
    """Rebuild a ``Session`` message from its stored config and server-owned fields."""
    session = Session.FromString(config)
    session.state = state
    session.frames = frames
    session.created_at = created_at
    session.updated_at = updated_at
    return session


# --------------------------------------------------- errors shared by both backends' messages


def not_found(call_id: str) -> NotFound:
    return NotFound(f"session {call_id!r} not found (unknown or expired)")


def already_exists(call_id: str) -> AlreadyExists:
    return AlreadyExists(f"session {call_id!r} already exists")


def has_ended(call_id: str) -> Conflict:
    return Conflict(f"session {call_id!r} has ended; it can be read but not written")


def misplaced(call_id: str, stored: int, first_index: int) -> Conflict:
    kind = "a gap" if first_index > stored else "an overlap"
    return Conflict(f"session {call_id!r} holds {stored} frames, so an append must start at index {stored}; "
                    f"first_index {first_index} would leave {kind}", frames=stored)


def too_many_sessions(limit: int) -> LimitExceeded:
    return LimitExceeded(f"the store already holds its limit of {limit} sessions")


def too_many_frames(call_id: str, stored: int, adding: int, limit: int) -> LimitExceeded:
    return LimitExceeded(f"session {call_id!r} holds {stored} frames; {adding} more would pass the limit of {limit}")


# ----------------------------------------------------------------------------- interface


class SessionStore(abc.ABC):
    """Async store of call sessions and their frames. Public methods validate their arguments,
    then call the backend's ``_hook``; they raise only ``services.session.errors`` classes."""

    def __init__(self, limits: StoreLimits | None = None) -> None:
        self.limits = limits or StoreLimits()

    async def create(self, session: Session) -> Session:
        """Store a new live session with no frames. AlreadyExists if the id is taken."""
        call_id = check_call_id(session.call_id)
        return await self._create(call_id, encode_config(session, self.limits))

    async def get(self, call_id: str) -> Session:
        """The stored session. NotFound if unknown or expired."""
        return await self._get(check_call_id(call_id))

    async def update(self, session: Session) -> Session:
        """Replace a live session's config (style, sampling, text, labels). Conflict if ended."""
        call_id = check_call_id(session.call_id)
        return await self._update(call_id, encode_config(session, self.limits))

    async def append(self, call_id: str, first_index: int, frames: Sequence[StoredFrame]) -> int:
        """Append ``frames`` at ``first_index`` (must equal the stored count); returns the new count."""
        check_call_id(call_id)
        return await self._append(call_id, first_index, encode_frames(first_index, frames, self.limits))

    async def read(self, call_id: str, start: int = 0, limit: int = 0) -> AsyncIterator[StoredFrame]:
        """Stream frames ``[start, start + limit)`` (``limit`` 0: to the count when the read began)."""
        check_call_id(call_id)
        check_not_negative("start", start)
        check_not_negative("limit", limit)
        async for page in self._read_pages(call_id, start, limit):
            for blob in page:
                yield StoredFrame.FromString(blob)

    async def end(self, call_id: str) -> Session:
        """Mark the session ended (idempotent); it then expires after ``ended_ttl_seconds``."""
        return await self._end(check_call_id(call_id))

    async def list(self, state: str = "", limit: int = 0) -> list[Session]:
        """Sessions in ``state`` ("" for all), most recently updated first; ``limit`` 0 = LIST_CAP."""
        if state not in STATES:
            raise InvalidArgument(f"state must be one of {STATES}, got {state!r}")
        return await self._list(state, min(check_not_negative("limit", limit) or LIST_CAP, LIST_CAP))

    async def ping(self) -> None:
        """Return if the backend answers, else raise StoreUnavailable (used by health checks)."""

    async def close(self) -> None:
        """Release the backend's connections."""

    async def __aenter__(self) -> SessionStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def _create(self, call_id: str, config: bytes) -> Session: ...

    @abc.abstractmethod
    async def _get(self, call_id: str) -> Session: ...

    @abc.abstractmethod
    async def _update(self, call_id: str, config: bytes) -> Session: ...

    @abc.abstractmethod
    async def _append(self, call_id: str, first_index: int, blobs: list[bytes]) -> int: ...

    @abc.abstractmethod
    def _read_pages(self, call_id: str, start: int, limit: int) -> AsyncIterator[list[bytes]]:
        """Serialized frames in pages; raises NotFound before the first page if unknown."""

    @abc.abstractmethod
    async def _end(self, call_id: str) -> Session: ...

    @abc.abstractmethod
    async def _list(self, state: str, limit: int) -> list[Session]: ...


# ----------------------------------------------------------------------------- memory


@dataclass
class _Entry:
    """One session held in memory; ``deadline`` is on the monotonic clock."""

    config: bytes
    created_at: float
    updated_at: float
    deadline: float
    state: str = LIVE
    frames: list[bytes] = field(default_factory=list)

    def expired(self, now: float) -> bool:
        return now > self.deadline

    def touch(self, ttl_seconds: float) -> None:
        """Record a write: bump ``updated_at`` and push the expiry ``ttl_seconds`` away."""
        self.updated_at = time.time()
        self.deadline = time.monotonic() + ttl_seconds

    def session(self) -> Session:
        return make_session(self.config, self.state, len(self.frames), self.created_at, self.updated_at)


class MemorySessionStore(SessionStore):
    """Sessions in a dict of this process. No method awaits, so each is atomic under asyncio.

    Expired sessions are dropped lazily: on access, and by a sweep when the store is full or
    listed, so memory stays bounded by ``max_sessions`` x ``max_frames``."""

    def __init__(self, limits: StoreLimits | None = None) -> None:
        super().__init__(limits)
        self._entries: dict[str, _Entry] = {}

    def _find(self, call_id: str) -> _Entry:
        entry = self._entries.get(call_id)
        if entry is None or entry.expired(time.monotonic()):
            self._entries.pop(call_id, None)
            raise not_found(call_id)
        return entry

    def _find_live(self, call_id: str) -> _Entry:
        entry = self._find(call_id)
        if entry.state != LIVE:
            raise has_ended(call_id)
        return entry

    def _sweep(self) -> None:
        now = time.monotonic()
        for call_id in [k for k, e in self._entries.items() if e.expired(now)]:
            del self._entries[call_id]

    async def _create(self, call_id: str, config: bytes) -> Session:
        existing = self._entries.get(call_id)
        if existing is not None and not existing.expired(time.monotonic()):
            raise already_exists(call_id)
        if len(self._entries) >= self.limits.max_sessions:
            self._sweep()
            if len(self._entries) >= self.limits.max_sessions:
                raise too_many_sessions(self.limits.max_sessions)
        now = time.time()
        entry = _Entry(config, now, now, time.monotonic() + self.limits.ttl_seconds)
        self._entries[call_id] = entry
        return entry.session()

    async def _get(self, call_id: str) -> Session:
        return self._find(call_id).session()

    async def _update(self, call_id: str, config: bytes) -> Session:
        entry = self._find_live(call_id)
        entry.config = config
        entry.touch(self.limits.ttl_seconds)
        return entry.session()

    async def _append(self, call_id: str, first_index: int, blobs: list[bytes]) -> int:
        entry = self._find_live(call_id)
        stored = len(entry.frames)
        if first_index != stored:
            raise misplaced(call_id, stored, first_index)
        if stored + len(blobs) > self.limits.max_frames:
            raise too_many_frames(call_id, stored, len(blobs), self.limits.max_frames)
        entry.frames.extend(blobs)
        entry.touch(self.limits.ttl_seconds)
        return len(entry.frames)

    async def _read_pages(self, call_id: str, start: int, limit: int) -> AsyncIterator[list[bytes]]:
        frames = self._find(call_id).frames  # only ever extended, so earlier slices never change
        stop = read_stop(len(frames), start, limit)
        for low in range(start, stop, READ_PAGE):
            yield frames[low:min(low + READ_PAGE, stop)]

    async def _end(self, call_id: str) -> Session:
        entry = self._find(call_id)
        if entry.state == LIVE:
            entry.state = ENDED
            entry.touch(self.limits.ended_ttl_seconds)
        return entry.session()

    async def _list(self, state: str, limit: int) -> list[Session]:
        self._sweep()
        entries = [e for e in self._entries.values() if not state or e.state == state]
        entries.sort(key=lambda e: e.updated_at, reverse=True)
        return [e.session() for e in entries[:limit]]


# ----------------------------------------------------------------------------- redis

# Helpers shared by every script. Deadlines and timestamps come from the Redis clock, so service
# replicas with skewed clocks agree; a script's writes replicate to Redis replicas as effects.
_LUA_PRELUDE = """
local function clock()
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  return string.format('%d.%06d', s, us), s * 1000 + math.floor(us / 1000)
end
local function prune(live, ended, now_ms)
  redis.call('ZREMRANGEBYSCORE', live, '-inf', '(' .. now_ms)
  redis.call('ZREMRANGEBYSCORE', ended, '-inf', '(' .. now_ms)
end
local function keep(session, frames, index, id, deadline)
  redis.call('PEXPIREAT', session, deadline)
  redis.call('PEXPIREAT', frames, deadline)
  redis.call('ZADD', index, deadline, id)
end
local function live_state(session)
  local state = redis.call('HGET', session, 'state')
  if not state then return 'NOT_FOUND' end
  if state ~= 'live' then return 'ENDED' end
  return nil
end
"""

# KEYS: session, frames, live, ended. ARGV: id, config, ttl_ms, max_sessions.
_LUA_CREATE = """
local now, now_ms = clock()
prune(KEYS[3], KEYS[4], now_ms)
if redis.call('EXISTS', KEYS[1]) == 1 then return {'EXISTS'} end
if redis.call('ZCARD', KEYS[3]) + redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[4]) then
  return {'TOO_MANY_SESSIONS'}
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'config', ARGV[2], 'state', 'live', 'frames', 0,
           'created_at', now, 'updated_at', now)
keep(KEYS[1], KEYS[2], KEYS[3], ARGV[1], now_ms + tonumber(ARGV[3]))
return {'OK', redis.call('HGETALL', KEYS[1])}
"""

# KEYS: session, frames, live. ARGV: id, config, ttl_ms.
_LUA_UPDATE = """
local failed = live_state(KEYS[1])
if failed then return {failed} end
local now, now_ms = clock()
redis.call('HSET', KEYS[1], 'config', ARGV[2], 'updated_at', now)
keep(KEYS[1], KEYS[2], KEYS[3], ARGV[1], now_ms + tonumber(ARGV[3]))
return {'OK', redis.call('HGETALL', KEYS[1])}
"""

# KEYS: session, frames, live. ARGV: id, first_index, ttl_ms, max_frames, frame blobs...
_LUA_APPEND = """
local failed = live_state(KEYS[1])
if failed then return {failed} end
local count = tonumber(redis.call('HGET', KEYS[1], 'frames'))
if tonumber(ARGV[2]) ~= count then return {'MISPLACED', count, ARGV[2]} end
local n = #ARGV - 4
if count + n > tonumber(ARGV[4]) then return {'TOO_MANY_FRAMES', count, n} end
for i = 5, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local now, now_ms = clock()
redis.call('HSET', KEYS[1], 'frames', count + n, 'updated_at', now)
keep(KEYS[1], KEYS[2], KEYS[3], ARGV[1], now_ms + tonumber(ARGV[3]))
return {'OK', count + n}
"""

# KEYS: session, frames, live, ended. ARGV: id, ended_ttl_ms.
_LUA_END = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'NOT_FOUND'} end
if state == 'live' then
  local now, now_ms = clock()
  redis.call('HSET', KEYS[1], 'state', 'ended', 'updated_at', now)
  redis.call('ZREM', KEYS[3], ARGV[1])
  keep(KEYS[1], KEYS[2], KEYS[4], ARGV[1], now_ms + tonumber(ARGV[2]))
end
return {'OK', redis.call('HGETALL', KEYS[1])}
"""

# KEYS: live, ended. ARGV: want_live (0|1), want_ended (0|1), limit. Newest deadline first.
_LUA_LIST = """
local _, now_ms = clock()
prune(KEYS[1], KEYS[2], now_ms)
local out = {{}, {}}
for i = 1, 2 do
  if ARGV[i] == '1' then out[i] = redis.call('ZREVRANGE', KEYS[i], 0, tonumber(ARGV[3]) - 1) end
end
return {'OK', out[1], out[2]}
"""

_SCRIPTS = {"create": _LUA_CREATE, "update": _LUA_UPDATE, "append": _LUA_APPEND, "end": _LUA_END, "list": _LUA_LIST}


@dataclass(frozen=True)
class RedisKeys:
    """The key names of the layout in this module's docstring, under one prefix."""

    prefix: str = "maata"

    def session(self, call_id: str) -> str:
        return f"{self.prefix}:session:{call_id}"

    def frames(self, call_id: str) -> str:
        return f"{self.prefix}:frames:{call_id}"

    @property
    def live(self) -> str:
        return f"{self.prefix}:sessions:live"

    @property
    def ended(self) -> str:
        return f"{self.prefix}:sessions:ended"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """A hash from a script's flat HGETALL reply ``[k1, v1, k2, v2, ...]``."""
    return dict(zip(flat[::2], flat[1::2]))


def _session_of(fields: Mapping[bytes, bytes]) -> Session:
    return make_session(fields[b"config"], fields[b"state"].decode(), int(fields[b"frames"]),
                        float(fields[b"created_at"]), float(fields[b"updated_at"]))


def _redacted(url: str) -> str:
    """``host:port/db`` of a Redis URL, without credentials, for error messages."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or '/0'}"


class RedisSessionStore(SessionStore):
    """Sessions in Redis (redis.asyncio), in the key layout of this module's docstring.

    Each write is one Lua script, atomic on the server: the append script checks the stored
    count and the session's state before pushing, so concurrent writers cannot leave a gap or
    an overlap. Connection errors are retried briefly, then raised as StoreUnavailable; the
    client reconnects on its own once Redis is back."""

    def __init__(self, url: str, limits: StoreLimits | None = None, *, key_prefix: str = "maata",
                 timeout_seconds: float = 2.0) -> None:
        super().__init__(limits)
        self.keys = RedisKeys(key_prefix)
        self._where = _redacted(url)
        self._redis = Redis.from_url(
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3))
        self._scripts = {name: self._redis.register_script(_LUA_PRELUDE + body) for name, body in _SCRIPTS.items()}

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn any Redis client error into StoreUnavailable, naming the server."""
        try:
            yield
        except RedisError as err:
            raise StoreUnavailable(f"redis at {self._where} is unavailable: {type(err).__name__}: {err}") from err

    async def _run(self, script: str, call_id: str, keys: list[str], args: list[object]) -> list:
        """Run a script; return the values after its ``OK`` or raise the error it reports."""
        with self._guard():
            status, *values = await self._scripts[script](keys=keys, args=args)
        if status == b"OK":
            return values
        raise self._failure(status.decode(), call_id, values)

    def _failure(self, status: str, call_id: str, values: list) -> Exception:
        """The error for a script's failure ``status`` and the numbers it returned with it."""
        if status == "NOT_FOUND":
            return not_found(call_id)
        if status == "EXISTS":
            return already_exists(call_id)
        if status == "ENDED":
            return has_ended(call_id)
        if status == "TOO_MANY_SESSIONS":
            return too_many_sessions(self.limits.max_sessions)
        if status == "MISPLACED":
            return misplaced(call_id, int(values[0]), int(values[1]))
        if status == "TOO_MANY_FRAMES":
            return too_many_frames(call_id, int(values[0]), int(values[1]), self.limits.max_frames)
        return StoreUnavailable(f"redis at {self._where} answered an unexpected {status!r}")

    def _session_keys(self, call_id: str) -> list[str]:
        return [self.keys.session(call_id), self.keys.frames(call_id), self.keys.live]

    async def _create(self, call_id: str, config: bytes) -> Session:
        keys = [*self._session_keys(call_id), self.keys.ended]
        (fields,) = await self._run("create", call_id, keys, [call_id, config, _ms(self.limits.ttl_seconds),
                                                              self.limits.max_sessions])
        return _session_of(_pairs(fields))

    async def _get(self, call_id: str) -> Session:
        with self._guard():
            fields = await self._redis.hgetall(self.keys.session(call_id))
        if not fields:
            raise not_found(call_id)
        return _session_of(fields)

    async def _update(self, call_id: str, config: bytes) -> Session:
        args: list[object] = [call_id, config, _ms(self.limits.ttl_seconds)]
        (fields,) = await self._run("update", call_id, self._session_keys(call_id), args)
        return _session_of(_pairs(fields))

    async def _append(self, call_id: str, first_index: int, blobs: list[bytes]) -> int:
        args: list[object] = [call_id, first_index, _ms(self.limits.ttl_seconds), self.limits.max_frames, *blobs]
        (count,) = await self._run("append", call_id, self._session_keys(call_id), args)
        return int(count)

    async def _read_pages(self, call_id: str, start: int, limit: int) -> AsyncIterator[list[bytes]]:
        with self._guard():
            count = await self._redis.hget(self.keys.session(call_id), "frames")
        if count is None:
            raise not_found(call_id)
        stop = read_stop(int(count), start, limit)
        for low in range(start, stop, READ_PAGE):
            with self._guard():
                page = await self._redis.lrange(self.keys.frames(call_id), low, min(low + READ_PAGE, stop) - 1)
            yield page

    async def _end(self, call_id: str) -> Session:
        keys = [*self._session_keys(call_id), self.keys.ended]
        (fields,) = await self._run("end", call_id, keys, [call_id, _ms(self.limits.ended_ttl_seconds)])
        return _session_of(_pairs(fields))

    async def _list(self, state: str, limit: int) -> list[Session]:
        args = [int(state != ENDED), int(state != LIVE), limit]
        live_ids, ended_ids = await self._run("list", "", [self.keys.live, self.keys.ended], args)
        with self._guard():
            async with self._redis.pipeline(transaction=False) as pipe:
                for call_id in [*live_ids, *ended_ids]:
                    pipe.hgetall(self.keys.session(call_id.decode()))
                replies = await pipe.execute()
        # A session may have expired or ended between the two round trips: skip or refilter it.
        sessions = [_session_of(f) for f in replies if f and (not state or f[b"state"].decode() == state)]
        sessions.sort(key=lambda s: s.updated_at, reverse=True)
        return sessions[:limit]

    async def ping(self) -> None:
        with self._guard():
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()
