"""Admission: who may start a call now, so that no caller can lock the others out.

Every call, whatever front end it came through, is charged to a **tenant**: a partner's API key
(``ApiKey``), a browser call carrying a call token (charged to the key that minted it), or the
**anonymous** browser pool (the public page, no credentials). ``Admission.admit`` checks, in order:

* ``draining``: the gateway is shutting down (UNAVAILABLE);
* ``rate``: the tenant's calls per minute (a token bucket refilled at that rate, holding a tenth of
  it: a burst of call starts is spread out instead of landing on the frame clock at once);
* ``tenant_calls``: the tenant's live calls against its own cap (RESOURCE_EXHAUSTED);
* ``capacity``: the gateway's live calls against ``capacity`` (the generation slots it fronts);
* ``reserve``: the last ``reserve`` free slots go only to a tenant that holds no call yet, so one
  tenant's burst leaves room for another tenant's first call (RESOURCE_EXHAUSTED).

A refusal raises ``Refused`` (a ``StatusError`` with a ``reason``, the label of the refusals
metric). An admitted call holds a ``Ticket`` until it ends; ``release`` is idempotent.

Resumable history. A call that ends without hanging up (the client went away, a drain, bad
input) leaves its session live in the store so the caller can resume it. ``HistoryBudget`` keeps
at most ``max_sessions`` such sessions per tenant: one more ends the oldest in the store (it can
no longer be resumed), so a tenant cannot fill the store's live capacity with abandoned calls.
A tenant with ``max_sessions`` 0 (browser calls, which never resume) has every unfinished
session ended at once. The budget is per gateway replica (in memory).

``RateLimiter`` is the token bucket, also used per client address and globally for browser offers.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from services.common.errors import RESUME_HINT, StatusError

log = logging.getLogger("maata.services.gateway")

Code = grpc.StatusCode
ANONYMOUS = "anonymous"


class Refused(StatusError):
    """A call refused at admission; ``reason`` labels ``maata_refusals_total``."""

    def __init__(self, code: grpc.StatusCode, details: str, reason: str) -> None:
        super().__init__(code, details)
        self.reason = reason


@dataclass(frozen=True)
class Tenant:
    """Whom a call is charged to, and that tenant's limits."""

    name: str
    max_calls: int  # live calls at once
    calls_per_minute: int  # call starts per minute (a bucket of a minute's worth)
    max_sessions: int  # resumable histories kept in the store (0: none, end them at once)


