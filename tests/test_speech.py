"""maata.speech: frame levels, a codec's decoded-silence floor, the raised threshold, and the live
hysteresis detector (the gateway's and the LM evaluation's one home for speech detection)."""

from __future__ import annotations

import numpy as np
import pytest

from maata.audio import DBFS_FLOOR, rms_dbfs
from maata.speech import SpeechConfig, SpeechDetector, decoded_silence_dbfs, frame_levels, speech_threshold


def test_frame_levels_are_rms_dbfs_per_whole_frame() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([np.zeros(640), 0.1 * rng.standard_normal(640), 0.5 * np.ones(640), np.ones(100)])
    levels = frame_levels(x.astype(np.float32), 640)
    assert levels.shape == (3,)  # the last 100 samples are not a whole frame
    assert levels == pytest.approx([rms_dbfs(x[i:i + 640]) for i in range(0, 1920, 640)])
    assert levels[0] == DBFS_FLOOR and levels[2] == pytest.approx(20 * np.log10(0.5))
    assert frame_levels(np.zeros(10), 640).shape == (0,)


def test_decoded_silence_is_the_settled_half_and_thresholds_rise_above_it() -> None:
    # a decoder's start-up transient, then its floor near -39 dBFS
    assert decoded_silence_dbfs([-20.0, -25.0, -30.0, -39.0, -39.5, -38.5]) == pytest.approx(-39.0)
    with pytest.raises(ValueError, match="no decoded frames"):
        decoded_silence_dbfs([])
    assert speech_threshold(-40.0, -39.0, 6.0) == -33.0  # the floor + margin wins
    assert speech_threshold(-30.0, -39.0, 6.0) == -30.0  # the threshold is already above it
    cfg = SpeechConfig(on_dbfs=-40.0, off_dbfs=-50.0, above_silence_db=9.0).calibrated(-39.0)
    assert (cfg.on_dbfs, cfg.off_dbfs) == (-30.0, -34.5)
    assert SpeechConfig().calibrated(-39.0) == SpeechConfig()  # absolute unless asked


def test_detector_flips_after_runs_with_hysteresis() -> None:
    det = SpeechDetector(SpeechConfig(on_dbfs=-40.0, off_dbfs=-50.0, on_frames=2, off_frames=3))
    levels = [-60, -30, -60, -30, -30, -45, -55, -45, -55, -55, -55]
    flips = [(i, f) for i, db in enumerate(levels) if (f := det.update(i, db))]
    # on: the run of two voiced frames from 3; off: three silent frames in a row from 8
    # (-45 dBFS is between the thresholds: it keeps the state and breaks the silent run)
    assert flips == [(4, (True, 3)), (10, (False, 8))]
