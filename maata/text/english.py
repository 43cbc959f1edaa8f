"""An English sentence generator for natural-voice codec data.

The codec learns from any speech, and a neural English voice (see :mod:`maata.data.piper`)
is the most natural-sounding one that ships offline. What it reads should vary the way real
callers do: statements, questions, requests and exclamations; short replies and long
sentences with clauses; several sentences in one breath; numbers read as quantities,
prices, times, dates, years, percentages and phone numbers. Everything here is our own
templates and word lists; nothing is downloaded.

Template syntax: ``{slot}`` draws from a word list or a number maker (``_SLOTS``); a slot
that repeats in one template draws a different value each time. Sentences are written
with digits and symbols (``$4.50``, ``7:45``, ``12%``), which the voice's espeak-ng
front end reads aloud, so the text is exactly what the voice was given.

Lengths come in four kinds (``LENGTHS``): a short phrase, one sentence, one long sentence
(two clauses joined) and two or three sentences. Output is deterministic for a seed.
"""

from __future__ import annotations

import random
import re
from typing import Callable, Sequence

__all__ = ["EnglishGenerator", "generate_english", "LENGTHS", "TEMPLATES", "SHORT"]

# ---------------------------------------------------------------------------------------
# Word lists

_NAMES = ("Maya", "Arjun", "Priya", "David", "Sarah", "Ravi", "Emma", "Omar", "Lucia", "Kenji",
          "Grace", "Samuel", "Anita", "Thomas", "Fatima", "Leo", "Nora", "Vikram", "Chloe",
          "Daniel", "Meera", "Jonah", "Olivia", "Hassan", "Ruth", "Mateo", "Ivy", "Kiran",
          "Peter", "Amara", "Zoe", "Felix", "Lakshmi", "Marcus", "Hannah", "Rahul")
_RELATIVES = ("my mother", "my father", "my sister", "my brother", "my uncle", "my aunt",
              "my grandmother", "my grandfather", "my cousin", "my neighbour", "my friend",
              "my boss", "our teacher", "the doctor", "the landlord", "my roommate")
_CITIES = ("Hyderabad", "Chennai", "Boston", "London", "Toronto", "Sydney", "Nairobi", "Berlin",
           "Mumbai", "Denver", "Lisbon", "Singapore", "Seattle", "Dublin", "Bangalore", "Austin",
           "Vijayawada", "Cape Town", "Madrid", "Chicago", "Warangal", "Auckland")
_PLACES = ("the bank", "the post office", "the station", "the airport", "the library",
           "the pharmacy", "the market", "the hospital", "the gym", "the park", "the office",
           "the bakery", "the museum", "the school", "the hotel", "the garage", "the beach",
           "the stadium", "the cinema", "the clinic", "the bus stop", "the supermarket")
_FOODS = ("rice", "lentil soup", "pizza", "noodles", "a sandwich", "pancakes", "biryani",
          "fresh bread", "tomato curry", "grilled fish", "a salad", "mango ice cream",
          "coffee", "green tea", "orange juice", "chocolate cake", "dosa", "fried potatoes",
          "yogurt", "apple pie", "spicy chicken", "vegetable stew", "popcorn", "lemonade")
_THINGS = ("umbrella", "laptop", "phone charger", "passport", "wallet", "bicycle", "notebook",
           "camera", "backpack", "headphones", "car keys", "jacket", "ticket", "printer",
           "watch", "sofa", "kettle", "suitcase", "lamp", "guitar", "microwave", "tablet")
_ADJS = ("quiet", "busy", "strange", "wonderful", "expensive", "cheap", "crowded", "tiny",
         "enormous", "comfortable", "noisy", "bright", "old", "brand new", "broken", "lovely",
         "difficult", "simple", "beautiful", "boring", "surprising", "cold", "warm", "huge")
_FEELINGS = ("happy", "tired", "nervous", "excited", "worried", "relieved", "hungry", "sleepy",
             "grateful", "confused", "proud", "bored", "surprised", "calm")
