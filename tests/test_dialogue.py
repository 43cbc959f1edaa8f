"""Dialogue data: agent voices and emotional prosody, turn timing, frame-aligned text,
speaker-disjoint splits, code shards, reference answers, speech shards and bad input.

Real espeak-ng (and festival, for male_2) synthesis; a tiny untrained codec."""

import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch

from maata.checkpoint import load_codec, save_model
from maata.codec.model import Codec, load_preset
from maata.data import commands, dialogue_commands
from maata.data import voices as V
from maata.data.conversations import load_conversations
from maata.data.dialogue import (REFERENCE, DialogueError, DialogueSpec, TimingConfig, TurnSpec,
                                 build_dialogues, build_speech_shards, plan_dialogues, render_dialogue,
                                 train_dialogue_tokenizer, user_speakers)
from maata.data.manifest import SPLITS, ManifestRow, write_manifest
from maata.data.shards import CODE_SPACE_NAME, ShardReader, read_code_space, shard_paths
from maata.data.synth import EspeakVoice
from maata.audio import write_wav
from maata.lm.model import EMOTIONS, VOICES
from maata.text.tokenizer import EPAD_ID, Tokenizer

SR, HOP = 16000, 640
TEXT = "నమస్తే! నేను బాగున్నాను, మీరు ఎలా ఉన్నారు?"
USER = EspeakVoice("klatt", 40, 170)


@pytest.fixture(scope="module")
def codec_path(tmp_path_factory):
    torch.manual_seed(0)
    cfg = load_preset("default", env_prefix=None, base_channels=4,
                      frame={"enc_dim": 32, "enc_layers": 1, "dec_dim": 32, "dec_layers": 1, "fine_dim": 32})
    return save_model(tmp_path_factory.mktemp("codec") / "c.safetensors", Codec(cfg), cfg, kind="codec")


@pytest.fixture(scope="module")
def scripts():
    """Two intents (two phrasings of each hand-written question: one family held out) and an exchange."""
    cs = load_conversations()
    intents = tuple(dataclasses.replace(i, phrasings=tuple(p for p in i.phrasings if p.rule == "written")
                                        + tuple(p for p in i.phrasings if p.rule == "opener")[:1])
                    for i in cs.intents[:2])
    return dataclasses.replace(cs, intents=intents, exchanges=cs.exchanges[:1])


@pytest.fixture(scope="module")
def tokenizer(scripts):
    return train_dialogue_tokenizer(scripts, n_sentences=0, vocab_size=600)


@pytest.fixture(scope="module")
def built(tmp_path_factory, codec_path, scripts):
    out = tmp_path_factory.mktemp("dialogues")
    report = build_dialogues(out, codec_path, conversations=scripts, repeats=1, seed=0,
                             timing=TimingConfig(interrupt_prob=0.5, backchannel_min_turn=1.2),
                             tokenizer_sentences=0, vocab_size=600, shard_size=5, progress=False,
                             reference_emotion_intents=1)
    return out, report


def nonzero_span(x):
    idx = np.flatnonzero(x)
    return (int(idx[0]), int(idx[-1]) + 1) if idx.size else None


# ---------------------------------------------------------------------------------------
# voices and prosody


def test_voice_and_emotion_tables_follow_the_model():
    assert set(V.AGENT_VOICES) == set(VOICES) and set(V.EMOTION_PROSODY) == set(EMOTIONS)
    assert V.agent_voice("male_2").engine == "festival"
    with pytest.raises(V.VoiceError, match="unknown agent voice 'robot'"):
        V.agent_voice("robot")
    with pytest.raises(V.VoiceError, match="unknown emotion 'ANGRY'"):
        V.prosody_for("ANGRY")
    with pytest.raises(V.VoiceError, match="reserved for an agent"):
        V.speak_user(TEXT, EspeakVoice("f2", 50, 170))


def test_espeak_word_times_follow_the_words():
    s = V.espeak_speak(TEXT, "m1", 50, 170)
    times = [t for t, _ in s.words]
    assert [w for _, w in s.words] == TEXT.split()
    assert times[0] < 0.05 and times == sorted(times) and times[-1] < s.duration - 0.2
    assert all(b - a > 0.1 for a, b in zip(times, times[1:]))  # events, not a guess
    # per-word SSML prosody keeps the word times mapped to the right words
    heavy = V.espeak_speak(TEXT, "m1", 50, 170, prosody=V.prosody_for("TELUGU_ACCENT_HEAVY"))
    assert [w for _, w in heavy.words] == TEXT.split()
    assert all(b - a > 0.1 for a, b in zip([t for t, _ in heavy.words], [t for t, _ in heavy.words][1:]))


