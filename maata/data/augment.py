"""Training-time audio augmentation: the channel effects real Telugu calls go through.

The synthetic corpus is clean studio-like speech; users call from phones, in rooms, with
noise. Each effect here imitates one of those conditions:

* :func:`random_gain`: loudness varies between callers and microphones;
* :func:`add_noise`: white/pink/brown background noise at a random SNR;
* :func:`telephone`: a narrowband line (8 kHz round trip, 300-3400 Hz band-pass);
* :func:`reverb`: a room (synthetic exponentially decaying impulse response).

All functions take float32 PCM as a NumPy array or a torch tensor with time on the last
axis (``[T]``, ``[C, T]``, ``[B, C, T]``) and return the same type, shape and dtype. They are
pure given a ``numpy.random.Generator``, so a dataset can make them deterministic per
(seed, epoch, index). One draw of the random parameters applies to the whole input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from maata.audio import resample

__all__ = ["AugmentConfig", "augment", "random_gain", "add_noise", "telephone", "reverb",
           "colored_noise"]

_PEAK = 0.99


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each effect (applied in the order listed)."""

    p_reverb: float = 0.2
    rt60_s: tuple[float, float] = (0.15, 0.6)
    p_telephone: float = 0.1
    p_noise: float = 0.3
    snr_db: tuple[float, float] = (5.0, 30.0)
    p_gain: float = 0.5
    gain_db: tuple[float, float] = (-12.0, 6.0)


def _with_numpy(fn: Callable[..., np.ndarray]) -> Callable[..., Any]:
    """Run ``fn`` on a float32 ``[N, T]`` NumPy view of ``x``; give back ``x``'s type/shape."""

    def wrapper(x: Any, *args: Any, **kwargs: Any) -> Any:
        is_torch = type(x).__module__.startswith("torch")
        arr = x.detach().cpu().numpy() if is_torch else np.asarray(x)
        if arr.ndim == 0 or arr.shape[-1] == 0:
            raise ValueError(f"expected audio with samples on the last axis, got shape {arr.shape}")
        flat = arr.astype(np.float32, copy=False).reshape(-1, arr.shape[-1])
        out = fn(flat, *args, **kwargs).reshape(arr.shape).astype(np.float32, copy=False)
        if is_torch:
            import torch

            return torch.from_numpy(np.ascontiguousarray(out)).to(device=x.device, dtype=x.dtype)
        return out

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


def _limit_peak(x: np.ndarray) -> np.ndarray:
    """Scale down (never clip) so the peak stays below full scale."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return x * (_PEAK / peak) if peak > _PEAK else x


@_with_numpy
def random_gain(x: np.ndarray, rng: np.random.Generator, gain_db: tuple[float, float] = (-12.0, 6.0)) -> np.ndarray:
    """Multiply by a gain drawn uniformly in dB; loud results are scaled back below 0 dBFS."""
    return _limit_peak(x * 10 ** (rng.uniform(*gain_db) / 20))


def colored_noise(n: int, rng: np.random.Generator, exponent: float = 0.0) -> np.ndarray:
    """Unit-RMS noise with power spectrum ∝ 1/f^exponent (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return (noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)).astype(np.float32)


@_with_numpy
def add_noise(x: np.ndarray, rng: np.random.Generator, snr_db: tuple[float, float] = (5.0, 30.0)) -> np.ndarray:
    """Add white, pink or brown noise at an SNR drawn uniformly in ``snr_db`` (per row).

    A silent input is returned unchanged (its SNR is undefined).
    """
    snr = rng.uniform(*snr_db)
    exponent = float(rng.choice([0.0, 1.0, 2.0]))
    out = x.copy()
    for i, row in enumerate(x):
        power = float(np.mean(row.astype(np.float64) ** 2))
        if power < 1e-10:
            continue
        noise = colored_noise(row.shape[0], rng, exponent)
        out[i] = row + noise * np.sqrt(power / 10 ** (snr / 10))
    return _limit_peak(out)


def _bandpass_sos(sr: int, low: float, high: float) -> np.ndarray:
    from scipy.signal import butter

    return butter(4, [low, min(high, 0.45 * sr)], btype="bandpass", fs=sr, output="sos")


@_with_numpy
def telephone(x: np.ndarray, sr: int, band_hz: tuple[float, float] = (300.0, 3400.0)) -> np.ndarray:
    """Narrowband telephone channel: resample to 8 kHz and back, then band-pass 300-3400 Hz.

    Deterministic (no randomness); the output has the input's length and rate.
    """
    from scipy.signal import sosfilt

    if sr > 8000:
        narrow = resample(x.T, sr, 8000)
        back = resample(narrow, 8000, sr).T
        x = _fit_length(back, x.shape[-1])
    return _limit_peak(sosfilt(_bandpass_sos(sr, *band_hz), x, axis=-1).astype(np.float32))


def _fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad the last axis to ``n`` samples (resampling may be off by one)."""
    if x.shape[-1] >= n:
        return x[..., :n]
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])


def room_impulse_response(sr: int, rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room: unit direct path, then Gaussian noise decaying 60 dB in ``rt60_s``.

    Energy-normalised so convolving keeps the level roughly unchanged.
    """
    n = max(2, int(sr * rt60_s * 1.2))
    t = np.arange(n) / sr
    ir = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s) * 0.3
    ir[0] = 1.0
    return (ir / np.sqrt(np.sum(ir ** 2))).astype(np.float32)


@_with_numpy
def reverb(x: np.ndarray, sr: int, rng: np.random.Generator, rt60_s: tuple[float, float] = (0.15, 0.6),
           wet: tuple[float, float] = (0.3, 0.8)) -> np.ndarray:
    """Convolve with a random synthetic room (RT60 and wet/dry mix drawn from the ranges).

    The tail past the input's end is cut so lengths (and phoneme frame labels) line up; each
    row keeps its RMS.
    """
    from scipy.signal import fftconvolve

    ir = room_impulse_response(sr, rng.uniform(*rt60_s), rng)
    mix = rng.uniform(*wet)
    wet_x = fftconvolve(x, ir[None, :], axes=-1)[:, : x.shape[-1]]
    out = (1 - mix) * x + mix * wet_x
    rms_in = np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True))
    rms_out = np.sqrt(np.mean(out.astype(np.float64) ** 2, axis=-1, keepdims=True))
    out = out * np.where(rms_out > 1e-10, rms_in / np.maximum(rms_out, 1e-10), 1.0)
    return _limit_peak(out.astype(np.float32))


def augment(x: Any, sr: int, rng: np.random.Generator, config: AugmentConfig = AugmentConfig()) -> Any:
    """Apply each effect with its probability, in the order room → line → noise → gain."""
    if rng.random() < config.p_reverb:
        x = reverb(x, sr, rng, config.rt60_s)
    if rng.random() < config.p_telephone:
        x = telephone(x, sr)
    if rng.random() < config.p_noise:
        x = add_noise(x, rng, config.snr_db)
    if rng.random() < config.p_gain:
        x = random_gain(x, rng, config.gain_db)
    return x
