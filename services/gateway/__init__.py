"""The gateway: the edge where callers enter Maata, and the one conversation path they share.

* ``core``: ``Gateway``, what every front end shares: backends, keys, admission (draining, the
  gateway-wide cap, per-key quotas), the live-call registry, style and resume checks
* ``pipeline``: ``Pipeline``, one call through codec encode -> generation -> codec decode (float32
  PCM at 16 kHz in, agent frames and events out); standing-backlog trimming for live input,
  per-stage timing; the only orchestrator
* ``backends``: where a pipeline's three streams go (``Duplex`` transports): ``GrpcBackends``,
  ``InprocBackends`` (the servicers of this process), ``EchoBackends`` (codec only)
* ``speech``: ``SpeechDetector`` (energy with hysteresis) and ``TurnTracker`` (turn latency)
* ``partner``: front end 1, the partner API (``maata.v1.Conversation``): formats, resampling,
  events as ``ServerEvent``s
* ``webrtc``: front end 2, the browser: the call page (``static/``), ``POST /api/offer``
  signalling, one aiortc peer connection per call, data-channel events and control
* ``server``: ``serve_gateway`` / ``GatewayServer``: the gRPC server, both front ends, the drain
* ``config``: ``GatewayConfig`` (with ``WebRTCConfig``), YAML + ``MAATA_GATEWAY__*`` overrides
* ``auth``: hashed API keys and per-key quotas of concurrent calls

Dependencies point one way: front ends -> core -> pipeline -> backends / speech. A third front
end is a module beside ``partner``/``webrtc`` that admits through ``Gateway`` and drives a
``Pipeline``, started in ``server``; a new model backend is a ``Backends`` subclass in ``backends``.

Import the submodules directly (``from services.gateway.server import serve_gateway``).
"""
