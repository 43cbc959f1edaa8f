"""The streaming Telugu neural codec: audio <-> 8 codebooks of discrete tokens at 25 Hz."""

from maata.codec.model import (Codec, CodecConfig, CodecOutput, CodecState, CodeError, QuantizerConfig,
                               SemanticConfig, TransformerConfig, load_preset, preset_names)
from maata.codec.quantizer import DROPPED

__all__ = ["Codec", "CodecConfig", "CodecOutput", "CodecState", "CodeError", "QuantizerConfig", "SemanticConfig",
           "TransformerConfig", "load_preset", "preset_names", "DROPPED"]
