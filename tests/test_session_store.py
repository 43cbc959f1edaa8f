"""The session store: one suite run against both backends (memory, and Redis on a real
redis-server), plus a Redis restart test. Needs ``redis-server`` on PATH: without it the Redis
cases fail (not skip), since CI installs it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Awaitable, Callable

import pytest


from services.session.errors import (  # noqa: E402
    AlreadyExists,
    Conflict,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    StoreUnavailable,
)
from services.session.redis_server import RedisServer  # noqa: E402
from services.session.store import (  # noqa: E402
    MemorySessionStore,
    RedisSessionStore,
    SessionStore,
    StoreLimits,
)

from maata_protos.v1.common_pb2 import CodeFrame, Sampling, Style  # noqa: E402
from maata_protos.v1.session_pb2 import Session, StoredFrame  # noqa: E402

MakeStore = Callable[..., SessionStore]
Body = Callable[[SessionStore], Awaitable[None]]


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> MakeStore:
    """A factory of stores of one backend, called inside the test's event loop with limits."""
    if request.param == "memory":
        return lambda **limits: MemorySessionStore(StoreLimits(**limits))
    url = request.getfixturevalue("redis_server").url
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    return lambda **limits: RedisSessionStore(url, StoreLimits(**limits), key_prefix=prefix)


def run(make_store: MakeStore, body: Body, **limits: float) -> None:
    """Run ``body`` on a fresh store with ``limits`` in a new event loop, closing the store."""

    async def main() -> None:
        async with make_store(**limits) as store:
            await body(store)

    asyncio.run(main())


def session(call_id: str, voice: str = "female_1", **labels: str) -> Session:
    return Session(call_id=call_id, style=Style(voice=voice, emotion="HAPPY"),
                   sampling=Sampling(temperature=0.7, top_k=50, seed=42), text=True, labels=labels)


def frames(first: int, n: int) -> list[StoredFrame]:
    """``n`` distinct frames for positions ``first...``, their index left 0 for the store to set."""
    return [StoredFrame(user=CodeFrame(codes=[(i + k) % 1024 for k in range(8)]),
                        agent=CodeFrame(codes=[(7 * i + k) % 1024 for k in range(8)]), text_token=i)
            for i in range(first, first + n)]


async def read_all(store: SessionStore, call_id: str, start: int = 0, limit: int = 0) -> list[StoredFrame]:
    return [frame async for frame in store.read(call_id, start, limit)]


def test_create_get_update_end(make_store: MakeStore) -> None:
    async def body(store: SessionStore) -> None:
        created = await store.create(session("call-1", gateway="gw-a"))
        assert (created.call_id, created.state, created.frames) == ("call-1", "live", 0)
        assert created.created_at > 0 and created.updated_at == created.created_at
        assert created.style.voice == "female_1" and created.sampling.seed == 42 and created.labels["gateway"] == "gw-a"
        assert await store.get("call-1") == created

        bogus = session("call-1", voice="male_2")
        bogus.state, bogus.frames = "ended", 99  # server-owned: ignored
        updated = await store.update(bogus)
        assert updated.style.voice == "male_2" and not updated.labels  # config replaced wholesale
        assert (updated.state, updated.frames, updated.created_at) == ("live", 0, created.created_at)
        assert updated.updated_at >= created.updated_at

        finished = await store.end("call-1")
        assert finished.state == "ended" and finished.style.voice == "male_2"
        assert await store.end("call-1") == finished  # idempotent
        assert await store.get("call-1") == finished
        with pytest.raises(AlreadyExists):
            await store.create(session("call-1"))

    run(make_store, body)


def test_append_and_read(make_store: MakeStore) -> None:
    async def body(store: SessionStore) -> None:
        await store.create(session("c"))
        assert await store.append("c", 0, frames(0, 300)) == 300
        assert await store.append("c", 300, frames(300, 500)) == 800
        assert await store.append("c", 800, []) == 800  # keep-alive
        indexed = frames(800, 2)
        indexed[0].index, indexed[1].index = 800, 801  # a caller may set true indices
        assert await store.append("c", 800, indexed) == 802
        assert (await store.get("c")).frames == 802

        stored = await read_all(store, "c")  # spans several read pages
        expected = frames(0, 802)
        for i, frame in enumerate(expected):
            frame.index = i
        assert stored == expected
        assert await read_all(store, "c", 790, 5) == expected[790:795]
        assert await read_all(store, "c", 800) == expected[800:]
        assert await read_all(store, "c", 5000) == []

        await store.end("c")
        assert len(await read_all(store, "c")) == 802  # ended calls stay readable

    run(make_store, body)


def test_gap_overlap_and_ended_rejected(make_store: MakeStore) -> None:
    async def body(store: SessionStore) -> None:
        await store.create(session("c"))
        await store.append("c", 0, frames(0, 10))
        for first in (11, 9, 0):
            with pytest.raises(Conflict) as caught:
                await store.append("c", first, frames(first, 3))
            assert caught.value.frames == 10
        assert "gap" in str((await _conflict(store, 12)).value) and "overlap" in str((await _conflict(store, 3)).value)
        with pytest.raises(InvalidArgument):  # a frame index out of place
            await store.append("c", 10, [StoredFrame(index=11)])
        assert (await store.get("c")).frames == 10

        await store.end("c")
        with pytest.raises(Conflict, match="ended"):
            await store.append("c", 10, frames(10, 1))
        with pytest.raises(Conflict, match="ended"):
            await store.update(session("c"))

    run(make_store, body)


