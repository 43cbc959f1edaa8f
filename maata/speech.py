"""Speech detection from audio levels, one home for the gateway (live, frame by frame) and the
LM evaluation (offline, on decoded code channels).

* ``frame_levels``: the dBFS of each frame of a signal (``maata.audio.rms_dbfs`` per frame).
* ``decoded_silence_dbfs``: a codec's noise floor, from the frame levels of digital silence
  passed through it (the median of the second half: the decoder has settled).
* ``speech_threshold``: a threshold raised to at least that floor plus a margin. A codec
  decodes silence to its own floor (the demo codec's sits near -39 dBFS, above a -40 dBFS
  threshold; a new codec has another), so a fixed dBFS threshold on decoded audio would hear
  speech in silence.
* ``SpeechConfig`` / ``SpeechDetector``: live detection with hysteresis: a frame at or above
  ``on_dbfs`` is voiced, at or below ``off_dbfs`` silent; ``on_frames`` voiced frames in a row
  start speech, ``off_frames`` silent ones end it. ``SpeechConfig.calibrated`` applies
  ``speech_threshold`` for audio whose silence decodes to a known floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from maata.audio import DBFS_FLOOR


def frame_levels(x: np.ndarray, hop: int) -> np.ndarray:
    """dBFS of each whole ``hop``-sample frame of ``x`` (float64 [frames]; digital silence is
    ``DBFS_FLOOR``, as ``maata.audio.rms_dbfs`` gives it)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    frames = x[: (x.size // hop) * hop].reshape(-1, hop)
    power = (frames * frames).mean(1) if frames.size else np.zeros(0)
    return 10 * np.log10(np.maximum(power, 10 ** (DBFS_FLOOR / 10)))


def decoded_silence_dbfs(levels: Sequence[float] | np.ndarray) -> float:
    """A codec's decoded-silence level: the median of the second half of the frame levels of
    digital silence decoded by it (the first frames carry the decoder's start-up)."""
    levels = np.asarray(levels, dtype=np.float64)
    if levels.size == 0:
        raise ValueError("no decoded frames to measure the silence level on")
    return float(np.median(levels[levels.size // 2:]))


def speech_threshold(threshold_dbfs: float, silence_dbfs: float, margin_db: float) -> float:
    """``threshold_dbfs`` raised to at least ``margin_db`` above the decoded silence."""
    return max(threshold_dbfs, silence_dbfs + margin_db)


@dataclass(frozen=True)
class SpeechConfig:
    """Energy speech detection with hysteresis: a frame at or above ``on_dbfs`` is voiced, at or
    below ``off_dbfs`` silent, in between it keeps the current state; ``on_frames`` voiced frames
    in a row start speech, ``off_frames`` silent frames in a row end it."""

    on_dbfs: float = -40.0
    off_dbfs: float = -50.0
    on_frames: int = 2  # 80 ms
    off_frames: int = 8  # 320 ms
    above_silence_db: float = 0.0  # > 0: on at least this far above the codec's decoded silence (``calibrated``)

    def __post_init__(self) -> None:
        if self.off_dbfs > self.on_dbfs:
            raise ValueError(f"speech off_dbfs ({self.off_dbfs}) must not exceed on_dbfs ({self.on_dbfs})")
        if self.on_frames < 1 or self.off_frames < 1:
            raise ValueError("speech on_frames and off_frames must be >= 1")
        if self.above_silence_db < 0:
            raise ValueError(f"speech above_silence_db must be >= 0, got {self.above_silence_db}")

    def calibrated(self, silence_dbfs: float) -> SpeechConfig:
        """These thresholds raised to at least ``silence_dbfs`` + ``above_silence_db`` (on) and
        + half of it (off), for audio whose silence decodes to ``silence_dbfs``."""
        if not self.above_silence_db:
            return self
        on = speech_threshold(self.on_dbfs, silence_dbfs, self.above_silence_db)
        off = min(on, speech_threshold(self.off_dbfs, silence_dbfs, self.above_silence_db / 2))
        return replace(self, on_dbfs=round(on, 2), off_dbfs=round(off, 2))


class SpeechDetector:
    """``update(index, dbfs)`` per frame; returns ``(speaking, first_frame)`` when the state flips,
    ``first_frame`` being where the run that flipped it began (the onset, or the first silent frame)."""

    def __init__(self, config: SpeechConfig) -> None:
        self.config = config
        self.speaking = False
        self._run = 0
        self._run_start = 0

    def update(self, index: int, dbfs: float) -> tuple[bool, int] | None:
        c = self.config
        flips = dbfs <= c.off_dbfs if self.speaking else dbfs >= c.on_dbfs
        if not flips:
            self._run = 0
            return None
        if self._run == 0:
            self._run_start = index
        self._run += 1
        if self._run < (c.off_frames if self.speaking else c.on_frames):
            return None
        self.speaking = not self.speaking
        self._run = 0
        return self.speaking, self._run_start


__all__ = ["SpeechConfig", "SpeechDetector", "decoded_silence_dbfs", "frame_levels", "speech_threshold"]
