"""The scripted Telugu conversations the speech-to-speech model is trained and evaluated on.

The scripts live in ``conversations.yaml`` next to this module (the schema is documented at
the top of that file). :func:`load_conversations` reads and validates them into frozen
dataclasses:

* :class:`Intent`: one agent answer with three hand-written user phrasings of the question,
  and its :class:`Phrasing` list: those three plus the variants the paraphrase rules make;
* :class:`Exchange`: a short multi-turn conversation (user first, alternating);
* backchannels (ఆ, హ్మ్, సరే ...) the agent says while listening, and interruptions
  (ఆగండి, ఒక్క నిమిషం ...) a user says to cut the agent off.

**Paraphrases.** The optional ``paraphrase`` section of the file holds rules (openers such as
ఏమండీ, a closing ``చెప్పండి.``, the polite అండి, and groups of interchangeable colloquial,
formal and regional forms such as ఏంటి/ఏమిటి/ఏంది or ఎలా/ఎట్లా). :func:`paraphrase_intent`
applies them to each hand-written question and keeps ``per_question`` phrasings per question
(the question itself first), chosen deterministically from the intent's id, never equal
(ignoring punctuation and spacing) to a phrasing of another intent. A phrasing *family* is one
hand-written question with its variants.

**Held-out phrasings.** ``heldout_questions`` families per intent (chosen from the intent's id)
are marked ``heldout``: the dialogue builder puts them only into the valid and test splits, so
an evaluation can report the right-answer rate on phrasings training never saw, next to the
seen ones (which are also held out by *speaker*).

:meth:`ConversationSet.qa_pairs` flattens the intents into hand-written question -> answer
pairs; :meth:`ConversationSet.phrasing_pairs` does the same over every phrasing.

Every answer is distinct (also ignoring punctuation and spacing), so an evaluation that
transcribes the model's spoken reply can tell which intent's answer was given.
"""

from __future__ import annotations

import os
import random
import unicodedata
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "EMOTIONS",
    "SPEAKERS",
    "QUESTIONS_PER_INTENT",
    "Intent",
    "Turn",
    "Exchange",
    "QAPair",
    "Phrasing",
    "ParaphraseRules",
    "ConversationSet",
    "paraphrase_intent",
    "paraphrase_line",
    "load_conversations",
    "parse_conversations",
    "qa_pairs",
    "default_path",
]

#: Emotions (speaking styles) the agent can answer with; the same names as the ``emotion``
#: field of ``maata.v1.Style``.
EMOTIONS: tuple[str, ...] = (
    "NEUTRAL",
    "HAPPY",
    "LAUGH",
    "EXCITED",
    "EMPATHY",
    "SURPRISE",
    "THINKING",
    "TELUGU_ACCENT_HEAVY",
    "TELUGU_ACCENT_MILD",
)
SPEAKERS: tuple[str, ...] = ("user", "agent")
QUESTIONS_PER_INTENT = 3

_PACKAGE = "maata.data"
_RESOURCE = "conversations.yaml"

# Allowed characters: the Telugu block, plain spaces, the four punctuation marks that
# maata.text.normalize keeps, and ZWNJ/ZWJ (which can be part of a Telugu spelling).
_PUNCT = ".,?!"
_JOINERS = "\u200c\u200d"


def _is_telugu(ch: str) -> bool:
    return "\u0c00" <= ch <= "\u0c7f"


# ----------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class Phrasing:
    """One way a user asks an intent's question. ``question`` is the index of the hand-written
    question it derives from (its family), ``rule`` how it was made (``written``, ``opener``,
    ``closer``, ``polite``, ``swap`` or combinations joined by ``+``), ``heldout`` whether the
    family is kept out of training."""

    text: str
    question: int
    rule: str
    heldout: bool = False


@dataclass(frozen=True)
class Intent:
    """One thing a user asks, in three hand-written questions (plus derived phrasings), and the
    agent's single answer."""

    id: str
    topic: str
    questions: tuple[str, ...]
    answer: str
    emotion: str
    phrasings: tuple[Phrasing, ...] = ()

    def all_phrasings(self) -> tuple[Phrasing, ...]:
        """The phrasings, or the hand-written questions (none held out) when none were made."""
        return self.phrasings or tuple(Phrasing(q, n, "written") for n, q in enumerate(self.questions))


