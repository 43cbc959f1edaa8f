"""Whether an LM and a codec belong together: the LM reads and writes the codec's codes, so both
must have the same codebooks, codebook size and frame rate, and (when the LM records it) the
very codec: two codecs of the same shape still give unrelated codes. Checked once, here, by
everything that pairs them (``maata lm`` commands, evaluation, the generation service,
``maata serve``, the Triton export)."""

from __future__ import annotations

from typing import Any


def check_compatible(lm: Any, codec: Any) -> None:
    """ValueError unless ``lm`` (a ``maata.lm.LM`` or its ``LMConfig``) speaks ``codec``'s
    (``maata.codec.Codec``) codes: same number of codebooks, codebook size and frame rate, and,
    when the LM's config records the codec it was trained on (``LMConfig.codec``), the same
    ``code_space()``."""
    cfg, q = getattr(lm, "cfg", lm), codec.cfg.quantizer
    if (cfg.n_q, cfg.codebook_size) != (q.n_q, q.codebook_size):
        raise ValueError(f"the LM models {cfg.n_q} codebooks x {cfg.codebook_size} codes but the codec has "
                         f"{q.n_q} x {q.codebook_size}")
    if abs(cfg.frame_rate - codec.cfg.frame_rate) > 1e-6:
        raise ValueError(f"the LM runs at {cfg.frame_rate:g} frames/s but the codec at {codec.cfg.frame_rate:g}")
    if cfg.codec and cfg.codec != (space := codec.code_space()):
        raise ValueError(f"the LM was trained on the codes of codec {cfg.codec}, but this codec's code space is "
                         f"{space}: pair the LM with the codec its training shards were made with")


__all__ = ["check_compatible"]
