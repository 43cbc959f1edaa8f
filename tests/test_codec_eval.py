"""Codec evaluation: metrics, the Opus baseline, evaluate(), the phoneme probe and `maata codec` commands."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from maata.audio import load_audio, resample, write_wav
from maata.checkpoint import load_codec, save_model
from maata.codec import Codec, load_preset
from maata.codec import evaluate as E
from maata.codec import metrics as M
from maata.codec.evaluate import (evaluate, markdown_table, phoneme_probe, read_split, silent_frames,
                                  stream_encode, torch_threads, train_linear_probe)
from maata.codec.opus import check_available, opus_roundtrip
from maata.nn.mel import mel_filterbank
from tests.support.models import TINY_FRAME

SR = 16000
TELUGU = ["నమస్కారం, మీరు ఎలా ఉన్నారు", "ఈ రోజు బాగుంది"]
CLIP_S = 2.4  # DNSMOS tiles clips to 9.01 s: 2.26-2.5 s clips cost one model window each


@pytest.fixture(autouse=True)
def one_thread():
    """Per-frame streaming on shared cores: one thread is both faster and steadier."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two espeak-ng Telugu utterances at 16 kHz (the second padded with silence on both sides
    to ``CLIP_S``) and a manifest: both in test, both in train."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it)")
    d = tmp_path_factory.mktemp("speech")
    rows = []
    for i, text in enumerate(TELUGU):
        raw = d / f"raw{i}.wav"
        subprocess.run(["espeak-ng", "-v", "te", "-w", str(raw), text], check=True, capture_output=True)
        x, sr = load_audio(raw)
        x = resample(x, sr, SR)
        if i == 1:
            pad = np.zeros(max(int(0.3 * SR), (int(CLIP_S * SR) - x.size) // 2), np.float32)
            x = np.concatenate([pad, x, pad])
        write_wav(d / f"utt{i}.wav", x, SR)
        for split in ("test", "train"):
            rows.append({"path": f"utt{i}.wav", "duration": x.size / SR, "speaker": f"spk{i}", "source": "espeak-ng",
                         "text": text, "split": split})
    (d / "manifest.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return d


@pytest.fixture(scope="module")
def speech(data) -> np.ndarray:
    return load_audio(data / "utt0.wav")[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained small codec with the default preset's rates (25 Hz, 8 x 1024 -> 2 kbps)."""
    cfg = load_preset("default", env_prefix=None, latent_dim=32, frame=TINY_FRAME)
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("ckpt") / "c.safetensors", Codec(cfg), cfg, kind="codec")


@pytest.fixture(scope="module")
def codec(checkpoint):
    return load_codec(checkpoint)


def noise_like(x: np.ndarray, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(x.size)).astype(np.float32)


# -- metrics -------------------------------------------------------------------------------------
def test_pesq_stoi_identical_high_noise_low(speech):
    noise = noise_like(speech)
    assert M.pesq_wb(speech, speech) > 4.4
    assert M.stoi(speech, speech) > 0.99
    assert M.pesq_wb(speech, noise) < 1.5
    assert M.stoi(speech, noise) < 0.5


def test_si_sdr_math():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(8000).astype(np.float32)
    ref -= ref.mean()
    noise = rng.standard_normal(8000)
    noise -= noise.mean()
    noise -= (noise @ ref) / (ref @ ref) * ref  # orthogonal to the reference: the projection is exactly ref
    noise *= np.sqrt((ref @ ref) / (noise @ noise) / 10 ** (12 / 10))  # 12 dB below
    deg = (ref + noise).astype(np.float32)
    assert M.si_sdr(ref, deg) == pytest.approx(12.0, abs=1e-3)
    assert M.si_sdr(ref, 3.0 * deg) == pytest.approx(12.0, abs=1e-3)  # scale-invariant
    assert M.si_sdr(ref, -0.5 * ref) == 100.0  # a scaled copy is perfect (clipped at the ceiling)
    assert M.si_sdr(ref, np.zeros_like(ref)) == -100.0  # no output: the floor


def test_mel_distance_and_filterbank(speech):
    fb = mel_filterbank(SR, 1024, 80)
    assert fb.shape == (80, 513) and (fb >= 0).all() and (fb.sum(1) > 0).all()
    assert M.mel_distance(speech, speech) == 0.0
    slightly = speech + 0.01 * noise_like(speech)
    assert 0 < M.mel_distance(speech, slightly) < M.mel_distance(speech, noise_like(speech))


def test_dnsmos_offline_scores(speech):
    clean = M.dnsmos(speech)
    noisy = M.dnsmos(np.clip(speech + noise_like(speech), -1, 1))
    for v in (*clean.as_dict().values(), *noisy.as_dict().values()):
        assert 1.0 <= v <= 5.0
    assert clean.bak > noisy.bak + 1.0 and clean.ovrl > noisy.ovrl
    assert "librosa" not in sys.modules  # the model runs without speechmos' librosa import


@pytest.mark.parametrize("fn", [M.pesq_wb, M.stoi, M.si_sdr, M.mel_distance])
def test_metric_errors_are_clear(fn, speech):
    silent = np.zeros(SR, np.float32)
    with pytest.raises(M.MetricError, match="silent"):
        fn(silent, speech[:SR])
    with pytest.raises(M.MetricError, match="lengths differ"):
        fn(speech, speech[:-10])
    bad = speech.copy()
    bad[5] = np.nan
    with pytest.raises(M.MetricError, match="NaN"):
        fn(speech, bad)
    if fn is not M.si_sdr:
        with pytest.raises(M.MetricError, match="too short"):
            fn(speech[:40], speech[:40])


def test_dnsmos_errors():
    with pytest.raises(M.MetricError, match="silent"):
        M.dnsmos(np.zeros(SR, np.float32))
    with pytest.raises(M.MetricError, match="too short"):
        M.dnsmos(np.ones(100, np.float32) * 0.1)


def test_measured_bitrate(codec):
    codes = torch.zeros(1, 8, 25, dtype=torch.long)
    assert M.codes_kbps(codec, codes, 1.0) == pytest.approx(2.0)
    codes[:, 2:, :10] = -1  # dropped levels are free
    assert M.codes_kbps(codec, codes, 1.0) == pytest.approx((25 * 8 - 60) * 10 / 1000)


# -- Opus ----------------------------------------------------------------------------------------
def test_opus_6kbps_roundtrip(speech):
    check_available()
    cbr = opus_roundtrip(speech, SR, 6.0, vbr="off")
    assert cbr.audio.shape == speech.shape and cbr.audio.dtype == np.float32
    assert cbr.kbps == pytest.approx(6.0, rel=0.03)
    vbr = opus_roundtrip(speech, SR, 6.0, vbr="constrained")
    assert vbr.kbps == pytest.approx(6.0, rel=0.15)
    assert M.stoi(speech, vbr.audio) > 0.8
    assert M.stoi(speech, cbr.audio) > 0.6
    # aligned (the decoder drops the pre-skip): a one-sample shift would cost far more than this
    assert M.si_sdr(speech, vbr.audio) > -3


def test_opus_other_rates_resampled(speech):
    x44 = resample(speech, SR, 44100)
    out = opus_roundtrip(x44, 44100, 8.0)
    assert out.audio.shape == x44.shape and 6.0 < out.kbps < 9.0


# -- evaluate ------------------------------------------------------------------------------------
def test_streaming_adaptive_matches_offline(codec, data):
    x = load_audio(data / "utt1.wav")[0]  # has silence at both ends
    codes = stream_encode(codec, x)
    wav = torch.from_numpy(x)[None, None]
    assert torch.equal(codes, codec.encode(wav))
    silent = silent_frames(codec, x)
    assert silent[:3].all() and not silent.all()
    adaptive = codec.encode(wav, adaptive=True)
    assert torch.equal(codec.drop_silent(codes, torch.from_numpy(silent)[None]), adaptive)
    # the streaming encoder's own adaptive mode gives the same codes, chunk by chunk
    padded, state = codec.pad_to_hop(wav)[:, 0], codec.init_state(1)
    streamed = [codec.encode_step(state, padded[:, i:i + 1000], adaptive=True) for i in range(0, padded.shape[-1], 1000)]
    assert torch.equal(torch.cat(streamed, -1), adaptive)


def test_evaluate_writes_json_markdown_png(codec, data, tmp_path):
    report = evaluate(codec, data / "manifest.jsonl", split="test", limit=2, opus_kbps=(6, 8), out_dir=tmp_path,
                      per_speaker=True)
    overall = report["overall"]
    assert overall["files"] == 2
    assert set(overall["systems"]) == {"maata", "maata_adaptive", "opus_6", "opus_8"}
    for name, means in overall["systems"].items():
        for key in ("kbps", "pesq_wb", "stoi", "si_sdr", "mel_distance", "dnsmos_ovrl", "dnsmos_ovrl_delta"):
            assert means[key] is not None and math.isfinite(means[key]), (name, key)
    assert overall["systems"]["maata"]["kbps"] == pytest.approx(2.0, rel=0.05)
    assert overall["systems"]["opus_6"]["stoi"] > overall["systems"]["maata"]["stoi"]  # untrained codec
    ad = overall["adaptive"]
    assert ad["kbps_speech"] == pytest.approx(2.0) and ad["kbps_silence"] == pytest.approx(0.5)
    assert overall["systems"]["maata_adaptive"]["kbps"] < overall["systems"]["maata"]["kbps"]
    assert set(report["per_speaker"]) == {"spk0", "spk1"}

    saved = json.loads((tmp_path / "codec_eval.json").read_text())
    assert saved["overall"]["systems"]["opus_8"]["pesq_wb"] == overall["systems"]["opus_8"]["pesq_wb"]
    md = (tmp_path / "codec_eval.md").read_text()
    for row in ("| Maata 2 kbps |", "| Maata adaptive |", "| Opus 6 kbps |", "| Opus 8 kbps |", "DNSMOS OVRL (Δ)"):
        assert row in md
    assert md.endswith(markdown_table(report))
    assert (tmp_path / "spectrograms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_split(data, tmp_path):
    clips = read_split(data / "manifest.jsonl", "train", limit=1)
    assert len(clips) == 1 and clips[0].path == data / "utt0.wav" and clips[0].row.speaker == "spk0"
    with pytest.raises(ValueError, match="no rows in split 'valid'.*test, train"):
        read_split(data / "manifest.jsonl", "valid")
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_split(tmp_path / "nope.jsonl", "test")


# -- phoneme probe -------------------------------------------------------------------------------
def test_linear_probe_learns_separable_classes():
    gen = torch.Generator().manual_seed(0)
    centers = 4 * torch.randn(5, 16, generator=gen)
    y = torch.randint(0, 5, (600,), generator=gen)
    x = centers[y] + torch.randn(600, 16, generator=gen)
    out = train_linear_probe(x[:400], y[:400], x[400:], y[400:], 5, steps=200)
    assert out["test_accuracy"] > 0.95 and out["majority_accuracy"] < 0.4


def _code_labels(codec, path: Path) -> list[int]:
    """Synthetic frame labels that are a function of the codebook-1 code (so a probe can recover them)."""
    x = load_audio(path)[0]
    return (codec.encode(torch.from_numpy(x)[None, None], n_q=1)[0, 0] % 4).tolist()


def test_phoneme_probe_on_synthetic_labels(codec, data):
    out = phoneme_probe(codec, data / "manifest.jsonl", labeler=lambda clip, n: _code_labels(codec, clip.path),
                        features="onehot", steps=150)
    assert out["n_classes"] == 4
    assert out["test_accuracy"] > 0.95  # train and test hold the same files here
    assert out["train_frames"] == out["test_frames"] > 100
    codec.train()  # a training loop's live model: probed in eval mode, handed back in train mode
    try:
        vec = phoneme_probe(codec, data / "manifest.jsonl", labeler=lambda clip, n: _code_labels(codec, clip.path),
                            steps=50)
        assert codec.training
    finally:
        codec.eval()
    assert 0.0 <= vec["test_accuracy"] <= 1.0 and vec["features"] == "vector"


def test_phoneme_probe_from_alignments(codec, data, tmp_path):
    """The default path: rows' phoneme alignments -> PhonemeVocab -> frame_labels -> probe."""
    symbols = ["a", "i", "u", "e"]
    rows = []
    for line in (data / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        row["path"] = str(data / row["path"])
        labels = _code_labels(codec, Path(row["path"]))
        row["phonemes"] = [[i / 25, (i + 1) / 25, symbols[k]] for i, k in enumerate(labels)]
        row["phonemes"][0][2] = "_"  # a pause: class 0
        rows.append(json.dumps(row, ensure_ascii=False))
    (tmp_path / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    out = phoneme_probe(codec, tmp_path / "manifest.jsonl", features="onehot", steps=150)
    used = {seg[2] for line in rows for seg in json.loads(line)["phonemes"]} - {"_"}
    assert out["n_classes"] == 2 + len(used)  # silence, other, then the symbols seen
    assert out["test_accuracy"] > 0.9 and out["test_accuracy"] > out["majority_accuracy"]


# -- the command line ----------------------------------------------------------------------------
def _cli_ready() -> bool:
    """Whether every command module of ``maata.cli`` imports (other areas' may not exist yet)."""
    from maata import cli

    try:
        return all(importlib.util.find_spec(m) is not None for m in cli.COMMAND_MODULES)
    except ModuleNotFoundError:
        return False


def _entry_point() -> list[str]:
    """`.venv/bin/maata`, or while other areas' command modules are missing, the same
    ``maata.cli.main`` with only the codec commands."""
    exe = Path(sys.executable).parent / "maata"
    if _cli_ready() and exe.exists():
        return [str(exe)]
    shim = "import sys, maata.cli as c; c.COMMAND_MODULES = ['maata.codec.commands']; sys.exit(c.main(sys.argv[1:]))"
    return [sys.executable, "-c", shim]


def maata(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([*_entry_point(), *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def cli_main(monkeypatch):
    """``maata.cli.main`` in this process (for commands whose start-up cost is not the point)."""
    from maata import cli

    if not _cli_ready():
        monkeypatch.setattr(cli, "COMMAND_MODULES", ["maata.codec.commands"])
    return cli.main


def test_cli_encode_decode_round_trip_with_conversions(checkpoint, speech, tmp_path):
    stereo = resample(speech, SR, 44100)
    sf.write(tmp_path / "in.wav", np.stack([stereo, 0.5 * stereo], axis=1), 44100)
    r = maata("codec", "encode", "--checkpoint", checkpoint, "--in", tmp_path / "in.wav", "--out", tmp_path / "c.npy")
    assert r.returncode == 0, r.stderr
    assert "2 channels; averaging to mono" in r.stderr and "44100 Hz; resampling to 16000 Hz" in r.stderr
    codes = np.load(tmp_path / "c.npy")
    frames = math.ceil(speech.size / 640)
    assert codes.dtype == np.int16 and codes.shape == (8, frames) and 0 <= codes.min() and codes.max() < 1024

    r = maata("codec", "decode", "--checkpoint", checkpoint, "--in", tmp_path / "c.npy", "--out", tmp_path / "y.wav")
    assert r.returncode == 0, r.stderr
    y, sr = sf.read(tmp_path / "y.wav")
    assert sr == SR and y.ndim == 1 and y.size == frames * 640


BAD_INPUTS = {  # case -> (subcommand, input file, expected message)
    "nan": ("encode", "nan.wav", "nan.wav: audio contains NaN or infinite samples"),
    "empty": ("encode", "empty.wav", "empty.wav: audio is empty"),
    "range": ("decode", "range.npy", "code values must be in [0, 1023]"),
    "shape": ("decode", "shape.npy", "codes must be shaped [n_q, frames]"),
    "checkpoint": ("decode", "ok.npy", "checkpoint not found"),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bad")
    nan = np.zeros(SR, np.float32)
    nan[100] = np.nan
    sf.write(tmp / "nan.wav", nan, SR, subtype="FLOAT")
    sf.write(tmp / "empty.wav", np.zeros(0, np.float32), SR)
    np.save(tmp / "range.npy", np.full((8, 5), 1024, np.int16))
    np.save(tmp / "shape.npy", np.zeros(5, np.int16))
    np.save(tmp / "ok.npy", np.zeros((8, 5), np.int16))
    return tmp


def _bad_argv(case: str, checkpoint: Path, tmp: Path) -> list[str]:
    sub, name, _ = BAD_INPUTS[case]
    ckpt = tmp / "missing.safetensors" if case == "checkpoint" else checkpoint
    out = tmp / (f"{case}.npy" if sub == "encode" else f"{case}.wav")
    return ["codec", sub, "--checkpoint", str(ckpt), "--in", str(tmp / name), "--out", str(out)]


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_cli_bad_input_exits_2_with_one_line(case, cli_main, checkpoint, bad_files, capsys):
    """Through ``maata.cli.main`` in-process (the same code path; process start-up is tested below)."""
    assert cli_main(_bad_argv(case, checkpoint, bad_files)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("maata: error: ") and BAD_INPUTS[case][2] in err[-1]


def test_cli_process_bad_input_exit_code(checkpoint, bad_files):
    r = maata(*_bad_argv("nan", checkpoint, bad_files))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    expected = f"maata: error: {bad_files / 'nan.wav'}: audio contains NaN or infinite samples"
    assert r.stderr.strip().splitlines()[-1] == expected


def test_cli_info_presets_and_eval(cli_main, checkpoint, data, tmp_path, capsys):
    assert cli_main(["codec", "info", "--checkpoint", str(checkpoint), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["bitrate_kbps"] == 2.0 and info["latency_ms"] == 50.0 and info["frame_rate_hz"] == 25.0

    assert cli_main(["codec", "presets"]) == 0
    out = capsys.readouterr().out
    assert "default" in out and "mimi-like" in out

    assert cli_main(["codec"]) == 2  # a bare group prints its help
    assert "encode" in capsys.readouterr().out

    assert cli_main(["codec", "eval", "--checkpoint", str(checkpoint), "--manifest", str(data / "manifest.jsonl"),
                     "--limit", "1", "--opus-kbps", "6", "--no-dnsmos", "--out", str(tmp_path / "eval")]) == 0
    assert "| Opus 6 kbps |" in capsys.readouterr().out and (tmp_path / "eval" / "codec_eval.json").exists()

    assert cli_main(["codec", "eval", "--checkpoint", str(checkpoint), "--manifest", str(tmp_path / "no.jsonl")]) == 2
    assert "manifest not found" in capsys.readouterr().err


def test_demo_writes_wavs_and_scores(cli_main, checkpoint, tmp_path, capsys):
    assert cli_main(["codec", "demo", "--checkpoint", str(checkpoint), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "PESQ-WB" in printed and "opus_6" in printed and "ms per frame" in printed
    for name in ("source", "maata", "maata_adaptive", "opus_6"):
        x, sr = load_audio(tmp_path / f"{name}.wav")
        assert sr == 16000 and x.size > 16000
    assert cli_main(["codec", "demo", "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2


# -- time alignment ------------------------------------------------------------------------------
def test_estimate_delay_finds_a_known_delay_and_misalignment_costs_the_scores(speech):
    """A constant delay quietly lowers STOI (PESQ aligns its inputs itself): the evaluation
    measures the lag instead of trusting it away."""
    for lag in (0, 7, 160, -40):
        moved = np.roll(speech, lag)
        assert M.estimate_delay(speech, moved) == lag
    late = np.concatenate([np.zeros(160, np.float32), speech[:-160]])  # 10 ms late
    assert M.stoi(speech, late) < M.stoi(speech, speech) - 0.02
    assert M.pesq_wb(speech, late) > M.pesq_wb(speech, speech) - 0.1  # PESQ's own alignment


def test_eval_aligns_the_overlap_add_delay(codec, speech):
    """The v2 decoder emits its output ``delay`` samples late; the evaluation feeds that much
    more silence and moves the output back, so the scored signal has the input's length and
    time axis: exactly the streamed output shifted by the delay."""
    assert codec.delay == 160
    run = E.run_maata(codec, speech)
    assert run.full.shape == speech.shape
    padded = np.concatenate([speech, np.zeros(codec.delay, np.float32)])
    streamed = E.stream_decode(codec, E.stream_encode(codec, padded))[0]
    np.testing.assert_allclose(run.full, streamed[codec.delay: codec.delay + speech.size], atol=1e-6)


def test_committed_v2_codec_is_scored_time_aligned(speech):
    """With the trained v2 codec, the aligned output scores best at shift 0: moving it by the
    overlap-add delay either way costs STOI (a decoder that makes its own phase cannot be
    checked by waveform cross-correlation, so the check scores shifted copies)."""
    codec = load_codec(Path(__file__).resolve().parents[1] / "checkpoints" / "codec_v2.safetensors")
    out = E.run_maata(codec, speech).full
    d = codec.delay
    at = {shift: M.stoi(speech, np.roll(out, -shift)) for shift in (-d, 0, d)}
    assert at[0] > at[d] and at[0] > at[-d], at