_ACTIVITIES = ("go for a walk", "watch a movie", "cook dinner", "call the office",
               "clean the kitchen", "read a book", "pay the bills", "visit the museum",
               "fix the sink", "learn to swim", "paint the fence", "plant some tomatoes",
               "practise the piano", "book a taxi", "wash the car", "finish the report",
               "water the plants", "write a letter", "play cricket", "take the dog out")
_ING = ("reading", "cooking", "running", "sleeping", "driving", "studying", "waiting",
        "shopping", "swimming", "working", "singing", "travelling", "painting", "talking")
_ANIMALS = ("dog", "cat", "parrot", "horse", "goat", "rabbit", "elephant", "monkey", "cow",
            "tiger", "owl", "squirrel", "duck", "buffalo")
_COLORS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange", "grey",
           "pink", "brown", "silver")
_JOBS = ("engineer", "nurse", "teacher", "farmer", "pilot", "chef", "lawyer", "plumber",
         "driver", "designer", "scientist", "shopkeeper", "musician", "accountant")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_WEATHER = ("raining", "snowing", "very windy", "really hot", "freezing", "cloudy", "sunny",
            "foggy", "humid")
_SERVICES = ("my internet connection", "the delivery", "my order", "the refund", "my account",
             "the appointment", "my booking", "the bill", "the new card", "my subscription")
_TOPICS = ("the election", "the football match", "the new phone", "climate change",
           "the traffic", "the festival", "the exam results", "the price of onions",
           "the weather", "the new bridge", "the concert", "space travel")


def _ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _plural(noun: str) -> str:
    if noun.endswith("s"):
        return noun
    return noun + ("es" if noun.endswith(("ch", "sh", "x")) else "s")


_SLOTS: dict[str, Callable[[random.Random], str]] = {
    "name": lambda r: r.choice(_NAMES),
    "rel": lambda r: r.choice(_RELATIVES),
    "city": lambda r: r.choice(_CITIES),
    "place": lambda r: r.choice(_PLACES),
    "food": lambda r: r.choice(_FOODS),
    "thing": lambda r: r.choice(_THINGS),
    "things": lambda r: _plural(r.choice(_THINGS)),
    "adj": lambda r: r.choice(_ADJS),
    "feeling": lambda r: r.choice(_FEELINGS),
    "act": lambda r: r.choice(_ACTIVITIES),
    "ing": lambda r: r.choice(_ING),
    "animal": lambda r: r.choice(_ANIMALS),
    "color": lambda r: r.choice(_COLORS),
    "job": lambda r: r.choice(_JOBS),
    "day": lambda r: r.choice(_DAYS),
    "month": lambda r: r.choice(_MONTHS),
    "weather": lambda r: r.choice(_WEATHER),
    "service": lambda r: r.choice(_SERVICES),
    "topic": lambda r: r.choice(_TOPICS),
    # numbers in the forms people say them
    "n": lambda r: str(r.choice((r.randint(2, 12), r.randint(13, 99), r.randint(100, 999)))),
    "big": lambda r: f"{r.randint(1, 99)},{r.randint(0, 999):03d}",
    "price": lambda r: r.choice((f"${r.randint(1, 99)}.{r.choice((0, 25, 50, 75, 99)):02d}",
                                 f"{r.randint(2, 950)} dollars", f"{r.randint(10, 2000)} rupees")),
    "time": lambda r: r.choice((f"{r.randint(1, 12)}:{r.choice((0, 15, 30, 45, 5, 20, 50)):02d}",
                                f"{r.randint(1, 12)} o'clock", f"half past {r.randint(1, 12)}")),
    "ampm": lambda r: r.choice(("in the morning", "in the afternoon", "in the evening", "at night",
                                "a.m.", "p.m.")),
    "date": lambda r: f"the {_ordinal(r.randint(1, 28))} of {r.choice(_MONTHS)}",
    "year": lambda r: str(r.choice((r.randint(1950, 1999), r.randint(2000, 2030)))),
    "pct": lambda r: f"{r.randint(1, 99)}%",
    "dec": lambda r: f"{r.randint(0, 40)}.{r.randint(1, 9)}",
    "phone": lambda r: f"{r.randint(200, 999)} {r.randint(200, 999)} {r.randint(1000, 9999)}",
    "ord": lambda r: _ordinal(r.randint(1, 40)),
    "room": lambda r: f"{r.randint(1, 9)}{r.randint(0, 2)}{r.randint(1, 9)}",
}

