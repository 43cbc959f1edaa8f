"""The scripted Telugu conversation set: counts, uniqueness, script purity and validation."""

from __future__ import annotations

import copy
import importlib
import re
from collections import Counter
from importlib import resources

import pytest
import yaml

from maata.data.conversations import (
    EMOTIONS,
    ConversationSet,
    load_conversations,
    parse_conversations,
    qa_pairs,
    text_key,
)

# Telugu block, single spaces and the four punctuation marks the normaliser keeps.
TELUGU_LINE = re.compile(r"^[\u0c00-\u0c7f\u200c\u200d .,?!]+$")
TELUGU_LETTER = re.compile(r"[\u0c05-\u0c39\u0c58-\u0c61]")


@pytest.fixture(scope="module")
def cs() -> ConversationSet:
    return load_conversations()


def all_texts(cs: ConversationSet) -> list[str]:
    texts: list[str] = []
    for intent in cs.intents:
        texts += [*intent.questions, intent.answer]
    for exchange in cs.exchanges:
        texts += [turn.text for turn in exchange.turns]
    return texts + list(cs.backchannels) + list(cs.interruptions)


# ----------------------------------------------------------------------------- the packaged set


def test_packaged_yaml_is_a_package_resource():
    assert resources.files("maata.data").joinpath("conversations.yaml").is_file()


def test_counts(cs):
    assert len(cs.intents) >= 110
    assert len(cs.qa_pairs()) >= 330
    assert len(cs.qa_pairs()) == 3 * len(cs.intents)
    assert len(cs.exchanges) >= 30
    assert len(cs.backchannels) >= 10
    assert len(cs.interruptions) >= 10


def test_topics_cover_the_brief(cs):
    wanted = {"greetings", "introductions", "time_date", "weather", "directions", "food",
              "banking", "travel", "shopping", "health", "family_smalltalk", "phone",
              "festivals", "help"}
    assert wanted <= {i.topic for i in cs.intents}


def test_ids_unique(cs):
    ids = [i.id for i in cs.intents] + [e.id for e in cs.exchanges]
    assert len(ids) == len(set(ids))


def test_answers_unique_even_ignoring_punctuation(cs):
    keys = [text_key(i.answer) for i in cs.intents]
    dupes = [k for k, n in Counter(keys).items() if n > 1]
    assert not dupes


def test_questions_three_distinct_and_unique_across_intents(cs):
    keys = []
    for intent in cs.intents:
        assert len(intent.questions) == 3
        assert len({text_key(q) for q in intent.questions}) == 3, intent.id
        keys += [text_key(q) for q in intent.questions]
    assert len(keys) == len(set(keys))


def test_answers_are_short(cs):
    for intent in cs.intents:
        assert 4 <= len(intent.answer.split()) <= 12, (intent.id, intent.answer)


def test_emotions_valid_and_mostly_neutral_or_happy(cs):
    counts = Counter(i.emotion for i in cs.intents)
    assert set(counts) <= set(EMOTIONS)
    assert counts["NEUTRAL"] + counts["HAPPY"] > len(cs.intents) / 2
    for emotion in ("EMPATHY", "SURPRISE", "EXCITED", "LAUGH"):
        assert counts[emotion] > 0, emotion
    for exchange in cs.exchanges:
        for turn in exchange.turns:
            if turn.speaker == "agent":
                assert turn.emotion in EMOTIONS, exchange.id


