"""The synthetic corpus: espeak-ng via ctypes (audio + phoneme events), festival, the
job plan, the corpus builder and the `maata data synth` command."""

import argparse
import json

import numpy as np
import pytest
import soundfile as sf

from maata.audio import rms_dbfs
from maata.data import commands
from maata.data.manifest import read_manifest
from maata.data.phonemes import PhonemeVocab
from maata.data.synth import (EspeakVoice, FestivalVoice, SynthError, espeak_engine,
                              espeak_variants, espeak_voices, festival_synthesize,
                              festival_voices, plan_jobs, synthesize_corpus)

TEXT = "నమస్కారం, మీరు ఎలా ఉన్నారు?"


def run_cli(argv):
    """`maata data ...` through this module's own parser (the other command modules are
    not needed for it)."""
    parser = argparse.ArgumentParser(prog="maata")
    commands.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_espeak_gives_audio_and_a_phoneme_alignment():
    engine = espeak_engine()
    audio, alignment = engine.synthesize(TEXT, voice="te+f3", rate=170, pitch=60)
    duration = len(audio) / engine.sample_rate
    assert engine.sample_rate == 22050 and audio.dtype == np.float32
    assert 1.0 < duration < 5.0 and rms_dbfs(audio) > -40
    starts = [s for s, _, _ in alignment]
    assert starts == sorted(starts) and alignment[0][0] == 0.0
    assert all(e > s for s, e, _ in alignment)
    assert abs(alignment[-1][1] - duration) < 1e-6              # covers the whole clip
    for (_, end, _), (start, _, _) in zip(alignment, alignment[1:]):
        assert end == start                                     # contiguous
    symbols = {p for _, _, p in alignment}
    assert {"n", "a", "m"} <= symbols and len(alignment) > 15


def test_espeak_voice_parameters_change_the_audio():
    engine = espeak_engine()
    slow, _ = engine.synthesize(TEXT, voice="te+m1", rate=120)
    fast, _ = engine.synthesize(TEXT, voice="te+m1", rate=220)
    assert len(slow) > 1.4 * len(fast)
    low, _ = engine.synthesize(TEXT, voice="te+m1", pitch=10)
    high, _ = engine.synthesize(TEXT, voice="te+m1", pitch=90)
    assert not np.array_equal(low[: len(high)], high[: len(low)])


def test_espeak_audio_does_not_depend_on_what_was_spoken_before():
    engine = espeak_engine()
    first, align = engine.synthesize(TEXT, voice="te+Andy", rate=160, pitch=40)
    engine.synthesize("మరో వాక్యం, వేరే గొంతుతో.", voice="te+klatt4", rate=200, pitch=90)
    again, align_again = engine.synthesize(TEXT, voice="te+Andy", rate=160, pitch=40)
    assert np.array_equal(first, again) and align == align_again


def test_espeak_word_onsets_and_ssml():
    speech = espeak_engine().speak(TEXT, voice="te+f1", pitch_range=80)
    words = [TEXT[pos - 1:pos - 1 + n] for pos, n, _ in speech.words]
    assert words == ["నమస్కారం", "మీరు", "ఎలా", "ఉన్నారు"]
    onsets = [t for _, _, t in speech.words]
    assert onsets == sorted(onsets) and onsets[-1] < len(speech.audio) / 22050
    ssml = espeak_engine().speak('<speak>నమస్కారం <prosody rate="slow">మీరు</prosody></speak>',
                                 voice="te+f1", ssml=True)
    assert len(ssml.words) == 2 and len(ssml.audio) > 0


def test_espeak_rejects_empty_text():
    with pytest.raises(SynthError, match="empty"):
        espeak_engine().synthesize("   ")


def test_espeak_variants_are_found_on_disk():
    variants = espeak_variants()
    assert {"f1", "m1", "klatt"} <= set(variants) and len(variants) >= 50


def test_festival_speaks_telugu_and_rejects_empty_text():
    audio, sr = festival_synthesize("నమస్కారం", stretch=1.0, f0_start=150, f0_end=110)
    assert sr == 16000 and 0.3 < len(audio) / sr < 3 and rms_dbfs(audio) > -40
    with pytest.raises(SynthError, match="empty"):
        festival_synthesize("")