# ---------------------------------------------------------------------------------------
# Templates: statements, questions, requests, exclamations. Capitalisation is fixed after.

TEMPLATES: tuple[str, ...] = (
    # daily life
    "{name} left {thing} at {place} on {day}.",
    "I think {rel} is coming over at {time} {ampm}.",
    "We had {food} for lunch and it was {adj}.",
    "Could you pick up some {food} on your way home?",
    "Did you remember to {act} before you left?",
    "{rel} wants to {act} this weekend.",
    "The {animal} next door has been {ing} all afternoon.",
    "Have you seen my {color} {thing} anywhere?",
    "I'm feeling a bit {feeling} today, to be honest.",
    "Why is {place} so {adj} this morning?",
    "Let's {act} after we finish {food}.",
    "My {thing} stopped working again, so I need a new one.",
    "It's {weather} in {city}, so take a jacket.",
    "Is it going to be {weather} on {day}?",
    "{name} and {name} are {ing} in the garden.",
    "There were {n} people waiting outside {place}.",
    "I can't believe how {adj} that {animal} was!",
    "What time does {place} open on {day}?",
    "Please don't forget to {act} tomorrow.",
    "We should {act} before it gets dark.",
    "Honestly, I'd rather {act} than {act}.",
    # numbers, money, time, dates
    "The ticket costs {price}, including tax.",
    "Your total comes to {price}.",
    "I paid {price} for this {thing}, which seems like a lot.",
    "The train to {city} leaves at {time} {ampm}.",
    "My appointment is on {date} at {time}.",
    "She was born in {year} in {city}.",
    "The population of the town is about {big}.",
    "Prices went up by {pct} since last year.",
    "The temperature will reach {dec} degrees by noon.",
    "You can call me back on {phone}.",
    "Please send it to room {room} on the {ord} floor.",
    "We have {n} {things} in stock right now.",
    "The meeting moved from {time} to {time}.",
    "He finished the race in {ord} place out of {n}.",
    "Flight {room} to {city} is delayed by {n} minutes.",
    "It's {date} today, isn't it?",
    "Between {year} and {year}, the city grew by {pct}.",
    "Is {price} a fair price for {food}?",
    # phone calls and customer service
    "Hello, I'm calling about {service}.",
    "Hi, can you hear me? The line is a bit {adj}.",
    "Could you tell me why {service} is late?",
    "I'd like to speak to someone about {service}, please.",
    "Sorry, could you repeat that? I didn't catch the last part.",
    "Thanks for waiting, your call is important to us.",
    "Your reference number is {room} {n}.",
    "Can I change {service} to {day} instead?",
    "Is there anything else I can help you with today?",
    "Yes, that's right, my name is {name}.",
    "No, I said {day}, not {day}.",
    "Just a moment, let me check that for you.",
    # opinions, work, news
    "Everyone keeps talking about {topic}.",
    "What do you think about {topic}?",
    "{name} works as a {job} in {city}.",
    "Would you ever want to be a {job}?",
    "The {job} said it would take {n} days.",
    "I read that {pct} of people prefer {food}.",
    "The report on {topic} is due on {day}.",
    "If you ask me, {topic} is {adj}.",
    "How long have you lived in {city}?",
    "Where did you buy that {adj} {thing}?",
    "Wow, that's {adj}!",
    "Oh no, I left my {thing} on the bus!",
    "Congratulations, {name}, you did it!",
    "Wait, are you sure it was {name}?",
)

