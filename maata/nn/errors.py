"""The input errors the models share: ``ModelInputError`` (bad input to a model; a ValueError)
and ``CodeError`` (codes or tokens of the wrong shape, dtype or range), raised by the codec and
the LM alike and exported by both (``maata.codec.CodeError`` is ``maata.lm.CodeError``)."""

from __future__ import annotations


class ModelInputError(ValueError):
    """Bad input to a model (``maata.lm.LMInputError`` is this class)."""


class CodeError(ModelInputError):
    """Codes or text tokens of the wrong shape, dtype or range."""


__all__ = ["CodeError", "ModelInputError"]
