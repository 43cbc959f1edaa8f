"""Phase alignment of periodic schedules (see ``PhaseAligner``)."""

from __future__ import annotations


class PhaseAligner:
    """Moves a periodic schedule's phase to just after the work it serves arrives.

    Used by the generation service's frame clock (callers' user frames -> the batched step).
    Producers deliver one item per period at a phase of their own (for a call: when it started,
    plus the codec's time). With the ticks at a fixed phase, an item waits ``(tick - arrival) mod
    period`` before it is served: anywhere in 0-40 ms for the frame clock, 20 ms on average,
    decided by chance at call start. Every ``window`` ticks the aligner looks at the shortest
    wait of a served item in that window (the producer whose item arrived last before its tick,
    jitter included); when it is over ``margin_s + hysteresis_s``, the next tick moves earlier so
    that this item would have waited only ``margin_s``. Every waiting item gains the same, and none is missed: the latest
    producer still makes the tick. One caller (a browser call) thus waits ~``margin_s`` instead of
    ~20 ms; with many calls at spread phases the gain shrinks to nothing, never below.

    An item that arrives late (jitter over the margin) misses its tick once (the frame clock
    fills silence) and then every item waits a whole period behind it. That is told apart from a
    window's ordinary spread quickly: ``heal_ticks`` ticks in a row whose shortest wait is over
    half a period (every producer backlogged) move the tick at once, by their shortest wait
    less the margin, instead of waiting for the window's end; a new call's chance phase is
    aligned the same way. A miss also means the arrivals jitter more than the margin allows: the
    margin grows by ``margin_step_s`` at every heal after the first alignment (up to
    ``margin_max_s``, a quarter period by default) and shrinks back towards ``margin_s`` by an
    eighth of a step per window without one, so it settles where the deployment's jitter is.
    ``observe`` returns the shift (s); moving the schedule is the caller's.
    """

    def __init__(self, period_s: float, margin_s: float = 0.005, hysteresis_s: float = 0.005,
                 window: int = 25, heal_ticks: int = 3, margin_step_s: float = 0.002,
                 margin_max_s: float | None = None) -> None:
        if min(margin_s, hysteresis_s, margin_step_s) < 0 or window < 1 or heal_ticks < 1:
            raise ValueError("margins, hysteresis and step must be >= 0, window and heal_ticks >= 1")
        self.period_s, self.margin_s, self.hysteresis_s, self.window = period_s, margin_s, hysteresis_s, window
        self.heal_ticks, self.margin_step_s = heal_ticks, margin_step_s
        self.margin_max_s = max(margin_s, period_s / 4 if margin_max_s is None else margin_max_s)
        self.margin_now_s = margin_s  # the margin in use (grows with misses, see above)
        self._waits: list[float] = []
        self._backlogged = 0  # ticks in a row whose shortest wait was over half a period
        self.shifts = 0
        self.shifted_s = 0.0

    def observe(self, min_wait_s: float | None) -> float:
        """One tick's shortest wait of an item it served (None: it served none); the seconds to
        move the next tick earlier (0: keep the schedule)."""
        if min_wait_s is None:
            return 0.0
        self._waits.append(min_wait_s)
        self._backlogged = self._backlogged + 1 if min_wait_s > self.period_s / 2 else 0
        if self._backlogged >= self.heal_ticks:
            shortest = min(self._waits[-self.heal_ticks:])
            if self.shifts:  # a miss after alignment, not a new call's chance phase
                self.margin_now_s = min(self.margin_max_s, self.margin_now_s + self.margin_step_s)
        elif len(self._waits) >= self.window:
            shortest = min(self._waits)
            self.margin_now_s = max(self.margin_s, self.margin_now_s - self.margin_step_s / 8)
        else:
            return 0.0
        self._waits.clear()
        self._backlogged = 0
        if shortest <= self.margin_now_s + self.hysteresis_s:
            return 0.0
        shift = min(shortest - self.margin_now_s, self.period_s)
        self.shifts += 1
        self.shifted_s += shift
        return shift


__all__ = ["PhaseAligner"]
