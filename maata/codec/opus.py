"""Opus baseline through PyAV's libopus: the codec Maata has to beat at low bitrates.

``opus_roundtrip(x, sr, kbps=6)`` encodes mono float PCM the way a VoIP stack would
(application ``voip``, 20 ms frames, constant bitrate by default), decodes it back and
reports the bitrate measured from the packet sizes. libopus takes 8/12/16/24/48 kHz input
directly; any other rate is resampled to 48 kHz first. FFmpeg's libopus decoder always
returns 48 kHz, which is resampled back to the input rate (``maata.audio.resample``). The
encoder's pre-skip travels in the OpusHead extradata, so the decoder drops it and the output
is sample-aligned with the input; the result is trimmed to the input length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maata.audio import check_pcm, float_to_pcm16, pcm16_to_float, resample

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)  # input rates libopus accepts
DECODER_RATE = 48000  # FFmpeg's libopus decoder output rate
VBR_MODES = ("off", "on", "constrained")


class OpusError(ValueError):
    """libopus is unavailable in PyAV, or the settings are invalid."""


@dataclass
class OpusResult:
    audio: np.ndarray  # float32 mono at the input rate, same length as the input
    kbps: float  # measured: packet bytes * 8 / input duration
    packets: int
    payload_bytes: int


def check_available() -> None:
    """Raise :class:`OpusError` unless PyAV has the libopus encoder and decoder."""
    import av

    try:
        av.codec.Codec("libopus", "w")
        av.codec.Codec("libopus", "r")
    except Exception as e:  # av raises UnknownCodecError (a ValueError) or FFmpegError
        raise OpusError(f"PyAV was built without libopus ({e}); the Opus baseline needs it") from e


def _encoder(sr: int, kbps: float, vbr: str, frame_ms: float, complexity: int):
    import av

    if vbr not in VBR_MODES:
        raise OpusError(f"vbr must be one of {VBR_MODES}, got {vbr!r}")
    if not 6 <= kbps <= 510:
        raise OpusError(f"Opus bitrate must be 6..510 kbps, got {kbps}")
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = sr, "mono", "s16"
    enc.bit_rate = int(round(kbps * 1000))
    enc.options = {"application": "voip", "vbr": vbr, "frame_duration": f"{frame_ms:g}",
                   "compression_level": str(complexity)}
    enc.open()
    return enc


def opus_encode(x: np.ndarray, sr: int, kbps: float = 6.0, *, vbr: str = "off", frame_ms: float = 20,
                complexity: int = 10) -> tuple[list[bytes], bytes]:
    """Encode mono PCM (``sr`` in ``OPUS_RATES``) to Opus packets; returns (packets, OpusHead extradata)."""
    import av

    if sr not in OPUS_RATES:
        raise OpusError(f"libopus takes {OPUS_RATES} Hz input, got {sr} Hz; resample first")
    enc = _encoder(sr, kbps, vbr, frame_ms, complexity)
    pcm = np.frombuffer(float_to_pcm16(x), dtype="<i2")
    frame = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
    frame.sample_rate, frame.pts = sr, 0
    packets = [bytes(p) for p in enc.encode(frame)] + [bytes(p) for p in enc.encode(None)]
    return packets, bytes(enc.extradata)


def opus_decode(packets: list[bytes], extradata: bytes) -> np.ndarray:
    """Decode Opus packets to float32 mono at ``DECODER_RATE`` (pre-skip already removed)."""
    import av

    dec = av.CodecContext.create("libopus", "r")
    dec.extradata = extradata
    out = []
    for data in packets:
        for frame in dec.decode(av.Packet(data)):
            out.append(_frame_pcm(frame))
    for frame in dec.decode(None):
        out.append(_frame_pcm(frame))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _frame_pcm(frame) -> np.ndarray:
    if frame.sample_rate != DECODER_RATE:
        raise OpusError(f"libopus decoder returned {frame.sample_rate} Hz, expected {DECODER_RATE} Hz")
    a = frame.to_ndarray().reshape(-1)
    return pcm16_to_float(a) if a.dtype == np.int16 else a.astype(np.float32)


def opus_roundtrip(x: np.ndarray, sr: int = 16000, kbps: float = 6.0, *, vbr: str = "off", frame_ms: float = 20,
                   complexity: int = 10) -> OpusResult:
    """Encode ``x`` (mono float PCM at ``sr``) at ``kbps`` and decode it back to ``sr``.

    ``vbr``: ``"off"`` (CBR, every packet the same size), ``"constrained"`` or ``"on"``.
    """
    x = check_pcm(x)
    enc_sr = sr if sr in OPUS_RATES else DECODER_RATE
    packets, head = opus_encode(resample(x, sr, enc_sr), enc_sr, kbps, vbr=vbr, frame_ms=frame_ms,
                                complexity=complexity)
    y = resample(opus_decode(packets, head), DECODER_RATE, sr)
    y = np.pad(y, (0, max(0, x.size - y.size)))[: x.size]
    payload = sum(len(p) for p in packets)
    return OpusResult(audio=y, kbps=payload * 8 / (x.size / sr) / 1000.0, packets=len(packets),
                      payload_bytes=payload)
