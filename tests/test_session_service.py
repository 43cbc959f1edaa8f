"""The SessionStore gRPC service over real grpc.aio on 127.0.0.1: status codes, streaming,
health, reflection, and resilience to garbage requests."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


from services.common.config import ServerConfig  # noqa: E402
from services.session.redis_server import free_port  # noqa: E402
from services.session.service import SERVICE_NAME, SessionConfig, serve_session  # noqa: E402

from maata_protos.v1.common_pb2 import CodeFrame, Style  # noqa: E402
from maata_protos.v1.session_pb2 import (  # noqa: E402
    AppendRequest,
    ListRequest,
    ReadRequest,
    Session,
    SessionRef,
    StoredFrame,
)
from maata_protos.v1.session_pb2_grpc import SessionStoreStub  # noqa: E402

TIMEOUT = 5.0
Body = Callable[[SessionStoreStub, grpc.aio.Channel], Awaitable[None]]


def serve(body: Body, **config: Any) -> None:
    """Run ``body(stub, channel)`` against a session service started with ``config``."""

    async def main() -> None:
        server = await serve_session(SessionConfig(**config), port=0, host="127.0.0.1")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                await body(SessionStoreStub(channel), channel)
        finally:
            await server.drain()

    asyncio.run(main())


async def status_of(call: Awaitable[Any]) -> grpc.StatusCode:
    """The status code ``call`` fails with (OK if it succeeds)."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def frames(first: int, n: int) -> list[StoredFrame]:
    return [StoredFrame(user=CodeFrame(codes=[i] * 8), agent=CodeFrame(codes=[i + 1] * 8), text_token=i)
            for i in range(first, first + n)]


def test_status_codes() -> None:
    async def body(stub: SessionStoreStub, _: grpc.aio.Channel) -> None:
        created = await stub.Create(Session(call_id="c1", style=Style(voice="male_1")), timeout=TIMEOUT)
        assert created.state == "live"
        codes = grpc.StatusCode
        cases = [  # run in order: each depends on the ones before
            ("Create", Session(call_id="c1"), codes.ALREADY_EXISTS),
            ("Get", SessionRef(call_id="nope"), codes.NOT_FOUND),
            ("Update", Session(call_id="nope"), codes.NOT_FOUND),
            ("End", SessionRef(call_id="nope"), codes.NOT_FOUND),
            ("Get", SessionRef(call_id=""), codes.INVALID_ARGUMENT),
            ("Get", SessionRef(call_id="bad id!"), codes.INVALID_ARGUMENT),
            ("List", ListRequest(state="paused"), codes.INVALID_ARGUMENT),
            ("AppendFrames", AppendRequest(call_id="c1", first_index=0, frames=frames(0, 5)), codes.OK),
            ("AppendFrames", AppendRequest(call_id="c1", first_index=7, frames=frames(7, 1)),
             codes.FAILED_PRECONDITION),  # a gap
            ("AppendFrames", AppendRequest(call_id="c1", first_index=5, frames=frames(5, 9)),
             codes.INVALID_ARGUMENT),  # over max_append
            ("AppendFrames", AppendRequest(call_id="c1", first_index=5, frames=frames(5, 6)),
             codes.RESOURCE_EXHAUSTED),  # over max_frames
            ("Create", Session(call_id="c2"), codes.OK),
            ("Create", Session(call_id="c3"), codes.RESOURCE_EXHAUSTED),  # over max_sessions
            ("End", SessionRef(call_id="c2"), codes.OK),
            ("Update", Session(call_id="c2"), codes.FAILED_PRECONDITION),  # ended
        ]
        for method, request, expected in cases:
            assert await status_of(getattr(stub, method)(request, timeout=TIMEOUT)) == expected, (method, request)
        reply = await stub.AppendFrames(AppendRequest(call_id="c1", first_index=5, frames=frames(5, 5)),
                                        timeout=TIMEOUT)
        assert reply.frames == 10
        listed = await stub.List(ListRequest(), timeout=TIMEOUT)
        assert [s.call_id for s in listed.sessions] == ["c1", "c2"]  # most recently updated first
        assert (await stub.Get(SessionRef(call_id="c1"), timeout=TIMEOUT)).style.voice == "male_1"

    serve(body, max_append=8, max_frames=10, max_sessions=2)