def burst(per_minute: int) -> float:
    """The bucket size of a rate of ``per_minute``: six seconds' worth, at least one."""
    return float(max(1, -(-per_minute // 10)))


class RateLimiter:
    """Token buckets by name: each holds ``burst(per_minute)`` tokens and refills ``per_minute`` a
    minute; ``take`` spends one or returns False. Full (idle) buckets are forgotten once more
    than ``max_names`` are held, so many distinct names (client addresses) cost bounded memory."""

    def __init__(self, max_names: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)
        self._max_names = max_names
        self._clock = clock

    def take(self, name: str, per_minute: int) -> bool:
        now = self._clock()
        size = burst(per_minute)
        tokens, at = self._buckets.get(name, (size, now))
        tokens = min(size, tokens + (now - at) * per_minute / 60.0)
        if tokens < 1.0:
            self._buckets[name] = (tokens, now)
            return False
        self._buckets[name] = (tokens - 1.0, now)
        if len(self._buckets) > self._max_names:
            self._forget_idle(now, per_minute)
        return True

    def _forget_idle(self, now: float, per_minute: int) -> None:
        """Drop buckets that have refilled (assuming ``per_minute``), oldest first, to half the cap."""
        for name, (tokens, at) in list(self._buckets.items()):
            if len(self._buckets) <= self._max_names // 2:
                break
            if tokens + (now - at) * per_minute / 60.0 >= burst(per_minute):
                del self._buckets[name]


@dataclass
class Ticket:
    """An admitted call's hold on its tenant's and the gateway's capacity."""

    tenant: Tenant
    front_end: str
    _admission: Admission
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._admission._release(self)


@dataclass
class Admission:
    """Live calls per tenant and in all, with the checks of the module docstring."""

    capacity: int
    reserve: int = 0
    rates: RateLimiter = field(default_factory=RateLimiter)
    live: dict[str, int] = field(default_factory=dict)
    total: int = 0
    draining: bool = False

    def admit(self, tenant: Tenant, front_end: str) -> Ticket:
        if self.draining:
            raise Refused(Code.UNAVAILABLE, f"the gateway is draining; {RESUME_HINT} (or start it) on another replica",
                          "draining")
        held = self.live.get(tenant.name, 0)
        if held >= tenant.max_calls:
            raise Refused(Code.RESOURCE_EXHAUSTED, f"{self._who(tenant)} has {held} calls in progress, its limit; "
                                                   "end one or ask for a higher quota", "tenant_calls")
        free = self.capacity - self.total
        if free <= 0:
            raise Refused(Code.RESOURCE_EXHAUSTED, f"the gateway is at its limit of {self.capacity} calls; "
                                                   "retry later or use another replica", "capacity")
        if free <= self.reserve and held > 0:
            raise Refused(Code.RESOURCE_EXHAUSTED, f"only {free} of {self.capacity} call slots are free and they are "
                                                   f"kept for callers with no call in progress ({self._who(tenant)} "
                                                   f"has {held}); retry later", "reserve")
        if not self.rates.take(f"tenant:{tenant.name}", tenant.calls_per_minute):
            raise Refused(Code.RESOURCE_EXHAUSTED, f"{self._who(tenant)} is starting calls faster than its limit of "
                                                   f"{tenant.calls_per_minute} a minute; retry in a few seconds", "rate")
        self.live[tenant.name] = held + 1
        self.total += 1
        return Ticket(tenant, front_end, self)

    def _release(self, ticket: Ticket) -> None:
        name = ticket.tenant.name
        left = self.live.get(name, 0) - 1
        if left > 0:
            self.live[name] = left
        else:
            self.live.pop(name, None)
        self.total = max(0, self.total - 1)

    @staticmethod
    def _who(tenant: Tenant) -> str:
        return "the anonymous browser pool" if tenant.name == ANONYMOUS else f"API key {tenant.name!r}"


class HistoryBudget:
    """Each tenant's resumable sessions, oldest first; beyond the tenant's ``max_sessions`` the
    oldest are ended in the store by ``end_session`` (see the module docstring)."""

    def __init__(self, end_session: Callable[[str], Awaitable[None]]) -> None:
        self._end_session = end_session
        self._kept: dict[str, OrderedDict[str, None]] = {}

    def resumed(self, tenant: Tenant, store_id: str) -> None:
        """``store_id`` is live again (a call resumed it): it no longer waits in the budget."""
        kept = self._kept.get(tenant.name)
        if kept is not None:
            kept.pop(store_id, None)

    def kept(self, tenant: Tenant) -> list[str]:
        return list(self._kept.get(tenant.name, ()))

    async def left_resumable(self, tenant: Tenant, store_id: str) -> None:
        """A call of ``tenant`` ended leaving ``store_id`` resumable: keep it, ending the oldest
        beyond the budget."""
        kept = self._kept.setdefault(tenant.name, OrderedDict())
        kept.pop(store_id, None)
        kept[store_id] = None
        while len(kept) > tenant.max_sessions:
            oldest, _ = kept.popitem(last=False)
            try:
                await self._end_session(oldest)
            except Exception as err:  # an unreachable store: the session expires on its TTL instead
                log.warning("could not end a session over its tenant's history budget",
                            extra={"call_id": oldest, "tenant": tenant.name, "error": str(err)})
        if not kept:
            self._kept.pop(tenant.name, None)


__all__ = ["ANONYMOUS", "Admission", "HistoryBudget", "RateLimiter", "Refused", "Tenant", "Ticket"]