# Replies and fragments that people say on their own.
SHORT: tuple[str, ...] = (
    "Yes, please.", "No, thank you.", "Okay.", "Sure, why not?", "Really?", "I see.",
    "Hold on a second.", "Sounds good to me.", "Not really.", "Of course!", "Hmm, maybe.",
    "Good morning!", "Good night.", "See you on {day}.", "At {time}.", "About {n}.",
    "That's {adj}.", "Thanks, {name}.", "Where?", "Why not?", "Right, got it.",
    "Call me at {time}.", "{price}, please.", "Hello?", "Exactly!", "I'm {feeling}.",
    "Bye for now.", "Me too.", "Not yet.", "In {city}.", "Already?", "Well done!",
)

# Clauses that join two sentences into one long one.
_JOINERS = (", and then ", ", but ", ", because ", ", so ", ", although ", " while ",
            ", which means ", " even though ", ", and after that ", " before ")

# One-sentence statements: the clauses a long sentence is joined from.
_STATEMENTS = tuple(t for t in TEMPLATES if t.endswith(".") and not re.search(r"[.?!]\s", t))

LENGTHS = ("short", "one", "long", "multi")
_LENGTH_WEIGHTS = (0.15, 0.40, 0.25, 0.20)
_SLOT = re.compile(r"\{([a-z]+)\}")


class EnglishGenerator:
    """Draws English sentences of the four kinds in ``LENGTHS`` from one seeded RNG."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def fill(self, template: str) -> str:
        """Replace every ``{slot}`` (KeyError names an unknown slot)."""
        def sub(m: re.Match[str]) -> str:
            slot = m.group(1)
            if slot not in _SLOTS:
                raise KeyError(f"unknown slot {{{slot}}} in template {template!r}")
            return _SLOTS[slot](self.rng)
        return _capitalise(_SLOT.sub(sub, template))

    def sentence(self, length: str | None = None) -> str:
        """One item of the given kind (drawn by weight when None)."""
        if length is None:
            length = self.rng.choices(LENGTHS, weights=_LENGTH_WEIGHTS)[0]
        if length == "short":
            return self.fill(self.rng.choice(SHORT))
        if length == "one":
            return self.fill(self.rng.choice(TEMPLATES))
        if length == "long":
            first = self.fill(self.rng.choice(_STATEMENTS)).rstrip(".")
            second = self.fill(self.rng.choice(_STATEMENTS))
            second = second[0].lower() + second[1:] if not _starts_with_name(second) else second
            return first + self.rng.choice(_JOINERS) + second
        if length == "multi":
            return " ".join(self.fill(self.rng.choice(TEMPLATES + SHORT))
                            for _ in range(self.rng.randint(2, 3)))
        raise ValueError(f"length must be one of {LENGTHS}, got {length!r}")


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _starts_with_name(text: str) -> bool:
    """Keep capitals on words that are always capitalised (names, cities, days, "I")."""
    first = re.split(r"[\s,']", text, maxsplit=1)[0]
    return first in {"I", *_NAMES, *_CITIES, *_DAYS, *_MONTHS} or first.startswith("I'")


def generate_english(n: int, seed: int = 0, lengths: Sequence[str] | None = None) -> list[str]:
    """``n`` distinct sentences, deterministic for ``seed``. ``lengths`` restricts the kinds
    (default: all four, by weight)."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    unknown = set(lengths or ()) - set(LENGTHS)
    if unknown:
        raise ValueError(f"unknown length kind(s) {sorted(unknown)}; choose from {LENGTHS}")
    gen = EnglishGenerator(seed)
    out: list[str] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"could not make {n} distinct sentences (made {len(out)})")
        kind = gen.rng.choice(list(lengths)) if lengths else None
        s = gen.sentence(kind)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out
