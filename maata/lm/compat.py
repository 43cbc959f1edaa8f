"""Whether an LM and a codec belong together: the LM reads and writes the codec's codes, so both
must have the same codebooks, codebook size and frame rate. Checked once, here, by everything
that pairs them (``maata lm`` commands, evaluation, the generation service, ``maata serve``)."""

from __future__ import annotations

from typing import Any


def check_compatible(lm: Any, codec: Any) -> None:
    """ValueError unless ``lm`` (``maata.lm.LM``) speaks ``codec``'s (``maata.codec.Codec``)
    codes: same number of codebooks, codebook size and frame rate."""
    q = codec.cfg.quantizer
    if (lm.n_q, lm.cfg.codebook_size) != (q.n_q, q.codebook_size):
        raise ValueError(f"the LM models {lm.n_q} codebooks x {lm.cfg.codebook_size} codes but the codec has "
                         f"{q.n_q} x {q.codebook_size}")
    if abs(lm.cfg.frame_rate - codec.cfg.frame_rate) > 1e-6:
        raise ValueError(f"the LM runs at {lm.cfg.frame_rate:g} frames/s but the codec at {codec.cfg.frame_rate:g}")


__all__ = ["check_compatible"]