def test_plan_deals_sentences_evenly_and_deterministically():
    import random

    voices = espeak_voices(["f1", "m1", "klatt"], random.Random(0))
    assert len({v.speaker for v in voices}) == 6 and len({v.group for v in voices}) == 3
    jobs = plan_jobs([f"వాక్యం {i}" for i in range(12)], voices, seed=1)
    assert [j.uid for j in jobs] == [f"syn{i:06d}" for i in range(12)]
    counts = {}
    for j in jobs:
        counts[j.voice.speaker] = counts.get(j.voice.speaker, 0) + 1
    assert set(counts.values()) == {2}
    assert plan_jobs([f"వాక్యం {i}" for i in range(12)], voices, seed=1) == jobs
    assert len({v.speaker for v in festival_voices()}) == 9
    with pytest.raises(SynthError):
        plan_jobs(["ఒకటి"], [])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    report = synthesize_corpus(out, 8, workers=1, seed=0, festival_fraction=0.25,
                               variants=["f1", "m3", "klatt", "iven", "Andy"], progress=False)
    return out, report


def test_corpus_files_and_manifest(corpus):
    out, report = corpus
    rows = read_manifest(report.manifest)
    assert len(rows) == 8 and not report.failures
    assert {r.source for r in rows} == {"espeak", "festival"}
    for r in rows:
        x, sr = sf.read(out / r.path, dtype="float32")
        assert sr == 16000 and x.ndim == 1
        assert abs(len(x) / sr - r.duration) < 1e-3 and 0.5 < r.duration <= 30
        # -16 dBFS unless a peaky clip had to be backed off to stay below full scale
        assert -22 < rms_dbfs(x) < -15.5 and np.abs(x).max() <= 0.991
        assert r.text and not any(c.isdigit() for c in r.text)
        if r.source == "espeak":
            assert r.phonemes and abs(r.phonemes[-1][1] - r.duration) < 0.01
        else:
            assert r.phonemes is None and r.split == "train"  # the one human voice trains


def test_corpus_splits_hold_out_whole_variants(corpus):
    _, report = corpus
    rows = read_manifest(report.manifest)
    split_of_variant = {}
    for r in rows:
        if r.source == "espeak":
            variant = r.speaker.rsplit("-p", 1)[0]
            split_of_variant.setdefault(variant, set()).add(r.split)
    assert all(len(s) == 1 for s in split_of_variant.values())
    assert {"train", "valid", "test"} <= {r.split for r in rows}


def test_corpus_vocab(corpus):
    _, report = corpus
    vocab = PhonemeVocab.load(report.vocab)
    assert report.vocab == PhonemeVocab.path_for(report.manifest)
    assert vocab.symbols[:2] == ("<sil>", "<other>") and 20 < len(vocab) <= 128
    assert vocab.id_of("_:") == 0 and vocab.id_of("a") >= 2


def test_corpus_is_deterministic(corpus, tmp_path):
    out, report = corpus
    again = synthesize_corpus(tmp_path, 8, workers=1, seed=0, festival_fraction=0.25,
                              variants=["f1", "m3", "klatt", "iven", "Andy"], progress=False)
    first = [json.loads(line) for line in report.manifest.read_text().splitlines()]
    second = [json.loads(line) for line in again.manifest.read_text().splitlines()]
    assert first == second
    a, _ = sf.read(out / first[0]["path"])
    b, _ = sf.read(tmp_path / second[0]["path"])
    assert np.array_equal(a, b)


def test_corpus_refuses_to_overwrite_and_bad_arguments(corpus, tmp_path):
    out, _ = corpus
    with pytest.raises(SynthError, match="already exists"):
        synthesize_corpus(out, 2, progress=False)
    with pytest.raises(SynthError, match="at least 1"):
        synthesize_corpus(tmp_path, 0, progress=False)
    with pytest.raises(SynthError, match="fraction"):
        synthesize_corpus(tmp_path, 2, festival_fraction=1.5, progress=False)
    with pytest.raises(SynthError, match="unknown espeak-ng variant"):
        synthesize_corpus(tmp_path, 2, variants=["nosuchvoice"], progress=False)


def test_cli_synth_with_parallel_workers(tmp_path, capsys):
    out = tmp_path / "c"
    assert run_cli(["data", "synth", "--out", str(out), "--sentences", "4", "--workers", "2",
                    "--festival-fraction", "0", "--variants", "f2,m2"]) == 0
    printed = capsys.readouterr().out
    assert "manifest.jsonl" in printed and "classes" in printed
    rows = read_manifest(out / "manifest.jsonl")
    assert len(rows) == 4 and all(r.phonemes for r in rows)
    assert {r.speaker.split("-p")[0] for r in rows} <= {"espeak-f2", "espeak-m2"}


def test_voice_names_are_filesystem_safe():
    assert EspeakVoice("Mr serious", 40, 170).speaker == "espeak-Mr_serious-p40"
    assert FestivalVoice(1.4, 140, 105).speaker == "festival-nsk-d14-f140"
