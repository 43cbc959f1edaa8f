"""A Telugu sentence generator for the synthetic speech corpus.

Everyday colloquial Telugu (errands, travel, food, phones and apps, office, family) built
from templates and word lists, the way people actually talk: English loanwords written in
Telugu script (``టికెట్ బుక్ చేశాను``), numbers for prices, times and distances, questions
and statements. Loanword spellings come from the ``codemix-restore-shunyalabs`` package's
Telugu transliteration table (3k English words in Telugu script), so they match how Telugu
speakers type them; its 50k-word Telugu lexicon is exposed for checking that generated text
is made of real words.

Templates are written with digits (``{hour} గంటలకి``) and every sentence is passed through
:func:`maata.text.normalize.normalize_text`, so numbers come out as spoken Telugu words and
the text is exactly what the TTS reads. Output is deterministic for a given seed.

Template syntax: ``{slot}`` draws from a word list (see ``_SLOTS``); a slot that repeats in
one template (``{food}`` ... ``{food}``) draws a different word each time. ``{who}`` is a
person (a name or a relative) and fixes agreement; ``{v:masc|fem|honorific}`` picks the verb
form that agrees with the last ``{who}``; ``{who_dat}`` is that person in the dative.
"""

from __future__ import annotations

import functools
import json
import random
import re
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Sequence

from maata.text.normalize import ZWNJ, clean_joiners, normalize_text

__all__ = ["SentenceGenerator", "generate_sentences", "loanword", "loanwords", "telugu_lexicon",
           "dative", "locative", "TEMPLATES"]

_VIRAMA = "\u0c4d"
_ANUSVARA = "\u0c02"

# ---------------------------------------------------------------------------------------
# Package data


@functools.lru_cache(maxsize=1)
def loanwords() -> dict[str, str]:
    """English word → its usual Telugu-script spelling (first listed variant wins).

    The package stores some zero-width non-joiners as the literal text ``\\u200c``; those
    are decoded and the spelling is cleaned the way :mod:`maata.text.normalize` would.
    """
    path = resources.files("codemix_restore") / "data/known_transliterations/te_merged.json"
    table: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, str] = {}
    for telugu, english in table.items():
        spelling = clean_joiners(telugu.replace("\\u200c", ZWNJ).replace("\\u200d", "\u200d"))
        out.setdefault(english.lower(), spelling)
    return out


def loanword(english: str) -> str:
    """The Telugu spelling of an English loanword; KeyError names the word if it is missing."""
    try:
        return loanwords()[english]
    except KeyError:
        raise KeyError(f"no Telugu spelling for loanword {english!r} in codemix-restore") from None


@functools.lru_cache(maxsize=1)
def telugu_lexicon() -> frozenset[str]:
    """The package's 50k attested Telugu word forms (from ASR transcripts)."""
    path = resources.files("codemix_restore") / "data/te_common.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(w.strip() for w in lines if w.strip() and not w.startswith("#"))


# ---------------------------------------------------------------------------------------
# Case suffixes


def _attach(word: str, suffix: str) -> str:
    """Glue a case suffix; after a virama a ZWNJ keeps the word's final consonant visible
    (``ఆఫీస్‌కి``, not the conjunct ``ఆఫీస్కి``), as Telugu typists write loanwords."""
    return f"{word}{ZWNJ}{suffix}" if word.endswith(_VIRAMA) else word + suffix


def dative(word: str) -> str:
    """``to`` case: ఆఫీస్ → ఆఫీస్‌కి, గుంటూరు → గుంటూరుకి, ఖమ్మం → ఖమ్మానికి."""
    if word.endswith(_ANUSVARA):
        return word[:-1] + "ానికి"
    return _attach(word, "కి")


def locative(word: str) -> str:
    """``in`` case: ఆఫీస్ → ఆఫీస్‌లో, విజయవాడ → విజయవాడలో."""
    return _attach(word, "లో")


# ---------------------------------------------------------------------------------------
# Word lists


