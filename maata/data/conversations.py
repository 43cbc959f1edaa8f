"""The scripted Telugu conversations the speech-to-speech model is trained and evaluated on.

The scripts live in ``conversations.yaml`` next to this module (the schema is documented at
the top of that file). :func:`load_conversations` reads and validates them into frozen
dataclasses:

* :class:`Intent`: one agent answer with three user phrasings of the question;
* :class:`Exchange`: a short multi-turn conversation (user first, alternating);
* backchannels (ఆ, హ్మ్, సరే ...) the agent says while listening, and interruptions
  (ఆగండి, ఒక్క నిమిషం ...) a user says to cut the agent off.

:meth:`ConversationSet.qa_pairs` flattens the intents into question -> answer pairs. There is
deliberately no train/test split of the questions: evaluation holds out *speakers*, not
questions, so every pair is used on both sides with different voices.

Every answer is distinct (also ignoring punctuation and spacing), so an evaluation that
transcribes the model's spoken reply can tell which intent's answer was given.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
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
    "ConversationSet",
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
class Intent:
    """One thing a user asks, in three phrasings, and the agent's single answer."""

    id: str
    topic: str
    questions: tuple[str, ...]
    answer: str
    emotion: str


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
class ConversationSet:
    """All scripted conversations: intents, exchanges, backchannels and interruptions."""

    intents: tuple[Intent, ...]
    exchanges: tuple[Exchange, ...]
    backchannels: tuple[str, ...]
    interruptions: tuple[str, ...]

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
    not alternate starting with the user, an agent turn without an emotion, unknown fields.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping at the top level, "
                         f"got {type(data).__name__}")
    sections = {"intents", "exchanges", "backchannels", "interruptions"}
    missing = sections - data.keys()
    if missing:
        raise ValueError(f"{source}: missing section(s) {', '.join(sorted(missing))}")
    unknown = data.keys() - sections
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {', '.join(sorted(map(str, unknown)))}")
    seen_ids: set[str] = set()
    intents = _parse_intents(source, data["intents"], seen_ids)
    exchanges = _parse_exchanges(source, data["exchanges"], seen_ids)
    backchannels = _parse_phrases(source, "backchannels", data["backchannels"])
    interruptions = _parse_phrases(source, "interruptions", data["interruptions"])
    return ConversationSet(intents, exchanges, backchannels, interruptions)


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
