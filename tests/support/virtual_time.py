"""An asyncio event loop on a virtual clock: a wait for a timeout moves the clock instead of
sleeping, so code paced by ``asyncio.sleep``/``wait_for`` runs exactly and instantly, whatever
the machine's load (AgentTrack's tests, bench/media_budget.py).

    loop = virtual_time_loop()
    track.clock = loop.time       # code that reads a clock of its own must read this one
    loop.run_until_complete(main())
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


class VirtualSelector(selectors.DefaultSelector):
    """A selector that never blocks: ``select(timeout)`` advances ``now`` by the timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout:
            self.now += timeout
        return []


def virtual_time_loop() -> asyncio.AbstractEventLoop:
    """A new event loop whose ``time()`` is virtual and starts at 0 (no real I/O can run on it)."""
    selector = VirtualSelector()
    loop = asyncio.SelectorEventLoop(selector)
    loop.time = lambda: selector.now  # type: ignore[method-assign]
    return loop


__all__ = ["VirtualSelector", "virtual_time_loop"]
