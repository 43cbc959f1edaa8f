"""What every Maata gRPC service shares: the server bootstrap, config, metrics and logs.

* ``config``: ``ServerConfig`` (host, ports, message size, drain grace, keepalive), embedded
  by each service's config; the keepalive and deadline policy is documented there
* ``server``: ``GrpcServer`` (health, reflection, /metrics, graceful drain on SIGTERM),
  ``add_servicer`` (INVALID_ARGUMENT for undecodable requests, per-RPC log context and error
  counts), ``server_options`` / ``channel_options`` (aligned channel arguments of both ends)
* ``metrics``: ``ServiceMetrics``, the metric families every service reports, and ``timed``
* ``logs``: JSON-lines logging with ``service`` and ``call_id`` fields
"""

from services.common.config import UNARY_DEADLINE_S, ServerConfig
from services.common.logs import configure_logging
from services.common.metrics import LATENCY_BUCKETS, ServiceMetrics
from services.common.server import (CALL_ID_METADATA, GrpcServer, abort, add_servicer, channel_options, parse,
                                    server_options)

__all__ = [
    "UNARY_DEADLINE_S", "ServerConfig", "configure_logging", "LATENCY_BUCKETS", "ServiceMetrics",
    "CALL_ID_METADATA", "GrpcServer", "abort", "add_servicer", "channel_options", "parse", "server_options",
]
