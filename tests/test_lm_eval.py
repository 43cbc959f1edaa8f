"""Speech-LM evaluation, ``maata talk`` and bench/lm_speed.py on synthetic shards and tiny models.

The dialogue shards (tests/support/lm_eval.py, made once per session by tests/conftest.py) come
from tests/support/shards.py's writer, with the tiny codec's own
silence codes outside the turns, so the "codes" speech detector reads the reference channel
exactly: its turn-taking numbers are known (start delay 2-3 frames, stop 2 frames after an
interruption).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from maata.audio import write_wav
from maata.lm.dialogues import Dialogue, load_dialogues
from maata.lm.metrics import ChannelSpeech, LinearProbe, TurnStats, dtw_distances
from maata.lm.report import markdown_table
from maata.lm.model import LM, load_preset

from maata.data.shards import Record, write_shard
from tests.support.lm_eval import lm_cli
from tests.support.shards import INTENTS, K

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
SR, HOP = 16000, 640


def _unit(v) -> bool:
    return v is not None and 0.0 <= v <= 1.0


# -- building blocks ---------------------------------------------------------------------------------
def test_dtw_matches_the_right_reference():
    g = torch.Generator().manual_seed(0)
    refs = [torch.randn(n, 6, generator=g) for n in (10, 14, 8)]
    assert dtw_distances(refs[1], refs).argmin() == 1
    assert float(dtw_distances(refs[1], refs)[1]) == pytest.approx(0.0, abs=1e-6)
    stretched = refs[2].repeat_interleave(2, dim=0)  # the same content, spoken twice as slowly
    d = dtw_distances(stretched, refs)
    assert d.argmin() == 2 and float(d[2]) < 1e-5 and bool((d >= 0).all())


def test_linear_probe_separates_classes():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (20, 5)), rng.normal(3, 1, (20, 5))])
    y = ["a"] * 20 + ["b"] * 20
    probe = LinearProbe().fit(X, y)
    assert probe.predict(X) == y
    assert probe.predict(np.full((1, 5), 3.0)) == ["b"]


def test_turn_stats_measure_delay_overlap_and_stopping():
    T = 40
    meta = {"user_turns": [[0, 10], [20, 24]], "agent_turns": [[13, 30]], "interruptions": [20]}
    d = Dialogue(np.zeros((K, T), np.int64), np.zeros((K, T), np.int64), None, None, meta)
    speaking = np.zeros(T, bool)
    speaking[8:11] = True  # a little overlap at the end of the user's turn
    speaking[13:23] = True  # answers, is interrupted at 20, stops at 23
    stats = TurnStats()
    stats.add(d, speaking, 40.0, stop_frames=3, max_stop=50)
    s = stats.summary()
    assert s["start_delay_ms"]["median"] == 0.0  # still speaking when the user stopped
    assert s["turns"] == 1 and s["unanswered_rate"] == 0.0
    assert s["overlap_rate"] == pytest.approx(5 / 13)  # frames 8, 9 and 20, 21, 22 of 13 spoken
    assert s["talk_over_user_rate"] == pytest.approx(5 / 14)
    assert s["stop_ms"]["median"] == 120.0 and s["stopped_rate"] == 1.0 and s["interruptions"] == 1
    speaking[8:11] = False
    stats = TurnStats()
    stats.add(d, speaking, 40.0, stop_frames=3, max_stop=50)
    assert stats.summary()["start_delay_ms"]["median"] == 120.0


def test_speech_detectors(lm_eval_models, lm_eval_shards):
    from maata.checkpoint import load_codec

    codec = load_codec(lm_eval_models["codec"])
    d = load_dialogues(lm_eval_shards, "test")[0]
    by_codes = ChannelSpeech(codec, "codes")(d.agent)
    a, b = d.agent_turns()[0]
    assert by_codes[a:b].all() and not by_codes[:a].any() and not by_codes[b:].any()
    energy = ChannelSpeech(codec, "energy", -200.0)
    assert energy.effective_dbfs == pytest.approx(energy.floor_dbfs + 6.0)  # the codec's decoded silence + 6 dB
    assert not energy(np.repeat(codec.encode(torch.zeros(1, 1, 20 * HOP))[0, :, -1:].numpy(), 30, 1))[5:].any()
    everything = ChannelSpeech(codec, "energy", -200.0, margin_db=-1000.0)(d.agent)  # louder than -200 dBFS
    assert everything.shape == (d.frames,) and everything.all()
    with pytest.raises(ValueError, match="detector"):
        ChannelSpeech(codec, "vad")


# -- maata lm eval ---------------------------------------------------------------------------------------
def test_eval_end_to_end(lm_eval_models, lm_eval_shards, tmp_path, monkeypatch, capsys):
    out = tmp_path / "eval"
    rc = lm_cli(["lm", "eval", "--checkpoint", str(lm_eval_models["lm"]),
                 "--codec", str(lm_eval_models["codec"]), "--shards",
                 str(lm_eval_shards), "--out", str(out), "--detector", "codes", "--threads", "1", "--batch", "4",
                 "--max-reply-seconds", "2"], monkeypatch)
    assert rc == 0
    assert "right answer top-1" in capsys.readouterr().out
    r = json.loads((out / "lm_eval.json").read_text())
    assert (out / "lm_eval.png").stat().st_size > 1000 and (out / "lm_eval.md").read_text().startswith("# LM eval")
    assert r["dialogues"] == 6 and r["qa_dialogues"] == 6 and r["split"] == "test"

    tf = r["teacher_forced"]
    assert len(tf["ce_per_codebook"]) == K and all(0 < v < 3 * tf["uniform_ce"] for v in tf["ce_per_codebook"])
    assert all(_unit(v) for v in tf["acc_per_codebook"]) and _unit(tf["text_acc"]) and _unit(tf["text_acc_words"])
    assert tf["text_ce"] > 0 and tf["frames"] > 0

    assert r["renderings"] == 6 and not r["notes"]  # from the reference split
    ra = r["right_answer"]
    assert ra["references"] == 6 and ra["interrupted_excluded"] == 2
    assert ra["n"] == 4 and ra["n_intents"] == len(INTENTS) and ra["chance"] == pytest.approx(1 / 3)
    assert _unit(ra["top1"]) and _unit(ra["top3"]) and ra["top1"] <= ra["top3"] and _unit(ra["silent_replies"])
    assert ra["reference_top1"] >= 0.8  # the true replies match their own intent's references

    rt = r["right_answer_text"]  # the inner-monologue text against every intent's answer text
    assert rt["n"] == 4 and rt["n_intents"] == len(INTENTS) and rt["chance"] == pytest.approx(1 / 3)
    assert rt["reference_top1"] == 1.0  # the records' own text streams name their intent's answer
    assert _unit(rt["top1"]) and _unit(rt["exact"]) and rt["exact"] <= rt["top1"] + rt["silent_replies"]
    assert _unit(rt["similarity"]) and _unit(rt["silent_replies"])

    ref, gen = r["turn_taking"]["reference"], r["turn_taking"]["generated"]
    assert ref["turns"] == 6 and ref["unanswered_rate"] == 0.0
    assert 80.0 <= ref["start_delay_ms"]["median"] <= ref["start_delay_ms"]["p90"] <= 120.0  # 2-3 frame pauses
    assert ref["interruptions"] == 2 and ref["stopped_rate"] == 1.0 and ref["stop_ms"]["median"] == 80.0
    assert _unit(ref["overlap_rate"]) and _unit(ref["talk_over_user_rate"])
    for key in ("overlap_rate", "talk_over_user_rate", "unanswered_rate", "agent_speech_share", "stopped_rate"):
        assert gen[key] is None or _unit(gen[key]), key
    assert gen["start_delay_ms"]["n"] == 0 or gen["start_delay_ms"]["median"] >= 0

    for key, classes in (("voice", 2), ("emotion", 3)):
        e = r["adherence"][key]
        assert len(e["classes"]) == classes and _unit(e["classifier_accuracy"]) and _unit(e["chance"])
        assert e["accuracy"] is None or _unit(e["accuracy"])
    assert "method" in r["adherence"] and "DTW" in ra["method"]


def test_eval_falls_back_to_dialogue_references(lm_eval_models, lm_eval_shards):
    from maata.checkpoint import load_codec
    from maata.lm.checkpoint import load_lm
    from maata.lm.evaluate import EvalConfig, evaluate

    lm, codec = load_lm(lm_eval_models["lm"]), load_codec(lm_eval_models["codec"])
    train = evaluate(lm, codec, lm_eval_shards, EvalConfig(reference_split="train", detector="codes", max_reply_s=1.0))
    assert train["right_answer"]["references"] == 9 and not train["notes"]  # the train dialogues' answers
    assert train["right_answer"]["reference_top1"] >= 0.75
    none = evaluate(lm, codec, lm_eval_shards, EvalConfig(reference_split="nosuch", detector="codes", max_reply_s=1.0,
                                                  max_dialogues=3))
    assert "serve as references" in none["notes"][0]
    assert none["right_answer"]["n"] == 2  # test-2 is interrupted (and the only "bank" answer: no reference)
    assert _unit(none["right_answer"]["reference_top1"])


def test_eval_bad_inputs_exit_2(lm_eval_models, lm_eval_shards, tmp_path, monkeypatch, capsys):
    base = ["lm", "eval", "--checkpoint", str(lm_eval_models["lm"]), "--shards", str(lm_eval_shards),
            "--out", str(tmp_path)]
    assert lm_cli(base + ["--codec", str(lm_eval_models["codec_n4"])], monkeypatch) == 2
    assert "does not fit" in capsys.readouterr().err
    assert lm_cli(base + ["--codec", str(lm_eval_models["lm"])], monkeypatch) == 2
    assert "not a codec checkpoint" in capsys.readouterr().err
    assert lm_cli(["lm", "eval", "--checkpoint", str(lm_eval_models["codec"]),
                   "--codec", str(lm_eval_models["codec"]), "--shards",
                   str(lm_eval_shards)], monkeypatch) == 2
    assert "not an LM checkpoint" in capsys.readouterr().err
    assert lm_cli(base + ["--codec", str(lm_eval_models["codec"]), "--split", "nosuchsplit"], monkeypatch) == 2
    assert "no dialogue records" in capsys.readouterr().err
    assert lm_cli(base[:5] + [str(tmp_path / "none"), "--codec", str(lm_eval_models["codec"])], monkeypatch) == 2
    assert "shards not found" in capsys.readouterr().err
    from maata.data.shards import Record, write_shard

    wide = np.full((K, 20), 100, np.int16)  # codes of a 1024-code codec for this 32-code LM
    write_shard(tmp_path / "wide" / "test" / "s.safetensors",
                [Record({"user": wide, "agent": wide}, {"id": "w", "kind": "qa", "intent": "x"})])
    assert lm_cli(base[:5] + [str(tmp_path / "wide"), "--codec", str(lm_eval_models["codec"])], monkeypatch) == 2
    assert "do not fit the LM's codebook size 32" in capsys.readouterr().err


def test_markdown_table_handles_missing_numbers():
    none = {"n": 0, "mean": None, "median": None, "p90": None}
    tt = {"start_delay_ms": none, "unanswered_rate": None, "overlap_rate": None, "talk_over_user_rate": None,
          "stop_ms": none, "stopped_rate": None, "interruptions": 0}
    r = {"dialogues": 1, "split": "test", "seconds": 2.0,
         "teacher_forced": {"ce_per_codebook": [1.0], "uniform_ce": 3.0, "ce_mean": 1.0, "acc_per_codebook": [0.5],
                            "text_ce": None, "text_acc": None, "text_acc_words": None},
         "right_answer": {"n": 0}, "turn_taking": {"generated": tt, "reference": tt},
         "adherence": {"voice": {}, "emotion": {}},
         "sampling": {"temperature": 0.0, "top_k": 0},
         "detector": {"mode": "energy", "threshold_dbfs": -40.0, "served_latency_add_ms": 80.0}}
    assert "| right answer top-1 (0 QA) | – |" in markdown_table(r)


# -- maata talk ---------------------------------------------------------------------------------------------
def test_talk_writes_mono_and_stereo(lm_eval_models, tmp_path, monkeypatch, capsys):
    import soundfile as sf

    t = np.arange(int(0.5 * 22050)) / 22050
    x = 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32)
    write_wav(tmp_path / "q.wav", np.stack([x, x], 1), 22050)  # stereo 22.05 kHz: converted on the way in
    out = tmp_path / "reply.wav"
    rc = lm_cli(["talk", "--in", str(tmp_path / "q.wav"), "--out", str(out), "--voice", "female_1",
                 "--emotion", "HAPPY",
                 "--lm", str(lm_eval_models["lm"]), "--codec", str(lm_eval_models["codec"]), "--silence", "0.3",
                 "--threads", "1"],
              monkeypatch)
    assert rc == 0, capsys.readouterr().err
    frames = -(-(8000 + int(0.3 * SR)) // HOP)
    mono, stereo = sf.info(str(out)), sf.info(str(tmp_path / "reply_stereo.wav"))
    assert (mono.channels, mono.frames, mono.samplerate) == (1, frames * HOP, SR)
    assert (stereo.channels, stereo.frames, stereo.samplerate) == (2, frames * HOP, SR)
    both, _ = sf.read(str(tmp_path / "reply_stereo.wav"))
    agent, _ = sf.read(str(out))
    assert np.allclose(both[:, 1], agent, atol=1e-4)
    assert np.abs(both[:8000, 0]).max() > 0.1 and np.abs(both[8000 + 400:, 0]).max() < 1e-3  # user, then silence
    assert "per frame" in capsys.readouterr().out

    # a zero-shot voice from a reference clip
    ref = tmp_path / "ref.wav"
    write_wav(ref, 0.2 * np.sin(2 * np.pi * 150 * np.arange(SR) / SR).astype(np.float32), SR)
    assert lm_cli(["talk", "--in", str(tmp_path / "q.wav"), "--out", str(tmp_path / "c.wav"), "--voice", "custom",
                   "--reference", str(ref), "--lm", str(lm_eval_models["lm"]), "--codec", str(lm_eval_models["codec"]),
                   "--silence", "0", "--threads", "1"], monkeypatch) == 0
    assert sf.info(str(tmp_path / "c.wav")).frames == -(-8000 // HOP) * HOP


def test_talk_defaults_to_the_committed_models(tmp_path, monkeypatch, capsys):
    """The README's front-door command: ``maata talk --in q.wav --out r.wav`` from the repo root
    uses the committed demo checkpoints; elsewhere it says which checkpoint is missing."""
    q = tmp_path / "q.wav"
    write_wav(q, 0.2 * np.sin(2 * np.pi * 180 * np.arange(SR // 2) / SR).astype(np.float32), SR)
    monkeypatch.chdir(REPO)
    assert lm_cli(["talk", "--in", str(q), "--out", str(tmp_path / "r.wav"), "--silence", "0.2", "--threads", "1"],
                monkeypatch) == 0, capsys.readouterr().err
    import soundfile as sf

    assert sf.info(str(tmp_path / "r.wav")).frames == -(-(SR // 2 + int(0.2 * SR)) // HOP) * HOP
    assert "per frame" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    assert lm_cli(["talk", "--in", str(q), "--out", str(tmp_path / "r2.wav")], monkeypatch) == 2
    assert "LM checkpoint (--lm) not found: checkpoints/lm_demo.safetensors" in capsys.readouterr().err


def test_talk_bad_inputs_exit_2(lm_eval_models, tmp_path, monkeypatch, capsys):
    q = tmp_path / "q.wav"
    write_wav(q, np.zeros(1600, np.float32), SR)
    base = ["talk", "--in", str(q), "--out", str(tmp_path / "r.wav"), "--lm", str(lm_eval_models["lm"]),
            "--codec", str(lm_eval_models["codec"])]
    cases = [(["--voice", "robot"], "unknown voice 'robot'"),
             (["--emotion", "ANGRY"], "unknown emotion 'ANGRY'"),
             (["--voice", "custom"], "needs --reference"),
             (["--silence", "-1"], "--silence"),
             (["--temperature", "-1"], "temperature")]
    for extra, message in cases:
        assert lm_cli(base + extra, monkeypatch) == 2, extra
        assert message in capsys.readouterr().err, extra
    bad = [(["talk", "--in", str(tmp_path / "missing.wav")] + base[3:], "input audio not found"),
           (base[:5] + ["--lm", str(lm_eval_models["codec"]), "--codec", str(lm_eval_models["codec"])],
            "not an LM checkpoint"),
           (base[:7] + ["--codec", str(lm_eval_models["codec_n4"])], "does not fit")]
    for argv, message in bad:
        assert lm_cli(argv, monkeypatch) == 2, argv
        assert message in capsys.readouterr().err, argv
    write_wav(tmp_path / "short.wav", np.zeros(320, np.float32), SR)
    assert lm_cli(base + ["--voice", "custom", "--reference", str(tmp_path / "short.wav")], monkeypatch) == 2
    assert "too short" in capsys.readouterr().err
    assert not (tmp_path / "r.wav").exists()


# -- bench ---------------------------------------------------------------------------------------------------
def test_bench_quick_writes_every_field(lm_eval_models, tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "lm_speed.py"), "--checkpoint", str(lm_eval_models["lm"]),
                        "--codec", str(lm_eval_models["codec"]), "--quick", "--threads", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=180, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "LM step speed" in r.stdout and "baseline" in r.stdout
    res = json.loads(out.read_text())
    assert res["batches"] == [1, 4] and res["frame_ms"] == 40.0 and res["machine"]["threads"] == 1
    base = res["variants"]["fp32 eager (baseline)"]
    assert base["status"] == "ok"
    for b in ("1", "4"):
        s = base["batch"][b]
        assert 0 < s["p50_ms"] <= s["p99_ms"] <= s["max_ms"] and s["calls_per_core_estimate"] > 0
    assert base["max_realtime_calls"]["calls"] in (0, 1, 4)
    for name in ("bf16", "int8 dynamic"):
        v = res["variants"][name]
        assert v["status"] in ("ok", "skipped") and v["note"]
        if v["status"] == "ok":
            assert set(v["speedup_vs_baseline"]) == {"1", "4"}
    assert res["variants"]["torch.compile"]["status"] == "skipped"
    mem = res["memory"]
    assert mem["kv_cache_bytes_per_call"] == 2 * 1 * 32 * 32 * 4  # K and V x 1 layer x 32 frames x dim 32 x fp32
    assert mem["state_bytes_per_call"] > mem["kv_cache_bytes_per_call"] > 0
    assert mem["base_preset_kv_cache_mb_per_call"] > 100
    loop = res["codec_in_loop"]
    assert loop["status"] == "ok" and loop["batch"]["1"]["p50_ms"] > 0
    assert res["codec_in_loop_compiled"]["status"] == "skipped"  # --quick compiles nothing
