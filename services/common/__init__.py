"""What every Maata gRPC service shares: the server and its handle, errors, config, metrics, logs.

* ``config``: ``ServerConfig`` (host, ports, message size, drain grace, keepalive), embedded
  by each service's config; the keepalive and deadline policy is documented there
* ``server``: ``GrpcServer`` (health, reflection, /metrics, graceful drain with the service's
  hooks), ``Service`` (the handle every ``serve_*`` returns), ``add_servicer``
  (INVALID_ARGUMENT for undecodable requests, per-RPC log context and error counts),
  ``server_options`` / ``channel_options`` (aligned channel arguments of both ends)
* ``aio``: ``off_loop`` (model work in a worker thread), ``drain_on_signals`` (the one
  SIGTERM/SIGINT handler)
* ``errors``: ``StatusError`` (a status code and details: how anything ends), ``RESUME_HINT``
* ``metrics``: ``ServiceMetrics``, the metric families every service reports, and ``timed``
* ``logs``: JSON-lines logging with ``service`` and ``call_id`` fields
* ``phase``: ``PhaseAligner``, which moves a periodic schedule to just after its inputs arrive
"""

from services.common.aio import drain_on_signals, off_loop
from services.common.config import UNARY_DEADLINE_S, ServerConfig
from services.common.errors import RESUME_HINT, StatusError, abort, abort_with
from services.common.logs import configure_logging
from services.common.metrics import LATENCY_BUCKETS, ServiceMetrics
from services.common.server import (CALL_ID_METADATA, GrpcServer, Service, add_servicer, channel_options, parse,
                                    server_options)

__all__ = [
    "UNARY_DEADLINE_S", "ServerConfig", "RESUME_HINT", "StatusError", "abort", "abort_with", "configure_logging",
    "LATENCY_BUCKETS", "ServiceMetrics", "CALL_ID_METADATA", "GrpcServer", "Service", "add_servicer",
    "channel_options", "drain_on_signals", "off_loop", "parse", "server_options",
]
