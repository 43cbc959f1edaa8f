"""The gRPC server bootstrap every Maata service uses.

* ``add_servicer``: registers a servicer's methods for a proto service so that undecodable
  request bytes get INVALID_ARGUMENT (gRPC alone answers UNKNOWN and blames the server), and
  every RPC runs in a scope that sets the ``call_id`` / ``service`` log context, counts
  non-OK endings by status code and keeps the live-call gauge of per-call streams.
* ``GrpcServer``: a grpc.aio server with the options of a ``ServerConfig`` (message size,
  keepalive), ``grpc.health.v1`` health (SERVING / NOT_SERVING), server reflection, an optional
  Prometheus ``/metrics`` endpoint over its own registry, and a graceful ``drain`` with the
  service's own steps hooked in (``before_stop``: end live calls; ``after_stop``: close what
  the service owns); SIGTERM/SIGINT drain it once ``install_signal_handlers`` is called.
* ``Service``: the handle every service's ``serve_*`` returns (its ``GrpcServer`` plus the
  parts the service built): ``port``, ``metrics_port``, ``drain``, ``wait``, ``serve_forever``.
* ``server_options`` / ``channel_options``: the channel arguments of both ends, aligned (see
  ``services.common.config`` for the keepalive and deadline policy).

A service module builds one::

    server = GrpcServer("codec", config.server)
    server.add_service(CodecServicer(...), SERVICE)
    server.after_stop(batcher.stop)        # runs once in-flight calls are done
    await server.start()                   # -> bound port
    ...
    await server.drain()                   # NOT_SERVING, refuse new calls, finish in-flight ones
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.common.aio import drain_on_signals
from services.common.config import ServerConfig
from services.common.errors import abort
from services.common.logs import CALL_ID, SERVICE
from services.common.metrics import ServiceMetrics

log = logging.getLogger("maata.services")

CALL_ID_METADATA = "maata-call-id"  # request metadata key naming the call an RPC belongs to
ADMITTED_METADATA = "maata-admitted"  # response header a per-call stream sends once it holds its slot
Options = list[tuple[str, Any]]


# -- channel arguments ----------------------------------------------------------------------------
def _both_ends(config: ServerConfig) -> Options:
    """What both ends set alike: the message limit and the keepalive ping schedule."""
    return [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def server_options(config: ServerConfig) -> Options:
    """The grpc.aio server's channel arguments for ``config``."""
    options = [
        *_both_ends(config),
        ("grpc.http2.min_ping_interval_without_data_ms", int(config.min_client_ping_interval_s * 1000)),
        ("grpc.http2.max_ping_strikes", config.max_ping_strikes),
    ]
    if config.max_connection_age_s:
        options += [("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
                    ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_s * 1000))]
    return options


def channel_options(config: ServerConfig) -> Options:
    """A client channel's arguments that fit a server run with ``config``: the same message
    limit, and keepalive pings no more often than the server accepts them."""
    return [
        *_both_ends(config),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging a quiet stream: it may be a dead peer
    ]


# -- request decoding and status --------------------------------------------------------------------
async def parse(message_class: type[Message], data: bytes, context: grpc.aio.ServicerContext) -> Message:
    """Decode a request, answering INVALID_ARGUMENT (not gRPC's default UNKNOWN) if malformed."""
    try:
        return message_class.FromString(data)
    except DecodeError as err:
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed {message_class.DESCRIPTOR.full_name}: {err}")


