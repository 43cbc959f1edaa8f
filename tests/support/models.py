"""The tiny untrained model configs the services tests share (one definition, not a copy per
file): fast to build on CPU, with real shapes (16 kHz, 640-sample frames)."""

from __future__ import annotations

from typing import Any

# codec preset overrides: 4 codebooks x 64 codes; narrow layers for both architectures (the
# frame-rate v2 of the default preset reads "frame", the SEANet v1 the channel keys)
TINY_FRAME: dict[str, Any] = {"enc_dim": 24, "enc_layers": 1, "dec_dim": 24, "dec_layers": 1, "fine_dim": 16,
                              "fine_layers": 1, "kernel": 3, "mlp_mult": 2}
TINY_CODEC: dict[str, Any] = {
    "frame": TINY_FRAME,
    "base_channels": 4, "max_channels": 32, "latent_dim": 16,
    "transformer": {"layers": 1, "heads": 2, "window": 5, "ff_mult": 2},
    "quantizer": {"n_q": 4, "codebook_size": 64, "codebook_dim": 4},
}
