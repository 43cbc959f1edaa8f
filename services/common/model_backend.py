"""Where a service's model runs: in process (torch, the default) or on NVIDIA Triton.

``ModelBackendConfig`` is the part of the codec and generation service configs that picks it
(``model_backend.kind``: ``torch`` | ``triton``; with ``MAATA_GENERATION__MODEL_BACKEND__KIND=triton``
etc., or ``maata serve --model-backend triton --triton-url HOST:PORT``).

``LMStepBackend`` is what the generation engine asks of its model, one method per moment of a
call: ``prefill`` (a resume's heavy part, off the loop), ``join`` (a slot), ``compute`` /
``acompute`` (ONE tick over every live call), ``leave``, ``ready``. Two implementations:

* ``services.generation.engine.TorchLMBackend``: the LM in this process, one batched
  ``lm.step`` per tick over the engine's own ``LMState``;
* ``services.triton.lm_backend.TritonLMBackend``: one request per live call per tick to the
  ``s2s_step`` model (``tritonclient.grpc.aio``); Triton's sequence batcher forms the batch and
  the state lives in the Triton model instance.

``ModelBackendUnavailable`` is how a backend says the model server is gone or has lost a call's
state: the service ends that call UNAVAILABLE with the resume hint (its history is kept) and it
resumes from the session store once the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.generation.engine import CallSpec, History, _Batch, _Computed

KINDS = ("torch", "triton")
log = logging.getLogger("maata.services")


@dataclass(frozen=True)
class ModelBackendConfig:
    """Which backend runs the model, and how to reach Triton."""

    kind: str = "torch"  # torch: in this process; triton: a tritonserver serving `maata triton export`'s repo
    triton_url: str = "127.0.0.1:8001"  # Triton's gRPC address
    timeout_s: float = 2.0  # one Triton request (a step is ~10 ms; longer means the server is gone)
    ready_poll_s: float = 1.0  # how often the service checks Triton's model readiness (its own health follows)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"model_backend.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not (self.timeout_s > 0 and self.ready_poll_s > 0):
            raise ValueError("model_backend timeout_s and ready_poll_s must be positive")


class ModelBackendUnavailable(RuntimeError):
    """The model server is unreachable or no longer holds a call's state (the call is resumable)."""


class LMStepBackend(ABC):
    """The generation engine's model (see the module docstring)."""

    is_async: bool = False  # True: the engine awaits ``acompute`` on the loop instead of ``compute`` in a thread

    @abstractmethod
    def prefill(self, spec: CallSpec, history: History) -> Any:
        """The heavy part of a resume (may run in a thread while a step runs); its result goes to ``join``."""

    @abstractmethod
    def join(self, spec: CallSpec, history: History | None, prefilled: Any) -> int:
        """A slot for ``spec``'s call (fresh, or continuing ``history``); NoFreeSlotError when full."""

    @abstractmethod
    def leave(self, slot: int) -> None:
        """The call in ``slot`` ended; the slot is free again."""

    def compute(self, batch: _Batch) -> _Computed:
        """ONE tick over ``batch`` (in a worker thread)."""
        raise NotImplementedError

    async def acompute(self, batch: _Batch) -> _Computed:
        """ONE tick over ``batch`` on the event loop (``is_async`` backends)."""
        raise NotImplementedError

    async def ready(self) -> bool:
        """Whether the model can serve (a remote backend: the server and its model are ready)."""
        return True

    async def close(self) -> None:
        """Release connections."""


class ReadinessWatcher:
    """A service's readiness follows its model backend's: ``ready()`` is polled every ``period_s``
    and each change is handed to ``on_change(ready)`` (the service sets its health SERVING or
    NOT_SERVING and refuses new calls while not ready)."""

    def __init__(self, ready: Callable[[], Awaitable[bool]], on_change: Callable[[bool], Awaitable[None]],
                 period_s: float) -> None:
        self._ready, self._on_change, self.period_s = ready, on_change, period_s
        self.state = True
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> bool:
        ready = await self._ready()
        if ready != self.state:
            log.warning("model backend %s", "ready" if ready else "NOT ready: new calls are refused")
            self.state = ready
            await self._on_change(ready)
        return ready

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            try:
                await self.check()
            except Exception:
                log.exception("model backend readiness check failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
