"""A virtual time for asyncio code that takes its clock and its sleeps as arguments (the
generation engine's ``clock``, the frame clock's ``sleep``): the code under test is the only
sleeper, and everything else that happens over time (a caller's frames, a stall) is an event the
test schedules at a virtual instant. Timing tests then check exact schedules, however loaded the
machine is; no wall-clock medians, no sleeps."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable


class VirtualTime:
    """``now()`` (also ``vt()``) is a number only events and ``sleep`` move. ``sleep(d)`` runs the
    events due within the next ``d`` seconds in time order, each at its own instant, then sets the
    time to the end of the sleep and yields to the event loop once."""

    def __init__(self, start_s: float = 0.0) -> None:
        self.now_s = start_s
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self.now_s

    __call__ = now

    def at(self, t: float, event: Callable[[], None]) -> None:
        """Run ``event()`` when the time reaches ``t`` (or at the next sleep, if ``t`` has passed)."""
        heapq.heappush(self._events, (t, next(self._order), event))

    def advance(self, seconds: float) -> None:
        """Move the time without sleeping (work that took ``seconds``: a stalled step)."""
        self.now_s += seconds

    async def sleep(self, seconds: float) -> None:
        end = self.now_s + max(0.0, seconds)
        while self._events and self._events[0][0] <= end:
            t, _, event = heapq.heappop(self._events)
            self.now_s = max(self.now_s, t)
            event()
        self.now_s = end
        await asyncio.sleep(0)


__all__ = ["VirtualTime"]