@dataclass(frozen=True)
class Person:
    """Someone a sentence talks about: how to say them, in the dative, and verb agreement
    (``m`` masculine, ``f`` feminine/neuter singular, ``h`` honorific plural for elders)."""

    text: str
    dat: str
    agreement: str


_NAMES_M = ["రాము", "కృష్ణ", "రవి", "సురేష్", "అనిల్", "శ్రీను", "మహేష్", "వెంకట్", "కిరణ్",
            "అర్జున్", "గోపాల్", "నాగేష్", "సందీప్", "ప్రసాద్", "సాయి", "వంశీ", "రాజు", "శ్రీకాంత్",
            "హరీష్", "చైతన్య"]
_NAMES_F = ["సీత", "లక్ష్మి", "ప్రియ", "కవిత", "రాధ", "పద్మ", "స్వాతి", "దివ్య", "శ్రావణి",
            "హారిక", "మౌనిక", "రమ్య", "భవాని", "లావణ్య", "సుజాత", "అనూష", "కీర్తి", "మాధవి"]
_RELATIVES = [
    Person("మా అమ్మ", "మా అమ్మకి", "h"), Person("మా నాన్న", "మా నాన్నకి", "h"),
    Person("మా అన్నయ్య", "మా అన్నయ్యకి", "h"), Person("మా అక్క", "మా అక్కకి", "h"),
    Person("మా తమ్ముడు", "మా తమ్ముడికి", "m"), Person("మా చెల్లి", "మా చెల్లికి", "f"),
    Person("మా తాతయ్య", "మా తాతయ్యకి", "h"), Person("మా అమ్మమ్మ", "మా అమ్మమ్మకి", "h"),
    Person("మా మామయ్య", "మా మామయ్యకి", "h"), Person("మా అత్తయ్య", "మా అత్తయ్యకి", "h"),
    Person("మా బాబాయ్", "మా బాబాయ్‌కి", "h"), Person("మా పిన్ని", "మా పిన్నికి", "h"),
]
PEOPLE: tuple[Person, ...] = tuple(
    [Person(n, dative(n), "m") for n in _NAMES_M]
    + [Person(n, dative(n), "f") for n in _NAMES_F]
    + _RELATIVES
)

CITIES = ["హైదరాబాద్", "విజయవాడ", "విశాఖపట్నం", "తిరుపతి", "వరంగల్", "గుంటూరు", "నెల్లూరు",
          "కర్నూలు", "రాజమండ్రి", "కాకినాడ", "ఖమ్మం", "కరీంనగర్", "నిజామాబాద్", "ఒంగోలు",
          "అనంతపురం", "కడప", "ఏలూరు", "శ్రీకాకుళం", "చెన్నై", "బెంగళూరు", "ముంబై", "ఢిల్లీ"]

# Places in town, by their English loanword (spelt from the package) or in Telugu.
_PLACE_LOANS = ["office", "bank", "hospital", "market", "school", "college", "station", "shop",
                "hotel", "park", "gym", "theatre", "restaurant", "airport", "hostel"]
_PLACES_TE = ["గుడి", "బస్టాండ్"]

# Things people own or use; screens (where the internet shows up); things bought online.
_DEVICE_LOANS = ["phone", "laptop", "computer", "tv", "fridge", "charger", "camera", "bike",
                 "car", "watch", "tablet"]
_SCREEN_LOANS = ["phone", "laptop", "computer", "tv", "tablet", "mobile"]
_ONLINE_LOANS = ["phone", "charger", "watch", "camera", "bag", "shoes", "dress", "shirt",
                 "laptop", "cake", "pizza", "gift"]

# (thing, actions done to it), all loanwords: "{thing} {action} చేశాను".
_TASKS = [
    ("ticket", ["book", "cancel", "confirm"]), ("bill", ["pay", "check"]),
    ("app", ["update", "download", "install"]), ("photo", ["share", "send", "upload"]),
    ("report", ["submit", "check", "send"]), ("message", ["send", "check"]),
    ("order", ["cancel", "confirm", "check"]), ("appointment", ["book", "cancel", "confirm"]),
    ("password", ["change", "update"]), ("account", ["check", "update"]),
    ("video", ["download", "share", "upload"]), ("email", ["send", "check"]),
    ("project", ["submit", "complete"]), ("recharge", ["complete", "check"]),
]