@dataclass(frozen=True)
class Turn:
    """One turn of an exchange. ``emotion`` is set on every agent turn; optional for users."""

    speaker: str
    text: str
    emotion: str | None = None


@dataclass(frozen=True)
class Exchange:
    """A short multi-turn conversation; turns alternate user/agent, starting with the user."""

    id: str
    topic: str
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class QAPair:
    """One user question with the answer of its intent."""

    intent_id: str
    topic: str
    question: str
    answer: str
    emotion: str


@dataclass(frozen=True)
class PhrasingPair(QAPair):
    """A question -> answer pair over a (possibly derived) phrasing."""

    question_index: int = 0
    rule: str = "written"
    heldout: bool = False


@dataclass(frozen=True)
class ParaphraseRules:
    """How to make more phrasings of a question (the ``paraphrase`` section of the file)."""

    per_question: int = 1
    heldout_questions: int = 0
    openers: tuple[str, ...] = ()
    no_opener_after: tuple[str, ...] = ()
    question_closers: tuple[str, ...] = ()
    polite: str | None = None
    informal: tuple[str, ...] = ()
    substitutions: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class ConversationSet:
    """All scripted conversations: intents, exchanges, backchannels and interruptions."""

    intents: tuple[Intent, ...]
    exchanges: tuple[Exchange, ...]
    backchannels: tuple[str, ...]
    interruptions: tuple[str, ...]
    paraphrase: ParaphraseRules | None = None

    def phrasing_pairs(self, heldout: bool | None = None) -> list[PhrasingPair]:
        """Every phrasing -> answer pair (only held-out or only seen ones with ``heldout``)."""
        return [
            PhrasingPair(intent.id, intent.topic, p.text, intent.answer, intent.emotion,
                         p.question, p.rule, p.heldout)
            for intent in self.intents
            for p in intent.all_phrasings()
            if heldout is None or p.heldout == heldout
        ]

    def qa_pairs(self) -> list[QAPair]:
        """Every question -> answer pair, in file order (intent by intent, question by question)."""
        return [
            QAPair(intent.id, intent.topic, question, intent.answer, intent.emotion)
            for intent in self.intents
            for question in intent.questions
        ]

    def intent(self, intent_id: str) -> Intent:
        """The intent with this id (``KeyError`` if there is none)."""
        for intent in self.intents:
            if intent.id == intent_id:
                return intent
        raise KeyError(intent_id)

    def intent_for_answer(self, answer: str) -> Intent | None:
        """The intent whose answer this is, ignoring punctuation and spacing; ``None`` if none."""
        key = text_key(answer)
        for intent in self.intents:
            if text_key(intent.answer) == key:
                return intent
        return None

    @property
    def topics(self) -> tuple[str, ...]:
        """The topics of the intents and exchanges, sorted."""
        return tuple(sorted({i.topic for i in self.intents} | {e.topic for e in self.exchanges}))


# ----------------------------------------------------------------------------- validation


def text_key(text: str) -> str:
    """Text reduced to what is heard: NFC, no punctuation or spaces. Used for uniqueness."""
    text = unicodedata.normalize("NFC", text)
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LMN")


def _fail(source: str, where: str, message: str) -> ValueError:
    return ValueError(f"{source}: {where}: {message}")


