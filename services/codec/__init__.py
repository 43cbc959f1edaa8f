"""The codec service: streaming audio <-> codec tokens for many calls at once, behind the
``maata.v1.Codec`` gRPC API.

* ``engine``: ``BatchedCodec``, the model-side slots and batched encode/decode steps (pure torch)
* ``service``: ``CodecServiceConfig``, the asyncio ``FrameBatcher``, the servicer and ``serve_codec``
"""

from services.codec.engine import BatchedCodec, DecoderLane, EncoderLane, SlotsFull
from services.codec.service import (CodecServer, CodecServiceConfig, CodecServicer, FrameBatcher, load_config,
                                    load_model, serve_codec)

__all__ = [
    "BatchedCodec", "DecoderLane", "EncoderLane", "SlotsFull", "CodecServer", "CodecServiceConfig",
    "CodecServicer", "FrameBatcher", "load_config", "load_model", "serve_codec",
]
