"""Audio math and file I/O shared by the codec, data pipeline, services and tools.

Everything inside Maata is float32 mono PCM in [-1, 1] at the codec's sample rate (16 kHz by
default). The functions here are the one place where audio enters or leaves that form:
reading any file (WAV/FLAC via soundfile; m4a/mp3/opus via PyAV), resampling (soxr), loudness
normalisation, and validation with clear errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


class AudioError(ValueError):
    """Audio that cannot be used: empty, non-finite, wrong shape or rate."""


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """High-quality resampling (soxr VHQ). ``x`` is [T] or [T, C]; float32 out."""
    if sr_in <= 0 or sr_out <= 0:
        raise AudioError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    x = np.asarray(x, dtype=np.float32)
    if sr_in == sr_out:
        return x
    return soxr.resample(x, sr_in, sr_out, quality="VHQ").astype(np.float32, copy=False)


def to_mono(x: np.ndarray) -> np.ndarray:
    """[T] stays; [T, C] is averaged over channels."""
    x = np.asarray(x)
    if x.ndim == 1:
        return x
    if x.ndim == 2:
        return x.mean(axis=1)
    raise AudioError(f"audio must be [samples] or [samples, channels], got shape {x.shape}")


def check_pcm(x: np.ndarray, *, allow_empty: bool = False) -> np.ndarray:
    """Validate mono float PCM: 1-D, finite, non-empty. Returns float32."""
    x = np.asarray(x)
    if x.ndim != 1:
        raise AudioError(f"expected mono audio of shape [samples], got shape {x.shape}; "
                         "convert multi-channel audio with to_mono() first")
    if x.size == 0 and not allow_empty:
        raise AudioError("audio is empty")
    if not np.issubdtype(x.dtype, np.floating):
        raise AudioError(f"expected float PCM, got dtype {x.dtype}; use pcm16_to_float()")
    if x.size and not np.isfinite(x).all():
        raise AudioError("audio contains NaN or infinite samples")
    return x.astype(np.float32, copy=False)


def int16_to_float(a: np.ndarray) -> np.ndarray:
    """int16 samples to float32 in [-1, 1): divided by 32768 (the one scale convention)."""
    return np.asarray(a, dtype=np.int16).astype(np.float32) / 32768.0


def float_to_int16(x: np.ndarray) -> np.ndarray:
    """float samples to int16: times 32768, rounded, clipped to [-32768, 32767] (the inverse of
    ``int16_to_float`` for every int16 value)."""
    return np.clip(np.round(np.asarray(x, dtype=np.float32) * 32768.0), -32768, 32767).astype(np.int16)


def pcm16_to_float(b: bytes | np.ndarray) -> np.ndarray:
    """Little-endian signed 16-bit PCM (bytes or int16 array) to float32 in [-1, 1)."""
    if isinstance(b, (bytes, bytearray, memoryview)):
        if len(b) % 2:
            raise AudioError(f"PCM16 payload has an odd number of bytes ({len(b)})")
        b = np.frombuffer(b, dtype="<i2")
    return int16_to_float(b)


def float_to_pcm16(x: np.ndarray) -> bytes:
    """float samples to little-endian signed 16-bit PCM bytes (``float_to_int16``)."""
    return float_to_int16(x).astype("<i2").tobytes()


DBFS_FLOOR = -120.0  # the level ``rms_dbfs`` gives digital silence (and nothing at all)


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level in dBFS (full scale = 1.0), at least ``DBFS_FLOOR``."""
    x = np.asarray(x, dtype=np.float64)
    rms = np.sqrt(np.mean(x * x)) if x.size else 0.0
    return float(20 * np.log10(max(rms, 10 ** (DBFS_FLOOR / 20))))


def normalize_rms(x: np.ndarray, target_dbfs: float = -16.0, peak_limit: float = 0.99) -> np.ndarray:
    """Scale to ``target_dbfs`` RMS, then back off if that would clip past ``peak_limit``."""
    x = np.asarray(x, dtype=np.float32)
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    if rms < 1e-8:
        return x.copy()
    g = 10 ** (target_dbfs / 20) / rms
    peak = float(np.max(np.abs(x))) * g
    if peak > peak_limit:
        g *= peak_limit / peak
    return (x * g).astype(np.float32)


_SOUNDFILE_EXT = {".wav", ".flac", ".ogg", ".aiff", ".aif"}


def load_audio(path: str | Path, sr: int | None = None) -> tuple[np.ndarray, int]:
    """Read any audio file to mono float32; resample to ``sr`` when given.

    WAV/FLAC/OGG go through libsndfile; everything else (m4a, mp3, opus, webm) through PyAV.
    Returns (samples, sample_rate).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    if path.suffix.lower() in _SOUNDFILE_EXT:
        try:
            x, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
        except RuntimeError as e:  # libsndfile's error for unreadable files
            raise AudioError(f"{path}: cannot decode audio ({e})") from e
        x = x.mean(axis=1)
    else:
        x, file_sr = _decode_with_av(path)
    if sr is not None and file_sr != sr:
        x = resample(x, file_sr, sr)
        file_sr = sr
    return check_pcm(x, allow_empty=True), file_sr


def _decode_with_av(path: Path) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(str(path)) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise AudioError(f"{path}: no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.rate)
            chunks = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
            rate = stream.rate
    except av.error.FFmpegError as e:
        raise AudioError(f"{path}: cannot decode audio ({e})") from e
    x = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return x.astype(np.float32), int(rate)


def write_wav(path: str | Path, x: np.ndarray, sr: int) -> Path:
    """Write float PCM ([T] or [T, C]) as 16-bit WAV, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(np.asarray(x, dtype=np.float32), -1, 1), sr, subtype="PCM_16")
    return path


def prepare_input(x: np.ndarray, sr: int, target_sr: int, *, resample_ok: bool = True) -> np.ndarray:
    """Bring user audio into the codec's form: mono float32 at ``target_sr``, validated.

    Multi-channel audio is averaged to mono; a different rate is resampled when
    ``resample_ok`` and rejected otherwise.
    """
    x = np.asarray(x)
    if x.ndim == 2:
        x = to_mono(x)
    x = check_pcm(x)
    if sr != target_sr:
        if not resample_ok:
            raise AudioError(f"expected {target_sr} Hz audio, got {sr} Hz")
        x = resample(x, sr, target_sr)
    return x
