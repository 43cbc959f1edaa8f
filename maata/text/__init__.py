"""Telugu text: normalisation for speech (numbers spoken as words, clean Unicode) and a
sentence generator for the synthetic corpus."""

from maata.text.normalize import TextError, normalize_text, number_to_words

__all__ = ["TextError", "normalize_text", "number_to_words"]