def test_read_frames_streams() -> None:
    async def body(stub: SessionStoreStub, _: grpc.aio.Channel) -> None:
        await stub.Create(Session(call_id="c"), timeout=TIMEOUT)
        for first in range(0, 1200, 400):
            await stub.AppendFrames(AppendRequest(call_id="c", first_index=first, frames=frames(first, 400)),
                                    timeout=TIMEOUT)
        stream = stub.ReadFrames(ReadRequest(call_id="c"), timeout=TIMEOUT)
        received = [frame async for frame in stream]
        assert [f.index for f in received] == list(range(1200))
        assert received[700].text_token == 700 and list(received[700].agent.codes) == [701] * 8
        window = [f.index async for f in stub.ReadFrames(ReadRequest(call_id="c", start=10, limit=3), timeout=TIMEOUT)]
        assert window == [10, 11, 12]

        missing = stub.ReadFrames(ReadRequest(call_id="nope"), timeout=TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [frame async for frame in missing]
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    serve(body)


def test_health_and_reflection() -> None:
    async def body(_: SessionStoreStub, channel: grpc.aio.Channel) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [reflection_pb2.ServerReflectionRequest(list_services="")]
        async for response in reflection.ServerReflectionInfo(iter(requests), timeout=TIMEOUT):
            names = {s.name for s in response.list_services_response.service}
            assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names

    serve(body)


def test_unreachable_redis_is_unavailable_and_not_serving() -> None:
    """A Redis backend with nothing listening: calls fail UNAVAILABLE, health says NOT_SERVING."""

    async def body(stub: SessionStoreStub, channel: grpc.aio.Channel) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await status_of(stub.Get(SessionRef(call_id="c"), timeout=TIMEOUT)) == grpc.StatusCode.UNAVAILABLE
        read = stub.ReadFrames(ReadRequest(call_id="c"), timeout=TIMEOUT)
        assert await status_of(read.read()) == grpc.StatusCode.UNAVAILABLE

    serve(body, backend="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_seconds=0.5)


def test_garbage_request_does_not_take_the_server_down() -> None:
    """Undecodable request bytes get INVALID_ARGUMENT (gRPC alone would say UNKNOWN), on unary
    and streaming methods, and the server keeps serving."""

    async def body(stub: SessionStoreStub, channel: grpc.aio.Channel) -> None:
        identity = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
        create = channel.unary_unary("/maata.v1.SessionStore/Create", **identity)
        assert await status_of(create(b"\xff\xff garbage", timeout=TIMEOUT)) == grpc.StatusCode.INVALID_ARGUMENT
        read = channel.unary_stream("/maata.v1.SessionStore/ReadFrames", **identity)
        assert await status_of(read(b"\xff\xff garbage", timeout=TIMEOUT).read()) == grpc.StatusCode.INVALID_ARGUMENT
        created = await stub.Create(Session(call_id="after-garbage"), timeout=TIMEOUT)
        assert created.call_id == "after-garbage"

    serve(body)


def test_stop_is_graceful() -> None:
    """A stream in flight when stop() begins completes; calls after it are refused."""

    async def main() -> None:
        server = await serve_session(SessionConfig(server=ServerConfig(grace_seconds=2.0)), port=0, host="127.0.0.1")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = SessionStoreStub(channel)
            await stub.Create(Session(call_id="c"), timeout=TIMEOUT)
            for first in range(0, 1500, 500):
                await stub.AppendFrames(AppendRequest(call_id="c", first_index=first, frames=frames(first, 500)),
                                        timeout=TIMEOUT)
            stream = stub.ReadFrames(ReadRequest(call_id="c"), timeout=TIMEOUT)
            received = [await stream.read()]
            stopping = asyncio.create_task(server.drain())
            while (frame := await stream.read()) is not grpc.aio.EOF:
                received.append(frame)
            await stopping
            assert [f.index for f in received] == list(range(1500))
            assert await status_of(stub.Get(SessionRef(call_id="c"), timeout=TIMEOUT)) == grpc.StatusCode.UNAVAILABLE

    asyncio.run(main())


def http2_frame_types(port: int, seconds: float) -> list[int]:
    """The HTTP/2 frame types a gRPC server sends within ``seconds`` to a peer that opens a
    connection (preface and an empty SETTINGS) and then stays silent, answering nothing."""
    import socket
    import time

    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(3) + b"\x04" + bytes(5)
    types, data = [], b""
    deadline = time.monotonic() + seconds
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(preface)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
            while len(data) >= 9 and len(data) >= 9 + int.from_bytes(data[:3], "big"):
                types.append(data[3])
                data = data[9 + int.from_bytes(data[:3], "big"):]
    return types


def test_keepalive_metrics_and_sigterm_drain_come_from_the_common_server() -> None:
    """The session service runs on the common ``GrpcServer``: it pings a silent connection
    after ``keepalive_time_s`` (an HTTP/2 PING frame; gRPC's default waits two hours), serves
    Prometheus /metrics with its RPC errors, and SIGTERM drains it."""
    import signal
    import urllib.request

    ping = 6  # the HTTP/2 PING frame type
    server_config = ServerConfig(keepalive_time_s=0.1, min_client_ping_interval_s=0.1, metrics_port=-1)

    async def main() -> None:
        server = await serve_session(SessionConfig(server=server_config), port=0, host="127.0.0.1")
        try:
            assert ping in await asyncio.to_thread(http2_frame_types, server.port, 1.0)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                assert await status_of(SessionStoreStub(channel).Get(SessionRef(call_id="nobody"), timeout=TIMEOUT)) \
                    == grpc.StatusCode.NOT_FOUND
            url = f"http://127.0.0.1:{server.metrics_port}/metrics"
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=TIMEOUT).read().decode())
            assert 'maata_rpc_errors_total{code="NOT_FOUND",method="Get",service="session"} 1.0' in text
            server.grpc.install_signal_handlers()
            signal.raise_signal(signal.SIGTERM)
            await asyncio.wait_for(server.wait(), TIMEOUT)
        finally:
            await server.drain()

    asyncio.run(main())
