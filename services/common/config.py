"""``ServerConfig``: the network settings every Maata gRPC service shares.

Each service's own config embeds one as its ``server`` field, so YAML and environment
overrides look the same everywhere, e.g. ``MAATA_CODEC_SERVICE__SERVER__PORT=7001``.

Keepalive, in one place for both ends (``services.common.server.server_options`` and
``channel_options`` turn these fields into gRPC channel arguments):

* the server pings a connection that has been silent for ``keepalive_time_s`` and closes it if
  the ping is not answered within ``keepalive_timeout_s``: a caller whose network vanished
  frees its codec slot within about 30 s instead of holding it until TCP gives up (minutes);
* clients ping at the same ``keepalive_time_s``; the server accepts pings no more often than
  ``min_client_ping_interval_s`` (which must not exceed ``keepalive_time_s``, or a client using
  ``channel_options`` would be sent GOAWAY "too_many_pings"); both ends allow pings on idle
  connections, so a gateway's warm channel between calls is checked too.

Deadlines: the per-call streams (Encode, Decode, the conversation) carry no gRPC deadline, a
call lasts as long as it lasts; liveness comes from keepalive, and per-frame timeliness is
measured (the missed-frame-deadline counter, ``services.common.metrics``) rather than enforced.
Unary calls (Info, the session store's methods) should be given a deadline by the caller
(``UNARY_DEADLINE_S`` is the suggested one).
"""

from __future__ import annotations

from dataclasses import dataclass

UNARY_DEADLINE_S = 5.0  # a suggested deadline for unary calls between services


@dataclass(frozen=True)
class ServerConfig:
    """Where a service listens, how big its messages may be, and how it drains and keeps alive."""

    host: str = "127.0.0.1"  # loopback by default: expose beyond the machine on purpose only
    port: int = 0  # 0 = any free port (see the running server's ``port``)
    metrics_port: int = 0  # Prometheus /metrics over HTTP: 0 = off, -1 = any free port (tests)
    metrics_host: str = "127.0.0.1"
    max_message_bytes: int = 4 * 1024 * 1024  # send and receive limit per message (gRPC's default)
    grace_seconds: float = 5.0  # a drain lets in-flight calls finish this long, then cancels them
    drain_notice_seconds: float = 0.0  # NOT_SERVING this long before new calls are refused, so
    #                                    health-checking clients can move new calls elsewhere first
    keepalive_time_s: float = 20.0  # ping a connection after this long without traffic
    keepalive_timeout_s: float = 10.0  # and drop it when the ping is not answered in this time
    min_client_ping_interval_s: float = 10.0  # pings from a client closer than this are strikes
    max_ping_strikes: int = 2  # strikes before the server sends GOAWAY (gRPC's default)
    max_connection_age_s: float = 0.0  # GOAWAY a connection this old (0: never), so clients re-resolve DNS and
    #                                    spread new calls onto replicas added since; its streams keep going for
    max_connection_age_grace_s: float = 86400.0  # this long (a call is never cut by the age limit in practice)

    def __post_init__(self) -> None:
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if not -1 <= value <= 65535 or (name == "port" and value < 0):
                raise ValueError(f"server {name} must be a TCP port (0 = any free one), got {value}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"server max_message_bytes must be at least 1024, got {self.max_message_bytes}")
        if self.drain_notice_seconds < 0:
            raise ValueError(f"server drain_notice_seconds must be >= 0, got {self.drain_notice_seconds}")
        for name in ("grace_seconds", "keepalive_time_s", "keepalive_timeout_s", "min_client_ping_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"server {name} must be positive, got {getattr(self, name)}")
        if self.min_client_ping_interval_s > self.keepalive_time_s:
            raise ValueError(f"server min_client_ping_interval_s ({self.min_client_ping_interval_s}) must not "
                             f"exceed keepalive_time_s ({self.keepalive_time_s}): clients ping at that interval")
        if self.max_connection_age_s < 0 or self.max_connection_age_grace_s <= 0:
            raise ValueError("server max_connection_age_s must be >= 0 (0: off) and max_connection_age_grace_s > 0, "
                             f"got {self.max_connection_age_s} and {self.max_connection_age_grace_s}")
        if self.max_ping_strikes < 0:
            raise ValueError(f"server max_ping_strikes must be >= 0, got {self.max_ping_strikes}")
