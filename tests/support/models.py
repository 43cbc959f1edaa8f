"""The tiny untrained model configs the services tests share (one definition, not a copy per
file): fast to build on CPU, with real shapes (16 kHz, 640-sample frames)."""

from __future__ import annotations

from typing import Any

# codec preset overrides: 4 codebooks x 64 codes
TINY_CODEC: dict[str, Any] = {
    "base_channels": 4, "max_channels": 32, "latent_dim": 16,
    "transformer": {"layers": 1, "heads": 2, "window": 5, "ff_mult": 2},
    "quantizer": {"n_q": 4, "codebook_size": 64, "codebook_dim": 4},
}
