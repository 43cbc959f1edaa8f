"""The sampling settings a call may ask for (``maata.v1.Sampling``), validated in one place: the
gateway refuses a bad partner config before any backend is called, and the generation service
checks every call config it is sent, with the same rule and the same words."""

from __future__ import annotations

import math


def check_sampling(temperature: float, top_k: int) -> None:
    """ValueError unless ``temperature`` is a finite number >= 0 (0 = greedy) and ``top_k`` >= 0
    (0 = no limit)."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"sampling temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"sampling top_k must be >= 0 (0 = no limit), got {top_k}")


__all__ = ["check_sampling"]