_EVENTS = ["meeting", "exam", "interview", "class", "party", "function", "match", "test",
           "training", "session"]

_FOODS = ["ఇడ్లీ", "దోశ", "బిర్యానీ", "పులిహోర", "పెసరట్టు", "ఉప్మా", "పూరీ", "వడ",
          "చపాతీ", "మిర్చి బజ్జీ", "గోంగూర పచ్చడి", "పప్పు అన్నం", "పెరుగన్నం", "చికెన్ కర్రీ",
          "ఫిష్ ఫ్రై", "పాయసం", "పకోడీ", "ఉల్లి దోశ"]
_DRINKS = ["టీ", "కాఫీ", "జ్యూస్", "మజ్జిగ", "లస్సీ", "కొబ్బరి నీళ్లు"]
_PRODUCE = ["టమాటాలు", "ఉల్లిపాయలు", "బంగాళాదుంపలు", "వంకాయలు", "బెండకాయలు", "క్యారెట్లు",
            "పచ్చిమిర్చి", "మామిడి పండ్లు", "అరటి పండ్లు", "ద్రాక్ష", "బియ్యం", "కందిపప్పు"]
_ROLES = ["teacher", "doctor", "manager", "friend", "driver", "nurse"]

_DAYS_FUTURE = ["ఈరోజు", "రేపు", "ఎల్లుండి", "సోమవారం", "మంగళవారం", "బుధవారం", "గురువారం",
                "శుక్రవారం", "శనివారం", "ఆదివారం", "వచ్చే వారం"]
_DAYS_PAST = ["నిన్న", "మొన్న", "పోయిన వారం", "నిన్న రాత్రి", "ఇందాక", "పోయిన నెల"]
# Part of the day → the clock hours people mean by it (so "రాత్రి రెండు గంటలకి" is not drawn).
_PARTS_OF_DAY = {"పొద్దున్న": (6, 11), "మధ్యాహ్నం": (12, 3), "సాయంత్రం": (4, 7),
                 "రాత్రి": (7, 11)}
_DEADLINES = ["ఈరోజే", "రేపటిలోగా", "సాయంత్రంలోగా", "వీలైనంత త్వరగా", "ఈ వారంలోగా"]
_OPENERS = ["అరే", "సరే", "చూడు", "ఏమండీ", "హలో", "అవును", "అయ్యో", "అమ్మో", "ఓకే", "వినండి"]

_PRICES = [10, 20, 25, 30, 40, 50, 60, 75, 80, 100, 120, 150, 200, 250, 300, 350, 400, 450,
           500, 600, 750, 800, 999, 1000, 1200, 1500, 2000, 2500, 3000, 4500, 5000, 7500,
           10000, 12000, 15000, 25000, 40000]
_SMALL_PRICES = [20, 25, 30, 35, 40, 45, 50, 60, 70, 80, 90, 100, 120]

