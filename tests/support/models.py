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

# the tiny LM: 8 codebooks of 32 codes, a 40-token text vocabulary, a small speaker encoder
LM_K, LM_CARD, LM_VT = 8, 32, 40


def tiny_lm(context: int = 8, seed: int = 0, delay: int | None = None, text: bool = True) -> Any:
    """An untrained tiny LM in eval mode (``context`` frames of temporal context, weights from
    ``seed``; ``delay``: the acoustic delay, the preset's when None; ``text``: the text stream)."""
    import torch

    from maata.lm import LM, load_preset

    over: dict[str, Any] = {} if delay is None else {"acoustic_delay": delay}
    cfg = load_preset("tiny", env_prefix=None, codebook_size=LM_CARD, **over,
                      temporal={"dim": 64, "layers": 2, "heads": 4, "context": context},
                      depth={"dim": 32, "layers": 2, "heads": 2}, text={"enabled": text, "vocab_size": LM_VT},
                      conditioning={"speaker": {"dim": 16, "hidden": 32, "layers": 1, "heads": 2,
                                                "min_frames": 4, "max_frames": 16}})
    torch.manual_seed(seed)
    return LM(cfg).eval()


def tiny_codec(dtype: Any = None, seed: int = 0) -> Any:
    """An untrained tiny codec (``TINY_CODEC``) in eval mode; float64 by default, where rounding
    cannot flip a code, so batched, streamed and offline results must agree exactly."""
    import torch

    from maata.codec import Codec, load_preset

    torch.manual_seed(seed)
    return Codec(load_preset("default", env_prefix=None, **TINY_CODEC)).to(dtype or torch.float64).eval()
