"""asyncio helpers every service shares: model work off the event loop, and SIGTERM/SIGINT as a drain.

* ``off_loop(fn, *args)``: run a model step in a worker thread so the event loop keeps serving,
  and never let a cancellation return while the thread still uses the model's state;
* ``drain_on_signals(drain)``: the one place SIGTERM/SIGINT are turned into a graceful drain
  (``GrpcServer`` and ``maata serve``'s stack both use it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

log = logging.getLogger("maata.services")

T = TypeVar("T")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def drain_on_signals(drain: Callable[[], Awaitable[None]],
                     signals: tuple[signal.Signals, ...] = SIGNALS) -> Iterator[None]:
    """While the block runs, SIGTERM/SIGINT start ``drain()`` (once) instead of killing the
    process; the handlers are removed on exit. Main thread's event loop only."""
    loop = asyncio.get_running_loop()
    running: list[asyncio.Future[None]] = []

    def on_signal(sig: signal.Signals) -> None:
        log.info("signal received, draining", extra={"signal": sig.name})
        if not running:
            running.append(asyncio.ensure_future(drain()))

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread, so the event loop keeps serving while a model computes.

    If the caller is cancelled meanwhile, the thread still runs to its end before this raises
    CancelledError: whatever ``fn`` uses must never be touched by the loop while the thread
    still uses it (a model's streaming state, an engine's slots)."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await work
        raise


__all__ = ["SIGNALS", "drain_on_signals", "off_loop"]