TEMPLATES: tuple[str, ...] = (
    "{day} నేను {place_dat} వెళ్తున్నాను.",
    "{who} {city} నుంచి {day} {v:వస్తున్నాడు|వస్తోంది|వస్తున్నారు}.",
    "{past} {who} {city_dat} {v:వెళ్ళాడు|వెళ్ళింది|వెళ్ళారు}.",
    "నా {device} పని చేయడం లేదు, కొంచెం చూస్తావా?",
    "ఈ {device} ఎంతకి కొన్నావు?",
    "ఈ {device} ధర {price} రూపాయలు అంట.",
    "{day} {hour} గంటలకి {event} ఉంది, మర్చిపోకు.",
    "{task} చేశాను, ఒకసారి చెక్ చేయండి.",
    "{task} చేయడం మర్చిపోయాను, ఇప్పుడే చేస్తాను.",
    "దయచేసి {deadline} {task} చేయండి.",
    "ట్రాఫిక్ వల్ల {minutes} నిమిషాలు లేట్ అవుతుంది, సారీ.",
    "ఇంకో {minutes} నిమిషాల్లో {place_loc} ఉంటాను.",
    "ఈ {food} చాలా రుచిగా ఉంది, ఎక్కడ కొన్నారు?",
    "పొద్దున్నే {food} తిని {place_dat} వెళ్ళాను.",
    "{kilos} కిలోల {produce} ఇవ్వండి.",
    "{produce} కిలో {small_price} రూపాయలా? చాలా ఎక్కువ.",
    "{who} {city_loc} {v:ఉంటాడు|ఉంటుంది|ఉంటారు}.",
    "{city_loc} ఈరోజు బాగా వర్షం పడుతోంది అంట.",
    "{city_loc} ఈ సారి ఎండలు చాలా ఎక్కువగా ఉన్నాయి.",
    "{city_dat} ట్రైన్ ఎన్ని గంటలకి ఉంది?",
    "{city_dat} బస్ టికెట్ {price} రూపాయలు అయింది.",
    "{who} ఫోన్ చేస్తే, నేను {place_loc} ఉన్నానని చెప్పు.",
    "{who_dat} ఫోన్ చేసి {event} గురించి చెప్పు.",
    "మీ ఆర్డర్ {day} డెలివరీ అవుతుంది.",
    "మీ అకౌంట్‌లో {price} రూపాయలు జమ అయ్యాయి.",
    "నా సాలరీ ఇంకా రాలేదు, {day} వస్తుందేమో చూడాలి.",
    "ఈ నెల కరెంట్ బిల్ {price} రూపాయలు వచ్చింది.",
    "{event} {part} {hour} గంటలకి స్టార్ట్ అవుతుంది.",
    "వైఫై సిగ్నల్ సరిగ్గా లేదు, {screen_loc} ఇంటర్నెట్ రావడం లేదు.",
    "{name}, అన్నం తిన్నావా?",
    "మీరు {food} తింటారా, లేక {food} తింటారా?",
    "ఒక {drink} ఇవ్వండి, చక్కెర కొంచెం తక్కువ.",
    "{day} {part} {place_dat} వెళ్దామా?",
    "ఈ సినిమా చాలా బాగుంది, {day} తప్పకుండా చూడు.",
    "{past} క్రికెట్ మ్యాచ్ చూశావా? చివరి ఓవర్ అదిరిపోయింది.",
    "డాక్టర్ అపాయింట్‌మెంట్ {day} {hour} గంటలకి ఉంది.",
    "జ్వరం ఇంకా తగ్గలేదు, {day} హాస్పిటల్‌కి వెళ్ళాలి.",
    "ఈ టాబ్లెట్ రోజుకి {times} సార్లు వేసుకోవాలి.",
    "{who} ఇంకా రాలేదా? ఒకసారి ఫోన్ చేసి కనుక్కో.",
    "నేను {city_loc} {years} సంవత్సరాలుగా ఉంటున్నాను.",
    "మా ఇల్లు {place} నుంచి {km} కిలోమీటర్ల దూరంలో ఉంది.",
    "{who} పుట్టినరోజు {day}, కేక్ ఆర్డర్ చేద్దాం.",
    "ఈ సారి {event} చాలా కష్టంగా ఉంది, రిజల్ట్ కోసం టెన్షన్‌గా ఉంది.",
    "ఇంటర్వ్యూ బాగానే జరిగింది, {day} రిజల్ట్ చెప్తారు.",
    "మా మేనేజర్ {day} {part} మీటింగ్ పెట్టారు.",
    "ప్రాజెక్ట్ రిపోర్ట్ {deadline} సబ్మిట్ చేయాలి.",
    "ఆటో అతను {place_dat} {small_price} రూపాయలు అడుగుతున్నాడు.",
    "మీ పేరు ఏంటి? నా పేరు {name}.",
    "మీది ఏ ఊరు? మాది {city}.",
    "{city} నుంచి {city_dat} ఎంత దూరం ఉంటుంది?",
    "ఫోన్ బ్యాటరీ {percent} శాతం మాత్రమే ఉంది, ఛార్జర్ ఉందా?",
    "{day} {part} {hour} గంటలకి {place_loc} కలుద్దాం.",
    "{who} చాలా మంచి {role}, అందరికీ సాయం {v:చేస్తాడు|చేస్తుంది|చేస్తారు}.",
    "{past} {place_loc} {who} {v:కనిపించాడు|కనిపించింది|కనిపించారు}.",
    "ఈ {device} {years} సంవత్సరాల క్రితం కొన్నాను, ఇంకా బాగానే పని చేస్తోంది.",
    "{who_dat} {drink} అంటే చాలా ఇష్టం.",
    "{day} ఇంట్లో {food} చేస్తున్నాం, నువ్వు కూడా రా.",
    "ఆన్‌లైన్‌లో {online_item} ఆర్డర్ చేశాను, {day} వస్తుంది.",
    "యూపీఐ ద్వారా {price} రూపాయలు పంపించాను, చెక్ చేసుకోండి.",
    "ఏటీఎమ్‌లో క్యాష్ లేదు, {place_loc} ఇంకో ఏటీఎమ్ ఉందా?",
    "{hour} గంటల బస్ మిస్ అయింది, తర్వాత బస్‌కి వస్తాను.",
    "నెట్‌వర్క్ ప్రాబ్లెమ్ ఉంది, మీ మాట సరిగ్గా వినిపించడం లేదు.",
)

