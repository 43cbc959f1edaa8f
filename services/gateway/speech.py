"""Speech and turn detection on 40 ms frames of PCM: who is speaking, and how long the agent
took to answer.

* ``SpeechDetector`` / ``SpeechConfig`` (``maata.speech``, their one home): a frame's level with
  hysteresis. The pipeline runs one on the user's input and one on the agent's decoded output.
  The agent's detector is calibrated: with ``above_silence_db`` set, the gateway measures the
  codec's decoded digital silence at start-up (``Gateway.calibrate``) and raises the thresholds
  above it (``SpeechConfig.calibrated``). The user's detector reads microphone audio and stays
  absolute.
* ``TurnTracker``: turn latency, from the user's last voiced frame to the agent's first.
"""

from __future__ import annotations

from maata.speech import SpeechConfig, SpeechDetector


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
