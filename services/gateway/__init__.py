"""The gateway: the edge where callers enter Maata, and the one conversation path they share.

* ``pipeline``: ``Pipeline``, one call through codec encode -> generation -> codec decode (float32
  PCM at 16 kHz in, agent frames and events out), over gRPC (``GrpcBackends``) or in process
  (``InprocBackends``), or codec-only (``EchoBackends``); speech detection, turn latency,
  per-stage timing, standing-backlog trimming for live input. Every front end uses it.
* ``partner``: the partner API (``maata.v1.Conversation``): keys, quotas, formats, resampling,
  events; ``Gateway`` (admission, live calls, drain) and ``serve_gateway``
* ``webrtc``: the browser front end: the call page (``static/``), ``POST /api/offer``
  signalling, one aiortc peer connection per call, data-channel events and control
* ``config``: ``GatewayConfig`` (with ``WebRTCConfig``), YAML + ``MAATA_GATEWAY__*`` overrides
* ``auth``: hashed API keys and per-key quotas of concurrent calls
* ``chromium``: drive a real headless Chromium through a call (tests, the browser benchmark)

Import the submodules directly (``from services.gateway.partner import serve_gateway``).
"""
