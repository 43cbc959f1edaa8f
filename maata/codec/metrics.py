"""Objective quality metrics for the codec: PESQ-WB, STOI, SI-SDR, log-mel distance, DNSMOS, bitrate.

Every function takes float32 mono PCM at 16 kHz (``SR``) as numpy arrays. Pairwise metrics
take the reference first and require equal lengths (``match_length`` trims two signals to the
shorter one; the caller decides, so a misaligned codec is not hidden). Inputs the metric
cannot score (silent reference, too short, NaN) raise :class:`MetricError` with a one-line
reason instead of returning a misleading number.

DNSMOS runs the ONNX model shipped inside the ``speechmos`` wheel directly with onnxruntime
(offline, no downloads). Only the SIG/BAK/OVRL model is used, the same segmenting and
polynomial calibration as ``speechmos.dnsmos`` (the Microsoft reference script), which avoids
speechmos' import of librosa (not a dependency here).
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from maata.audio import check_pcm, rms_dbfs
from maata.nn.mel import MelSpectrogram

if TYPE_CHECKING:
    from maata.codec.model import Codec

SR = 16000
SILENCE_DBFS = -60.0  # a reference quieter than this (RMS) has nothing to score


class MetricError(ValueError):
    """A signal that a metric cannot score (silent, too short, mismatched)."""


# -- input checks --------------------------------------------------------------------------------
def _signal(x: np.ndarray, name: str, min_seconds: float) -> np.ndarray:
    """Validated float32 mono PCM of at least ``min_seconds``."""
    try:
        x = check_pcm(x)
    except ValueError as e:
        raise MetricError(f"{name}: {e}") from e
    if x.size < min_seconds * SR:
        raise MetricError(f"{name} is too short: {x.size / SR:.3f} s < {min_seconds} s")
    return x


def _pair(ref: np.ndarray, deg: np.ndarray, min_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Validated (reference, degraded) of equal length; the reference must not be silent."""
    ref, deg = _signal(ref, "reference", min_seconds), _signal(deg, "degraded", min_seconds)
    if ref.shape != deg.shape:
        raise MetricError(f"reference and degraded lengths differ ({ref.size} vs {deg.size} samples); "
                          "align them first (match_length)")
    if rms_dbfs(ref) < SILENCE_DBFS:
        raise MetricError(f"reference is silent (RMS {rms_dbfs(ref):.1f} dBFS < {SILENCE_DBFS} dBFS)")
    return ref, deg


def match_length(ref: np.ndarray, deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trim both signals to the shorter length (codecs pad to whole frames)."""
    n = min(len(ref), len(deg))
    return ref[:n], deg[:n]


def estimate_delay(ref: np.ndarray, deg: np.ndarray, max_lag: int = 1600) -> int:
    """Samples by which ``deg`` lags ``ref`` (negative: leads), from the peak of their
    cross-correlation within ±``max_lag``. STOI assumes time-aligned inputs and a constant
    offset quietly costs it. Meaningful for outputs that follow the input's waveform (Opus, a
    pure delay); a decoder that makes its own phase (the frame-rate codec) matches the
    envelope, not the waveform, and is checked by scoring shifted copies instead
    (tests/test_codec_eval.py)."""
    ref, deg = match_length(np.asarray(ref, np.float64), np.asarray(deg, np.float64))
    n = len(ref)
    if n == 0:
        raise MetricError("empty signal")
    size = 1 << int(np.ceil(np.log2(2 * n)))
    corr = np.fft.irfft(np.fft.rfft(deg, size) * np.conj(np.fft.rfft(ref, size)), size)
    lags = np.concatenate([np.arange(0, min(max_lag, n - 1) + 1), np.arange(-min(max_lag, n - 1), 0)])
    values = np.concatenate([corr[: min(max_lag, n - 1) + 1], corr[size - min(max_lag, n - 1):]])
    return int(lags[int(np.argmax(values))])


# -- PESQ / STOI / SI-SDR ------------------------------------------------------------------------
def pesq_wb(ref: np.ndarray, deg: np.ndarray) -> float:
    """Wide-band PESQ (ITU-T P.862.2), MOS-LQO in [1.04, 4.64]; needs ≥ 0.25 s with speech."""
    from pesq import NoUtterancesError, PesqError, pesq

    ref, deg = _pair(ref, deg, 0.25)
    try:
        return float(pesq(SR, ref, deg, "wb"))
    except NoUtterancesError as e:
        raise MetricError("PESQ found no speech in the reference") from e
    except PesqError as e:
        raise MetricError(f"PESQ failed: {e}") from e


def stoi(ref: np.ndarray, deg: np.ndarray, extended: bool = False) -> float:
    """Short-time objective intelligibility in [0, 1] (pystoi); needs ~0.5 s of non-silent speech."""
    from pystoi import stoi as _stoi

    ref, deg = _pair(ref, deg, 0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(_stoi(ref, deg, SR, extended=extended))
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        raise MetricError("STOI: too little non-silent speech in the reference (needs ~0.4 s)")
    return value


def si_sdr(ref: np.ndarray, deg: np.ndarray, floor_db: float = -100.0, ceil_db: float = 100.0) -> float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019), clipped to [floor_db, ceil_db].

    Both signals are made zero-mean; the reference is scaled by the projection of ``deg`` onto
    it. An all-zero output has no defined value and scores ``floor_db``.
    """
    ref, deg = _pair(ref, deg, 0.0)
    r = ref.astype(np.float64) - ref.mean()
    d = deg.astype(np.float64) - deg.mean()
    if not np.any(d):
        return floor_db
    target = (d @ r) / (r @ r) * r
    noise = d - target
    t, n = float(target @ target), float(noise @ noise)
    if n == 0.0:
        return ceil_db
    if t == 0.0:
        return floor_db
    return float(np.clip(10.0 * np.log10(t / n), floor_db, ceil_db))


