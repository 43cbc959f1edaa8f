"""Model building blocks shared by the codec and the LM: RoPE, the causal streaming
transformer (ring KV cache, per-slot reset), streaming-state helpers, the mel filterbank, and
the input errors both models raise, and a digest of weights."""

from maata.nn.errors import CodeError, ModelInputError
from maata.nn.mel import MelSpectrogram, mel_filterbank
from maata.nn.rope import Rope, apply_rope, interleaved_to_half_split, rope_tables
from maata.nn.state import reset_state
from maata.nn.transformer import (GeluMLP, RMSNorm, StreamingTransformer, SwiGLU, TransformerLayer, TransformerState,
                                  swiglu_hidden, window_mask)
from maata.nn.weights import weights_digest

__all__ = ["CodeError", "GeluMLP", "MelSpectrogram", "ModelInputError", "RMSNorm", "Rope", "StreamingTransformer", "SwiGLU", "TransformerLayer",
           "TransformerState", "apply_rope", "interleaved_to_half_split", "mel_filterbank", "reset_state", "rope_tables",
           "swiglu_hidden", "weights_digest", "window_mask"]
