"""``TritonLMBackend``: the generation engine's model on Triton (the ``s2s_step`` model).

Each live call is one Triton sequence (a fresh random correlation id per join). At every tick
the engine's frame clock sends ONE request per stepped call, all at once; Triton's sequence
batcher puts the requests that are ready together into one ``execute`` of the model instance
holding the calls' state. Only the frame's user codes cross the wire, plus the style when it
changes; a call's first request carries START with its seed and sampling, and, for a resumed
call, its stored history (the model rebuilds the slot with ``LM.prefill``). Leaving sends END.

A request that fails with the server gone, or with the sequence unknown to it (a restarted
server), fails only its call: the engine reports it in ``Tick.failed`` and the service ends that
call UNAVAILABLE with the resume hint. Other calls' requests are independent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from maata.lm import LM, NoFreeSlotError
from services.common.model_backend import LMStepBackend, ModelBackendUnavailable
from services.generation.engine import CallSpec, History, _Batch, _Computed
from services.triton.client import TritonError, TritonModels, new_sequence_id, s2s_history

log = logging.getLogger("maata.triton")


@dataclass
class _Sequence:
    spec: CallSpec
    corrid: int
    history: dict[str, Any] | None  # the START's history inputs (a resumed call)
    started: bool = False
    style: tuple[str, str] | None = None  # last style sent
    ending: list[asyncio.Task[Any]] = field(default_factory=list)


class TritonLMBackend(LMStepBackend):
    """The S2S step on a tritonserver (``models``: a ``TritonModels`` connection)."""

    is_async = True

    def __init__(self, lm: LM, max_calls: int, models: TritonModels) -> None:
        self.lm = lm  # the same checkpoint's LM, for its metadata (delays, voices); its weights stay unused here
        self.max_calls = max_calls
        self.models = models
        self._slots: dict[int, _Sequence] = {}
        self._ends: set[asyncio.Task[Any]] = set()
        self.requests = 0  # requests sent (steps)

    def prefill(self, spec: CallSpec, history: History) -> dict[str, Any]:
        """The START's history inputs (the model instance runs ``LM.prefill`` itself)."""
        text = history.text.tolist() if history.text is not None else None
        return s2s_history(history.user.numpy(), history.agent_frames(self.lm).numpy(), text, history.voice,
                           history.emotion)

    def join(self, spec: CallSpec, history: History | None, prefilled: Any) -> int:
        free = [s for s in range(self.max_calls) if s not in self._slots]
        if not free:
            raise NoFreeSlotError(f"all {self.max_calls} slots are in use")
        self._slots[free[0]] = _Sequence(spec, new_sequence_id(), prefilled if history is not None else None)
        return free[0]

    def leave(self, slot: int) -> None:
        seq = self._slots.pop(slot, None)
        if seq is None or not seq.started:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._end(seq.corrid))
        except RuntimeError:  # no loop (a synchronous caller): Triton's idle timeout frees the slot
            return
        self._ends.add(task)
        task.add_done_callback(self._ends.discard)

    async def _end(self, corrid: int) -> None:
        try:
            await self.models.end("s2s", corrid)
        except TritonError as err:  # gone already: Triton's idle timeout or a restart cleared it
            log.info("ending sequence %d: %s", corrid, err)

    async def _step_one(self, slot: int, batch: _Batch) -> Any:
        seq = self._slots[slot]
        style = (batch.voice[slot], batch.emotion[slot])
        kw: dict[str, Any] = {}
        if not seq.started:
            kw = dict(start=True, seed=seq.spec.seed, temperature=seq.spec.sampling.temperature,
                      top_k=seq.spec.sampling.top_k, history=seq.history)
        if style != seq.style:
            kw.update(voice=style[0], emotion=style[1])
        result = await self.models.s2s_step(seq.corrid, batch.user[slot].tolist(), **kw)
        seq.started, seq.style, seq.history = True, style, None
        return result

    async def acompute(self, batch: _Batch) -> _Computed:
        start = time.perf_counter()
        slots = [call.slot for call in batch.calls]
        self.requests += len(slots)
        results = await asyncio.gather(*(self._step_one(s, batch) for s in slots), return_exceptions=True)
        n, K = batch.n, self.lm.n_q
        agent, ready = [[-1] * K for _ in range(n)], [False] * n
        text, steps = [-1] * n, [[-1] * K for _ in range(n)]
        failed: dict[int, str] = {}
        for s, r in zip(slots, results, strict=True):
            if isinstance(r, BaseException):
                if not isinstance(r, (TritonError, ModelBackendUnavailable)):
                    log.error("triton step failed", exc_info=r)
                failed[s] = str(r)
                continue
            agent[s], ready[s] = r.agent_codes, r.agent_codes[0] >= 0
            text[s], steps[s] = r.text_token, r.step_codes
        return _Computed(agent, ready, text, steps, time.perf_counter() - start, failed)

    async def ready(self) -> bool:
        return await self.models.ready(("s2s",))

    async def close(self) -> None:
        if self._ends:
            await asyncio.gather(*list(self._ends), return_exceptions=True)
        await self.models.close()
