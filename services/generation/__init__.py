"""The S2S generation service: every live call's LM slot advanced by one batched model step per
40 ms frame, behind the ``maata.v1.Generation`` gRPC API, with each call's history in the
session store so a call survives a restart of the service.

* ``engine``: ``GenerationEngine`` (the LM slots, one batched ``lm.step`` per tick, silence for
  late frames, bounded queues, idle detection, history records, ``prefill`` from a stored
  history) and ``FrameClock`` (the asyncio tick loop; manual mode for tests). No gRPC.
* ``service``: ``GenerationServiceConfig``, the ``CallManager`` (admission, session store,
  flushes, resume, endings), the servicer and ``serve_generation`` (the store over gRPC,
  ``RemoteSessionStore``, lives in ``services.session.client``; re-exported here)
"""

from services.generation.engine import (Call, CallSpec, EngineFull, FrameClock, FrameOut, GenerationEngine, History,
                                        HistoryError, Tick, history_from_frames)
from services.generation.service import (CallManager, GenerationServer, GenerationServiceConfig, GenerationServicer,
                                         RemoteSessionStore, load_config, load_model, make_store, serve_generation)

__all__ = [
    "Call", "CallSpec", "EngineFull", "FrameClock", "FrameOut", "GenerationEngine", "History", "HistoryError", "Tick",
    "history_from_frames", "CallManager", "GenerationServer", "GenerationServiceConfig",
    "GenerationServicer", "RemoteSessionStore", "load_config", "load_model", "make_store", "serve_generation",
]
