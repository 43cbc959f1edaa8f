"""The metric families every Maata service reports, in one per-server registry.

* ``maata_stage_latency_seconds{service, stage}``: how long each stage of frame work took
  (histogram; buckets resolve the millisecond range that matters for 40 ms frames);
* ``maata_live_calls{service, rpc}``: per-call streams in flight (the gauge the client-streaming
  RPC handlers maintain, see ``services.common.server.add_servicer``);
* ``maata_missed_frame_deadlines_total{service, stage}``: stage runs that took longer than their
  real-time budget (a frame's work must be done within a frame's duration);
* ``maata_rpc_errors_total{service, method, code}``: RPCs that ended with a non-OK status (a
  client's own deadline counts as DEADLINE_EXCEEDED, a client going away as CANCELLED; the
  gateway's browser front end counts its refused offers as method "browser");
* ``maata_refusals_total{service, front_end, reason}``: calls refused before they started, by
  reason (the gateway: unauthenticated, invalid, session, rate, tenant_calls, capacity, reserve,
  draining, backend, and for browsers also client_rate, offer_rate, pending, token);
* ``maata_dropped_frames_total{service, front_end}``: user frames that got no answer of their own
  (live input faster than real time).

Like pipecat's per-processor processing-time metrics, a stage is timed from when its work
starts until its output is ready (``timed``); unlike pipecat, the numbers go to Prometheus,
not down the pipeline. Each ``ServiceMetrics`` owns its ``CollectorRegistry`` (no global
registry), so several services and tests can live in one process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds. Dense from 0.5 ms to 40 ms (one frame), coarser up to 1 s for stalls.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.010, 0.015, 0.020, 0.025, 0.030, 0.040,
                   0.060, 0.080, 0.120, 0.250, 0.500, 1.0)


class ServiceMetrics:
    """The metric families of one service, registered in their own registry."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry if registry is not None else CollectorRegistry()
        self.stage_latency = Histogram(
            "maata_stage_latency_seconds", "Time a stage of frame work took, from start to output ready.",
            ["service", "stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.live_calls = Gauge(
            "maata_live_calls", "Per-call streams in flight.", ["service", "rpc"], registry=self.registry)
        self.missed_deadlines = Counter(
            "maata_missed_frame_deadlines", "Stage runs that took longer than their real-time budget.",
            ["service", "stage"], registry=self.registry)
        self.errors = Counter(
            "maata_rpc_errors", "RPCs that ended with a non-OK gRPC status.", ["service", "method", "code"],
            registry=self.registry)
        self.refusals = Counter(
            "maata_refusals", "Calls refused before they started, by reason.", ["service", "front_end", "reason"],
            registry=self.registry)
        self.dropped_frames = Counter(
            "maata_dropped_frames", "User frames that got no answer of their own (input faster than real time).",
            ["service", "front_end"], registry=self.registry)

    def observe(self, stage: str, seconds: float, deadline_s: float | None = None) -> None:
        """Record one run of ``stage``; count a missed deadline when it took over ``deadline_s``."""
        self.stage_latency.labels(self.service, stage).observe(seconds)
        if deadline_s is not None and seconds > deadline_s:
            self.missed_deadlines.labels(self.service, stage).inc()

    @contextmanager
    def timed(self, stage: str, deadline_s: float | None = None) -> Iterator[None]:
        """Time the block as one run of ``stage`` (recorded even if the block raises)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe(stage, time.perf_counter() - start, deadline_s)

    def rpc_error(self, method: str, code: str) -> None:
        """Count an RPC of ``method`` that ended with status ``code`` (e.g. "INVALID_ARGUMENT")."""
        self.errors.labels(self.service, method, code).inc()

    def refusal(self, front_end: str, reason: str) -> None:
        """Count a call refused by ``front_end`` for ``reason`` before it started."""
        self.refusals.labels(self.service, front_end, reason).inc()

    @contextmanager
    def live_call(self, rpc: str) -> Iterator[None]:
        """Count the block as one live per-call stream of ``rpc``."""
        gauge = self.live_calls.labels(self.service, rpc)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()