async def _conflict(store: SessionStore, first: int) -> pytest.ExceptionInfo[Conflict]:
    with pytest.raises(Conflict) as caught:
        await store.append("c", first, frames(first, 1))
    return caught


def test_unknown_session_not_found(make_store: MakeStore) -> None:
    async def body(store: SessionStore) -> None:
        for operation in (store.get("nope"), store.update(session("nope")), store.append("nope", 0, frames(0, 1)),
                          store.end("nope"), read_all(store, "nope")):
            with pytest.raises(NotFound, match="nope"):
                await operation

    run(make_store, body)


@pytest.mark.parametrize("call_id", ["", "x" * 129, "has space", "a/b", "{tag}", "ఫోన్", "a\nb"])
def test_bad_call_ids(make_store: MakeStore, call_id: str) -> None:
    async def body(store: SessionStore) -> None:
        for operation in (store.create(session(call_id)), store.get(call_id), store.update(session(call_id)),
                          store.append(call_id, 0, []), store.end(call_id), read_all(store, call_id)):
            with pytest.raises(InvalidArgument):
                await operation
        assert await store.list() == []
        await store.create(session("x" * 128))  # the longest valid id
        await store.create(session("Call_1.a:b-c"))

    run(make_store, body)


def test_limits(make_store: MakeStore) -> None:
    async def body(store: SessionStore) -> None:
        await store.create(session("a"))
        with pytest.raises(InvalidArgument, match="limit is 4"):
            await store.append("a", 0, frames(0, 5))
        with pytest.raises(InvalidArgument, match="bytes"):
            await store.append("a", 0, [StoredFrame(user=CodeFrame(codes=list(range(300))))])
        with pytest.raises(InvalidArgument, match="config"):
            await store.create(session("big", note="x" * 3000))
        with pytest.raises(InvalidArgument, match="state"):
            await store.list("paused")
        for negative in (store.append("a", -1, []), read_all(store, "a", -1), read_all(store, "a", 0, -1),
                         store.list(limit=-1)):
            with pytest.raises(InvalidArgument, match="negative"):
                await negative
        await store.append("a", 0, frames(0, 4))
        await store.append("a", 4, frames(4, 4))
        with pytest.raises(LimitExceeded, match="10"):
            await store.append("a", 8, frames(8, 3))
        assert await store.append("a", 8, frames(8, 2)) == 10
        assert (await store.get("a")).frames == 10

        await store.create(session("b"))
        with pytest.raises(LimitExceeded, match="2 live sessions"):
            await store.create(session("c"))
        await store.end("b")  # an ended session frees its live place at once
        await store.create(session("c"))
        with pytest.raises(LimitExceeded, match="2 live sessions"):
            await store.create(session("d"))

    run(make_store, body, max_append=4, max_frames=10, max_sessions=2, max_frame_bytes=256, max_config_bytes=2048)


def test_ended_sessions_never_fill_the_store(make_store: MakeStore) -> None:
    """Many short calls that hang up (the quick-call flood) leave ended sessions; they never
    refuse a new live one, and beyond max_ended_sessions the oldest are evicted (gone, not readable)."""

    async def body(store: SessionStore) -> None:
        for i in range(12):
            await store.create(session(f"q{i}"))
            await store.append(f"q{i}", 0, frames(0, 1))
            await store.end(f"q{i}")
        await store.create(session("honest-1"))
        await store.create(session("honest-2"))
        ended = [s.call_id for s in await store.list("ended")]
        assert sorted(ended) == sorted(f"q{i}" for i in range(9, 12))
        with pytest.raises(NotFound):
            await store.get("q0")
        with pytest.raises(NotFound):
            await read_all(store, "q8")
        assert len(await read_all(store, "q11")) == 1
        with pytest.raises(LimitExceeded):
            await store.create(session("third-live"))

    run(make_store, body, max_sessions=2, max_ended_sessions=3)


def test_list(make_store: MakeStore) -> None:
    async def body(store: SessionStore) -> None:
        for call_id in ("a", "b", "c", "d"):
            await store.create(session(call_id))
        await store.append("a", 0, frames(0, 1))  # now the most recently updated
        await store.end("c")
        ids = lambda sessions: [s.call_id for s in sessions]  # noqa: E731
        assert ids(await store.list()) == ["c", "a", "d", "b"]
        assert ids(await store.list("live")) == ["a", "d", "b"]
        assert ids(await store.list("ended")) == ["c"]
        assert ids(await store.list("live", limit=2)) == ["a", "d"]
        assert ids(await store.list("", limit=1)) == ["c"]
        assert (await store.list("ended"))[0].state == "ended"

    run(make_store, body)


