"""The Telugu subword tokenizer: clusters, round trips, byte fallback, specials, files."""

from __future__ import annotations

import json

import pytest

from maata.text.tokenizer import (BOS_ID, BYTE_OFFSET, EOS_ID, EPAD, EPAD_ID, N_BASE, PAD_ID, SPECIALS, UNK_ID,
                                  Tokenizer, TokenizerError, graphemes, pre_split)

ZWJ, ZWNJ = "\u200d", "\u200c"

CORPUS = [
    "నమస్కారం! నా పేరు మాట.",
    "నేను ఈ రోజు ఆఫీసుకి వెళ్తున్నాను",
    "మీరు ఎలా ఉన్నారు? నేను బాగున్నాను.",
    "ఈ ఫోన్ చాలా బాగుంది, price కూడా తక్కువ",
    "స్త్రీ శక్తి గురించి ఒక కథ చెప్తాను",
    "మా ఇంట్లో కంప్యూటర్ ఉంది, ఇంటర్నెట్ కూడా ఉంది",
    "Hyderabad లో ట్రాఫిక్ చాలా ఎక్కువ",
    "రేపు మీటింగ్ ఉంది, please ఆలస్యం చేయకండి",
    "క్షమించండి, నాకు అర్థం కాలేదు",
    "ఆమె నవ్వింది, అతను ఆశ్చర్యపోయాడు",
] * 8


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(CORPUS, vocab_size=800, min_frequency=2)


def test_graphemes_keep_aksharas_whole():
    assert graphemes("స్త్రీ") == ["స్త్రీ"]  # two conjunct joins + vowel sign
    assert graphemes("క్షమ") == ["క్ష", "మ"]
    assert graphemes("ఙ్ఞానం") == ["ఙ్ఞా", "నం"]  # anusvara stays with its consonant
    assert graphemes("క్" + ZWJ + "ష") == ["క్" + ZWJ + "ష"]  # explicit half form
    assert graphemes("క్" + ZWNJ + "ష") == ["క్" + ZWNJ + "ష"]  # explicit virama, still one cluster
    assert graphemes("న్" + ZWNJ + " ") == ["న్" + ZWNJ, " "]  # word-final pollu
    assert graphemes("ab\r\n") == ["a", "b", "\r\n"]
    assert "".join(graphemes("ఆఫీసుకి వెళ్తున్నాను")) == "ఆఫీసుకి వెళ్తున్నాను"


def test_pre_split_scripts_and_spaces():
    assert pre_split("నా పేరు Ravi 42!") == [
        (False, ("నా",)), (True, ("పే", "రు")), (True, ("R", "a", "v", "i")), (True, ("4",)), (False, ("2",)),
        (False, ("!",))]
    assert pre_split("  x ") == [(True, ()), (True, ("x",)), (True, ())]
    assert pre_split("priceలో") == [(False, tuple("price")), (False, ("లో",))]  # script change splits


@pytest.mark.parametrize("text", [
    "నేను ఆఫీసుకి వెళ్తున్నాను",
    "స్త్రీ శక్తి, క్షమించండి!",
    "క్" + ZWJ + "ష, క్" + ZWNJ + "ష, న్" + ZWNJ,
    "ఈ phone చాలా బాగుంది, price కూడా OK 100%",
    "  leading, double  and trailing spaces  ",
    "lines\nand\ttabs\r\n",
    "unseen: ౘ ౙ ఽ ౦౧౨ and emoji 😀👍🏽 and 中文 and a literal ▁ marker",
    "<epad> is text, not a special token",
    "",
])
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_nfc_is_applied():
    decomposed = "e\u0301"  # é, decomposed
    t = Tokenizer.train(["café"] * 3, vocab_size=N_BASE + 300)
    assert t.decode(t.encode("caf" + decomposed)) == "café"


def test_token_boundaries_fall_on_cluster_boundaries(tok):
    """No token ends inside an akshara: BPE pieces are whole clusters (conjuncts included)."""
    texts = CORPUS[:10] + ["క్" + ZWJ + "ష క్" + ZWNJ + "ష స్త్రీ శక్తి"]
    for text in texts:
        bounds, pos = set(), 0
        for c in graphemes(text):
            pos += len(c)
            bounds.add(pos)
        pos = 0
        for i in tok.encode(text):
            piece = tok.id_to_piece(i)
            if i >= N_BASE and len(piece.replace("▁", "")) > 1:
                pos += len(piece.replace("▁", " "))
                assert pos in bounds, (text, piece)
            else:  # characters of a cluster outside the vocabulary, or the space marker
                pos += len(piece.replace("▁", " ")) if i >= N_BASE else 0
    assert len(tok.encode("స్త్రీ")) == 1


def test_compression_and_learned_words(tok):
    text = "నేను ఈ రోజు ఆఫీసుకి వెళ్తున్నాను"
    ids = tok.encode(text)
    assert len(ids) <= 6  # frequent words become single tokens


def test_byte_fallback_and_unk():
    t = Tokenizer.train(CORPUS, vocab_size=600)
    ids = t.encode("中")
    assert ids == [BYTE_OFFSET + b for b in "中".encode()]
    strict = Tokenizer(t.pieces, t.merges, byte_fallback=False)
    assert strict.encode("中") == [UNK_ID]
    assert t.decode([BYTE_OFFSET + 0xE4]) == "\ufffd"  # a broken UTF-8 sequence decodes, replaced


def test_specials(tok):
    assert SPECIALS[EPAD_ID] == EPAD and (PAD_ID, BOS_ID, EOS_ID, EPAD_ID, UNK_ID) == (0, 1, 2, 3, 4)
    ids = tok.encode("నా పేరు", add_bos=True, add_eos=True)
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert tok.decode(ids) == "నా పేరు"
    assert tok.decode([BOS_ID, EPAD_ID], skip_special=False) == "<bos><epad>"
    assert tok.piece_to_id("<epad>") == EPAD_ID and tok.id_to_piece(EPAD_ID) == "<epad>"
    assert tok.piece_to_id("<0x41>") == BYTE_OFFSET + 0x41


def test_save_load_and_determinism(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    again = Tokenizer.load(path)
    assert again.pieces == tok.pieces and again.merges == tok.merges
    text = "ఈ phone చాలా బాగుంది, క్షమించండి 😀"
    assert again.encode(text) == tok.encode(text)
    assert Tokenizer.train(CORPUS, vocab_size=800).pieces == tok.pieces  # training is deterministic
    assert "స్త్రీ" in path.read_text(encoding="utf-8")  # readable JSON


def test_bad_input(tok, tmp_path):
    with pytest.raises(TokenizerError, match="vocab_size"):
        Tokenizer.train(CORPUS, vocab_size=100)
    with pytest.raises(TokenizerError, match="alphabet"):
        Tokenizer.train(CORPUS, vocab_size=N_BASE + 10)
    with pytest.raises(TokenizerError):
        Tokenizer.train([b"bytes"], vocab_size=800)
    with pytest.raises(TokenizerError, match="outside"):
        tok.decode([tok.vocab_size])
    with pytest.raises(TokenizerError):
        tok.encode(None)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="not JSON"):
        Tokenizer.load(bad)
    d = tok.to_dict()
    d["merges"] = [["x", "y"]]
    bad.write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(TokenizerError, match="merge"):
        Tokenizer.load(bad)
    with pytest.raises(TokenizerError, match="format"):
        Tokenizer.from_dict({"format": "sentencepiece"})