@pytest.mark.parametrize("voice", ["female_1", "male_2"])
def test_emotion_prosody_changes_pitch_and_speed(voice):
    neutral = V.speak_agent(TEXT, voice, "NEUTRAL")
    happy = V.speak_agent(TEXT, voice, "HAPPY")
    assert V.mean_f0(happy.audio, SR) > 1.05 * V.mean_f0(neutral.audio, SR)
    assert happy.duration < 0.97 * neutral.duration
    if voice == "female_1":  # (festival is slow: one comparison is enough there)
        empathy = V.speak_agent(TEXT, voice, "EMPATHY")
        assert V.mean_f0(neutral.audio, SR) > 1.05 * V.mean_f0(empathy.audio, SR)
        assert empathy.duration > 1.05 * neutral.duration


def test_laugh_and_thinking_add_sounds():
    neutral = V.speak_agent(TEXT, "female_2", "NEUTRAL")
    laugh = V.speak_agent(TEXT, "female_2", "LAUGH", rng=np.random.default_rng(3))
    thinking = V.speak_agent(TEXT, "female_2", "THINKING")
    assert laugh.duration > neutral.duration + 0.4
    assert [w for _, w in laugh.words] == TEXT.split()  # laughter has no words
    assert thinking.words[0][1] == V.THINKING_FILLER and thinking.words[1][0] > 0.5
    heavy = V.speak_agent(TEXT, "male_1", "TELUGU_ACCENT_HEAVY")
    assert heavy.duration > V.speak_agent(TEXT, "male_1", "NEUTRAL").duration * 1.1


# ---------------------------------------------------------------------------------------
# speakers, plan, rendering


def test_user_speakers_are_split_disjointly_and_never_agents():
    spk = user_speakers(seed=0)
    assert all(spk[s] for s in SPLITS)
    groups = {s: {v.group for v in spk[s]} for s in SPLITS}
    assert not (groups["train"] & groups["valid"] or groups["train"] & groups["test"]
                or groups["valid"] & groups["test"])
    assert not {v.variant for s in SPLITS for v in spk[s]} & V.AGENT_VARIANTS
    assert len(spk["train"]) > 100


def test_plan_covers_intents_voices_and_splits(scripts):
    plans = plan_dialogues(scripts, repeats=4, seed=1)
    qa = [p for p in plans if p.kind == "qa"]
    assert len(qa) == sum(len(i.all_phrasings()) for i in scripts.intents) * 4
    assert all(p.phrasing.text == p.turns[0].text for p in qa)
    held = [p for p in qa if p.phrasing.heldout]
    assert held and {p.split for p in held} == {"valid", "test"}  # never trained on
    train_texts = {t.text for p in plans if p.split == "train" for t in p.turns if t.speaker == "user"}
    assert not train_texts & {p.text for i in scripts.intents for p in i.phrasings if p.heldout}
    assert len([p for p in plans if p.kind == "exchange"]) == len(scripts.exchanges) * 4
    for intent in scripts.intents:
        mine = [p for p in qa if p.intents[0] == intent.id]
        assert {p.split for p in mine} == set(SPLITS)  # every intent is evaluated
        assert {p.voice for p in mine} == set(VOICES)  # and answered in every voice
    assert plans == plan_dialogues(scripts, repeats=4, seed=1)  # deterministic
    with pytest.raises(DialogueError, match="empty"):
        plan_dialogues(dataclasses.replace(scripts, intents=(), exchanges=()))


def _spec():
    long_turn = "హలో, నేను రేపు ఉదయం హైదరాబాద్ నుంచి విజయవాడ వెళ్ళాలి, బస్సు టికెట్ బుక్ చేయగలరా?"
    return DialogueSpec(
        "t-1", "exchange", "train", USER, "female_1",
        (TurnSpec("user", long_turn, backchannel="అవును"),
         TurnSpec("agent", "సరే, ఏ టైం కి బస్సు కావాలి, ఉదయం ఆరు గంటలకి ఒకటి ఉంది.", "HAPPY"),
         TurnSpec("user", "ఎనిమిది గంటలకి ఏమైనా ఉందా?", prefix="ఆగండి"),
         TurnSpec("agent", "ఉంది, ఎనిమిదిన్నరకి ఏసీ బస్సు ఉంది.", "NEUTRAL")),
        seed=5)


