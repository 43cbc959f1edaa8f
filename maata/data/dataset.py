"""The codec's training data: fixed-length waveform segments with frame-level phoneme labels.

:class:`CodecDataset` reads one split of one or more manifests. Item ``i`` is a random
``segment_seconds`` crop of clip ``i`` (short clips are zero-padded at the end), optionally
augmented, together with the phoneme class at the centre of every codec frame of the crop
(``hop`` samples per frame), or -100 where no alignment is known.

Randomness comes from ``numpy.random.default_rng((seed, epoch, index))``, so an item is the
same whichever DataLoader worker makes it and in whatever order; call :meth:`set_epoch`
before each epoch to get fresh crops (with ``persistent_workers=True`` the workers hold a
copy of the dataset, so recreate the DataLoader's iterator after changing the epoch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from maata.audio import load_audio
from maata.data.augment import AugmentConfig, augment as apply_augment
from maata.data.manifest import SPLITS, ManifestRow, audio_path, read_manifest
from maata.data.phonemes import IGNORE, PhonemeVocab, frame_labels

__all__ = ["CodecDataset"]


class CodecDataset(torch.utils.data.Dataset):
    """``dict(wav=float32 [1, segment_samples], phonemes=int64 [segment_samples // hop])``."""

    def __init__(self, manifest_path: str | Path | Sequence[str | Path], split: str,
                 segment_seconds: float, sample_rate: int = 16000, hop: int = 640,
                 augment: bool | AugmentConfig = False, seed: int = 0,
                 vocab: PhonemeVocab | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if segment_seconds <= 0 or hop <= 0 or sample_rate <= 0:
            raise ValueError("segment_seconds, hop and sample_rate must be positive")
        self.segment_samples = int(round(segment_seconds * sample_rate))
        if self.segment_samples < hop:
            raise ValueError(f"a {segment_seconds} s segment is shorter than one hop ({hop} samples)")
        paths = [manifest_path] if isinstance(manifest_path, (str, Path)) else list(manifest_path)
        self.items: list[tuple[Path, ManifestRow]] = [
            (audio_path(p, row), row) for p in paths for row in read_manifest(p) if row.split == split
        ]
        if not self.items:
            raise ValueError(f"no rows with split {split!r} in {', '.join(map(str, paths))}")
        self.split = split
        self.sample_rate = sample_rate
        self.hop = hop
        self.n_frames = self.segment_samples // hop
        self.augment_config = augment if isinstance(augment, AugmentConfig) else (
            AugmentConfig() if augment else None)
        self.seed = seed
        self.epoch = 0
        self.vocab = vocab

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose crops and augmentations :meth:`__getitem__` returns."""
        self.epoch = int(epoch)

    def rng_for(self, index: int) -> np.random.Generator:
        """The random source of item ``index`` in the current epoch."""
        return np.random.default_rng((self.seed, self.epoch, index))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self.items):
            raise IndexError(f"index {index} out of range for {len(self.items)} items")
        path, row = self.items[index]
        rng = self.rng_for(index)
        audio, _ = load_audio(path, self.sample_rate)
        start = int(rng.integers(0, len(audio) - self.segment_samples + 1)) \
            if len(audio) > self.segment_samples else 0
        wav = np.zeros(self.segment_samples, np.float32)
        piece = audio[start:start + self.segment_samples]
        wav[: len(piece)] = piece
        if self.augment_config is not None:
            wav = apply_augment(wav, self.sample_rate, rng, self.augment_config)
        return {"wav": torch.from_numpy(np.ascontiguousarray(wav, np.float32))[None],
                "phonemes": torch.from_numpy(self._labels(row, start))}

    def _labels(self, row: ManifestRow, start: int) -> np.ndarray:
        """Frame labels of the crop starting at sample ``start``; all IGNORE without
        an alignment or a vocabulary."""
        if self.vocab is None or row.phonemes is None:
            return np.full(self.n_frames, IGNORE, np.int64)
        return frame_labels(self.vocab.encode(row.phonemes), self.n_frames,
                            self.sample_rate / self.hop, start_s=start / self.sample_rate)
