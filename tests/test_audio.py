"""Audio I/O, resampling and validation."""

import numpy as np
import pytest

from maata import audio


def tone(sr, seconds=0.5, f=440.0):
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def test_resample_keeps_a_tone(tmp_path):
    x = tone(48000)
    y = audio.resample(x, 48000, 16000)
    assert len(y) == 8000
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spec) * 16000 / len(y) - 440) < 4


def test_load_any_format_and_rate(tmp_path):
    import av

    p = audio.write_wav(tmp_path / "s.wav", np.stack([tone(44100), tone(44100)], 1), 44100)
    x, sr = audio.load_audio(p, 16000)
    assert sr == 16000 and x.ndim == 1 and abs(len(x) - 8000) <= 1
    # an m4a (AAC) file decodes through PyAV
    m4a = tmp_path / "s.m4a"
    with av.open(str(m4a), "w") as out:
        st = out.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone(16000)[None], format="flt", layout="mono")
        frame.sample_rate = 16000
        for pkt in st.encode(frame):
            out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
    y, sr = audio.load_audio(m4a)
    assert sr == 16000 and len(y) > 7000


def test_normalize_rms_hits_target_and_never_clips():
    x = tone(16000) * 0.01
    y = audio.normalize_rms(x, -16)
    assert abs(audio.rms_dbfs(y) + 16) < 0.1
    spiky = np.zeros(16000, np.float32)
    spiky[::1000] = 0.5
    assert np.abs(audio.normalize_rms(spiky, -3)).max() <= 0.99


@pytest.mark.parametrize("bad,match", [
    (np.zeros(0, np.float32), "empty"),
    (np.array([0.0, np.nan], np.float32), "NaN"),
    (np.zeros((2, 2, 2), np.float32), "shape"),
    (np.zeros(4, np.int16), "float"),
])
def test_bad_pcm_is_rejected(bad, match):
    with pytest.raises(audio.AudioError, match=match):
        audio.check_pcm(bad)


def test_prepare_input_converts_or_refuses():
    stereo = np.stack([tone(8000), tone(8000)], 1)
    assert audio.prepare_input(stereo, 8000, 16000).shape == (8000,)
    with pytest.raises(audio.AudioError, match="expected 16000 Hz"):
        audio.prepare_input(tone(8000), 8000, 16000, resample_ok=False)


def test_pcm16_round_trip_and_odd_payload():
    x = tone(16000)
    y = audio.pcm16_to_float(audio.float_to_pcm16(x))
    assert np.abs(x - y).max() < 1e-4
    with pytest.raises(audio.AudioError, match="odd"):
        audio.pcm16_to_float(b"\x00\x01\x02")


def test_int16_scale_is_32768_both_ways_and_float_clips():
    every = np.arange(-32768, 32768, dtype=np.int16)
    assert np.array_equal(audio.float_to_int16(audio.int16_to_float(every)), every)  # lossless for every value
    assert audio.int16_to_float(np.array([-32768, 16384], np.int16)).tolist() == [-1.0, 0.5]
    assert audio.float_to_int16(np.array([1.0, 1.5, -1.0, -2.0, 0.5], np.float32)).tolist() == \
        [32767, 32767, -32768, -32768, 16384]
    assert audio.float_to_pcm16(np.array([0.5], np.float32)) == np.array([16384], "<i2").tobytes()


def test_rms_dbfs_levels_and_silence_floor():
    assert abs(audio.rms_dbfs(np.full(640, 0.5)) - 20 * np.log10(0.5)) < 1e-9
    assert audio.rms_dbfs(np.zeros(640)) == audio.DBFS_FLOOR == audio.rms_dbfs(np.zeros(0))


def test_unreadable_file_is_a_clear_error(tmp_path):
    p = tmp_path / "junk.wav"
    p.write_bytes(b"RIFF nonsense")
    with pytest.raises(audio.AudioError, match="cannot decode"):
        audio.load_audio(p)
    with pytest.raises(FileNotFoundError):
        audio.load_audio(tmp_path / "missing.wav")
