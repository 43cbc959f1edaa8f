"""Natural-voice codec data: the English sentence generator, the Piper voice with its noise
passed in (determinism), `maata data piper` end to end (WAVs, manifest, resume) and
`maata data merge`."""

import argparse
import json
import re

import numpy as np
import pytest
import soundfile as sf

from maata.audio import rms_dbfs, write_wav
from maata.data import commands
from maata.data.dataset import CodecDataset
from maata.data.manifest import (ManifestError, ManifestRow, audio_path, merge_manifests,
                                 read_manifest, write_manifest)
from maata.data.phonemes import PhonemeVocab
from maata.data.piper import (STYLES, PiperError, PiperVoiceModel, noise_as_inputs, plan_jobs,
                              synthesize_piper_corpus)
from maata.text.english import LENGTHS, SHORT, TEMPLATES, EnglishGenerator, generate_english


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="maata")
    commands.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


# ---------------------------------------------------------------------------------------
# sentences


def test_english_sentences_are_varied_distinct_and_deterministic():
    a = generate_english(400, seed=5)
    assert a == generate_english(400, seed=5) and a != generate_english(400, seed=6)
    assert len(set(a)) == 400 and all(s.strip() and "{" not in s for s in a)
    assert any(s.endswith("?") for s in a) and any(s.endswith("!") for s in a)
    assert any(re.search(r"\d", s) for s in a) and any("$" in s or "%" in s for s in a)
    words = [len(s.split()) for s in a]
    assert min(words) <= 2 and max(words) >= 25            # short replies and long sentences
    multi = generate_english(20, seed=1, lengths=["multi"])
    assert all(len(re.findall(r"[.?!](\s|$)", s)) >= 2 for s in multi)
    with pytest.raises(ValueError, match="length kind"):
        generate_english(3, lengths=["huge"])


def test_every_template_fills():
    gen = EnglishGenerator(0)
    for template in TEMPLATES + SHORT:
        s = gen.fill(template)
        assert "{" not in s and not s[0].islower(), (template, s)
    assert set(LENGTHS) == {"short", "one", "long", "multi"}
    with pytest.raises(KeyError, match="nosuch"):
        gen.fill("a {nosuch} slot")


# ---------------------------------------------------------------------------------------
# the noise rewrite, on a model we build