# -- log-mel distance ----------------------------------------------------------------------------
def log_mel(x: np.ndarray, n_fft: int = 1024, hop: int = 256, n_mels: int = 80) -> np.ndarray:
    """Natural-log mel power spectrogram [n_mels, frames] (floor 1e-5), Hann window, centred frames."""
    x = _signal(x, "audio", n_fft / SR)
    with torch.no_grad():
        power = MelSpectrogram(SR, n_fft, n_mels, hop, power=2)(torch.from_numpy(x)[None])[0]
    return np.log(np.maximum(power.numpy(), 1e-5))


def mel_distance(ref: np.ndarray, deg: np.ndarray, n_fft: int = 1024, hop: int = 256, n_mels: int = 80) -> float:
    """Mean absolute difference of log-mel spectrograms (nats; 0 = identical, lower is better)."""
    ref, deg = _pair(ref, deg, n_fft / SR)
    return float(np.mean(np.abs(log_mel(ref, n_fft, hop, n_mels) - log_mel(deg, n_fft, hop, n_mels))))


# -- DNSMOS --------------------------------------------------------------------------------------
DNSMOS_SEGMENT_S = 9.01  # the model's input length (seconds); shorter clips are tiled
_DNSMOS_POLY = {  # non-personalised calibration of the raw outputs (Microsoft DNSMOS / speechmos)
    "sig": np.poly1d([-0.08397278, 1.22083953, 0.0052439]),
    "bak": np.poly1d([-0.13166888, 1.60915514, -0.39604546]),
    "ovrl": np.poly1d([-0.06766283, 1.11546468, 0.04602535]),
}


@dataclass
class DNSMOS:
    """P.835 MOS estimates in [1, 5]: overall, speech signal, background (higher is better)."""

    ovrl: float
    sig: float
    bak: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def dnsmos_model_path() -> Path:
    """The SIG/BAK/OVRL ONNX model inside the installed speechmos package (found, not imported)."""
    spec = importlib.util.find_spec("speechmos")
    if spec is None or not spec.submodule_search_locations:
        raise MetricError("DNSMOS needs the 'speechmos' package (it ships the ONNX model)")
    path = Path(next(iter(spec.submodule_search_locations))) / "dnsmos_models" / "sig_bak_ovr.onnx"
    if not path.exists():
        raise MetricError(f"DNSMOS model missing from the speechmos package: {path}")
    return path


@functools.lru_cache(maxsize=1)
def _dnsmos_session():  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # small model; leave the cores to the codec
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(dnsmos_model_path()), opts, providers=["CPUExecutionProvider"])


def dnsmos(x: np.ndarray) -> DNSMOS:
    """DNSMOS P.835 of a clip (≥ 0.5 s, non-silent, samples in [-1, 1]).

    As in the reference implementation, a clip is tiled to at least 9.01 s and scored on
    9.01 s windows every second; the scores are averaged.
    """
    x = _signal(x, "audio", 0.5)
    if rms_dbfs(x) < SILENCE_DBFS:
        raise MetricError(f"audio is silent (RMS {rms_dbfs(x):.1f} dBFS); DNSMOS needs speech")
    if np.abs(x).max() > 1.0:
        raise MetricError("DNSMOS needs samples in [-1, 1]")
    seg = int(DNSMOS_SEGMENT_S * SR)
    while x.size < seg:
        x = np.concatenate([x, x])
    n_windows = int(np.floor(x.size / SR) - DNSMOS_SEGMENT_S) + 1
    sess = _dnsmos_session()
    name = sess.get_inputs()[0].name
    scores = []
    for i in range(n_windows):
        window = x[i * SR: i * SR + seg]
        if window.size < seg:
            continue
        sig, bak, ovrl = sess.run(None, {name: window[None].astype(np.float32)})[0][0]
        scores.append([_DNSMOS_POLY["ovrl"](ovrl), _DNSMOS_POLY["sig"](sig), _DNSMOS_POLY["bak"](bak)])
    ovrl, sig, bak = np.mean(scores, axis=0)
    return DNSMOS(float(ovrl), float(sig), float(bak))


# -- bitrate -------------------------------------------------------------------------------------
def kbps(bits: float, seconds: float) -> float:
    """Measured bitrate in kbit/s: bits sent per second of input audio."""
    if seconds <= 0:
        raise MetricError(f"duration must be positive, got {seconds} s")
    return bits / seconds / 1000.0


def codes_kbps(codec: Codec, codes: torch.Tensor, seconds: float) -> float:
    """Measured bitrate of codec ``codes`` covering ``seconds`` of audio (DROPPED codes are free)."""
    return kbps(codec.bits(codes), seconds)
