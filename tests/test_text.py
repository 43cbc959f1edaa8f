"""Telugu text normalisation and the sentence generator."""

import re
import unicodedata

import pytest

from maata.text import generator
from maata.text.generator import SentenceGenerator, dative, generate_sentences, locative, loanword
from maata.text.normalize import (TextError, clean_joiners, digits_to_ascii, normalize_text,
                                  number_to_words)

ZWNJ, ZWJ = "\u200c", "\u200d"


# --- normalisation -----------------------------------------------------------------------

def test_nfc_composes_two_part_vowel_sign():
    decomposed = "క\u0c46\u0c56"  # ె + ౖ typed separately
    assert normalize_text(decomposed) == "కై" == unicodedata.normalize("NFC", decomposed)


def test_meaningful_zwnj_after_virama_is_kept():
    word = f"ఫీడ్{ZWNJ}బ్యాక్"
    assert normalize_text(word) == word
    assert clean_joiners(f"ఇన్{ZWJ}స్టాల్") == f"ఇన్{ZWJ}స్టాల్"


@pytest.mark.parametrize("raw, expected", [
    (f"{ZWNJ}హలో{ZWNJ}", "హలో"),                          # word edges
    (f"ఫీడ్{ZWNJ}{ZWNJ}{ZWJ}బ్యాక్", f"ఫీడ్{ZWNJ}బ్యాక్"),  # a run collapses to one
    (f"హలో{ZWNJ} ఫోన్", "హలో ఫోన్"),                       # before a space
    (f"రాము{ZWNJ}కి", "రాముకి"),                            # not after a virama
    (f"abc{ZWNJ}def", "abcdef"),                          # Latin
])
def test_stray_joiners_are_dropped(raw, expected):
    assert normalize_text(raw) == expected


def test_invisible_characters_and_spaces():
    assert normalize_text("\ufeffనమస్కారం\u00a0 \u200bమీకు\t\nస్వాగతం\u00ad") == "నమస్కారం మీకు స్వాగతం"


@pytest.mark.parametrize("raw, expected", [
    ("౧౨ మంది వచ్చారు", "పన్నెండు మంది వచ్చారు"),                     # Telugu digits
    ("12 మంది వచ్చారు", "పన్నెండు మంది వచ్చారు"),                     # ASCII digits
    ("200 రూపాయలు", "రెండు వందల రూపాయలు"),                          # oblique before a noun
    ("200 ఇచ్చాను", "రెండు వందలు ఇచ్చాను"),                          # plain otherwise
    ("500కి", "ఐదు వందలకి"),                                         # glued suffix
    ("₹1,500 మాత్రమే", "ఒక వెయ్యి ఐదు వందల రూపాయలు మాత్రమే"),         # rupees, grouping
    ("50% తగ్గింపు", "యాభై శాతం తగ్గింపు"),
    ("3.75", "మూడు పాయింట్ ఏడు ఐదు"),
    ("-5 డిగ్రీలు", "మైనస్ ఐదు డిగ్రీలు"),
    ("10:30కి రండి", "పది గంటల ముప్పై నిమిషాలకి రండి"),
    ("9:00 అయింది", "తొమ్మిది గంటలు అయింది"),
    ("007", "సున్నా సున్నా ఏడు"),                                   # leading zero: digit by digit
])
def test_numbers_are_spoken(raw, expected):
    assert normalize_text(raw) == expected


def test_phone_numbers_are_read_digit_by_digit():
    out = normalize_text("నా నంబర్ 9876543210")
    assert out.split()[2:4] == ["తొమ్మిది", "ఎనిమిది"] and len(out.split()) == 12
    assert not re.search(r"\d", out)


def test_colon_is_a_pause_not_a_visarga():
    # indic-nlp's normaliser would produce "సమయంః"
    out = normalize_text("సమయం: ఇప్పుడు")
    assert "\u0c03" not in out and out == "సమయం, ఇప్పుడు"


