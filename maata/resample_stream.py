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

``FrameResampler`` is the same stream for fixed-size frames (the partner API's agent audio):
every frame gives exactly ``frame * up / down`` samples, one equal message per frame.

The filter is a Kaiser-windowed sinc (60 dB stopband) with its cut-off 0.9 of the lower Nyquist
frequency: flat to about 6.5 kHz between 16 and 48 kHz, which keeps everything the 16 kHz codec
reproduces.
"""

from __future__ import annotations

from math import gcd

import numpy as np

STOPBAND_DB = 60.0


def lowpass(taps: int, cutoff: float, gain: float = 1.0, beta: float | None = None) -> np.ndarray:
    """A linear-phase Kaiser-windowed sinc low-pass; ``cutoff`` in cycles per sample (< 0.5),
    ``beta`` the window's (None: a ``STOPBAND_DB`` stopband)."""
    beta = 0.1102 * (STOPBAND_DB - 8.7) if beta is None else beta
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, beta)
    return (h / h.sum() * gain).astype(np.float64)


class FirResampleStream:
    """Streaming rational resampler (``out_rate / in_rate`` = up / down): zero-stuff by ``up``,
    low-pass, keep every ``down``-th sample, computed per polyphase branch. Same call as
    ``soxr.ResampleStream.resample_chunk``; mono float32. ``filter``: the low-pass at the
    upsampled rate (gain ``up``) instead of the default design."""

    def __init__(self, in_rate: int, out_rate: int, taps_per_phase: int = 40, cutoff: float = 0.9, *,
                 filter: np.ndarray | None = None) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        g = gcd(in_rate, out_rate)
        self.up, self.down = out_rate // g, in_rate // g
        if max(self.up, self.down) > 48:
            raise ValueError(f"{in_rate} -> {out_rate} Hz is not a small rational ratio (up {self.up}, down {self.down})")
        if filter is None:
            filter = lowpass(taps_per_phase * max(self.up, self.down) + 1, cutoff * 0.5 / max(self.up, self.down),
                             gain=self.up)
        self.filter = np.asarray(filter, np.float64)
        taps = self.filter.size
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


class FrameResampler:
    """Streaming resampling of fixed-size frames with a constant output size per frame.

    soxr's streaming resampler returns whatever its internal blocks have completed, so 40 ms
    frames come out as alternating or empty chunks (at 8 kHz two of three are empty). Real-time
    senders need one equal chunk per frame: a ``FirResampleStream`` whose ratio makes every
    ``frame``-sample input exactly ``frame * sr_out / sr_in`` samples, with a Kaiser (``beta``)
    low-pass of ``taps`` taps per phase cut at 0.92 of the lower Nyquist frequency (a fixed
    delay of ``taps / 2`` input samples, under 1 ms at 16 kHz with the default 32 taps).

        up = FrameResampler(16000, 48000, 640)
        chunk = up(frame)        # float32 [640] -> [1920], every time
    """

    def __init__(self, sr_in: int, sr_out: int, frame: int, taps: int = 32, beta: float = 8.6) -> None:
        g = gcd(sr_in, sr_out)
        self.up, self.down = sr_out // g, sr_in // g
        if frame < 1 or (frame * self.up) % self.down:
            raise ValueError(f"a frame of {frame} samples at {sr_in} Hz is not a whole number of samples at {sr_out} Hz")
        self.frame, self.out, self.taps = frame, frame * self.up // self.down, taps
        cutoff = 0.5 / max(self.up, self.down) * 0.92  # cycles per upsampled sample, below the lower Nyquist
        self.stream = FirResampleStream(sr_in, sr_out, filter=lowpass(self.up * taps, cutoff, self.up, beta))
        self.delay = self.stream.delay

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if x.shape != (self.frame,):
            raise ValueError(f"FrameResampler takes frames of {self.frame} samples, got shape {x.shape}")
        return self.stream.resample_chunk(x)


__all__ = ["FirResampleStream", "FrameResampler", "lowpass"]
