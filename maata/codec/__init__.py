"""The streaming Telugu neural codec: audio <-> 8 codebooks of discrete tokens at 25 Hz.

Names are imported lazily so that ``maata --help`` and the CLI's command modules, which live
in this package, do not pay for importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Codec": "maata.codec.model", "CodecConfig": "maata.codec.model", "CodecOutput": "maata.codec.model",
    "CodecState": "maata.codec.model", "CodeError": "maata.codec.model", "QuantizerConfig": "maata.codec.model",
    "SemanticConfig": "maata.codec.model", "TransformerConfig": "maata.codec.model",
    "load_preset": "maata.codec.model", "preset_names": "maata.codec.model", "DROPPED": "maata.codec.quantizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'maata.codec' has no attribute {name!r}")