def test_noise_as_inputs_slices_the_noise_we_pass():
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, None])
    graph = helper.make_graph([helper.make_node("RandomNormalLike", ["x"], ["n"], dtype=1),
                               helper.make_node("Add", ["x", "n"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    assert noise_as_inputs(model) == ["noise_0"]
    onnx.checker.check_model(model)
    sess = onnxruntime.InferenceSession(model.SerializeToString(),
                                        providers=["CPUExecutionProvider"])
    xv = np.ones((1, 2, 5), np.float32)
    noise = np.random.default_rng(0).standard_normal((1, 3, 50)).astype(np.float32)
    (out,) = sess.run(None, {"x": xv, "noise_0": noise})
    np.testing.assert_array_equal(out, xv + noise[:, :2, :5])


# ---------------------------------------------------------------------------------------
# the voice and the corpus


@pytest.fixture(scope="module")
def voice():
    return PiperVoiceModel()


def test_voice_is_deterministic_for_a_seed(voice):
    text = "Hello there. Is it going to rain on Friday?"
    a = voice.synthesize(text, seed=(0, 1))
    assert voice.sample_rate == 22050 and a.dtype == np.float32
    assert 1.5 < len(a) / voice.sample_rate < 6 and rms_dbfs(a) > -30
    voice.synthesize("Something else first, to move any hidden state.", seed=9)
    np.testing.assert_array_equal(voice.synthesize(text, seed=(0, 1)), a)
    b = voice.synthesize(text, seed=(0, 2))
    assert len(a) != len(b) or not np.array_equal(a, b)
    slow = voice.synthesize(text, seed=(0, 1), length_scale=1.3)
    assert len(slow) > 1.15 * len(a)
    with pytest.raises(PiperError, match="empty"):
        voice.synthesize("   ")
    with pytest.raises(PiperError, match="bad knobs"):
        voice.synthesize("Hi.", length_scale=0)


def test_plan_holds_out_sentences_covers_styles_and_is_prefix_stable():
    sentences = [f"sentence {i}" for i in range(200)]
    jobs = plan_jobs(sentences, seed=2, valid_fraction=0.1)
    assert jobs == plan_jobs(sentences, seed=2, valid_fraction=0.1)
    assert jobs[:37] == plan_jobs(sentences[:37], seed=2, valid_fraction=0.1)
    assert jobs != plan_jobs(sentences, seed=3, valid_fraction=0.1)
    valid = [i for i, j in enumerate(jobs) if j.split == "valid"]
    assert len(valid) == 20 and all(b - a == 10 for a, b in zip(valid, valid[1:]))
    assert {j.style for j in jobs} == set(STYLES) == {jobs[i].style for i in valid}
    for j in jobs:
        assert abs(j.length_scale / j.style.length_scale - 1) <= 0.06 + 1e-3
    assert len({j.length_scale for j in jobs}) > 150
    assert all(j.split == "train" for j in plan_jobs(sentences, valid_fraction=0))
    with pytest.raises(PiperError):
        plan_jobs(["a"], valid_fraction=1.0)


N = 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("piper")
    assert run_cli(["data", "piper", "--out", str(out), "--sentences", str(N), "--seed", "4",
                    "--valid-fraction", "0.34"]) == 0
    return out


def test_corpus_wavs_and_manifest(corpus):
    rows = read_manifest(corpus / "manifest.jsonl")
    assert len(rows) == N and len({r.text for r in rows}) == N
    assert {r.split for r in rows} == {"train", "valid"}
    assert sum(r.split == "valid" for r in rows) == 1
    for r in rows:
        assert r.source == "piper" and r.speaker.startswith("piper_joe_") and r.phonemes is None
        assert r.speaker[len("piper_joe_"):] in {s.name for s in STYLES}
        assert r.meta["voice"] == "en_US-joe-medium" and float(r.meta["length_scale"]) > 0
        audio, sr = sf.read(audio_path(corpus / "manifest.jsonl", r), dtype="float32")
        info = sf.info(audio_path(corpus / "manifest.jsonl", r))
        assert sr == 16000 and info.channels == 1 and info.subtype == "PCM_16"
        assert abs(len(audio) / sr - r.duration) < 1e-3 and r.duration > 0.3
        # -16 dBFS RMS unless that would clip: then the peak sits at the 0.99 limit
        peak = np.abs(audio).max()
        assert rms_dbfs(audio) < -15.9 and peak < 0.995
        assert abs(rms_dbfs(audio) + 16) < 0.1 or peak > 0.98
    ds = CodecDataset(corpus / "manifest.jsonl", "train", 1.0)
    item = ds[0]
    assert item["wav"].shape == (1, 16000) and (item["phonemes"] == -100).all()
    plan = json.loads((corpus / "piper_plan.json").read_text())
    assert plan["seed"] == 4 and len(plan["clips"]) == N and plan["valid_fraction"] == 0.34


def test_corpus_is_deterministic_across_runs_and_workers(corpus, tmp_path):
    report = synthesize_piper_corpus(tmp_path / "again", N, seed=4, workers=2,
                                     valid_fraction=0.34, progress=False)
    assert report.made == N and report.kept == 0 and report.realtime_factor > 0
    assert report.cpu_realtime_factor is None                  # children's CPU is not counted
    assert (tmp_path / "again" / "manifest.jsonl").read_bytes() == \
        (corpus / "manifest.jsonl").read_bytes()
    for r in read_manifest(corpus / "manifest.jsonl"):
        assert (tmp_path / "again" / r.path).read_bytes() == (corpus / r.path).read_bytes()


def test_corpus_resumes_and_refuses_other_arguments(corpus, tmp_path):
    import shutil

    out = tmp_path / "c"
    shutil.copytree(corpus, out)
    rows = read_manifest(out / "manifest.jsonl")
    original = {r.path: (out / r.path).read_bytes() for r in rows}
    (out / rows[0].path).unlink()                               # never written
    (out / rows[1].path).write_bytes(b"RIFF broken")            # cut short
    (out / "manifest.jsonl").unlink()
    report = synthesize_piper_corpus(out, N, seed=4, valid_fraction=0.34, progress=False)
    assert (report.made, report.kept) == (2, 1) and report.cpu_realtime_factor > 0
    assert {r.path: (out / r.path).read_bytes() for r in rows} == original
    assert (out / "manifest.jsonl").read_bytes() == (corpus / "manifest.jsonl").read_bytes()
    # a run stopped early is finished with fewer sentences: nothing new to make
    fewer = synthesize_piper_corpus(out, N - 1, seed=4, valid_fraction=0.34, progress=False)
    assert (fewer.made, fewer.kept) == (0, N - 1)
    assert [r.path for r in read_manifest(out / "manifest.jsonl")] == \
        sorted(f"wavs/{p.parent.name}/{p.name}" for p in (out / "wavs").glob("*/pip00000[01].wav"))
    assert len(json.loads((out / "piper_plan.json").read_text())["clips"]) == N
    with pytest.raises(PiperError, match="seed"):
        synthesize_piper_corpus(out, N, seed=5, valid_fraction=0.34, progress=False)
    with pytest.raises(PiperError, match="valid_fraction"):
        synthesize_piper_corpus(out, N, seed=4, progress=False)
    plan = json.loads((out / "piper_plan.json").read_text())
    plan["clips"][1] = "0" * 16                                  # a clip planned differently
    (out / "piper_plan.json").write_text(json.dumps(plan))
    with pytest.raises(PiperError, match="clip plans"):
        synthesize_piper_corpus(out, N, seed=4, valid_fraction=0.34, progress=False)
    with pytest.raises(PiperError, match="at least 1"):
        synthesize_piper_corpus(tmp_path / "x", 0, progress=False)
    assert run_cli(["data", "piper", "--out", str(out), "--sentences", "2", "--seed", "5",
                    "--overwrite"]) == 0
    assert len(read_manifest(out / "manifest.jsonl")) == 2


# ---------------------------------------------------------------------------------------
# merge


def _tiny_corpus(root, speakers, aligned):
    rows = []
    for i, spk in enumerate(speakers):
        rel = f"wavs/{spk}/u{i}.wav"
        tone = 0.1 * np.sin(np.linspace(0, 200 * (i + 1), 16000)).astype(np.float32)
        write_wav(root / rel, tone, 16000)
        rows.append(ManifestRow(path=rel, duration=1.0, speaker=spk, source="test", text=f"t{i}",
                                split="train" if i else "valid",
                                phonemes=[(0.0, 0.5, "a"), (0.5, 1.0, "k")] if aligned else None))
    write_manifest(root / "manifest.jsonl", rows)
    if aligned:
        PhonemeVocab.from_manifest(rows).save(PhonemeVocab.path_for(root / "manifest.jsonl"))
    return root / "manifest.jsonl"


@pytest.mark.parametrize("absolute", [False, True])
def test_merge_keeps_every_row_pointing_at_its_audio(tmp_path, absolute):
    a = _tiny_corpus(tmp_path / "a", ["s1", "s2"], aligned=True)
    b = _tiny_corpus(tmp_path / "deep" / "b", ["p1", "p2", "p3"], aligned=False)
    out = tmp_path / "merged" / "manifest.jsonl"
    report = merge_manifests(out, [a, b], absolute=absolute)
    merged = read_manifest(out)
    assert len(merged) == 5 and report.stats["all"].clips == 5
    sources = [(a, r) for r in read_manifest(a)] + [(b, r) for r in read_manifest(b)]
    for (src, r), m in zip(sources, merged):
        assert audio_path(out, m).resolve() == audio_path(src, r).resolve()
        assert (m.speaker, m.split, m.text, m.phonemes) == (r.speaker, r.split, r.text, r.phonemes)
        assert m.path.startswith("/") == absolute
    assert PhonemeVocab.load(report.vocab) == PhonemeVocab.load(PhonemeVocab.path_for(a))
    ds = CodecDataset(out, "train", 0.5, vocab=PhonemeVocab.load(report.vocab))
    assert len(ds) == 3 and ds[0]["wav"].shape == (1, 8000)
    # moving the whole tree keeps relative paths valid
    if not absolute:
        import shutil
        shutil.move(tmp_path, tmp_path.with_name(tmp_path.name + "_moved"))
        moved = tmp_path.with_name(tmp_path.name + "_moved") / "merged" / "manifest.jsonl"
        assert all(audio_path(moved, m).is_file() for m in read_manifest(moved))


def test_merge_refuses_what_would_corrupt_a_corpus(tmp_path):
    a = _tiny_corpus(tmp_path / "a", ["s1", "s2"], aligned=False)
    b = _tiny_corpus(tmp_path / "b", ["s2", "s3"], aligned=False)
    c = _tiny_corpus(tmp_path / "c", ["c1"], aligned=False)
    with pytest.raises(ManifestError, match="speaker 's2'"):
        merge_manifests(tmp_path / "m.jsonl", [a, b])
    with pytest.raises(ManifestError, match="listed twice"):
        merge_manifests(tmp_path / "m.jsonl", [a, a])
    with pytest.raises(ManifestError, match="also an input"):
        merge_manifests(a, [a, c])
    with pytest.raises(ManifestError, match="nothing to merge"):
        merge_manifests(tmp_path / "m.jsonl", [])
    (tmp_path / "c" / "wavs" / "c1" / "u0.wav").unlink()
    with pytest.raises(ManifestError, match="do not exist"):
        merge_manifests(tmp_path / "m.jsonl", [a, c])
    assert merge_manifests(tmp_path / "m.jsonl", [a, c], check_audio=False).vocab is None
    with pytest.raises(FileNotFoundError):
        merge_manifests(tmp_path / "m.jsonl", [tmp_path / "nope.jsonl"])


def test_cli_merge(tmp_path, capsys):
    a = _tiny_corpus(tmp_path / "a", ["s1"], aligned=True)
    b = _tiny_corpus(tmp_path / "b", ["p1", "p2"], aligned=False)
    out = tmp_path / "m" / "manifest.jsonl"
    assert run_cli(["data", "merge", "--out", str(out), str(a), str(b)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"all:\s+3 clips", printed) and "2 rows from" in printed
    assert len(read_manifest(out)) == 3 and (out.parent / "phoneme_vocab.json").is_file()


def test_concurrent_writers_of_one_manifest_do_not_collide(tmp_path):
    """Two `maata data merge` runs into the same file once raced on one temporary name
    (FileNotFoundError on rename); every write now has its own temporary file."""
    from concurrent.futures import ThreadPoolExecutor

    rows = [ManifestRow(path=f"a/{i}.wav", duration=1.0, speaker="s", source="t", text=f"x{i}")
            for i in range(2000)]
    out = tmp_path / "m.jsonl"
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: write_manifest(out, rows), range(16)))
    assert read_manifest(out) == rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]