# ---------------------------------------------------------------------------------------
# Filling templates


@dataclass
class _Fill:
    """Per-sentence state: the random source, the last person (for agreement) and the
    words already used in this sentence (so a repeated slot gives a different word)."""

    rng: random.Random
    person: Person | None = None
    part_of_day: str | None = None
    used: set[str] | None = None

    def pick(self, options: Sequence[str]) -> str:
        used = self.used if self.used is not None else set()
        fresh = [o for o in options if o not in used] or list(options)
        choice = self.rng.choice(fresh)
        used.add(choice)
        self.used = used
        return choice


def _who(f: _Fill) -> str:
    f.person = f.rng.choice(PEOPLE)
    return f.person.text


def _who_dat(f: _Fill) -> str:
    f.person = f.rng.choice(PEOPLE)
    return f.person.dat


def _part_of_day(f: _Fill) -> str:
    f.part_of_day = f.rng.choice(list(_PARTS_OF_DAY))
    return f.part_of_day


def _hour(f: _Fill) -> str:
    """A clock hour; within the part of the day drawn earlier in the sentence, if any.

    One o'clock is left out: Telugu says ఒంటి గంటకి, not the regular ఒకటి గంటలకి.
    """
    first, last = _PARTS_OF_DAY.get(f.part_of_day or "", (1, 12))
    hours = [h % 12 or 12 for h in range(first, first + (last - first) % 12 + 1)]
    return str(f.rng.choice([h for h in hours if h != 1]))


def _task(f: _Fill) -> str:
    thing, actions = f.rng.choice(_TASKS)
    return f"{loanword(thing)} {loanword(f.rng.choice(actions))}"


def _loans(words: Sequence[str]) -> list[str]:
    return [loanword(w) for w in words]


def _places() -> list[str]:
    return _loans(_PLACE_LOANS) + _PLACES_TE


