"""The gateway service: the partner API (gRPC) and the browser front end (HTTP + WebRTC) over
one ``Gateway`` and its backends.

``serve_gateway`` connects the backends, starts the ``maata.v1.Conversation`` servicer
(``services.gateway.partner``) on the common ``GrpcServer`` and, when enabled, the browser front
end (``services.gateway.webrtc``; aiortc is imported only then). Its ``drain`` ends every live
call UNAVAILABLE (resumable) whichever front end it came through, stops the browser front end,
then the gRPC server, then closes the backends and store it owns. A third front end is started
here the same way, over the same ``Gateway``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.common.metrics import ServiceMetrics
from services.common.server import GrpcServer, Service
from services.gateway.auth import Authenticator
from services.gateway.backends import Backends
from services.gateway.config import GatewayConfig
from services.gateway.core import Gateway
from services.gateway.partner import SERVICE, ConversationServicer
from services.session.store import SessionStore

if TYPE_CHECKING:  # aiortc loads only when the browser front end runs
    from services.gateway.webrtc import WebRTCServer

log = logging.getLogger("maata.services.gateway")


@dataclass
class GatewayServer(Service):
    """A running gateway: its gRPC server, the ``Gateway`` and the browser front end (None when
    disabled)."""

    gateway: Gateway
    webrtc: WebRTCServer | None = None


async def serve_gateway(config: GatewayConfig, backends: Backends, *, store: SessionStore | None = None,
                        port: int | None = None, host: str | None = None, auth: Authenticator | None = None,
                        owns_backends: bool = True, owns_store: bool = False,
                        webrtc_port: int | None = None) -> GatewayServer:
    """Start the gateway on ``host:port`` (default: ``config.server``'s; port 0: any free one)
    over ``backends`` (connected here), reading sessions from ``store`` for resumes, and its
    browser front end (``config.webrtc``) on the same host, port ``webrtc_port`` (default
    ``config.webrtc.port``, or any free one when the gRPC port is 0). The drain closes the
    backends when ``owns_backends`` and the store when ``owns_store``."""
    server_config = dataclasses.replace(config.server, port=config.server.port if port is None else port,
                                        host=config.server.host if host is None else host)
    auth = auth or Authenticator.from_config(config.auth)
    await backends.connect(config.connect_timeout_s)
    metrics = ServiceMetrics("gateway")
    gateway = Gateway(config, backends, store, metrics, auth)
    await gateway.calibrate()
    server = GrpcServer("gateway", server_config, metrics)
    server.add_service(ConversationServicer(gateway), SERVICE)
    server.before_stop(gateway.drain)
    if owns_backends:
        server.after_stop(backends.close)
    if owns_store and store is not None:
        server.after_stop(store.close)
    await server.start()
    webrtc = None
    if webrtc_port is None:  # a gateway on any free port (tests) puts its browser front end on one too
        webrtc_port = 0 if server_config.port == 0 else config.webrtc.port
    if config.webrtc.enabled:
        from services.gateway.webrtc import serve_webrtc

        try:
            webrtc = await serve_webrtc(gateway, config.webrtc, host=server_config.host, port=webrtc_port)
        except BaseException:
            await server.drain(0)
            raise
        server.before_stop(webrtc.stop)
    log.info("gateway ready", extra={"port": server.port, "backends": backends.description,
                                     "webrtc": webrtc.url if webrtc else "off"})
    return GatewayServer(server, gateway, webrtc)


__all__ = ["GatewayServer", "serve_gateway"]
