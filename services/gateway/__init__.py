"""The gateway: the edge where callers enter Maata, and the one conversation path they share.

* ``pipeline``: ``Pipeline``, one call through codec encode -> generation -> codec decode (float32
  PCM at 16 kHz in, agent frames and events out), over gRPC (``GrpcBackends``) or in process
  (``InprocBackends``); speech detection, turn latency, per-stage timing. Every front end uses it.
* ``partner``: the partner API (``maata.v1.Conversation``): keys, quotas, formats, resampling,
  events; ``GatewayConfig`` and ``serve_gateway``
* ``auth``: hashed API keys and per-key quotas of concurrent calls

Import the submodules directly (``from services.gateway.partner import serve_gateway``).
"""