def _slots() -> dict[str, Callable[[_Fill], str]]:
    """Slot name → a function that draws its text (built lazily: it reads package data)."""
    places, devices, events = _places(), _loans(_DEVICE_LOANS), _loans(_EVENTS)
    screens, online, roles = _loans(_SCREEN_LOANS), _loans(_ONLINE_LOANS), _loans(_ROLES)
    names = _NAMES_M + _NAMES_F
    return {
        "who": _who,
        "who_dat": _who_dat,
        "name": lambda f: f.pick(names),
        "city": lambda f: f.pick(CITIES),
        "city_dat": lambda f: dative(f.pick(CITIES)),
        "city_loc": lambda f: locative(f.pick(CITIES)),
        "place": lambda f: f.pick(places),
        "place_dat": lambda f: dative(f.pick(places)),
        "place_loc": lambda f: locative(f.pick(places)),
        "device": lambda f: f.pick(devices),
        "screen_loc": lambda f: locative(f.pick(screens)),
        "online_item": lambda f: f.pick(online),
        "event": lambda f: f.pick(events),
        "role": lambda f: f.pick(roles),
        "task": _task,
        "food": lambda f: f.pick(_FOODS),
        "drink": lambda f: f.pick(_DRINKS),
        "produce": lambda f: f.pick(_PRODUCE),
        "day": lambda f: f.pick(_DAYS_FUTURE),
        "past": lambda f: f.pick(_DAYS_PAST),
        "part": _part_of_day,
        "deadline": lambda f: f.pick(_DEADLINES),
        "price": lambda f: str(f.rng.choice(_PRICES)),
        "small_price": lambda f: str(f.rng.choice(_SMALL_PRICES)),
        "hour": _hour,
        "minutes": lambda f: str(f.rng.choice([5, 10, 15, 20, 25, 30, 40, 45])),
        "kilos": lambda f: str(f.rng.randint(1, 5)),
        "times": lambda f: str(f.rng.randint(2, 3)),
        "years": lambda f: str(f.rng.randint(2, 25)),
        "km": lambda f: str(f.rng.randint(2, 15)),
        "percent": lambda f: str(f.rng.choice([5, 8, 10, 12, 15, 20])),
    }


_SLOT = re.compile(r"\{(v:[^}]*|\w+)\}")
_AGREEMENT_INDEX = {"m": 0, "f": 1, "h": 2}


def _agree(forms: str, f: _Fill) -> str:
    """``v:masc|fem|hon`` → the form agreeing with the last person drawn."""
    if f.person is None:
        raise ValueError(f"template uses {{v:{forms}}} before any {{who}}")
    options = forms.split("|")
    if len(options) != 3:
        raise ValueError(f"{{v:{forms}}} needs three forms: masculine|feminine|honorific")
    return options[_AGREEMENT_INDEX[f.person.agreement]]


class SentenceGenerator:
    """Draws colloquial Telugu sentences from :data:`TEMPLATES`; deterministic per seed.

    About one sentence in six starts with a conversational opener (``అరే, ...``).
    """

    def __init__(self, seed: int = 0, templates: Sequence[str] = TEMPLATES) -> None:
        if not templates:
            raise ValueError("SentenceGenerator needs at least one template")
        self._rng = random.Random(seed)
        self._templates = tuple(templates)
        self._slots = _slots()

    def fill(self, template: str) -> str:
        """One sentence from ``template``, normalised for speech."""
        state = _Fill(self._rng)

        def sub(m: re.Match[str]) -> str:
            key = m.group(1)
            if key.startswith("v:"):
                return _agree(key[2:], state)
            if key not in self._slots:
                raise ValueError(f"unknown slot {{{key}}} in template {template!r}")
            return self._slots[key](state)

        text = _SLOT.sub(sub, template)
        if self._rng.random() < 1 / 6:
            text = f"{self._rng.choice(_OPENERS)}, {text}"
        return normalize_text(text)

    def sentence(self) -> str:
        """A random sentence from a random template."""
        return self.fill(self._rng.choice(self._templates))

    def sentences(self, n: int, *, max_tries_per_sentence: int = 50) -> list[str]:
        """``n`` distinct sentences (in generation order)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        seen: dict[str, None] = {}
        tries = 0
        while len(seen) < n:
            tries += 1
            if tries > max(1, n) * max_tries_per_sentence:
                raise ValueError(f"only {len(seen)} distinct sentences after {tries} draws; "
                                 f"the templates cannot make {n}")
            seen.setdefault(self.sentence(), None)
        return list(seen)


def generate_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct, normalised Telugu sentences, the same list for the same seed."""
    return SentenceGenerator(seed).sentences(n)