def test_list_limit_keeps_write_order_when_writes_share_a_millisecond(make_store: MakeStore) -> None:
    """Sessions written back to back land in the same millisecond of the Redis clock; a limited
    list must still be a prefix of the full, newest-first list (ids sort against write order, so
    a tie broken by id would put older sessions first: the CI flake of test_list)."""

    async def body(store: SessionStore) -> None:
        created = [f"s{99 - i:02d}" for i in range(40)]  # later = smaller id
        for call_id in created:
            await store.create(session(call_id))
        for call_id in created[:10]:  # the oldest ten become the newest, again smaller-id-last
            await store.append(call_id, 0, frames(0, 1))
        newest_first = created[:10][::-1] + created[10:][::-1]
        full = [s.call_id for s in await store.list("live")]
        assert full == newest_first
        for limit in range(1, len(created) + 1):
            assert [s.call_id for s in await store.list("live", limit=limit)] == newest_first[:limit]

    run(make_store, body)


def test_ttl_expiry(make_store: MakeStore) -> None:
    async def body(store: SessionStore) -> None:
        await store.create(session("idle"))
        await store.create(session("busy"))
        await store.create(session("done"))
        await store.append("busy", 0, frames(0, 2))
        await store.end("done")
        await asyncio.sleep(0.3)
        with pytest.raises(NotFound):  # ended TTL (0.2 s) is shorter than the live one
            await store.get("done")
        await store.append("busy", 2, frames(2, 1))  # a write refreshes the TTL
        await asyncio.sleep(0.8)
        with pytest.raises(NotFound):
            await store.get("idle")
        with pytest.raises(NotFound):
            await read_all(store, "idle")
        assert (await store.get("busy")).frames == 3
        assert [s.call_id for s in await store.list()] == ["busy"]
        await store.create(session("idle"))  # an expired id is free again, with no old frames
        assert await read_all(store, "idle") == []
        await store.create(session("third"))  # expired sessions no longer count to max_sessions

    run(make_store, body, ttl_seconds=1.0, ended_ttl_seconds=0.2, max_sessions=3)


def test_concurrent_appends(make_store: MakeStore) -> None:
    async def writer(store: SessionStore, tag: int, n: int) -> int:
        """Append ``n`` one-frame batches tagged ``tag``, resynchronising on Conflict; returns conflicts."""
        conflicts, written, position = 0, 0, 0
        while written < n:
            try:
                position = await store.append("c", position, [StoredFrame(text_token=tag)])
                written += 1
            except Conflict as err:
                conflicts += 1
                position = err.frames or 0
            await asyncio.sleep(0)
        return conflicts

    async def body(store: SessionStore) -> None:
        await store.create(session("c"))
        racing = await asyncio.gather(store.append("c", 0, frames(0, 3)), store.append("c", 0, frames(0, 3)),
                                      return_exceptions=True)
        assert sorted(type(result).__name__ for result in racing) == ["Conflict", "int"]
        conflicts = await asyncio.gather(writer(store, 1, 40), writer(store, 2, 40))
        stored = await read_all(store, "c")
        assert [f.index for f in stored] == list(range(83))
        assert [f.text_token for f in stored[3:]].count(1) == 40 and [f.text_token for f in stored[3:]].count(2) == 40
        assert sum(conflicts) > 0  # both writers start at 0 while 3 frames are stored

    run(make_store, body)


def test_redis_restart_keeps_data_and_reconnects(tmp_path: Path) -> None:
    """Stop redis-server (AOF on), check the store reports StoreUnavailable, start it again on the
    same directory and port, and check the same store object sees every session and frame."""
    server = RedisServer(tmp_path)
    server.start()

    async def main() -> None:
        async with RedisSessionStore(server.url, StoreLimits(), timeout_seconds=1.0) as store:
            await store.create(session("live-call", gateway="gw"))
            await store.append("live-call", 0, frames(0, 400))
            await store.append("live-call", 400, frames(400, 300))
            await store.create(session("ended-call"))
            await store.append("ended-call", 0, frames(0, 5))
            before = {s.call_id: s for s in await store.list()}
            await store.end("ended-call")
            before["ended-call"] = await store.get("ended-call")
            expected = await read_all(store, "live-call")

            await asyncio.to_thread(server.stop)
            with pytest.raises(StoreUnavailable, match="127.0.0.1"):
                await store.get("live-call")
            with pytest.raises(StoreUnavailable):
                await store.append("live-call", 700, frames(700, 1))
            await asyncio.to_thread(server.start)

            assert await store.get("live-call") == before["live-call"]
            assert await store.get("ended-call") == before["ended-call"]
            assert await read_all(store, "live-call") == expected
            assert [s.call_id for s in await store.list("live")] == ["live-call"]
            assert await store.append("live-call", 700, frames(700, 1)) == 701  # scripts re-loaded
            with pytest.raises(Conflict):
                await store.append("live-call", 700, frames(700, 1))

    try:
        asyncio.run(main())
    finally:
        server.close()


def test_redis_server_missing_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install redis-server"):
        RedisServer(executable="redis-server-that-does-not-exist")
