"""``maata talk`` shows what the agent says: the inner-monologue text as it comes (the same pieces
the browser page shows) and ``--json`` with text, timings, voice and emotion. Runs the committed
demo checkpoints on a real espeak-ng question."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from maata.text.tokenizer import BYTE_OFFSET, EPAD_ID, N_BASE, TextStream, Tokenizer

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "checkpoints" / "tokenizer.json"


def _cli(argv: list[str], monkeypatch) -> int:
    from maata import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ["maata.lm.commands"])
    return cli.main(argv)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.load(TOKENIZER)


def test_text_stream_pieces_join_to_the_decoded_text(tok):
    text = "నమస్తే! నా పేరు మాట. 😀 ok"  # the emoji is outside the vocabulary: byte tokens
    ids = tok.encode(text)
    assert any(BYTE_OFFSET <= i < N_BASE for i in ids)
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in [EPAD_ID, *ids, EPAD_ID]] + [stream.flush()]
    assert "".join(pieces) == tok.decode(ids) == text
    assert "😀" in pieces  # the four bytes come out as one character, once complete
    assert stream.push(EPAD_ID) == "" and stream.flush() == ""
    lone = TextStream(tok)
    assert lone.push(BYTE_OFFSET + 0xE0) == "" and lone.flush() == "\ufffd"  # an unfinished character
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TextStream(tok).push(tok.vocab_size)


@pytest.fixture(scope="module")
def question(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("talk") / "q.wav"
    subprocess.run(["espeak-ng", "-v", "te", "-w", str(path), "మీ పేరు ఏమిటి?"], check=True)
    return path


def test_talk_prints_the_text_as_it_comes_and_writes_json(question, tok, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    out, js = tmp_path / "r.wav", tmp_path / "r.json"
    assert _cli(["talk", "--in", str(question), "--out", str(out), "--voice", "female_2", "--emotion", "EMPATHY",
                 "--silence", "1.5", "--threads", "1", "--seed", "3", "--json", str(js)], monkeypatch) == 0
    printed = capsys.readouterr().out
    report = json.loads(js.read_text(encoding="utf-8"))
    assert (report["voice"], report["emotion"], report["seed"]) == ("female_2", "EMPATHY", 3)
    assert report["tokenizer"] == "checkpoints/tokenizer.json" and report["frame_ms"] == 40.0
    pieces = report["pieces"]
    assert pieces, "the demo model says something"
    assert report["text"] == "".join(p["text"] for p in pieces).strip()
    assert report["text"] == tok.decode([p["token"] for p in pieces]).strip()
    assert [p["frame"] for p in pieces] == sorted(p["frame"] for p in pieces)
    assert all(p["ms"] == p["frame"] * 40.0 and 0 <= p["frame"] < report["frames"] for p in pieces)
    assert f"agent: {report['text']}" in printed  # echoed as it came, the same text
    assert 800 < report["user_stops_ms"] <= report["user_seconds"] * 1000 + 40
    assert report["per_frame_ms"]["p50"] > 0 and report["agent_seconds"] == pytest.approx(
        report["frames"] * 0.04, abs=1e-6)
    # the same call with --quiet prints no text but writes the same JSON (sampling is seeded)
    js2 = tmp_path / "r2.json"
    assert _cli(["talk", "--in", str(question), "--out", str(tmp_path / "r2.wav"), "--voice", "female_2",
                 "--emotion", "EMPATHY", "--silence", "1.5", "--threads", "1", "--seed", "3", "--json", str(js2),
                 "--quiet"], monkeypatch) == 0
    assert "agent:" not in capsys.readouterr().out
    assert json.loads(js2.read_text(encoding="utf-8"))["pieces"] == pieces


def test_talk_tokenizer_errors(question, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    base = ["talk", "--in", str(question), "--out", str(tmp_path / "r.wav"), "--silence", "0", "--threads", "1"]
    assert _cli(base + ["--tokenizer", str(tmp_path / "none.json")], monkeypatch) == 2
    assert "tokenizer (--tokenizer) not found" in capsys.readouterr().err
    small = Tokenizer.train(["నమస్తే అండి"] * 5, vocab_size=480)
    small.save(tmp_path / "small.json")
    assert _cli(base + ["--tokenizer", str(tmp_path / "small.json")], monkeypatch) == 2
    assert "not the tokenizer it was trained with" in capsys.readouterr().err