def test_punctuation_cleanup():
    assert normalize_text('అతను "వస్తాను" అన్నాడు (రేపు)...') == "అతను వస్తాను అన్నాడు రేపు"
    assert normalize_text("ఏమిటి ?! ఎలా ?  సరే।") == "ఏమిటి? ఎలా? సరే."
    assert normalize_text("రాము & సీత") == "రాము అండ్ సీత"
    assert normalize_text("...హలో,,మీరు") == "హలో, మీరు"


def test_empty_and_bad_input():
    assert normalize_text("") == ""
    assert normalize_text("  \u200c ,.  ") == ""
    with pytest.raises(TextError, match="string"):
        normalize_text(None)  # type: ignore[arg-type]
    with pytest.raises(TextError, match="non-negative integer"):
        number_to_words("12a")
    with pytest.raises(TextError):
        number_to_words(-3)


def test_digits_to_ascii_handles_any_script():
    assert digits_to_ascii("౨౦౨౪ and २०") == "2024 and 20"


# --- generator ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sentences():
    return generate_sentences(2500, seed=0)


def test_generator_makes_2000_plus_distinct_sentences(sentences):
    assert len(sentences) == len(set(sentences)) == 2500


def test_generator_is_deterministic_per_seed(sentences):
    assert generate_sentences(50, seed=0) == sentences[:50]
    assert generate_sentences(50, seed=1) != sentences[:50]


def test_generated_text_is_normalised_telugu(sentences):
    for s in sentences:
        assert s == normalize_text(s) == unicodedata.normalize("NFC", s)
        assert not re.search(r"[0-9A-Za-z]", s), s      # numbers spoken, loanwords in Telugu script
        assert s[-1] in ".?!", s
        assert 3 <= len(s.split()) <= 25


def test_generated_text_uses_numbers_and_loanwords(sentences):
    joined = " ".join(sentences)
    assert "రూపాయలు" in joined and "గంటలకి" in joined
    for english in ("ticket", "phone", "office", "meeting"):
        assert loanword(english) in joined


def test_generated_words_are_mostly_attested_telugu(sentences):
    """A proxy for natural text: most tokens appear in the 50k-word Telugu lexicon."""
    lexicon = generator.telugu_lexicon()
    tokens = [t for s in sentences for t in re.findall(r"[\u0c00-\u0c7f\u200c]+", s)]
    assert len(lexicon) > 40000
    assert sum(t in lexicon for t in tokens) / len(tokens) > 0.6


def test_loanwords_decode_escaped_zwnj():
    assert loanword("appointment") == f"అపాయింట్{ZWNJ}మెంట్"
    assert all("\\u" not in v for v in generator.loanwords().values())
    with pytest.raises(KeyError, match="zzzz"):
        loanword("zzzz")


def test_case_suffixes():
    assert dative("ఆఫీస్") == f"ఆఫీస్{ZWNJ}కి"
    assert dative("గుంటూరు") == "గుంటూరుకి"
    assert dative("ఖమ్మం") == "ఖమ్మానికి"
    assert locative("విజయవాడ") == "విజయవాడలో"


def test_agreement_follows_the_person():
    gen = SentenceGenerator(seed=3, templates=["{who} {v:వచ్చాడు|వచ్చింది|వచ్చారు}."])
    for _ in range(50):
        s = gen.sentence().split(", ")[-1]
        person = next(p for p in generator.PEOPLE if s.startswith(p.text + " "))
        assert s.endswith({"m": "వచ్చాడు.", "f": "వచ్చింది.", "h": "వచ్చారు."}[person.agreement])


def test_bad_templates_fail_clearly():
    with pytest.raises(ValueError, match="unknown slot"):
        SentenceGenerator(templates=["{nosuchslot} ఉంది."]).sentence()
    with pytest.raises(ValueError, match="before any"):
        SentenceGenerator(templates=["{v:a|b|c}"]).sentence()
    with pytest.raises(ValueError, match="cannot make"):
        SentenceGenerator(templates=["సరే."]).sentences(50)  # one sentence, ten openers
    with pytest.raises(ValueError):
        SentenceGenerator(templates=[])
