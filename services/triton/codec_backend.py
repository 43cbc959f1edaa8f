"""``TritonCodecBatcher``: the codec service's streams on Triton's ``codec_encoder`` / ``codec_decoder``.

The same interface as the in-process ``services.codec.service.FrameBatcher`` (``open``,
``submit``, ``close``, ``start``, ``stop``), so the servicer is unchanged. Each stream is a
Triton sequence: its first request carries START, closing the stream sends END. Encode input is
cut here into whole frames (the remainder waits for the stream's next chunk; the stream's end
zero-pads it, as the codec's offline ``encode`` pads a file's end), so only whole frames of PCM
cross the wire; decode sends the codes as they come. Triton's sequence batcher batches the
streams' requests in the model instance (the window and batching of the in-process batcher are
Triton's here).

``engine`` is a one-slot in-process ``BatchedCodec`` used only for what the servicer asks of
it besides steps: validation (``prepare``) and the codec's description (rate, hop, codebooks).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from services.codec.engine import BatchedCodec, SlotsFull
from services.common.metrics import ServiceMetrics
from services.triton.client import TritonError, TritonModels, new_sequence_id

log = logging.getLogger("maata.triton")


@dataclass
class _Stream:
    corrid: int
    started: bool = False
    pending: torch.Tensor | None = None  # encode: samples short of a whole frame


class TritonCodecBatcher:
    """Codec streams on Triton (see the module docstring); ``max_streams`` per direction."""

    def __init__(self, engine: BatchedCodec, models: TritonModels, max_streams: int, metrics: ServiceMetrics) -> None:
        self.engine = engine
        self.models = models
        self.max_streams = max_streams
        self.metrics = metrics
        self._streams: dict[tuple[str, int], _Stream] = {}
        self._ends: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        if self._ends:
            await asyncio.gather(*list(self._ends), return_exceptions=True)
        await self.models.close()

    def open(self, kind: str) -> int:
        used = {slot for k, slot in self._streams if k == kind}
        free = [s for s in range(self.max_streams) if s not in used]
        if not free:
            raise SlotsFull(f"all {self.max_streams} {kind} slots are in use")
        self._streams[(kind, free[0])] = _Stream(new_sequence_id())
        return free[0]

    def close(self, kind: str, slot: int) -> None:
        stream = self._streams.pop((kind, slot), None)
        if stream is None or not stream.started:
            return
        task = asyncio.get_running_loop().create_task(self._end(kind, stream.corrid))
        self._ends.add(task)
        task.add_done_callback(self._ends.discard)

    async def _end(self, kind: str, corrid: int) -> None:
        try:
            await self.models.end("encoder" if kind == "encode" else "decoder", corrid)
        except TritonError as err:
            log.info("ending codec sequence %d: %s", corrid, err)

    async def submit(self, kind: str, slot: int, payload: torch.Tensor | None, flush: bool = False) -> torch.Tensor:
        """The stream's output for ``payload`` (whole frames only); TritonUnavailableError when
        Triton is gone (the servicer ends the stream UNAVAILABLE)."""
        stream = self._streams[(kind, slot)]
        start = time.perf_counter()
        hop = self.engine.hop
        if kind == "encode":
            parts = [t for t in (stream.pending, payload) if t is not None]
            x = torch.cat(parts) if parts else None
            if x is not None and flush and x.shape[-1] % hop:
                x = torch.cat([x, x.new_zeros(hop - x.shape[-1] % hop)])
            n = 0 if x is None else x.shape[-1] // hop * hop
            stream.pending = x[n:] if x is not None and x.shape[-1] > n else None
            if n == 0:
                return torch.zeros(self.engine.codec.n_q, 0, dtype=torch.long)
            out = torch.from_numpy(await self.models.encode(stream.corrid, x[:n].cpu().numpy(),
                                                            start=not stream.started))
            frames = out.shape[-1]
        else:
            if payload is None or payload.shape[-1] == 0:
                return torch.zeros(0)
            out = torch.from_numpy(np.ascontiguousarray(
                await self.models.decode(stream.corrid, payload.cpu().numpy(), start=not stream.started)))
            frames = payload.shape[-1]
        stream.started = True
        self.metrics.observe(kind, time.perf_counter() - start, max(frames, 1) * self.engine.frame_seconds)
        return out