async def _parse_stream(message_class: type[Message], requests: AsyncIterator[bytes],
                        context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
    async for data in requests:
        yield await parse(message_class, data, context)


def _serialize(reply: Message) -> bytes:
    return reply.SerializeToString()


def _call_id(context: grpc.aio.ServicerContext) -> str | None:
    return next((value for key, value in context.invocation_metadata() or () if key == CALL_ID_METADATA), None)


def _status_name(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


@contextlib.contextmanager
def _rpc_scope(method: MethodDescriptor, context: grpc.aio.ServicerContext, service: str,
               metrics: ServiceMetrics | None) -> Iterator[None]:
    """The log context, live-call gauge and error accounting of one RPC."""
    tokens = (CALL_ID.set(_call_id(context)), SERVICE.set(service))
    live = metrics.live_call(method.name) if metrics and method.client_streaming else contextlib.nullcontext()
    try:
        with live:
            yield
    except grpc.aio.AbortError:
        _count_error(method, metrics, _status_name(context), logging.INFO, context.details())
        raise
    except (asyncio.CancelledError, GeneratorExit):  # a streaming handler is closed, not cancelled
        if _deadline_passed(context):
            _count_error(method, metrics, "DEADLINE_EXCEEDED", logging.INFO, "the client's deadline passed")
        else:
            _count_error(method, metrics, "CANCELLED", logging.INFO, "cancelled (client gone or server draining)")
        raise
    except Exception:
        log.exception("%s failed", method.name, extra={"method": method.name, "code": "UNKNOWN"})
        _count_error(method, metrics, "UNKNOWN", None, None)
        raise
    finally:
        for var, token in zip((CALL_ID, SERVICE), tokens):
            with contextlib.suppress(ValueError):  # an async generator may be closed from another context
                var.reset(token)


DEADLINE_SLACK_S = 0.25  # a cancel this close to the RPC's deadline is the deadline passing


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    """Whether the RPC ended because its own deadline (set by the client) passed: the caller then
    sees DEADLINE_EXCEEDED, not CANCELLED. The client's timer usually fires (and cancels the
    stream) a moment before the server's copy of the deadline, hence ``DEADLINE_SLACK_S``."""
    try:
        remaining = context.time_remaining()
    except Exception:  # a context without deadlines (in-process)
        return False
    return remaining is not None and remaining <= DEADLINE_SLACK_S


def _count_error(method: MethodDescriptor, metrics: ServiceMetrics | None, code: str, level: int | None,
                 details: str | None) -> None:
    if metrics is not None:
        metrics.rpc_error(method.name, code)
    if level is not None:
        log.log(level, "%s ended with %s: %s", method.name, code, details, extra={"method": method.name, "code": code})


_HANDLERS = {  # (client streaming, server streaming) -> handler factory
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _method_handler(method: MethodDescriptor, servicer: object, service: str,
                    metrics: ServiceMetrics | None) -> grpc.RpcMethodHandler:
    """A handler for ``method`` of ``servicer`` that decodes requests itself (any streaming kind)."""
    request_class = GetMessageClass(method.input_type)
    implementation = getattr(servicer, method.name)

    async def request(data: Any, context: grpc.aio.ServicerContext) -> Any:
        if method.client_streaming:
            return _parse_stream(request_class, data, context)
        return await parse(request_class, data, context)

    async def streaming(data: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        with _rpc_scope(method, context, service, metrics):
            async for reply in implementation(await request(data, context), context):
                yield reply

    async def unary(data: Any, context: grpc.aio.ServicerContext) -> Any:
        with _rpc_scope(method, context, service, metrics):
            return await implementation(await request(data, context), context)

    make = _HANDLERS[(method.client_streaming, method.server_streaming)]
    return make(streaming if method.server_streaming else unary, response_serializer=_serialize)


def add_servicer(server: grpc.aio.Server, servicer: object, service: ServiceDescriptor,
                 metrics: ServiceMetrics | None = None) -> None:
    """Register ``servicer``'s methods for ``service`` like the generated ``add_*_to_server``,
    but so that an undecodable request gets INVALID_ARGUMENT and is logged as the client's
    fault, and (with ``metrics``) non-OK endings and live client-streaming calls are counted.

    Servicer methods take parsed messages (or an async iterator of them for client-streaming
    methods) and the context, exactly like generated servicers."""
    name = metrics.service if metrics else service.name
    handlers = {m.name: _method_handler(m, servicer, name, metrics) for m in service.methods}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


# -- the server ----------------------------------------------------------------------------------
Hook = Callable[[], Awaitable[None]]


class GrpcServer:
    """One service's grpc.aio server: options, health, reflection, metrics endpoint, drain."""

    def __init__(self, name: str, config: ServerConfig, metrics: ServiceMetrics | None = None) -> None:
        self.name = name
        self.config = config
        self.metrics = metrics if metrics is not None else ServiceMetrics(name)
        self.server = grpc.aio.server(options=server_options(config))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._services: list[str] = []
        self._before_stop: list[Hook] = []
        self._after_stop: list[Hook] = []
        self._metrics_http: tuple[WSGIServer, threading.Thread] | None = None
        self._drain: asyncio.Task[None] | None = None
        self._signals: contextlib.ExitStack | None = None
        self.port = 0

    @property
    def metrics_port(self) -> int:
        """The bound port of the /metrics endpoint (0 when it is off)."""
        return self._metrics_http[0].server_port if self._metrics_http else 0

    @property
    def services(self) -> tuple[str, ...]:
        """The full names of the proto services served (health follows the server's)."""
        return tuple(self._services)

    def add_service(self, servicer: object, service: ServiceDescriptor) -> None:
        """Serve ``servicer`` for ``service`` (see ``add_servicer``); its health follows the server's."""
        add_servicer(self.server, servicer, service, self.metrics)
        self._services.append(service.full_name)

    def before_stop(self, hook: Hook) -> None:
        """Run ``hook`` during a drain once new calls are refused, before the server stops
        (e.g. end the live calls with a resumable status after flushing them)."""
        self._before_stop.append(hook)

    def after_stop(self, hook: Hook) -> None:
        """Run ``hook`` during a drain after in-flight calls have ended (e.g. close a backend)."""
        self._after_stop.append(hook)

    async def start(self) -> int:
        """Bind, start serving (health SERVING) and the metrics endpoint; returns the bound port."""
        reflection.enable_server_reflection([*self._services, health.SERVICE_NAME, reflection.SERVICE_NAME],
                                            self.server)
        address = f"{self.config.host}:{self.config.port}"
        try:
            self.port = self.server.add_insecure_port(address)  # older grpc returns 0, newer raises
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise OSError(f"{self.name} service could not bind {address}")
        if self.config.metrics_port:
            port = max(self.config.metrics_port, 0)  # -1: any free port
            try:
                self._metrics_http = start_http_server(port, self.config.metrics_host,
                                                       registry=self.metrics.registry)
            except OSError as err:
                await self.server.stop(None)
                raise OSError(f"{self.name} service could not serve metrics on "
                              f"{self.config.metrics_host}:{port}: {err}") from err
        await self.set_serving(True)
        await self.server.start()
        log.info("serving", extra={"service": self.name, "port": self.port, "metrics_port": self.metrics_port})
        return self.port

    async def set_serving(self, serving: bool) -> None:
        """Report the server and each of its services as SERVING or NOT_SERVING."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self._services):
            await self.health.set(name, status)

    async def drain(self, grace_seconds: float | None = None) -> None:
        """Stop gracefully: health NOT_SERVING (for ``config.drain_notice_seconds`` while still
        serving, so health-checking clients can react), run the ``before_stop`` hooks, refuse
        new RPCs (gRPC then answers UNAVAILABLE, health checks included), let in-flight ones
        finish for up to the grace period (``config.grace_seconds``) and cancel the rest, then
        run the ``after_stop`` hooks and close the metrics endpoint. Idempotent: later calls
        wait for the first; cancelling a caller does not cancel the drain."""
        await asyncio.shield(self._start_drain(grace_seconds))

    def _start_drain(self, grace_seconds: float | None) -> asyncio.Task[None]:
        if self._drain is None:
            grace = self.config.grace_seconds if grace_seconds is None else grace_seconds
            self._drain = asyncio.create_task(self._drain_now(grace))
        return self._drain

    async def _drain_now(self, grace: float) -> None:
        log.info("draining", extra={"service": self.name, "grace_seconds": grace})
        await self.health.enter_graceful_shutdown()  # NOT_SERVING everywhere, and it stays so
        if self.config.drain_notice_seconds:
            await asyncio.sleep(self.config.drain_notice_seconds)
        await self._run_hooks(self._before_stop)
        await self.server.stop(grace)
        await self._run_hooks(self._after_stop)
        await self._close_metrics()
        self._remove_signal_handlers()
        log.info("stopped", extra={"service": self.name})

    async def _run_hooks(self, hooks: list[Hook]) -> None:
        for hook in hooks:
            try:
                await hook()
            except Exception:
                log.exception("drain step failed", extra={"service": self.name})

    async def _close_metrics(self) -> None:
        if self._metrics_http is not None:
            httpd, thread = self._metrics_http
            self._metrics_http = None
            await asyncio.to_thread(httpd.shutdown)
            httpd.server_close()
            thread.join(timeout=1.0)

    async def stop_now(self) -> None:
        """Stop at once, as a crash would: no grace, no hooks (fault tests)."""
        await self.server.stop(None)
        await self._close_metrics()
        self._remove_signal_handlers()

    def install_signal_handlers(self) -> None:
        """Drain on SIGTERM/SIGINT (``drain_on_signals``) until the drain is done."""
        if self._signals is None:
            self._signals = contextlib.ExitStack()
            self._signals.enter_context(drain_on_signals(self.drain))

    def _remove_signal_handlers(self) -> None:
        if self._signals is not None:
            self._signals.close()
            self._signals = None

    async def wait(self) -> None:
        """Block until the server has stopped (after a drain)."""
        await self.server.wait_for_termination()
        if self._drain is not None:
            await asyncio.shield(self._drain)

    async def serve_forever(self) -> None:
        """Start, drain on SIGTERM/SIGINT, and return once drained: a process's main coroutine."""
        if not self.port:
            await self.start()
        self.install_signal_handlers()
        await self.wait()


@dataclass
class Service:
    """A running service: its ``GrpcServer`` (the drain runs the service's own hooks), plus
    whatever the service built around it (subclasses add those fields). Every ``serve_*``
    returns one, and ``maata serve`` composes them."""

    grpc: GrpcServer

    @property
    def name(self) -> str:
        return self.grpc.name

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def metrics_port(self) -> int:
        return self.grpc.metrics_port

    async def drain(self, grace_seconds: float | None = None) -> None:
        """NOT_SERVING, end or finish the live calls, stop, release what the service owns."""
        await self.grpc.drain(grace_seconds)

    async def wait(self) -> None:
        """Block until the service has drained."""
        await self.grpc.wait()

    async def serve_forever(self) -> None:
        """Serve until SIGTERM/SIGINT, then drain: a process's main coroutine."""
        await self.grpc.serve_forever()
