"""Speech and turn detection on 40 ms frames of PCM: who is speaking, and how long the agent
took to answer.

* ``SpeechDetector``: a frame's level (``maata.audio.rms_dbfs``) with hysteresis (``SpeechConfig``): a frame at or above ``on_dbfs``
  is voiced, at or below ``off_dbfs`` silent; ``on_frames`` voiced frames in a row start speech,
  ``off_frames`` silent ones end it. The pipeline runs one on the user's input and one on the
  agent's decoded output.
* ``TurnTracker``: turn latency, from the user's last voiced frame to the agent's first.

The agent's audio is the codec's output, and a codec decodes silence to its own noise floor
(the demo codec's sits near -39 dBFS, above a -40 dBFS threshold; a new codec will have
another). So the agent's detector is not fixed in dBFS: with ``above_silence_db`` set, the
gateway measures the codec's decoded digital silence at start-up (``Gateway.calibrate``) and
``calibrated`` raises the thresholds to at least that floor plus ``above_silence_db`` (on) and
plus half of it (off). The user's detector reads microphone audio and stays absolute.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class SpeechConfig:
    """Energy speech detection with hysteresis: a frame at or above ``on_dbfs`` is voiced, at or
    below ``off_dbfs`` silent, in between it keeps the current state; ``on_frames`` voiced frames
    in a row start speech, ``off_frames`` silent frames in a row end it."""

    on_dbfs: float = -40.0
    off_dbfs: float = -50.0
    on_frames: int = 2  # 80 ms
    off_frames: int = 8  # 320 ms
    above_silence_db: float = 0.0  # > 0: on at least this far above the codec's decoded silence (see module)

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
        on = max(self.on_dbfs, silence_dbfs + self.above_silence_db)
        off = min(on, max(self.off_dbfs, silence_dbfs + self.above_silence_db / 2))
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


class TurnTracker:
    """Turn latency: from the end of the user's speech to the start of the agent's (both wall
    times, seconds). Reported once per user turn, whichever of the two is detected last."""

    def __init__(self) -> None:
        self.user_stop: float | None = None  # arrival of the user's last voiced frame
        self.agent_onset: float | None = None  # sending of the agent's first voiced frame
        self._open = False  # a user turn ended and its latency is not reported yet

    def user_started(self) -> None:
        self.user_stop, self._open = None, False

    def user_stopped(self, at: float) -> float | None:
        self.user_stop, self._open = at, True
        return self._report()

    def agent_started(self, at: float) -> float | None:
        self.agent_onset = at
        return self._report()

    def agent_stopped(self) -> None:
        self.agent_onset = None

    def _report(self) -> float | None:
        if self._open and self.user_stop is not None and self.agent_onset is not None \
                and self.agent_onset >= self.user_stop:
            self._open = False
            return self.agent_onset - self.user_stop
        return None


__all__ = ["SpeechConfig", "SpeechDetector", "TurnTracker"]
