"""Phoneme classes for frame-level supervision (e.g. distilling phonetic content into the
codec's first quantizer level).

A :class:`PhonemeVocab` maps the symbols found in a manifest's alignments to class ids:
id 0 is silence/pause (every symbol that is a pause, such as espeak's ``_`` and ``_:``),
id 1 is "other" (symbols too rare to get their own class), and the remaining ids go to the
most frequent symbols, up to ``max_size`` classes in all. It is saved as JSON next to the
manifest it was built from, so training and evaluation use the same ids.

:func:`frame_labels` turns an id alignment into one label per codec frame.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:  # annotations only: the manifest module builds vocabularies (merge_manifests)
    from maata.data.manifest import ManifestRow

__all__ = ["PhonemeVocab", "frame_labels", "is_silence", "IGNORE", "SILENCE", "OTHER",
           "VOCAB_FILENAME"]

IGNORE = -100  # the label for frames with no known phoneme (PyTorch's cross-entropy ignore_index)
SILENCE = "<sil>"
OTHER = "<other>"
VOCAB_FILENAME = "phoneme_vocab.json"
_SILENCE_SYMBOLS = {"", "sil", "sp", "pau", "spn", "||", "|"}


def is_silence(symbol: str) -> bool:
    """Pauses and silences: espeak's ``_``, ``_:``, ``_!``, ``_^_`` and common ASR names."""
    return symbol.startswith("_") or symbol.lower() in _SILENCE_SYMBOLS


@dataclass(frozen=True)
class PhonemeVocab:
    """``symbols[i]`` is the symbol of class ``i``; 0 is silence, 1 is other."""

    symbols: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.symbols[:2] != (SILENCE, OTHER):
            raise ValueError(f"vocab must start with {SILENCE!r}, {OTHER!r}; got {self.symbols[:2]}")
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("vocab symbols must be unique")

    def __len__(self) -> int:
        return len(self.symbols)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.symbols)}

    def id_of(self, symbol: str) -> int:
        """Class id of a symbol: 0 for any pause, 1 for a symbol not in the vocab."""
        if is_silence(symbol):
            return 0
        return self._index.get(symbol, 1)

    def encode(self, alignment: Sequence[Sequence] | None) -> list[tuple[float, float, int]] | None:
        """``[start, end, symbol]`` → ``(start, end, id)``; None stays None."""
        if alignment is None:
            return None
        index = self._index
        return [(float(s), float(e), 0 if is_silence(p) else index.get(p, 1))
                for s, e, p in alignment]

    @classmethod
    def build(cls, alignments: Iterable[Sequence[Sequence] | None], max_size: int = 128) -> "PhonemeVocab":
        """Most frequent non-silence symbols first (ties broken by symbol for determinism)."""
        if max_size < 3:
            raise ValueError(f"max_size must be at least 3 (silence, other, one phoneme), got {max_size}")
        counts: Counter[str] = Counter()
        for alignment in alignments:
            for _, _, symbol in alignment or ():
                if not is_silence(symbol):
                    counts[symbol] += 1
        ranked = sorted(counts, key=lambda s: (-counts[s], s))
        return cls((SILENCE, OTHER, *ranked[: max_size - 2]))

    @classmethod
    def from_manifest(cls, rows: Iterable[ManifestRow], max_size: int = 128) -> "PhonemeVocab":
        """Build from the alignments of manifest rows (rows without one are skipped)."""
        return cls.build((r.phonemes for r in rows), max_size=max_size)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"symbols": list(self.symbols)}, ensure_ascii=False, indent=1),
                        encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PhonemeVocab":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"phoneme vocab not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(tuple(data["symbols"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a phoneme vocab file ({e})") from e

    @staticmethod
    def path_for(manifest_path: str | Path) -> Path:
        """Where the vocab of a manifest lives: ``phoneme_vocab.json`` in the same folder."""
        return Path(manifest_path).parent / VOCAB_FILENAME


def frame_labels(alignment: Sequence[Sequence[float]] | None, n_frames: int, frame_rate: float,
                 *, start_s: float = 0.0) -> np.ndarray:
    """The class id at the centre of each frame, ``IGNORE`` (-100) where none is known.

    ``alignment`` holds ``(start_s, end_s, id)`` segments (see :meth:`PhonemeVocab.encode`),
    assumed not to overlap. Frame ``i`` covers ``start_s + [i, i+1) / frame_rate`` seconds,
    so ``start_s`` is where a cropped segment begins in the original clip. Frames outside
    every segment (before, after, in gaps) and all frames when ``alignment`` is None get
    ``IGNORE``.
    """
    if n_frames < 0 or frame_rate <= 0:
        raise ValueError(f"need n_frames >= 0 and frame_rate > 0, got {n_frames}, {frame_rate}")
    labels = np.full(n_frames, IGNORE, dtype=np.int64)
    if not alignment or n_frames == 0:
        return labels
    seg = np.asarray(alignment, dtype=np.float64).reshape(-1, 3)
    seg = seg[np.argsort(seg[:, 0], kind="stable")]
    centres = start_s + (np.arange(n_frames) + 0.5) / frame_rate
    idx = np.searchsorted(seg[:, 0], centres, side="right") - 1
    inside = (idx >= 0) & (centres < seg[np.clip(idx, 0, None), 1])
    labels[inside] = seg[idx[inside], 2].astype(np.int64)
    return labels
