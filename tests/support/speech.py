"""Real Telugu speech for the call tests (tests/test_partner_api.py, tests/test_serve.py,
tests/test_turns.py): a question spoken by espeak-ng's Telugu voice. espeak-ng is one of the
Makefile's APT_PACKAGES, so a machine without it is a broken setup: the tests fail, not skip."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from maata.audio import load_audio, resample

QUESTION = "మీ పేరు ఏమిటి?"  # "what is your name?"


def espeak_wav(folder: Path, text: str = QUESTION) -> Path:
    """``espeak-ng -v te -w <folder>/q.wav TEXT``: a WAV at espeak's own rate (22,050 Hz)."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: `make test` installs it (the Makefile's APT_PACKAGES)")
    path = Path(folder) / "q.wav"
    subprocess.run(["espeak-ng", "-v", "te", "-w", str(path), text], check=True)
    return path


def espeak_audio(folder: Path, text: str = QUESTION, rate: int = 16000) -> np.ndarray:
    """``espeak_wav``'s speech as float32 samples at ``rate``."""
    audio, sr = load_audio(espeak_wav(folder, text))
    return resample(audio, sr, rate)


__all__ = ["QUESTION", "espeak_audio", "espeak_wav"]
