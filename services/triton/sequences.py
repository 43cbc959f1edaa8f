"""``SequenceTable``: which model slot each Triton sequence (correlation id) holds.

Triton's sequence batcher routes every request of a sequence to the same model instance and
marks the first with START and the last with END; the python backend has no implicit state, so
each instance keeps its streaming state in ``max_batch_size`` slots of its own and this table
maps correlation ids onto them.

A sequence that Triton drops for idleness (``max_sequence_idle_microseconds``) never reaches the
model again, and the backend is not told: its slot is reclaimed when a new sequence needs one
and it has been silent for longer than the idle limit. A START for a correlation id that
already holds a slot restarts it in the same slot (a client that reconnected with the same id).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


class SequenceError(ValueError):
    """A request that does not fit its sequence (no START yet, or a START with no slot free)."""


class NoSlotFree(SequenceError):
    """Every slot holds a live sequence."""


@dataclass
class Sequence:
    corrid: int
    slot: int
    last_seen: float


class SequenceTable:
    """Correlation id -> slot for ``slots`` slots; ``acquire``/``release`` call back into the
    model's own slot API (``open_slot()`` -> slot, ``close_slot(slot)``)."""

    def __init__(self, slots: int, idle_s: float, open_slot: Callable[[], int], close_slot: Callable[[int], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.slots = slots
        self.idle_s = idle_s
        self._open_slot = open_slot
        self._close_slot = close_slot
        self.clock = clock
        self._by_id: dict[int, Sequence] = {}
        self.reclaimed = 0  # slots taken back from sequences Triton had dropped for idleness

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, corrid: int) -> bool:
        return corrid in self._by_id

    def start(self, corrid: int) -> Sequence:
        """A new sequence (START): a fresh slot, or its own slot restarted when it holds one."""
        if corrid == 0:
            raise SequenceError("correlation id 0 is not a sequence; give every call a non-zero id")
        if corrid in self._by_id:
            self.release(corrid)
        if len(self._by_id) >= self.slots:
            self._reclaim_idle()
        if len(self._by_id) >= self.slots:
            raise NoSlotFree(f"all {self.slots} slots of this model instance hold live sequences")
        seq = Sequence(corrid, self._open_slot(), self.clock())
        self._by_id[corrid] = seq
        return seq

    def get(self, corrid: int) -> Sequence:
        """The live sequence of ``corrid`` (SequenceError when it has not started or has ended)."""
        seq = self._by_id.get(corrid)
        if seq is None:
            raise SequenceError(f"sequence {corrid} has no state in this model instance (it ended, idled out, or "
                                "the server restarted): start it again with START (resume from the stored history)")
        seq.last_seen = self.clock()
        return seq

    def release(self, corrid: int) -> None:
        """End ``corrid``'s sequence (END): its slot is reset and freed. Unknown ids are ignored."""
        seq = self._by_id.pop(corrid, None)
        if seq is not None:
            self._close_slot(seq.slot)

    def _reclaim_idle(self) -> None:
        now = self.clock()
        for corrid, seq in list(self._by_id.items()):
            if now - seq.last_seen > self.idle_s:
                self.release(corrid)
                self.reclaimed += 1
