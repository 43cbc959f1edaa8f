"""Dataset importers, each on a small fixture in that dataset's exact on-disk layout.

The fixture audio is real Telugu speech from espeak-ng, stored the way each dataset ships
it (48 kHz WAV, AAC in m4a, MP3, ...)."""

import argparse
import json

import av
import numpy as np
import pytest
import soundfile as sf

from maata.audio import resample, write_wav
from maata.data import commands
from maata.data.loaders import DatasetError, import_dataset, scan
from maata.data.manifest import check_speaker_disjoint, read_manifest
from maata.data.synth import espeak_engine

SENTENCES = ["నమస్కారం, ఎలా ఉన్నారు?", "రేపు 10 గంటలకి మీటింగ్ ఉంది.", "సరే, నేను వస్తాను."]


@pytest.fixture(scope="module")
def speech():
    """Three short espeak clips at 22,050 Hz, one per sentence."""
    engine = espeak_engine()
    return [engine.synthesize(s, voice="te+f2")[0] for s in SENTENCES], engine.sample_rate


def encode(path, x, sr, codec):
    """Write mono float audio with PyAV (``aac`` → m4a, ``libmp3lame`` → mp3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 1152 if codec == "libmp3lame" else 1024
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=sr, layout="mono")
        for i in range(0, len(x), n):
            frame = av.AudioFrame.from_ndarray(x[None, i:i + n].astype(np.float32),
                                               format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sr, i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def check_import(src, out, fmt, n_clips, speakers):
    report = import_dataset(fmt, src, out, progress=False)
    rows = read_manifest(report.manifest)
    assert len(rows) == n_clips
    assert {r.speaker for r in rows} == speakers and {r.source for r in rows} == {fmt}
    for r in rows:
        x, sr = sf.read(out / r.path)
        assert sr == 16000 and x.ndim == 1 and abs(len(x) / sr - r.duration) < 1e-3
        assert 0.5 < r.duration < 10 and r.split in ("train", "valid", "test")
        assert not any(c.isdigit() for c in r.text)     # normalised: numbers spoken
    check_speaker_disjoint(rows)
    return report, rows


def test_openslr66(tmp_path, speech):
    clips, sr = speech
    src = tmp_path / "te_in_female"
    src.mkdir()
    ids = ["tef_00106_00186447", "tef_00106_00186448", "tef_02475_00001234"]
    for uid, x in zip(ids, clips):
        write_wav(src / f"{uid}.wav", resample(x, sr, 48000), 48000)
    (src / "line_index.tsv").write_text(
        f"{ids[0]}\t{SENTENCES[0]}\n"
        f"{ids[1]}\t\t{SENTENCES[1]}\n"          # stray empty middle field
        f"{ids[2]}\tjunk\t{SENTENCES[2]}\n"      # stray middle field
        "tef_09999_00000001\n", encoding="utf-8")  # malformed: no sentence
    report, rows = check_import(tmp_path, tmp_path / "out", "openslr66", 3,
                                {"openslr66:tef_00106", "openslr66:tef_02475"})
    assert any("line_index.tsv:4" in s for s in report.skipped)
    assert {r.meta["gender"] for r in rows} == {"female"}
    assert any("పది గంటలకి" in r.text for r in rows)


def test_kathbath(tmp_path, speech):
    clips, sr = speech
    split = tmp_path / "data" / "telugu" / "valid"
    names = ["844424931537916-1074-f", "844424931537917-1074-f", "844424931600000-2210-m"]
    for name, x in zip(names, clips):
        encode(split / f"{name}.m4a", x, sr, "aac")
    (split / "transcription.txt").write_text(
        "\n".join(f"{n}.m4a\t{s}" for n, s in zip(names, SENTENCES)) + "\n", encoding="utf-8")
    n2w = [s.replace("10", "పది") for s in SENTENCES]  # preferred: numbers already as words
    (split / "transcription_n2w.txt").write_text(
        "\n".join(f"{n}.m4a\t{s}" for n, s in zip(names, n2w))
        + "\nmissing-3000-m.m4a\tఈ ఫైల్ లేదు\n", encoding="utf-8")
    report, rows = check_import(tmp_path, tmp_path / "out", "kathbath", 3,
                                {"kathbath:1074", "kathbath:2210"})
    assert any("missing-3000-m.m4a: audio file missing" in s for s in report.skipped)
    assert {r.meta["gender"] for r in rows} == {"female", "male"}
    assert {r.meta["split"] for r in rows} == {"valid"}


def test_commonvoice(tmp_path, speech):
    clips, sr = speech
    root = tmp_path / "cv-corpus-17.0" / "te"
    header = "client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage\tgender\taccents\tvariant\tlocale\tsegment\n"
    names = ["common_voice_te_1.mp3", "common_voice_te_2.mp3", "common_voice_te_3.mp3"]
    for name, x in zip(names, clips):
        encode(root / "clips" / name, x, sr, "libmp3lame")
    line = "{c}\t{p}\tid\t{s}\t\t2\t0\t{a}\t{g}\t\t\tte\t\n"
    (root / "train.tsv").write_text(
        header + line.format(c="aaa111", p=names[0], s='"కోట్" ఉన్న ' + SENTENCES[0], a="twenties", g="male_masculine")
        + line.format(c="aaa111", p=names[1], s=SENTENCES[1], a="", g=""), encoding="utf-8")
    (root / "dev.tsv").write_text(header + line.format(c="bbb222", p=names[2], s=SENTENCES[2], a="", g=""),
                                  encoding="utf-8")
    (root / "test.tsv").write_text(header + "\tno_client.mp3\tid\tవాక్యం\n", encoding="utf-8")
    report, rows = check_import(tmp_path, tmp_path / "out", "commonvoice", 3,
                                {"commonvoice:aaa111", "commonvoice:bbb222"})
    assert any("test.tsv:2" in s for s in report.skipped)
    first = next(r for r in rows if r.meta.get("gender"))
    assert first.meta == {"gender": "male_masculine", "age": "twenties"}
    assert first.text.startswith("కోట్ ఉన్న")  # QUOTE_NONE: a quote is just a character


def test_indictts(tmp_path, speech):
    clips, sr = speech
    spk = tmp_path / "Telugu" / "female"
    ids = ["train_telugufem_00001", "train_telugufem_00002", "train_telugufem_00003"]
    for uid, x in zip(ids, clips):
        write_wav(spk / "wav" / f"{uid}.wav", resample(x, sr, 48000), 48000)
    lines = [f'( {uid} "{s}" )' for uid, s in zip(ids, SENTENCES)] + ["this is not festival"]
    (spk / "txt.done.data").write_text("\n".join(lines) + "\n", encoding="utf-8")
    report, rows = check_import(tmp_path, tmp_path / "out", "indictts", 3, {"indictts:Telugu_female"})
    assert any("txt.done.data:4" in s for s in report.skipped)


def test_respin(tmp_path, speech):
    clips, sr = speech
    root = tmp_path / "IISc_RESPIN_train_te_small"
    meta = {}
    for i, (x, s) in enumerate(zip(clips, SENTENCES)):
        spk = "90001" if i < 2 else "90002"
        uid = f"IISc_RESPIN_te_D1_{spk}_517297_M_BANK_9005{i}_9000000{i}"
        rel = f"D1/{spk}/{uid}.wav"
        write_wav(root / rel, resample(x, sr, 16000), 16000)
        meta[uid] = {"dialect": "D1", "domain": "Banking", "duration": len(x) / sr, "gender": "MALE",
                     "speaker_id": spk, "speaker_id_reassigned": "NA", "text": s, "wav_path": rel}
    meta["broken"] = {"text": "వాక్యం"}  # no wav_path
    (root / "meta_train_te_small.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    report, rows = check_import(tmp_path, tmp_path / "out", "respin", 3, {"respin:90001", "respin:90002"})
    assert any("broken" in s for s in report.skipped)
    assert rows[0].meta == {"dialect": "D1", "gender": "MALE", "domain": "Banking"}


def test_bad_sources_fail_clearly(tmp_path, speech):
    with pytest.raises(FileNotFoundError, match="not found"):
        import_dataset("openslr66", tmp_path / "nowhere", tmp_path / "out", progress=False)
    with pytest.raises(DatasetError, match="no line_index.tsv"):
        import_dataset("openslr66", tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(DatasetError, match="unknown dataset format"):
        scan("librispeech", tmp_path)
    # every line unusable: empty text, missing audio
    (tmp_path / "line_index.tsv").write_text("tef_1_1\t \ntef_1_2\tవాక్యం\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no usable clips.*empty text"):
        import_dataset("openslr66", tmp_path, tmp_path / "out", progress=False)
    # undecodable audio and a malformed RESPIN file
    (tmp_path / "line_index.tsv").write_text("tef_1_2\tవాక్యం\n", encoding="utf-8")
    (tmp_path / "tef_1_2.wav").write_bytes(b"not a wav")
    with pytest.raises(DatasetError, match="tef_1_2.wav: cannot decode"):
        import_dataset("openslr66", tmp_path, tmp_path / "out", progress=False)
    (tmp_path / "meta_x.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(DatasetError, match="not valid JSON"):
        scan("respin", tmp_path)


def test_cli_import_and_overwrite_protection(tmp_path, speech, capsys):
    clips, sr = speech
    src = tmp_path / "src"
    src.mkdir()
    write_wav(src / "tem_00001_00000001.wav", clips[0], sr)
    (src / "line_index.tsv").write_text(f"tem_00001_00000001\t{SENTENCES[0]}\n", encoding="utf-8")
    parser = argparse.ArgumentParser(prog="maata")
    commands.register(parser.add_subparsers())
    argv = ["data", "import", "--format", "openslr66", "--src", str(src), "--out", str(tmp_path / "o"),
            "--workers", "2"]  # the process-pool path
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert "manifest.jsonl" in capsys.readouterr().out
    with pytest.raises(DatasetError, match="already exists"):
        args.func(args)
    args = parser.parse_args(argv + ["--overwrite"])
    assert args.func(args) == 0
