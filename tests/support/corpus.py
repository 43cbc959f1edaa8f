"""A tiny synthetic speech corpus for the codec trainer's tests (tests/test_codec_training.py,
tests/test_ddp.py): tones, chirps and noise written as WAVs, a manifest with phoneme
alignments and its vocabulary, and the smoke training config over it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maata.audio import write_wav
from maata.data.manifest import ManifestRow, write_manifest
from maata.data.phonemes import PhonemeVocab

SR = 16000
SYMBOLS = ("a", "i", "k", "t", "_")


def write_corpus(root: Path, n_train: int = 6, n_valid: int = 2, seconds: float = 0.8) -> Path:
    """WAVs of tones, chirps and noise, a manifest with phoneme alignments, and its vocabulary."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    rows = []
    for i in range(n_train + n_valid):
        f0 = 120.0 + 40.0 * i
        kind = i % 3
        if kind == 0:
            x = 0.3 * np.sin(2 * np.pi * f0 * t)
        elif kind == 1:
            x = 0.3 * np.sin(2 * np.pi * (f0 + 400.0 * t) * t)
        else:
            x = 0.05 * rng.standard_normal(t.size)
        rel = f"wav/utt{i}.wav"
        write_wav(root / rel, x.astype(np.float32), SR)
        cuts = np.round(np.linspace(0.0, seconds, 9), 4)
        alignment = [(float(a), float(b), SYMBOLS[(i + k) % len(SYMBOLS)])
                     for k, (a, b) in enumerate(zip(cuts, cuts[1:]))]
        rows.append(ManifestRow(path=rel, duration=seconds, speaker=f"spk{i}", source="synthetic", text="అ",
                                split="train" if i < n_train else "valid", phonemes=alignment))
    manifest = write_manifest(root / "manifest.jsonl", rows)
    PhonemeVocab.from_manifest(rows, max_size=16).save(PhonemeVocab.path_for(manifest))
    return manifest


def smoke_config(manifest: Path, **overrides):
    """codec_smoke.yaml + ``overrides`` (nested dicts): a ``training.codec_trainer.TrainConfig``."""
    from training.codec_trainer import load_config

    return load_config("codec_smoke", {"data": {"manifest": str(manifest)}, **overrides})


__all__ = ["SR", "SYMBOLS", "smoke_config", "write_corpus"]
