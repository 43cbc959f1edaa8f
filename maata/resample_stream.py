"""Low-delay streaming resampling for real-time audio (the browser path's 48 kHz <-> 16 kHz).

soxr's streaming resampler is excellent offline but releases its output in blocks: at its HQ
setting, 20 ms chunks at 48 kHz come out of a 48 -> 16 kHz stream as 0, 490, 0, 489 ... samples,
so a 40 ms codec frame often completes only one or two packets after its last sample arrived.
``FirResampleStream`` is a polyphase FIR resampler for rational ratios that returns every output
sample as soon as the input that determines it has arrived: ``n`` input samples always give
``n * up / down`` output samples (exactly, when ``down`` divides ``n * up``; the remainder is
carried over), with a fixed linear-phase delay of ``(taps - 1) / 2`` samples at the upsampled
rate (1.25 ms at 48 kHz with the default 121 taps).

    stream = FirResampleStream(48000, 16000)
    y = stream.resample_chunk(x)       # float32 [n] -> [n // 3], nothing held back

The filter is a Kaiser-windowed sinc (60 dB stopband) with its cut-off 0.9 of the lower Nyquist
frequency: flat to about 6.5 kHz between 16 and 48 kHz, which keeps everything the 16 kHz codec
reproduces.
"""

from __future__ import annotations

from math import gcd

import numpy as np

STOPBAND_DB = 60.0


def lowpass(taps: int, cutoff: float, gain: float = 1.0) -> np.ndarray:
    """A linear-phase Kaiser-windowed sinc low-pass; ``cutoff`` in cycles per sample (< 0.5)."""
    beta = 0.1102 * (STOPBAND_DB - 8.7)
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, beta)
    return (h / h.sum() * gain).astype(np.float64)


class FirResampleStream:
    """Streaming rational resampler (``out_rate / in_rate`` = up / down): zero-stuff by ``up``,
    low-pass, keep every ``down``-th sample, computed per polyphase branch. Same call as
    ``soxr.ResampleStream.resample_chunk``; mono float32."""

    def __init__(self, in_rate: int, out_rate: int, taps_per_phase: int = 40, cutoff: float = 0.9) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        g = gcd(in_rate, out_rate)
        self.up, self.down = out_rate // g, in_rate // g
        if max(self.up, self.down) > 48:
            raise ValueError(f"{in_rate} -> {out_rate} Hz is not a small rational ratio (up {self.up}, down {self.down})")
        taps = taps_per_phase * max(self.up, self.down) + 1
        self.filter = lowpass(taps, cutoff * 0.5 / max(self.up, self.down), gain=self.up)
        self.delay = (taps - 1) / 2 / (in_rate * self.up)  # seconds of linear-phase delay
        # branch p of the polyphase filter: the taps that meet input samples for outputs at phase p
        self._branch = [self.filter[p::self.up].copy() for p in range(self.up)]
        self._history = np.zeros(-(-taps // self.up), np.float64)  # past input, enough for every branch
        self._phase = 0  # index in the upsampled grid of the next output, relative to the next input sample

    def resample_chunk(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        """The output for ``x`` (float32 [n]); ``last`` is accepted for soxr compatibility (nothing is
        held back, so there is nothing to flush)."""
        x = np.asarray(x, np.float64).reshape(-1)
        if x.size == 0:
            return np.zeros(0, np.float32)
        buf = np.concatenate([self._history, x])
        h = self._history.size
        # output m sits at upsampled position j = phase + m * down (relative to x[0] at j = 0);
        # it uses input i = j // up (the newest sample it sees) and branch p = j % up
        positions = np.arange(self._phase, x.size * self.up, self.down)
        out = np.empty(positions.size, np.float64)
        for p in range(self.up):
            sel = positions % self.up == p
            if not sel.any():
                continue
            newest = positions[sel] // self.up + h  # index in buf of the newest input each output sees
            full = np.convolve(buf, self._branch[p])  # full[i] = sum_k filter[p + k * up] * buf[i - k]
            out[sel] = full[newest]
        self._phase = int(positions[-1] + self.down - x.size * self.up) if positions.size else self._phase - x.size * self.up
        self._history = buf[-self._history.size:]
        return out.astype(np.float32)


__all__ = ["FirResampleStream", "lowpass"]