def test_render_timing_backchannel_and_interruption(tokenizer):
    timing = TimingConfig(backchannel_min_turn=1.0, overlap_prob=0.0, response_gap=(0.2, 0.6), early_start_prob=0.0)
    r = render_dialogue(_spec(), timing, SR, HOP)
    assert r.user.shape == r.agent.shape and len(r.user) % HOP == 0 and r.frames * HOP == len(r.user)
    assert len(r.user_turns) == 2 and len(r.agent_turns) == 2
    assert len(r.backchannels) == 1 and len(r.interruptions) == 1

    # the agent answers 200-600 ms after the user stops (measured on the audio)
    for (u0, u1), (a0, a1) in [(r.user_turns[0], r.agent_turns[0]), (r.user_turns[1], r.agent_turns[1])]:
        user_stop = nonzero_span(r.user[:a0])[1]
        agent_start = a0 + nonzero_span(r.agent[a0:a1])[0]
        assert 0.19 * SR <= agent_start - user_stop <= 0.61 * SR
        assert np.abs(r.agent[a0:a0 + int(0.1 * SR)]).max() > 0.01  # real speech right away

    # while the user speaks the agent is silent, except for its backchannel and the turn
    # the user is interrupting
    allowed = np.zeros(len(r.agent), bool)
    for s, e in r.backchannels + [r.agent_turns[0]]:
        allowed[s:e] = True
    for s, e in r.user_turns:
        assert not np.any(r.agent[s:e][~allowed[s:e]])
    b0, b1 = r.backchannels[0]
    u0, u1 = r.user_turns[0]
    assert u0 < b0 < b1 < u1
    bc_rms = np.sqrt(np.mean(r.agent[b0:b1] ** 2))
    turn_rms = np.sqrt(np.mean(r.agent[slice(*r.agent_turns[1])] ** 2))
    assert bc_rms < turn_rms / 2  # low energy

    # the interruption: the user starts inside the agent's turn, the agent is silent within
    # 200 ms and stays silent until its next turn
    at, stop = r.interruptions[0]
    a0, a1 = r.agent_turns[0]
    assert a0 < at < a1 and r.user_turns[1][0] == at
    assert stop - at <= 0.2 * SR and a1 == stop
    assert not np.any(r.agent[stop:r.agent_turns[1][0]])
    assert np.abs(r.user[at:at + int(0.1 * SR)]).max() > 0.01

    # text stream: tokens only inside the agent's segments, words in order, the interrupted
    # turn loses the words it never said
    text, placed = r.text_tokens(tokenizer)
    assert text.shape == (r.frames,) and text.dtype == np.int32
    inside = np.zeros(r.frames, bool)
    for s, e in r.agent_turns + r.backchannels:
        inside[s // HOP:-(-e // HOP)] = True
    assert np.all(text[~inside] == EPAD_ID)
    second = _spec().turns[3].text
    f0, f1 = r.agent_turns[1][0] // HOP, -(-r.agent_turns[1][1] // HOP)
    assert tokenizer.decode(text[f0:f1]).strip() == second
    first = tokenizer.decode(text[r.agent_turns[0][0] // HOP:-(-stop // HOP)]).strip()
    assert first and _spec().turns[1].text.startswith(first.rsplit(" ", 1)[0]) and first != _spec().turns[1].text
    frames = [f for f, _ in placed]
    assert frames == sorted(frames)
    for f, word in placed:
        assert inside[f]

    # emotion: HAPPY up to the end of the first agent turn, then NEUTRAL
    emo = r.emotion_ids()
    assert emo.dtype == np.int8 and emo.shape == (r.frames,)
    assert emo[0] == EMOTIONS.index("HAPPY") and emo[-1] == EMOTIONS.index("NEUTRAL")
    meta = r.meta(placed)
    assert meta["interruptions"] == [[at // HOP, -(-stop // HOP)]]
    assert meta["agent_turns"][1] == [f0, f1]


def test_rendering_is_deterministic(scripts):
    spec = _spec()
    a = render_dialogue(spec)
    for other in plan_dialogues(scripts, repeats=1, seed=3)[:3]:  # whatever is spoken in between
        render_dialogue(other)
    b = render_dialogue(spec)
    assert np.array_equal(a.user, b.user) and np.array_equal(a.agent, b.agent)
    assert a.agent_turns == b.agent_turns and a.backchannels == b.backchannels


def test_timing_config_is_checked():
    with pytest.raises(DialogueError, match="200 ms"):
        TimingConfig(stop_delay=(0.1, 0.3))
    with pytest.raises(DialogueError, match="response_gap"):
        TimingConfig(response_gap=(0.6, 0.2))
    with pytest.raises(DialogueError, match="probability"):
        TimingConfig(interrupt_prob=1.5)


# ---------------------------------------------------------------------------------------
# the dataset


def test_build_writes_consistent_shards(built, scripts):
    out, report = built
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["dialogues"] == sum(len(i.all_phrasings()) for i in scripts.intents) + len(scripts.exchanges)
    assert all(stats["splits"][s]["records"] for s in SPLITS)
    assert not report.failures
    tok = Tokenizer.load(out / "tokenizer.json")
    speakers = {}
    seen = 0
    for split in SPLITS:
        speakers[split] = set()
        for path in shard_paths(out, split):
            reader = ShardReader(path)
            assert sorted(reader.fields) == ["agent", "emotion", "text", "user", "user_text"]
            for rec in reader:
                seen += 1
                m = rec.meta
                T = rec.frames
                assert rec.arrays["user"].shape == rec.arrays["agent"].shape == (8, T)
                assert rec.arrays["user"].dtype == np.int16 and rec.arrays["text"].dtype == np.int32
                assert rec.arrays["emotion"].dtype == np.int8 and T == m["frames"]
                assert m["split"] == split and m["voice"] in VOICES and m["kind"] in ("qa", "exchange")
                assert m["emotion"] in EMOTIONS and m["user_speaker"]
                if m["kind"] == "qa":
                    assert m["intent"] in {i.id for i in scripts.intents}
                for s, e in m["agent_turns"] + m["user_turns"]:
                    assert 0 <= s < e <= T
                for (us, ue), (as_, ae) in zip(m["user_turns"], m["agent_turns"]):
                    assert ue - 4 <= as_  # the agent answers after the user's turn (or ≤ 150 ms early)
                # the user's words, each once its end has been heard
                user_text = rec.arrays["user_text"]
                said = " ".join(t["text"] for t in m["turns"] if t["speaker"] == "user")
                assert tok.decode(user_text).split() == said.split()
                first_user = min(s for s, _ in m["user_turns"])
                assert np.all(user_text[:first_user + 1] == EPAD_ID)
                assert [w for _, w in m["user_words"]] == said.split()
                if m["kind"] == "qa":
                    assert m["phrasing"]["text"] == m["turns"][0]["text"]
                    assert m["heldout_phrasing"] == m["phrasing"]["heldout"]
                    assert split != "train" or not m["heldout_phrasing"]
                text = rec.arrays["text"]
                assert (text != EPAD_ID).any()
                inside = np.zeros(T, bool)
                for s, e in m["agent_turns"] + m["backchannels"]:
                    inside[s:e] = True
                assert np.all(text[~inside] == EPAD_ID)  # words inside the agent's turns
                if not m["interruptions"]:
                    s, e = m["agent_turns"][-1]
                    assert tok.decode(text[s:e]).strip() == m["turns"][-1]["text"]
                for f, e in m["interruptions"]:
                    assert e - f <= 6  # 200 ms + rounding to frames
                speakers[split].add(m["user_group"])
    assert seen == stats["dialogues"]
    assert not (speakers["train"] & speakers["valid"] or speakers["train"] & speakers["test"]
                or speakers["valid"] & speakers["test"])
    assert sum(stats["splits"][s]["interruptions"] for s in SPLITS) > 0
    assert sum(stats["splits"][s]["backchannels"] for s in SPLITS) > 0


def test_build_records_which_codec_made_the_codes(built, codec_path):
    out, _ = built
    space = load_codec(codec_path).code_space()
    assert read_code_space(out) == space
    assert read_code_space(shard_paths(out, "train")[0]) == space  # found from a shard file too
    info = json.loads((out / CODE_SPACE_NAME).read_text(encoding="utf-8"))
    assert info["codec"] == str(codec_path) and info["n_q"] == 8


def test_build_of_some_splits_renders_them_as_the_full_build(built, codec_path, scripts, tmp_path):
    """``splits=["test"]`` writes only the test shards, with the same dialogues (and, with the same
    codec, the same codes) as the full build: the way to evaluate another codec's model on them."""
    out, _ = built
    part = build_dialogues(tmp_path / "test_only", codec_path, conversations=scripts, repeats=1, seed=0,
                           timing=TimingConfig(interrupt_prob=0.5, backchannel_min_turn=1.2),
                           tokenizer=out / "tokenizer.json", shard_size=5, progress=False,
                           reference_emotion_intents=1, splits=["test"])
    assert not (tmp_path / "test_only" / "train").exists() and not (tmp_path / "test_only" / "reference").exists()
    full = {r.meta["id"]: r for p in shard_paths(out, "test") for r in ShardReader(p)}
    mine = {r.meta["id"]: r for p in shard_paths(tmp_path / "test_only", "test") for r in ShardReader(p)}
    assert part.stats["dialogues"] == len(mine) == len(full) > 0 and mine.keys() == full.keys()
    for key, rec in mine.items():
        for name in ("user", "agent", "text", "user_text"):
            np.testing.assert_array_equal(rec.arrays[name], full[key].arrays[name])
    with pytest.raises(DialogueError, match="splits must be among"):
        build_dialogues(tmp_path / "bad", codec_path, conversations=scripts, repeats=1, splits=["tset"])


def test_reference_answers_for_every_intent_and_voice(built, scripts):
    out, _ = built
    refs = [rec for p in shard_paths(out, REFERENCE) for rec in ShardReader(p)]
    got = {(r.meta["intent"], r.meta["voice"]) for r in refs}
    assert got == {(i.id, v) for i in scripts.intents for v in VOICES}
    for r in refs:
        assert r.arrays["codes"].shape == (8, r.frames) and r.arrays["codes"].dtype == np.int16
        assert r.meta["text"] == scripts.intent(r.meta["intent"]).answer


def test_bad_inputs(tmp_path, codec_path, scripts, built):
    with pytest.raises(FileNotFoundError, match="codec checkpoint not found"):
        build_dialogues(tmp_path / "a", tmp_path / "missing.safetensors", conversations=scripts)
    cfg = load_preset("default", env_prefix=None, base_channels=4,
                      frame={"enc_dim": 32, "enc_layers": 1, "dec_dim": 32, "dec_layers": 1, "fine_dim": 32})
    not_codec = save_model(tmp_path / "lm.safetensors", Codec(cfg), cfg, kind="lm")
    with pytest.raises(ValueError, match="not a codec checkpoint"):
        build_dialogues(tmp_path / "l", not_codec, conversations=scripts)
    with pytest.raises(DialogueError, match="empty"):
        build_dialogues(tmp_path / "b", codec_path, conversations=dataclasses.replace(scripts, intents=(), exchanges=()))
    bad = dataclasses.replace(scripts, intents=(dataclasses.replace(scripts.intents[0], emotion="ANGRY"),))
    with pytest.raises(V.VoiceError, match="unknown emotion 'ANGRY'"):
        build_dialogues(tmp_path / "c", codec_path, conversations=bad, tokenizer_sentences=0)
    with pytest.raises(V.VoiceError, match="unknown agent voice"):
        render_dialogue(dataclasses.replace(_spec(), voice="male_3"))
    with pytest.raises(DialogueError, match="already exists"):
        build_dialogues(built[0], codec_path, conversations=scripts)
    with pytest.raises(DialogueError, match="unknown espeak-ng variant"):
        user_speakers(variants=["no-such-voice"])


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="maata")
    sub = parser.add_subparsers()
    commands.register(sub)
    dialogue_commands.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli(tmp_path, codec_path, capsys):
    out = tmp_path / "d"
    assert run_cli(["data", "dialogues", "--out", str(out), "--codec", str(codec_path), "--workers", "1",
                    "--repeats", "1", "--max-intents", "1", "--max-exchanges", "0",
                    "--tokenizer-sentences", "0", "--vocab-size", "600", "--keep-audio",
                    "--reference-emotion-intents", "0"]) == 0
    printed = capsys.readouterr().out
    n = len(load_conversations().intents[0].all_phrasings())
    assert f"wrote {n} dialogues" in printed and "per dialogue in a worker" in printed
    assert "throughput" in printed and "held-out phrasings" in printed
    assert len(list((out / "audio").rglob("*.wav"))) == n + len(VOICES)
    with pytest.raises(FileNotFoundError):
        run_cli(["data", "dialogues", "--out", str(tmp_path / "e"), "--codec", str(tmp_path / "nope")])
    with pytest.raises(ValueError, match="--gap-ms"):
        run_cli(["data", "dialogues", "--out", str(tmp_path / "e"), "--codec", str(codec_path),
                 "--gap-ms", "fast"])
    # the synth command of the same group still parses
    parser = argparse.ArgumentParser(prog="maata")
    sub = parser.add_subparsers()
    commands.register(sub)
    dialogue_commands.register(sub)
    assert parser.parse_args(["data", "synth", "--out", "x"]).func.__name__ == "_synth"


# ---------------------------------------------------------------------------------------
# single-stream pre-training shards


def test_speech_shards(tmp_path, codec_path):
    rows = []
    for i, (spk, split) in enumerate([("a", "train"), ("a", "train"), ("b", "valid"), ("c", "test")]):
        s = V.espeak_speak(TEXT.split("!")[0] if i % 2 else TEXT, "m1", 40 + 5 * i, 170)
        write_wav(tmp_path / "wavs" / f"{i}.wav", s.audio, SR)
        phon = [[0.0, 0.2, "n"], [0.2, s.duration, "a"]] if i != 1 else None
        rows.append(ManifestRow(f"wavs/{i}.wav", s.duration, spk, "espeak", TEXT, split, phon))
    write_manifest(tmp_path / "manifest.jsonl", rows)
    report = build_speech_shards(tmp_path / "manifest.jsonl", codec_path, tmp_path / "shards", progress=False)
    assert not report.failures
    assert read_code_space(tmp_path / "shards") == load_codec(codec_path).code_space()
    total = 0
    for split in SPLITS:
        for rec in ShardReader(shard_paths(tmp_path / "shards", split)[0]):
            total += 1
            row = next(r for r in rows if r.path == rec.meta["id"])
            frames = -(-round(row.duration * SR) // HOP)
            assert rec.arrays["codes"].shape == (8, frames) and rec.arrays["phonemes"].shape == (frames,)
            labels = rec.arrays["phonemes"]
            assert (labels == -100).all() if row.phonemes is None else (labels[:4] >= 0).all()
    assert total == 4
    with pytest.raises(FileNotFoundError):
        build_speech_shards(tmp_path / "manifest.jsonl", tmp_path / "nope.safetensors", tmp_path / "x")


# ---------------------------------------------------------------------------------------
# data x50: natural gaps, user channels, emotions, resumable builds


def test_response_gaps_follow_natural_conversation():
    timing = TimingConfig()
    rng = np.random.default_rng(0)
    gaps = np.array([timing.draw_gap(rng) for _ in range(20000)])
    early = gaps < 0
    assert 0.04 < early.mean() < 0.06 and np.all(gaps[early] >= -0.15)
    assert abs(np.median(gaps) - 0.2) < 0.015  # ~200 ms, as between human turns
    assert np.percentile(gaps[~early], 90) > 0.3 and gaps.max() <= 1.0 and gaps[~early].min() >= 0.06
    with pytest.raises(DialogueError, match="response_gap_median"):
        TimingConfig(response_gap_median=0.0)
    with pytest.raises(DialogueError, match="early_start_prob"):
        TimingConfig(early_start_prob=2.0)


def test_user_channel_effects():
    from maata.data.dialogue import UserChannel, UserChannelConfig

    clean = render_dialogue(_spec())
    phone = render_dialogue(dataclasses.replace(_spec(), channel=UserChannel(telephone=True)))
    noisy = render_dialogue(dataclasses.replace(_spec(), channel=UserChannel(snr_db=15.0)))
    assert np.array_equal(clean.agent, phone.agent) and clean.user_turns == phone.user_turns

    def high_band(x):  # share of energy above 3.8 kHz
        spec = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1 / SR)
        return spec[f > 3800].sum() / spec.sum()

    assert high_band(phone.user) < 0.1 * high_band(clean.user)
    gap = slice(0, clean.user_turns[0][0])  # before the user speaks: silence, unless noisy
    assert not np.any(clean.user[gap]) and np.sqrt(np.mean(noisy.user[gap] ** 2)) > 1e-3
    assert UserChannel(0.3, True, 20.0).name == "reverb 0.30s, telephone, noise 20dB"
    with pytest.raises(DialogueError, match="probability"):
        UserChannelConfig(p_noise=1.5)
    draws = [UserChannelConfig().draw(__import__("random").Random(i)) for i in range(400)]
    assert 0.25 < np.mean([d.snr_db is not None for d in draws]) < 0.45
    assert 0.1 < np.mean([d.telephone for d in draws]) < 0.3


def test_plan_mixes_answer_emotions_and_user_variation(scripts):
    plans = plan_dialogues(scripts, repeats=10, seed=0, emotion_mix=0.5)
    qa = [p for p in plans if p.kind == "qa"]
    first = [p.turns[1].emotion for p in qa]
    own = [scripts.intent(p.intents[0]).emotion for p in qa]
    share = np.mean([a != b for a, b in zip(first, own)])
    assert 0.3 < share < 0.7 and len(set(first)) >= 6
    assert all(p.turns[1].emotion == scripts.intent(p.intents[0]).emotion
               for p in plan_dialogues(scripts, repeats=2, seed=0, emotion_mix=0.0) if p.kind == "qa")
    rates = [p.rate_scale for p in qa]
    assert min(rates) < 0.9 and max(rates) > 1.15
    assert len({p.channel.name for p in qa}) > 3
    with pytest.raises(DialogueError, match="emotion_mix"):
        plan_dialogues(scripts, emotion_mix=1.5)


def test_build_resumes_skipping_written_shards(tmp_path, codec_path, scripts):
    small = dataclasses.replace(scripts, intents=scripts.intents[:1], exchanges=())
    kw = dict(conversations=small, repeats=1, seed=0, tokenizer_sentences=0, vocab_size=600, shard_size=2,
              progress=False, reference_emotion_intents=0)
    out = tmp_path / "d"
    first = build_dialogues(out, codec_path, **kw)
    shards = sorted(out.rglob("shard-*.safetensors"))
    assert len(shards) >= 3 and first.stats["made"]["dialogues"] == first.stats["dialogues"]
    def content(path):
        return [(r.meta, {k: v.tolist() for k, v in r.arrays.items()}) for r in ShardReader(path)]

    before = {p: (p.stat().st_mtime_ns, content(p)) for p in shards}
    victim = shards[1]
    victim.unlink()
    again = build_dialogues(out, codec_path, **kw)  # same settings: resume
    assert again.stats["resumed_shards"] == len(shards) - 1
    made = again.stats["made"]["dialogues"] + again.stats["made"]["references"]
    assert 1 <= made <= 2  # only the missing shard's records
    for p in shards:
        if p != victim:
            assert p.stat().st_mtime_ns == before[p][0]  # untouched
    assert content(victim) == before[victim][1]  # made again, identically (the header's key order may differ)
    assert again.stats["dialogues"] == first.stats["dialogues"] and again.stats["splits"] == first.stats["splits"]
    with pytest.raises(DialogueError, match="already exists"):
        build_dialogues(out, codec_path, **{**kw, "repeats": 2})
    fresh = build_dialogues(out, codec_path, **{**kw, "repeats": 2}, overwrite=True)
    assert fresh.stats["resumed_shards"] == 0 and fresh.stats["dialogues"] == 2 * first.stats["dialogues"]


def test_exchange_user_turns_are_reworded_after_the_first_rendering():
    cs = load_conversations()
    small = dataclasses.replace(cs, intents=(), exchanges=cs.exchanges[:6])
    plans = plan_dialogues(small, repeats=4, seed=0)
    changed = 0
    for p in plans:
        ex = small.exchanges[[e.id for e in small.exchanges].index(p.exchange)]
        written = [t.text for t in ex.turns if t.speaker == "user"]
        said = [t.text for t in p.turns if t.speaker == "user"]
        if p.id.endswith("-r0"):
            assert said == written
        changed += sum(a != b for a, b in zip(said, written))
    assert changed > 0
    none = plan_dialogues(small, repeats=4, seed=0, exchange_paraphrase=0.0)
    assert all(t.text in {u.text for e in small.exchanges for u in e.turns} for p in none for t in p.turns)
