"""The gateway's backends: where a call's three streams (encode, generate, decode) go.

A ``Pipeline`` (``services.gateway.pipeline``) sees each stream as a ``Duplex`` (send, half-close,
receive, cancel; a failed stream raises ``StatusError`` naming its stage) and gets the three from
one ``Backends``:

* ``GrpcBackends``: the codec and generation services over gRPC (separate processes);
* ``InprocBackends``: the very same servicers of this process called directly (``InprocDuplex``
  with an ``InprocContext``): no serialization, no HTTP/2, the same validation and status codes
  (``maata serve``'s default);
* ``EchoBackends``: another backends' codec with the user's codes sent straight back in place of
  the generation (the browser's "echo" mode).

A new model backend (another runtime serving the codec or the LM) is one more ``Backends``
subclass here, giving ``Duplex`` streams that speak the same messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from services.common.errors import StatusError
from services.common.server import ADMITTED_METADATA, CALL_ID_METADATA

from maata_protos.v1.codec_pb2 import CodecInfo, InfoRequest
from maata_protos.v1.codec_pb2_grpc import CodecStub
from maata_protos.v1.generation_pb2 import AgentFrame
from maata_protos.v1.generation_pb2_grpc import GenerationStub

log = logging.getLogger("maata.services.gateway")

SAMPLE_RATE = 16000  # the gateway's (and the codec's) rate: every front end resamples to it
Code = grpc.StatusCode


# -- one backend stream --------------------------------------------------------------------------
class Duplex(ABC):
    """One bidirectional backend stream: ``send`` messages, ``done_writing`` (half-close),
    ``recv`` replies (None at a clean end; a ``StatusError`` naming the stage at an error end),
    ``cancel``."""

    stage: str

    @abstractmethod
    async def send(self, message: Any) -> None: ...

    @abstractmethod
    async def done_writing(self) -> None: ...

    @abstractmethod
    async def recv(self) -> Any | None: ...

    @abstractmethod
    async def cancel(self) -> None: ...

    async def admitted(self) -> None:
        """Wait until the stream's service holds a slot for the call (the generation stream's
        ``maata-admitted`` header), or raise its refusal as ``StatusError``. Streams that take
        no slot admit at once."""


class GrpcDuplex(Duplex):
    """A stream-stream RPC over a grpc.aio channel.

    Writes are serialised: a call takes one send operation at a time, and the pipeline writes
    from more than one task (user frames, a mid-call style change, keep-alives). Two writes in
    flight at once make gRPC core refuse the second batch, and grpc.aio then fails the whole
    RPC with INTERNAL "Internal error from Core" (the call would end, resumable, for nothing)."""

    def __init__(self, stage: str, method: grpc.aio.StreamStreamMultiCallable, call_id: str) -> None:
        self.stage = stage
        self._call = method(metadata=((CALL_ID_METADATA, call_id),))
        self._writing = asyncio.Lock()

    async def send(self, message: Any) -> None:
        async with self._writing:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await self._call.write(message)  # a failed RPC reports its status through recv

    async def done_writing(self) -> None:
        async with self._writing:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await self._call.done_writing()

    async def recv(self) -> Any | None:
        try:
            reply = await self._call.read()
        except grpc.aio.AioRpcError as err:
            raise StatusError(err.code(), err.details() or "", self.stage) from None
        if reply is grpc.aio.EOF:
            code = await self._call.code()
            if code != Code.OK:
                raise StatusError(code, await self._call.details() or "", self.stage)
            return None
        return reply

    async def cancel(self) -> None:
        self._call.cancel()

    async def admitted(self) -> None:
        try:
            metadata = await self._call.initial_metadata()
        except grpc.aio.AioRpcError as err:
            raise StatusError(err.code(), err.details() or "", self.stage) from None
        if any(key == ADMITTED_METADATA for key, _ in metadata or ()):
            return
        code = await self._call.code()  # trailers only: the call was refused
        details = await self._call.details() or ""
        raise StatusError(code if code != Code.OK else Code.UNAVAILABLE,
                          details or f"the {self.stage} stream ended before admitting the call", self.stage)


class InprocContext:
    """The part of ``grpc.aio.ServicerContext`` the Maata servicers use, for in-process calls."""

    def __init__(self, call_id: str) -> None:
        self._metadata = ((CALL_ID_METADATA, call_id),)
        self._cancelled = False
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self.admitted = asyncio.Event()

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = None) -> None:
        """End the stream with ``code`` (raises, like grpc.aio's: ``StatusError``)."""
        self._code, self._details = code, details
        raise StatusError(code, details)

    def cancelled(self) -> bool:
        return self._cancelled

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def send_initial_metadata(self, metadata: Any) -> None:
        if any(key == ADMITTED_METADATA for key, _ in metadata):
            self.admitted.set()

    def time_remaining(self) -> float | None:
        return None

    def set_cancelled(self) -> None:
        self._cancelled = True


_EOF = object()


@dataclass
class _Done:
    error: StatusError | None


class InprocDuplex(Duplex):
    """A servicer's stream-stream method called directly: requests through a queue, replies
    pumped into another by a task. ``cancel`` cancels that task, which runs the servicer's own
    clean-up (e.g. the generation service flushes the call and keeps it resumable)."""

    def __init__(self, stage: str, method: Callable[[AsyncIterator[Any], Any], AsyncIterator[Any]],
                 call_id: str) -> None:
        self.stage = stage
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self._replies: asyncio.Queue[Any] = asyncio.Queue()
        self._context = InprocContext(call_id)
        self._done: _Done | None = None
        self._task = asyncio.create_task(self._pump(method), name=f"inproc-{stage}")

    async def _request_iterator(self) -> AsyncIterator[Any]:
        while (message := await self._requests.get()) is not _EOF:
            yield message

    async def _pump(self, method: Callable[[AsyncIterator[Any], Any], AsyncIterator[Any]]) -> None:
        try:
            async for reply in method(self._request_iterator(), self._context):
                self._replies.put_nowait(reply)
            done = _Done(None)
        except StatusError as err:
            done = _Done(StatusError(err.code, err.details, self.stage))
        except asyncio.CancelledError:
            self._replies.put_nowait(_Done(StatusError(Code.CANCELLED, "cancelled", self.stage)))
            raise
        except Exception as err:  # a bug in a servicer: this stream fails, nothing else
            log.exception("in-process %s stream failed", self.stage)
            done = _Done(StatusError(Code.INTERNAL, f"{type(err).__name__}: {err}", self.stage))
        self._replies.put_nowait(done)

    async def send(self, message: Any) -> None:
        if not self._task.done():
            self._requests.put_nowait(message)

    async def done_writing(self) -> None:
        self._requests.put_nowait(_EOF)

    async def recv(self) -> Any | None:
        if self._done is None:
            item = await self._replies.get()
            if not isinstance(item, _Done):
                return item
            self._done = item
        if self._done.error is not None:
            raise self._done.error
        return None

    async def admitted(self) -> None:
        waiter = asyncio.ensure_future(self._context.admitted.wait())
        try:
            await asyncio.wait((waiter, self._task), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self._context.admitted.is_set():
            return
        item = self._replies.get_nowait() if not self._replies.empty() else _Done(None)
        if isinstance(item, _Done):
            self._done = item
        error = item.error if isinstance(item, _Done) else None
        raise error or StatusError(Code.UNAVAILABLE, f"the {self.stage} stream ended before admitting the call",
                                   self.stage)

    async def cancel(self) -> None:
        self._context.set_cancelled()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


class Backends(ABC):
    """Where a pipeline's three streams go, and the codec's frame (``hop`` samples at 16 kHz).
    ``voices`` / ``emotions``: the model's style names when known (front ends validate against
    them before a call starts), else empty (the generation service validates)."""

    hop: int = 640
    voices: tuple[str, ...] = ()
    emotions: tuple[str, ...] = ()
    description: str = ""

    async def connect(self, timeout_s: float = 30.0) -> None:
        """Wait until the backends answer (and learn the codec's shape)."""

    @abstractmethod
    def encoder(self, call_id: str) -> Duplex: ...

    @abstractmethod
    def generator(self, call_id: str) -> Duplex: ...

    @abstractmethod
    def decoder(self, call_id: str) -> Duplex: ...

    async def close(self) -> None:
        """Release channels."""


def check_codec_info(info: CodecInfo, where: str) -> int:
    """The codec's hop, once its ``Info`` says it runs at the gateway's rate (else ValueError)."""
    if info.sample_rate != SAMPLE_RATE:
        raise ValueError(f"{where} runs at {info.sample_rate} Hz; the gateway needs {SAMPLE_RATE} Hz")
    return info.hop


# a backend that restarts is reconnected to within ~2 s (gRPC's default backoff grows to 120 s)
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                     ("grpc.max_reconnect_backoff_ms", 2000)]


class GrpcBackends(Backends):
    """The codec and generation services over gRPC (``options``: ``channel_options`` of their
    servers' config; a lost connection is retried within ``RECONNECT_OPTIONS``' 2 s).

    Scale-out: a target may resolve to several replicas (``dns:///`` a headless Service, or an
    ``ipv4:a:p,b:p`` list). With ``lb_policy`` round_robin the channel keeps a connection to every
    ready replica and starts each new stream, i.e. each call's encode, generate or decode stream, on
    the next one: calls spread over replicas although each call's stream stays on one. A replica that
    goes away drops out of the rotation; its calls end UNAVAILABLE and resume on another."""

    def __init__(self, codec: str, generation: str, options: Sequence[tuple[str, Any]] | None = None,
                 lb_policy: str = "round_robin") -> None:
        self.codec_address, self.generation_address = codec, generation
        options = [*(options or ()), *RECONNECT_OPTIONS, ("grpc.lb_policy_name", lb_policy)]
        self._codec_channel = grpc.aio.insecure_channel(codec, options=options)
        self._generation_channel = (self._codec_channel if generation == codec
                                    else grpc.aio.insecure_channel(generation, options=options))
        self._codec = CodecStub(self._codec_channel)
        self._generation = GenerationStub(self._generation_channel)
        self.description = f"gRPC: codec {codec}, generation {generation}"

    async def connect(self, timeout_s: float = 30.0) -> None:
        info = await self._codec.Info(InfoRequest(), timeout=timeout_s, wait_for_ready=True)
        self.hop = check_codec_info(info, f"the codec at {self.codec_address}")
        await asyncio.wait_for(self._generation_channel.channel_ready(), timeout_s)

    def encoder(self, call_id: str) -> Duplex:
        return GrpcDuplex("encode", self._codec.Encode, call_id)

    def generator(self, call_id: str) -> Duplex:
        return GrpcDuplex("generate", self._generation.Converse, call_id)

    def decoder(self, call_id: str) -> Duplex:
        return GrpcDuplex("decode", self._codec.Decode, call_id)

    async def close(self) -> None:
        await self._codec_channel.close()
        if self._generation_channel is not self._codec_channel:
            await self._generation_channel.close()


class InprocBackends(Backends):
    """The codec and generation servicers of this process, called directly (``CodecServicer``
    over the codec service's ``FrameBatcher``, ``GenerationServicer`` over its ``CallManager``:
    calls share batches with the services' gRPC callers). ``connect`` asks the codec servicer's
    ``Info`` exactly as ``GrpcBackends`` asks the service."""

    def __init__(self, codec_servicer: Any, generation_servicer: Any) -> None:
        self._codec = codec_servicer
        self._generation = generation_servicer
        self.voices, self.emotions = generation_servicer.styles()
        self.description = "in process (the services' engines called directly)"

    async def connect(self, timeout_s: float = 30.0) -> None:
        info = await self._codec.Info(InfoRequest(), InprocContext(""))
        self.hop = check_codec_info(info, "the in-process codec")

    def encoder(self, call_id: str) -> Duplex:
        return InprocDuplex("encode", self._codec.Encode, call_id)

    def generator(self, call_id: str) -> Duplex:
        return InprocDuplex("generate", self._generation.Converse, call_id)

    def decoder(self, call_id: str) -> Duplex:
        return InprocDuplex("decode", self._codec.Decode, call_id)


class EchoDuplex(Duplex):
    """Stands in for the generation stream: each user frame's codes come straight back as the
    agent's frame (same index), so the caller hears themself through the codec. The echo path
    measures everything but the model (transport, resampling, encode, decode) and checks a
    microphone; it never touches the generation service."""

    stage = "generate"

    def __init__(self) -> None:
        self._replies: asyncio.Queue[Any] = asyncio.Queue()

    async def send(self, message: Any) -> None:
        if message.HasField("codes"):
            self._replies.put_nowait(AgentFrame(codes=message.codes, seq=message.seq, frame=message.seq))

    async def done_writing(self) -> None:
        self._replies.put_nowait(_EOF)

    async def recv(self) -> Any | None:
        reply = await self._replies.get()
        if reply is _EOF:
            self._replies.put_nowait(_EOF)
            return None
        if isinstance(reply, StatusError):
            raise reply
        return reply

    async def cancel(self) -> None:
        self._replies.put_nowait(StatusError(Code.CANCELLED, "cancelled", self.stage))


class EchoBackends(Backends):
    """``backends``' codec with ``EchoDuplex`` in place of the generation (mode "echo")."""

    def __init__(self, backends: Backends) -> None:
        self.inner = backends
        self.description = f"echo (codec only) over {backends.description}"

    @property  # type: ignore[override]
    def hop(self) -> int:  # the inner backends learn it when they connect
        return self.inner.hop

    def encoder(self, call_id: str) -> Duplex:
        return self.inner.encoder(call_id)

    def generator(self, call_id: str) -> Duplex:
        return EchoDuplex()

    def decoder(self, call_id: str) -> Duplex:
        return self.inner.decoder(call_id)


__all__ = [
    "Backends", "Duplex", "EchoBackends", "EchoDuplex", "GrpcBackends", "GrpcDuplex", "InprocBackends",
    "InprocContext", "InprocDuplex", "RECONNECT_OPTIONS", "SAMPLE_RATE", "check_codec_info",
]