def _check_text(source: str, where: str, value: Any) -> str:
    """A non-empty line of Telugu script: Telugu letters, single spaces and . , ? ! only."""
    if not isinstance(value, str):
        raise _fail(source, where, f"text must be a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise _fail(source, where, "text is empty")
    if value != " ".join(value.split()):
        raise _fail(source, where, f"text has leading, trailing or repeated whitespace: {value!r}")
    if unicodedata.normalize("NFC", value) != value:
        raise _fail(source, where, f"text is not in Unicode NFC form: {value!r}")
    bad = sorted({ch for ch in value
                  if not (_is_telugu(ch) or ch == " " or ch in _PUNCT or ch in _JOINERS)})
    if bad:
        shown = ", ".join(repr(ch) for ch in bad)
        raise _fail(source, where, f"text must be Telugu script (numbers as words, punctuation "
                                   f"only {_PUNCT!r}); found {shown} in {value!r}")
    if not any(_is_telugu(ch) and unicodedata.category(ch) == "Lo" for ch in value):
        raise _fail(source, where, f"text has no Telugu letters: {value!r}")
    return value


def _check_emotion(source: str, where: str, value: Any) -> str:
    if value not in EMOTIONS:
        raise _fail(source, where,
                    f"unknown emotion {value!r}; expected one of {', '.join(EMOTIONS)}")
    return value


def _check_keys(source: str, where: str, entry: Any, required: set[str],
                optional: set[str]) -> None:
    if not isinstance(entry, Mapping):
        raise _fail(source, where, f"expected a mapping, got {type(entry).__name__}")
    missing = required - entry.keys()
    if missing:
        raise _fail(source, where, f"missing field(s) {', '.join(sorted(missing))}")
    unknown = entry.keys() - required - optional
    if unknown:
        raise _fail(source, where, f"unknown field(s) {', '.join(sorted(map(str, unknown)))}")


def _check_id(source: str, where: str, value: Any, seen: set[str]) -> str:
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise _fail(source, where, f"id must be a non-empty string without surrounding spaces, "
                                   f"got {value!r}")
    if value in seen:
        raise _fail(source, f"id {value!r}", "duplicate id")
    seen.add(value)
    return value


def _check_topic(source: str, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(source, where, f"topic must be a non-empty string, got {value!r}")
    return value


def _list(source: str, where: str, value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise _fail(source, where, f"expected a non-empty list, got {value!r}")
    return value


def _parse_intents(source: str, raw: Any, seen_ids: set[str]) -> tuple[Intent, ...]:
    intents: list[Intent] = []
    question_owner: dict[str, str] = {}
    answer_owner: dict[str, str] = {}
    for n, entry in enumerate(_list(source, "intents", raw)):
        where = f"intents[{n}]"
        _check_keys(source, where, entry, {"id", "topic", "questions", "answer", "emotion"}, set())
        iid = _check_id(source, where, entry["id"], seen_ids)
        where = f"intent {iid!r}"
        topic = _check_topic(source, where, entry["topic"])
        questions = entry["questions"]
        if not isinstance(questions, list) or len(questions) != QUESTIONS_PER_INTENT:
            raise _fail(source, where, f"expected exactly {QUESTIONS_PER_INTENT} questions, "
                                       f"got {questions!r}")
        keys: list[str] = []
        for q_n, question in enumerate(questions):
            _check_text(source, f"{where} question {q_n + 1}", question)
            key = text_key(question)
            if key in keys:
                raise _fail(source, where, f"questions {keys.index(key) + 1} and {q_n + 1} are "
                                           f"the same: {question!r}")
            if key in question_owner:
                raise _fail(source, where, f"question {question!r} is already used by intent "
                                           f"{question_owner[key]!r}")
            keys.append(key)
        for key in keys:
            question_owner[key] = iid
        answer = _check_text(source, f"{where} answer", entry["answer"])
        akey = text_key(answer)
        if akey in answer_owner:
            raise _fail(source, where, f"answer {answer!r} is the same as the answer of intent "
                                       f"{answer_owner[akey]!r}; answers must be unique")
        answer_owner[akey] = iid
        emotion = _check_emotion(source, where, entry["emotion"])
        intents.append(Intent(iid, topic, tuple(questions), answer, emotion))
    return tuple(intents)


def _parse_exchanges(source: str, raw: Any, seen_ids: set[str]) -> tuple[Exchange, ...]:
    exchanges: list[Exchange] = []
    for n, entry in enumerate(_list(source, "exchanges", raw)):
        where = f"exchanges[{n}]"
        _check_keys(source, where, entry, {"id", "topic", "turns"}, set())
        eid = _check_id(source, where, entry["id"], seen_ids)
        where = f"exchange {eid!r}"
        topic = _check_topic(source, where, entry["topic"])
        raw_turns = entry["turns"]
        if not isinstance(raw_turns, list) or len(raw_turns) < 2:
            raise _fail(source, where, f"expected a list of at least two turns, got {raw_turns!r}")
        turns: list[Turn] = []
        for t_n, turn in enumerate(raw_turns):
            twhere = f"{where} turn {t_n + 1}"
            _check_keys(source, twhere, turn, {"speaker", "text"}, {"emotion"})
            speaker = turn["speaker"]
            expected = SPEAKERS[t_n % 2]
            if speaker not in SPEAKERS:
                raise _fail(source, twhere, f"speaker must be 'user' or 'agent', got {speaker!r}")
            if speaker != expected:
                raise _fail(source, twhere, f"speakers must alternate starting with the user; "
                                            f"expected {expected!r}, got {speaker!r}")
            text = _check_text(source, twhere, turn["text"])
            emotion = turn.get("emotion")
            if speaker == "agent" and emotion is None:
                raise _fail(source, twhere, "agent turns need an emotion")
            if emotion is not None:
                _check_emotion(source, twhere, emotion)
            turns.append(Turn(speaker, text, emotion))
        exchanges.append(Exchange(eid, topic, tuple(turns)))
    return tuple(exchanges)


def _parse_phrases(source: str, name: str, raw: Any) -> tuple[str, ...]:
    phrases: list[str] = []
    keys: set[str] = set()
    for n, phrase in enumerate(_list(source, name, raw)):
        _check_text(source, f"{name}[{n}]", phrase)
        key = text_key(phrase)
        if key in keys:
            raise _fail(source, f"{name}[{n}]", f"duplicate entry {phrase!r}")
        keys.add(key)
        phrases.append(phrase)
    return tuple(phrases)


def parse_conversations(data: Any, source: str = "<conversations>") -> ConversationSet:
    """Validate already-parsed YAML data and build a :class:`ConversationSet`.

    Raises ``ValueError`` naming ``source`` and the offending id (or list position) on any
    violation: duplicate ids, not exactly three distinct questions, a question used by two
    intents, a repeated answer, an unknown emotion, empty or non-Telugu text, speakers that do
    not alternate starting with the user, an agent turn without an emotion, unknown fields,
    bad paraphrase rules, or rules that cannot make ``per_question`` phrasings of a question.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping at the top level, "
                         f"got {type(data).__name__}")
    sections = {"intents", "exchanges", "backchannels", "interruptions"}
    optional = {"paraphrase"}
    missing = sections - data.keys()
    if missing:
        raise ValueError(f"{source}: missing section(s) {', '.join(sorted(missing))}")
    unknown = data.keys() - sections - optional
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {', '.join(sorted(map(str, unknown)))}")
    seen_ids: set[str] = set()
    intents = _parse_intents(source, data["intents"], seen_ids)
    exchanges = _parse_exchanges(source, data["exchanges"], seen_ids)
    backchannels = _parse_phrases(source, "backchannels", data["backchannels"])
    interruptions = _parse_phrases(source, "interruptions", data["interruptions"])
    rules = _parse_paraphrase(source, data["paraphrase"]) if "paraphrase" in data else None
    if rules is not None:
        intents = _paraphrase_all(source, intents, rules)
    return ConversationSet(intents, exchanges, backchannels, interruptions, rules)


# ----------------------------------------------------------------------------- paraphrases

_RULE_KINDS = ("swap", "opener", "closer", "polite", "opener+swap", "swap+closer", "swap+polite", "opener+polite")


def _core(word: str) -> str:
    return word.rstrip(_PUNCT)


def _seed(*parts: object) -> int:
    """A seed that is the same on every machine and Python run (unlike ``hash``)."""
    return zlib.crc32("/".join(map(str, parts)).encode("utf-8"))


def _swaps(line: str, rules: ParaphraseRules, rng: random.Random) -> list[str]:
    """Up to two variants of ``line`` with every substitution-group member in it replaced by
    another member of its group (whole words; a multi-word member must match whole words with
    punctuation only after its last word)."""
    words = line.split()
    found: list[tuple[int, int, tuple[str, ...], str]] = []  # (start, length, group, member)
    i = 0
    while i < len(words):
        hit = None
        for group in rules.substitutions:
            for member in group:
                m = member.split()
                seg = words[i:i + len(m)]
                if (len(seg) == len(m) and [_core(w) for w in seg] == m
                        and all(w == _core(w) for w in seg[:-1])):
                    hit = (i, len(m), group, member)
                    break
            if hit:
                break
        if hit:
            found.append(hit)
            i += hit[1]
        else:
            i += 1
    if not found:
        return []
    out: list[str] = []
    for _ in range(2):
        new = list(words)
        for start, length, group, member in reversed(found):
            alt = rng.choice([g for g in group if g != member])
            tail = words[start + length - 1][len(_core(words[start + length - 1])):]
            new[start:start + length] = (alt + tail).split()
        text = " ".join(new)
        if text not in out:
            out.append(text)
    return out


def _opened(line: str, rules: ParaphraseRules, opener: str, relaxed: bool = False) -> str | None:
    first = _core(line.split()[0])
    if first == opener.split()[0] or (first in rules.no_opener_after and not relaxed):
        return None
    return f"{opener}, {line}"


def _closed(line: str, closer: str) -> str | None:
    return f"{line} {closer}" if line.endswith("?") else None


def _polite(line: str, rules: ParaphraseRules) -> str | None:
    if not rules.polite:
        return None
    cores = [_core(w) for w in line.split()]
    if rules.polite in cores or any(w in rules.informal for w in cores):
        return None
    words = line.split()
    last = words[-1]
    tail = last[len(_core(last)):]
    if not _core(last):
        return None
    words[-1] = f"{_core(last)} {rules.polite}{tail}"
    return " ".join(words)


def _candidates(line: str, rules: ParaphraseRules, rng: random.Random) -> dict[str, list[str]]:
    """Every variant of one line, by rule kind, each list in a seeded order."""
    swaps = _swaps(line, rules, rng)
    openers = list(rules.openers)
    closers = list(rules.question_closers)
    rng.shuffle(openers)
    rng.shuffle(closers)
    out: dict[str, list[str]] = {
        "swap": swaps,
        "opener": [t for o in openers if (t := _opened(line, rules, o))],
        "closer": [t for c in closers if (t := _closed(line, c))],
        "polite": [t] if (t := _polite(line, rules)) else [],
        "opener+swap": [t for sw in swaps for o in openers[:2] if (t := _opened(sw, rules, o))],
        "swap+closer": [t for sw in swaps for c in closers[:2] if (t := _closed(sw, c))],
        "swap+polite": [t for sw in swaps if (t := _polite(sw, rules))],
        "opener+polite": [t for o in openers[:2] if (p := _polite(line, rules)) and (t := _opened(p, rules, o))],
    }
    return out


def _fallback(line: str, rules: ParaphraseRules, rng: random.Random) -> list[str]:
    """Last resort for a line the other rules barely touch (``సరే, ఇక ఉంటాను.``): openers even
    after an opener-like first word, plain and polite."""
    openers = list(rules.openers)
    rng.shuffle(openers)
    polite = _polite(line, rules)
    return [t for o in openers for base in (line, polite) if base and (t := _opened(base, rules, o, True))]


def paraphrase_intent(intent: Intent, rules: ParaphraseRules,
                      taken: Mapping[str, str] | None = None) -> tuple[Phrasing, ...]:
    """The phrasings of ``intent``: per hand-written question, the question itself and then
    ``per_question - 1`` variants, taking rule kinds in turn (in an order seeded by the intent
    id and question) so each family mixes kinds. Variants whose :func:`text_key` is in
    ``taken`` under another intent, or already made, are skipped. Families numbered in
    ``heldout`` (``heldout_questions`` of them, seeded by the intent id) are marked held out.

    Raises ``ValueError`` when the rules cannot make ``per_question`` phrasings of a question.
    """
    taken = taken or {}
    n = len(intent.questions)
    heldout = set(random.Random(_seed(intent.id, "heldout")).sample(range(n), min(rules.heldout_questions, n)))
    seen = {text_key(q) for q in intent.questions}
    out: list[Phrasing] = []
    for qi, question in enumerate(intent.questions):
        rng = random.Random(_seed(intent.id, qi))
        family = [Phrasing(question, qi, "written", qi in heldout)]
        pools = _candidates(question, rules, rng)
        kinds = list(_RULE_KINDS)
        rng.shuffle(kinds)

        def take(pool: list[str], kind: str) -> None:
            while pool:
                text = pool.pop(0)
                key = text_key(text)
                if key in seen or taken.get(key, intent.id) != intent.id:
                    continue
                seen.add(key)
                family.append(Phrasing(text, qi, kind, qi in heldout))
                return

        while len(family) < rules.per_question and any(pools[k] for k in kinds):
            for kind in kinds:
                if len(family) < rules.per_question:
                    take(pools[kind], kind)
        fallback = _fallback(question, rules, rng)  # only once every other kind has run dry
        while len(family) < rules.per_question and fallback:
            take(fallback, "opener")
        if len(family) < rules.per_question:
            raise ValueError(f"intent {intent.id!r} question {qi + 1} ({question!r}): the paraphrase rules "
                             f"make only {len(family)} phrasings, {rules.per_question} are needed; add "
                             f"openers or substitutions, or lower per_question")
        out.extend(family)
    return tuple(out)


def paraphrase_line(line: str, rules: ParaphraseRules, rng: random.Random) -> str:
    """One variant of any user line drawn with ``rng`` (any rule kind, or the line itself when
    no rule applies): used for the user turns of multi-turn exchanges, which are not evaluated
    by phrasing, so that their renderings differ in wording too."""
    pools = [pool for pool in _candidates(line, rules, rng).values() if pool]
    return rng.choice(rng.choice(pools)) if pools else line


def _paraphrase_all(source: str, intents: tuple[Intent, ...], rules: ParaphraseRules) -> tuple[Intent, ...]:
    taken = {text_key(q): i.id for i in intents for q in i.questions}
    out = []
    for intent in intents:
        try:
            phrasings = paraphrase_intent(intent, rules, taken)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        for p in phrasings:
            _check_text(source, f"intent {intent.id!r} phrasing {p.text!r}", p.text)
            taken.setdefault(text_key(p.text), intent.id)
        out.append(replace(intent, phrasings=phrasings))
    return tuple(out)


def _parse_paraphrase(source: str, raw: Any) -> ParaphraseRules:
    where = "paraphrase"
    fields = {"per_question", "heldout_questions", "openers", "no_opener_after", "question_closers",
              "polite", "informal", "substitutions"}
    _check_keys(source, where, raw, {"per_question"}, fields - {"per_question"})
    per = raw["per_question"]
    if not isinstance(per, int) or isinstance(per, bool) or per < 1:
        raise _fail(source, where, f"per_question must be an integer >= 1, got {per!r}")
    held = raw.get("heldout_questions", 0)
    if not isinstance(held, int) or isinstance(held, bool) or not 0 <= held < QUESTIONS_PER_INTENT:
        raise _fail(source, where, f"heldout_questions must be an integer in [0, "
                                   f"{QUESTIONS_PER_INTENT - 1}], got {held!r}")

    def words(name: str, punct: bool = False) -> tuple[str, ...]:
        if name not in raw:
            return ()
        out = []
        for n, w in enumerate(_list(source, f"{where}.{name}", raw[name])):
            _check_text(source, f"{where}.{name}[{n}]", w)
            if not punct and any(ch in _PUNCT for ch in w):
                raise _fail(source, f"{where}.{name}[{n}]", f"no punctuation here, got {w!r}")
            if punct and w[-1] not in _PUNCT:
                raise _fail(source, f"{where}.{name}[{n}]", f"must end in one of {_PUNCT!r}, got {w!r}")
            out.append(w)
        return tuple(out)

    polite = raw.get("polite")
    if polite is not None:
        _check_text(source, f"{where}.polite", polite)
        if len(polite.split()) != 1 or any(ch in _PUNCT for ch in polite):
            raise _fail(source, f"{where}.polite", f"must be one word without punctuation, got {polite!r}")
    groups = []
    for n, group in enumerate(raw.get("substitutions") or []):
        gw = f"{where}.substitutions[{n}]"
        if not isinstance(group, list) or len(group) < 2:
            raise _fail(source, gw, f"expected a list of at least two forms, got {group!r}")
        for m in group:
            _check_text(source, gw, m)
            if any(ch in _PUNCT for ch in m):
                raise _fail(source, gw, f"no punctuation in substitutions, got {m!r}")
        if len({text_key(m) for m in group}) != len(group):
            raise _fail(source, gw, f"the forms must differ (ignoring spaces), got {group!r}")
        groups.append(tuple(group))
    return ParaphraseRules(per, held, words("openers"), words("no_opener_after"), words("question_closers", True),
                           polite, words("informal"), tuple(groups))


# ----------------------------------------------------------------------------- loading


def default_path() -> Path:
    """Where the packaged ``conversations.yaml`` lies."""
    return Path(str(resources.files(_PACKAGE).joinpath(_RESOURCE)))


def load_conversations(path: str | os.PathLike[str] | None = None) -> ConversationSet:
    """Load and validate a conversation script file (default: the packaged one)."""
    if path is None:
        resource = resources.files(_PACKAGE).joinpath(_RESOURCE)
        source, text = _RESOURCE, resource.read_text(encoding="utf-8")
    else:
        source, text = str(path), Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not valid YAML: {exc}") from exc
    return parse_conversations(data, source)


def qa_pairs(path: str | os.PathLike[str] | None = None) -> list[QAPair]:
    """Every question -> answer pair of a script file (default: the packaged one)."""
    return load_conversations(path).qa_pairs()
