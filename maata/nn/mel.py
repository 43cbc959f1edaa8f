"""Mel filterbank and mel spectrogram: the one definition behind the codec's training loss and
its evaluation metric.

HTK mel scale, triangular filters, each scaled to unit area (2 / bandwidth, like Slaney's
normalisation) so the wide high-frequency bands do not dominate a log-mel distance.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn


def hz_to_mel(f: float) -> float:
    """HTK mel scale."""
    return 2595.0 * math.log10(1.0 + f / 700.0)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@functools.lru_cache(maxsize=32)
def _filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64))
    lo, center, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lo) / (center - lo)
    falling = (hi - bins[None]) / (hi - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0) * (2.0 / (hi - lo))


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Filters [n_mels, n_fft // 2 + 1] over the bins of an ``n_fft``-point STFT (computed in
    float64, returned as ``dtype``; a fresh tensor each call)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= {sample_rate / 2}, got {f_min}, {f_max}")
    if n_mels < 1 or n_fft < 2:
        raise ValueError(f"need n_mels >= 1 and n_fft >= 2, got {n_mels}, {n_fft}")
    return _filterbank(int(sample_rate), int(n_fft), int(n_mels), float(f_min), float(f_max)).to(dtype, copy=True)


class MelSpectrogram(nn.Module):
    """Mel spectrogram of [B, 1, T] or [B, T] audio -> [B, n_mels, frames] (float32, autocast off:
    ``torch.stft`` has no bf16 kernels). Hann window, centred frames (reflect padding).

    ``power=1`` filters STFT magnitudes, ``power=2`` power spectra.
    """

    def __init__(self, sample_rate: int, n_fft: int, n_mels: int, hop: int | None = None, power: int = 1):
        super().__init__()
        if power not in (1, 2):
            raise ValueError(f"power must be 1 (magnitude) or 2 (power), got {power}")
        self.n_fft, self.hop, self.power = n_fft, hop or n_fft // 4, power
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.reshape(-1, x.shape[-1]).float()
            spec = torch.stft(x, self.n_fft, self.hop, window=self.window, center=True, pad_mode="reflect",
                              return_complex=True).abs()
            return self.filters @ (spec if self.power == 1 else spec.square())