def test_exchanges_alternate_and_have_three_to_six_turns(cs):
    for exchange in cs.exchanges:
        assert 3 <= len(exchange.turns) <= 6, exchange.id
        assert [t.speaker for t in exchange.turns] == \
            ["user", "agent"] * (len(exchange.turns) // 2) + ["user"] * (len(exchange.turns) % 2)


def test_all_text_is_telugu_script(cs):
    for text in all_texts(cs):
        assert TELUGU_LINE.match(text), text
        assert not re.search(r"[A-Za-z0-9]", text), text
        assert TELUGU_LETTER.search(text), text
        assert text == " ".join(text.split()), text


def test_qa_pairs(cs):
    pairs = cs.qa_pairs()
    assert pairs == qa_pairs()
    by_answer = {}
    for pair in pairs:
        intent = cs.intent(pair.intent_id)
        assert pair.question in intent.questions
        assert (pair.answer, pair.emotion, pair.topic) == \
            (intent.answer, intent.emotion, intent.topic)
        by_answer.setdefault(pair.answer, set()).add(pair.intent_id)
    assert all(len(ids) == 1 for ids in by_answer.values())
    first = cs.intents[0]
    assert cs.intent_for_answer(first.answer.rstrip(".!?") + " ") is first
    assert cs.intent_for_answer("ఇది ఏ ఇంటెంట్ జవాబూ కాదు") is None
    with pytest.raises(KeyError):
        cs.intent("no_such_intent")


def test_text_is_unchanged_by_the_normaliser(cs):
    try:
        normalize = importlib.import_module("maata.text.normalize")
    except ImportError:
        pytest.skip("maata.text.normalize is not available")
    normalize_text = getattr(normalize, "normalize_text", None)
    if not callable(normalize_text):
        pytest.skip("maata.text.normalize has no normalize_text")
    changed = [(t, normalize_text(t)) for t in all_texts(cs) if normalize_text(t) != t]
    assert not changed


# ----------------------------------------------------------------------------- validation


def _valid() -> dict:
    return {
        "intents": [
            {"id": "a", "topic": "greetings",
             "questions": ["హలో, ఎలా ఉన్నారు?", "నమస్తే అండి.", "బాగున్నారా?"],
             "answer": "నేను బాగున్నాను, థాంక్స్.", "emotion": "HAPPY"},
            {"id": "b", "topic": "time_date",
             "questions": ["టైం ఎంత?", "ఎన్ని గంటలు?", "ఇప్పుడు టైం ఎంత అయింది?"],
             "answer": "నాలుగున్నర అయింది.", "emotion": "NEUTRAL"},
        ],
        "exchanges": [
            {"id": "x", "topic": "food", "turns": [
                {"speaker": "user", "text": "ఒక టీ కావాలి."},
                {"speaker": "agent", "text": "సరే, ఇప్పుడే తెస్తాను.", "emotion": "HAPPY"},
                {"speaker": "user", "text": "థాంక్స్."},
            ]},
        ],
        "backchannels": ["ఆ", "హ్మ్"],
        "interruptions": ["ఆగండి", "ఒక్క నిమిషం"],
    }


def _write(tmp_path, data) -> str:
    path = tmp_path / "conv.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return str(path)


def test_minimal_file_loads(tmp_path):
    cs = load_conversations(_write(tmp_path, _valid()))
    assert [i.id for i in cs.intents] == ["a", "b"]
    assert len(cs.qa_pairs()) == 6
    assert cs.exchanges[0].turns[0].emotion is None


def _set(path, value):
    def edit(d):
        *head, last = path
        for key in head:
            d = d[key]
        d[last] = value
    return edit


def _del(path):
    def edit(d):
        *head, last = path
        for key in head:
            d = d[key]
        del d[last]
    return edit


BAD = {
    "duplicate id": (_set(["intents", 1, "id"], "a"), r"'a'.*duplicate id"),
    "id shared with an exchange": (_set(["exchanges", 0, "id"], "b"), r"'b'.*duplicate id"),
    "two questions": (_set(["intents", 0, "questions"], ["హలో", "నమస్తే"]),
                      r"intent 'a'.*exactly 3 questions"),
    "repeated question": (_set(["intents", 1, "questions", 2], "టైం ఎంత"),
                          r"intent 'b'.*questions 1 and 3 are the same"),
    "question in two intents": (_set(["intents", 1, "questions", 0], "బాగున్నారా?"),
                                r"intent 'b'.*already used by intent 'a'"),
    "repeated answer": (_set(["intents", 1, "answer"], "నేను బాగున్నాను థాంక్స్!"),
                        r"intent 'b'.*same as the answer of intent 'a'"),
    "unknown emotion": (_set(["intents", 0, "emotion"], "ANGRY"), r"intent 'a'.*unknown emotion"),
    "empty answer": (_set(["intents", 0, "answer"], "  "), r"intent 'a' answer.*empty"),
    "latin letters": (_set(["intents", 1, "answer"], "ఇప్పుడు time ఎంతో తెలియదు."),
                      r"intent 'b' answer.*Telugu script"),
    "digits": (_set(["intents", 1, "answer"], "ఇప్పుడు 4 గంటలు అయింది."),
               r"intent 'b' answer.*Telugu script"),
    "missing field": (_del(["intents", 0, "emotion"]), r"intents\[0\].*missing field.*emotion"),
    "unknown field": (_set(["intents", 0, "emotions"], "HAPPY"), r"intents\[0\].*unknown field"),
    "agent first": (_set(["exchanges", 0, "turns", 0, "speaker"], "agent"),
                    r"exchange 'x' turn 1.*alternate starting with the user"),
    "two user turns": (_set(["exchanges", 0, "turns", 1, "speaker"], "user"),
                       r"exchange 'x' turn 2.*alternate"),
    "agent without emotion": (_del(["exchanges", 0, "turns", 1, "emotion"]),
                              r"exchange 'x' turn 2.*need an emotion"),
    "bad user emotion": (_set(["exchanges", 0, "turns", 0, "emotion"], "sad"),
                         r"exchange 'x' turn 1.*unknown emotion"),
    "duplicate backchannel": (_set(["backchannels", 1], "ఆ"), r"backchannels\[1\].*duplicate"),
    "english interruption": (_set(["interruptions", 0], "stop"), r"interruptions\[0\].*Telugu"),
    "missing section": (_del(["interruptions"]), r"missing section.*interruptions"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_validation_errors_name_the_offender(tmp_path, case):
    edit, pattern = BAD[case]
    data = copy.deepcopy(_valid())
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match=pattern) as info:
        load_conversations(path)
    assert path in str(info.value)


def test_invalid_yaml_and_non_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("intents: [\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_conversations(bad)
    with pytest.raises(ValueError, match="mapping at the top level"):
        parse_conversations(["not", "a", "mapping"])


# ----------------------------------------------------------------------------- paraphrases


def test_every_intent_has_at_least_eight_phrasings_and_held_out_families(cs):
    rules = cs.paraphrase
    assert rules is not None and rules.per_question * 3 >= 8
    owner, mixed = {}, []
    for intent in cs.intents:
        ps = intent.phrasings
        assert len(ps) == 3 * rules.per_question, intent.id
        seen = [p for p in ps if not p.heldout]
        assert len(seen) >= 8, intent.id  # training sees at least eight phrasings
        assert len({p.question for p in ps if p.heldout}) == rules.heldout_questions
        for q_n, question in enumerate(intent.questions):  # each family starts with its question
            family = [p for p in ps if p.question == q_n]
            assert family[0] == type(family[0])(question, q_n, "written", family[0].heldout)
            assert len({p.heldout for p in family}) == 1  # a family is held out whole
            mixed.append(len({p.rule for p in family[1:]}) >= 2)
        for p in ps:
            assert TELUGU_LINE.match(p.text) and p.text == " ".join(p.text.split()), p.text
            key = text_key(p.text)
            assert owner.setdefault(key, intent.id) == intent.id, (p.text, owner[key])
    assert sum(mixed) > 0.9 * len(mixed)  # families mix rule kinds (a greeting may take openers only)
    pairs = cs.phrasing_pairs()
    assert len(pairs) == len(cs.phrasing_pairs(False)) + len(cs.phrasing_pairs(True))
    assert {p.heldout for p in cs.phrasing_pairs(True)} == {True}


def test_phrasings_are_deterministic_and_follow_the_rules(cs):
    again = load_conversations()
    assert [i.phrasings for i in again.intents] == [i.phrasings for i in cs.intents]
    rules = cs.paraphrase
    for intent in cs.intents:
        for p in intent.phrasings:
            base = intent.questions[p.question]
            if "opener" in p.rule:
                assert any(p.text.startswith(o + ", ") for o in rules.openers), p
            if "closer" in p.rule:
                assert any(p.text.endswith(" " + c) for c in rules.question_closers), p
            if "polite" in p.rule:
                assert f" {rules.polite}" in p.text and f" {rules.polite}" not in base, p
            if p.rule == "written":
                assert p.text == base


def test_swap_replaces_whole_words_only():
    from maata.data.conversations import Intent, ParaphraseRules, paraphrase_intent

    rules = ParaphraseRules(per_question=2, substitutions=(("ఏంటి", "ఏమిటి"), ("ఈ రోజు", "ఇవాళ")))
    intent = Intent("x", "t", ("మీ పేరు ఏంటి?", "ఈ రోజు ఏంటి విశేషం?", "ఏంటికో తెలియదు?"), "సరే.", "NEUTRAL")
    with pytest.raises(ValueError, match=r"'x' question 3.*only 1 phrasings"):
        paraphrase_intent(intent, rules)  # "ఏంటికో" is not the word "ఏంటి"
    ps = paraphrase_intent(intent.__class__(**{**intent.__dict__, "questions": intent.questions[:2]}), rules)
    assert [p.text for p in ps] == ["మీ పేరు ఏంటి?", "మీ పేరు ఏమిటి?", "ఈ రోజు ఏంటి విశేషం?",
                                    "ఇవాళ ఏమిటి విశేషం?"]


def test_phrasings_never_collide_with_another_intent(tmp_path):
    data = _valid()
    # a's "టైం ఎంత?" with the opener హలో would be b's hand-written question
    data["intents"][0]["questions"][2] = "టైం ఎంత?"
    data["intents"][1]["questions"] = ["హలో, టైం ఎంత?", "ఎన్ని గంటలు?", "ఇప్పుడు టైం ఎంత అయింది?"]
    data["paraphrase"] = {"per_question": 2, "openers": ["హలో", "ఏమండీ"], "polite": "అండి"}
    cs = load_conversations(_write(tmp_path, data))
    keys = {}
    for intent in cs.intents:
        for p in intent.phrasings:
            assert keys.setdefault(text_key(p.text), intent.id) == intent.id
    a_texts = [p.text for p in cs.intent("a").phrasings]
    assert "హలో, టైం ఎంత?" not in a_texts  # b owns it


BAD_RULES = {
    "per_question zero": ({"per_question": 0}, r"per_question must be an integer"),
    "held out everything": ({"per_question": 1, "heldout_questions": 3}, r"heldout_questions"),
    "english opener": ({"per_question": 1, "openers": ["hey"]}, r"paraphrase.openers\[0\].*Telugu"),
    "closer without stop": ({"per_question": 1, "question_closers": ["చెప్పండి"]}, r"must end in"),
    "one-form group": ({"per_question": 1, "substitutions": [["ఏంటి"]]}, r"at least two forms"),
    "unknown key": ({"per_question": 1, "prefixes": ["ఏమండీ"]}, r"paraphrase.*unknown field"),
    "cannot reach per_question": ({"per_question": 6, "openers": ["ఏమండీ"]}, r"paraphrase rules make only"),
}


@pytest.mark.parametrize("case", sorted(BAD_RULES))
def test_bad_paraphrase_rules(tmp_path, case):
    rules, pattern = BAD_RULES[case]
    data = copy.deepcopy(_valid())
    data["paraphrase"] = rules
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match=pattern) as info:
        load_conversations(path)
    assert path in str(info.value)


def test_a_file_without_rules_has_only_its_written_phrasings(tmp_path):
    cs = load_conversations(_write(tmp_path, _valid()))
    assert cs.paraphrase is None and all(not i.phrasings for i in cs.intents)
    assert [p.question for p in cs.phrasing_pairs()] == [q for i in cs.intents for q in i.questions]
    assert not cs.phrasing_pairs(True)
