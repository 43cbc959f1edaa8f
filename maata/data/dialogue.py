"""Two-channel synthetic Telugu dialogues for the speech-to-speech model, as code shards.

From the scripted conversations (:mod:`maata.data.conversations`) this module makes
dialogues with a **user** and an **agent** channel at 16 kHz, the agent's frame-aligned
inner-monologue text and per-frame emotion, encodes both channels with the codec and writes
:mod:`maata.data.shards`::

    DIR/tokenizer.json                       BPE tokenizer of the text streams
    DIR/{train,valid,test}/shard-XXXXX.safetensors   user, agent int16 [K,T]; text, user_text
                                                     int32 [T]; emotion int8 [T]; metadata
    DIR/reference/shard-XXXXX.safetensors    every intent's answer in every voice: codes, text
    DIR/build.json                           settings and plan fingerprint (for resuming)
    DIR/code_space.json                      which codec's codes (``Codec.code_space()``)
    DIR/stats.json                           counts, hours, speakers per split, timings
    DIR/audio/<split>/<id>.wav               with keep_audio: stereo WAV (left user, right agent)

**Dialogues.** Single question → answer dialogues for every intent × phrasing (the
hand-written questions and their paraphrases, :mod:`maata.data.conversations`) × ``repeats``
renderings, and every multi-turn exchange ``repeats`` times. Seen phrasings are spread over
train/valid/test; *held-out* phrasings go to valid and test only, so training never hears them
(not even as the second question of an interruption). Users are espeak-ng speakers (two per
voice variant, :func:`maata.data.synth.espeak_voices`), never an agent variant
(:data:`maata.data.voices.AGENT_VARIANTS`). Speakers are split speaker-disjointly by variant,
with the same assignment :func:`maata.data.synth.synthesize_corpus` makes for the same seed, so
held-out user voices are also held out of the speech corpus. Every rendering also draws the
user's speed (×0.8-1.25) and pitch (±10) and the channel (:class:`UserChannelConfig`: a room,
a telephone band, background noise at 10-35 dB SNR, or clean). Each dialogue has one agent
voice, cycling over the four so every voice answers every intent, and with ``emotion_mix`` the
answer is spoken in another emotion than the intent's own, so the emotion condition is not
implied by the words.

**Timing** (:class:`TimingConfig`): the agent answers after a log-normal gap with a 200 ms
median (60 ms-1 s), as between human turns, or (5%) 30-150 ms before the user has finished;
the user pauses 0.3-1.2 s before the next turn, or (sometimes) starts 0.1-0.4 s before the
agent has finished. During long user turns the agent backchannels (ఆ, అవును, హ్మ్ ...) quietly
on its channel. In some dialogues the user interrupts: an interruption phrase (ఆగండి, ఒక్క
నిమిషం ...) starts while the agent talks and the agent stops 60-150 ms later (30 ms fade);
the user then goes on with the next question or turn. A QA dialogue with an interruption is
Q1 → A1 (cut) → "ఆగండి, Q2" → A2.

**Text streams.** The tokens of each agent word (``tokenizer.encode(" " + word)``) start at
the frame where the word starts (espeak-ng word events; festival: pauses + proportion),
shifted right past tokens already placed, and never past the end of the agent's segment
(words cut off by an interruption lose their tokens). Every other frame is EPAD. Laughter
has no text; the THINKING filler is the word "హ్మ్". ``user_text`` is the same for what the
user says, but each word's tokens start at the frame where the word *ends* — a transcript
that follows the audio as a streaming recogniser would (Moshi's ASR mode), an auxiliary
target that makes the model attend to the question's words.

**Emotion stream.** Frames from the end of the previous agent turn to the end of agent turn
``i`` carry turn ``i``'s emotion id (:data:`maata.lm.model.EMOTIONS`), so the condition is
in place before the agent starts; after the last turn its emotion stays.

**Metadata** per dialogue (frames at the codec's frame rate): ``id, kind (qa|exchange),
intent, intents, exchange, user_speaker, split, voice, emotion, emotions, user_turns,
agent_turns, backchannels, interruptions ([interrupt_frame, agent_stop_frame]), turns,
agent_words, user_words, phrasing (text, question, rule, heldout), heldout_phrasing,
user_channel, user_rate, user_pitch_shift, response_gaps_ms, frames, seconds``.

Everything is planned up front from the seed and each dialogue renders from its own seed,
so output does not depend on the number of workers. Each dialogue's shard is fixed by the
plan: an interrupted build rerun with the same settings skips the shards already written.

:func:`build_speech_shards` turns a speech manifest into single-stream pre-training shards
(``codes`` and, when alignments exist, ``phonemes``).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import random
import shutil
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from maata.data import voices as V
from maata.data.conversations import ConversationSet, Phrasing, load_conversations, paraphrase_line
from maata.data.manifest import SPLITS, ManifestRow, assign_splits
from maata.data.shards import Record, write_code_space, write_shard
from maata.data.synth import EspeakVoice, SynthError, espeak_variants, espeak_voices
from maata.lm.model import EMOTIONS, VOICES
from maata.text.tokenizer import EPAD_ID, Tokenizer

log = logging.getLogger(__name__)

__all__ = ["DialogueError", "TimingConfig", "TurnSpec", "DialogueSpec", "RenderedDialogue",
           "user_speakers", "plan_dialogues", "render_dialogue", "place_text",
           "train_dialogue_tokenizer", "build_dialogues", "DialogueReport",
           "build_speech_shards", "SpeechShardReport", "REFERENCE", "TOKENIZER_NAME",
           "STATS_NAME"]

REFERENCE = "reference"
TOKENIZER_NAME = "tokenizer.json"
STATS_NAME = "stats.json"
MAX_FAILED = 0.05


class DialogueError(ValueError):
    """Bad input to the dialogue builder: empty scripts, bad settings, existing output."""


# ---------------------------------------------------------------------------------------
# Configuration and plan


@dataclass(frozen=True)
class TimingConfig:
    """Turn-taking behaviour (seconds unless noted); ranges are uniform ``(low, high)``.

    The agent's response gap (user stops → agent starts) follows natural conversation: gaps
    between turns cluster around 200 ms with a long right tail (Stivers et al. 2009, PNAS;
    Levinson & Torreira 2015), so it is log-normal with median ``response_gap_median`` and
    log-spread ``response_gap_sigma``, clipped to ``response_gap``; with ``early_start_prob``
    the agent instead starts ``early_start`` before the user has quite finished (the small
    overlaps people make when they see a turn's end coming).
    """

    response_gap: tuple[float, float] = (0.06, 1.0)  # user stops → agent starts: clip range
    response_gap_median: float = 0.2
    response_gap_sigma: float = 0.5  # log-normal spread: p10 ≈ 0.53 × median, p90 ≈ 1.9 ×
    early_start_prob: float = 0.05  # instead, the agent starts before the user has finished ...
    early_start: tuple[float, float] = (0.03, 0.15)  # ... by this much
    user_pause: tuple[float, float] = (0.3, 1.2)  # agent stops → user's next turn
    overlap_prob: float = 0.15  # instead, the user starts before the agent has finished ...
    overlap: tuple[float, float] = (0.1, 0.4)  # ... by this much
    lead: tuple[float, float] = (0.3, 0.8)  # silence before the first turn
    tail: tuple[float, float] = (0.4, 1.0)  # silence after the last
    backchannel_prob: float = 0.6  # share of user turns that may get a backchannel ...
    backchannel_min_turn: float = 2.0  # ... if at least this long
    backchannel_gain_db: float = -12.0  # backchannels are quieter than the agent's turns
    interrupt_prob: float = 0.15  # share of dialogues with a user interruption
    interrupt_at: tuple[float, float] = (0.3, 0.7)  # where in the agent's turn (fraction)
    stop_delay: tuple[float, float] = (0.06, 0.15)  # interruption start → agent silent
    fade: float = 0.03  # the agent's fade-out when it stops
    prefix_pause: tuple[float, float] = (0.15, 0.4)  # "ఆగండి" → the rest of the user's turn
    user_gain_db: tuple[float, float] = (-4.0, 2.0)  # per-dialogue user loudness

    def __post_init__(self) -> None:
        for name in ("response_gap", "early_start", "user_pause", "overlap", "lead", "tail", "interrupt_at",
                     "stop_delay", "prefix_pause", "user_gain_db"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise DialogueError(f"timing {name} must be a range (low <= high), got {(lo, hi)}")
            if name != "user_gain_db" and lo < 0:
                raise DialogueError(f"timing {name} must not be negative, got {(lo, hi)}")
        for name in ("overlap_prob", "backchannel_prob", "interrupt_prob", "early_start_prob"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise DialogueError(f"timing {name} must be a probability in [0, 1], got {p}")
        if not (math.isfinite(self.response_gap_median) and self.response_gap_median > 0):
            raise DialogueError(f"timing response_gap_median must be > 0 s, got {self.response_gap_median}")
        if not (math.isfinite(self.response_gap_sigma) and self.response_gap_sigma >= 0):
            raise DialogueError(f"timing response_gap_sigma must be >= 0, got {self.response_gap_sigma}")
        if not (0 < self.interrupt_at[0] and self.interrupt_at[1] < 1):
            raise DialogueError(f"timing interrupt_at must lie inside (0, 1), got {self.interrupt_at}")
        if self.stop_delay[1] + self.fade > 0.2:
            raise DialogueError("the agent must be silent within 200 ms of an interruption: "
                                f"stop_delay {self.stop_delay[1]} + fade {self.fade} > 0.2 s")

    def draw_gap(self, rng: np.random.Generator) -> float:
        """One response gap in seconds: negative for an early start (see the class docstring)."""
        if rng.random() < self.early_start_prob:
            return -float(rng.uniform(*self.early_start))
        gap = self.response_gap_median * math.exp(self.response_gap_sigma * float(rng.standard_normal()))
        return float(np.clip(gap, *self.response_gap))


@dataclass(frozen=True)
class UserChannelConfig:
    """How user renderings vary beyond the speaker: the utterance's speed and pitch jitter, and
    the channel it arrives through (room, telephone band, background noise), each drawn per
    dialogue with its probability."""

    rate: tuple[float, float] = (0.8, 1.25)  # speaking-rate multiplier on the speaker's own rate
    pitch: tuple[int, int] = (-10, 10)  # espeak pitch points added to the speaker's pitch
    p_reverb: float = 0.2
    rt60_s: tuple[float, float] = (0.15, 0.6)
    p_telephone: float = 0.2
    p_noise: float = 0.35
    snr_db: tuple[float, float] = (10.0, 35.0)

    def __post_init__(self) -> None:
        for name in ("p_reverb", "p_telephone", "p_noise"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise DialogueError(f"user channel {name} must be a probability in [0, 1], got {p}")
        for name in ("rate", "pitch", "rt60_s", "snr_db"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise DialogueError(f"user channel {name} must be a range (low <= high), got {(lo, hi)}")
        if self.rate[0] <= 0 or self.rt60_s[0] <= 0:
            raise DialogueError("user channel rate and rt60_s must be positive")

    def draw(self, rng: random.Random) -> UserChannel:
        rt60 = round(rng.uniform(*self.rt60_s), 3) if rng.random() < self.p_reverb else None
        phone = rng.random() < self.p_telephone
        snr = round(rng.uniform(*self.snr_db), 1) if rng.random() < self.p_noise else None
        return UserChannel(rt60, phone, snr)


@dataclass(frozen=True)
class UserChannel:
    """The channel one dialogue's user is heard through (``None``: that effect is off)."""

    rt60_s: float | None = None
    telephone: bool = False
    snr_db: float | None = None

    def apply(self, x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
        """Room → telephone line → background noise (over the whole channel, pauses too)."""
        from maata.data import augment

        if self.rt60_s is not None:
            x = augment.reverb(x, sr, rng, (self.rt60_s, self.rt60_s))
        if self.telephone:
            x = augment.telephone(x, sr)
        if self.snr_db is not None:
            x = augment.add_noise(x, rng, (self.snr_db, self.snr_db))
        return x

    @property
    def name(self) -> str:
        parts = [f"reverb {self.rt60_s:.2f}s"] if self.rt60_s is not None else []
        parts += ["telephone"] if self.telephone else []
        parts += [f"noise {self.snr_db:.0f}dB"] if self.snr_db is not None else []
        return ", ".join(parts) or "clean"


@dataclass(frozen=True)
class TurnSpec:
    """One turn to render. ``prefix`` (user turns) is an interruption phrase said first,
    starting while the previous agent turn is still talking; ``backchannel`` (user turns) is
    what the agent may say during the turn if it is long enough."""

    speaker: str  # "user" | "agent"
    text: str
    emotion: str | None = None
    prefix: str | None = None
    backchannel: str | None = None


@dataclass(frozen=True)
class DialogueSpec:
    """Everything needed to render one dialogue (picklable; rendering uses ``seed`` only)."""

    id: str
    kind: str  # "qa" | "exchange"
    split: str
    speaker: EspeakVoice
    voice: str
    turns: tuple[TurnSpec, ...]
    intents: tuple[str, ...] = ()
    exchange: str | None = None
    seed: int = 0
    rate_scale: float = 1.0  # the user's per-dialogue jitter
    pitch_shift: int = 0
    channel: UserChannel = UserChannel()
    phrasing: Phrasing | None = None  # QA: how the first question is phrased

    @property
    def emotions(self) -> list[str]:
        return [t.emotion or "NEUTRAL" for t in self.turns if t.speaker == "agent"]


def _speaker_row(group: str) -> ManifestRow:
    return ManifestRow(path=group, duration=1.0, speaker=group, source="plan", text="-")


def user_speakers(seed: int = 0, variants: Sequence[str] | None = None,
                  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, list[EspeakVoice]]:
    """User speakers per split: two espeak speakers per non-agent variant; variants are held
    out whole. With ``variants=None`` (all installed) the split of each variant is the one
    ``maata data synth --seed SEED`` gives it, so the corpus and the dialogues agree."""
    installed = espeak_variants()
    if variants is not None:
        unknown = sorted(set(variants) - set(installed))
        if unknown:
            raise DialogueError(f"unknown espeak-ng variant(s) {unknown}; installed: {', '.join(installed)}")
    pool = sorted(set(variants)) if variants is not None else installed
    group = {v: EspeakVoice(v, 50, 170).group for v in pool}
    try:
        rows = assign_splits([_speaker_row(g) for g in sorted(set(group.values()))],
                             fractions=fractions, seed=seed)
    except ValueError as e:
        raise DialogueError(str(e)) from e
    split_of = {r.speaker: r.split for r in rows}
    users = [v for v in pool if v not in V.AGENT_VARIANTS]
    if not users:
        raise DialogueError("no espeak-ng variants left for users once the agent voices' "
                            f"variants ({', '.join(sorted(V.AGENT_VARIANTS))}) are excluded")
    out: dict[str, list[EspeakVoice]] = {s: [] for s in SPLITS}
    for voice in espeak_voices(users, random.Random(seed)):
        out[split_of[voice.group]].append(voice)
    return out


def _quota(n: int, fractions: Sequence[float], available: dict[str, bool]) -> list[str]:
    """``n`` split labels (unshuffled): when ``n >= 3``, valid and test get ``round(n * f)``,
    at least one each (if they have speakers and ``f > 0``), train keeps at least one; train
    gets the rest. Labels of a split without speakers go to one that has some."""
    k = {s: 0 for s in SPLITS}
    if n >= 3:
        for s, f in zip(SPLITS[1:], fractions[1:]):
            if available[s] and f > 0:
                k[s] = max(1, round(n * f))
        if k["valid"] + k["test"] >= n:
            k = {s: min(v, 1) for s, v in k.items()}
    k["train"] = n - k["valid"] - k["test"]
    labels = [s for s in SPLITS for _ in range(k[s])]
    if not available["train"]:
        fallback = next(s for s in SPLITS if available[s])
        labels = [fallback if s == "train" else s for s in labels]
    return labels


class _Cycler:
    """Deals speakers of one split in a shuffled round-robin, so all get used evenly."""

    def __init__(self, items: Sequence[EspeakVoice], rng: random.Random):
        self.items = list(items)
        rng.shuffle(self.items)
        self.i = 0

    def next(self) -> EspeakVoice:
        item = self.items[self.i % len(self.items)]
        self.i += 1
        return item


def _heldout_labels(n: int, available: dict[str, bool]) -> list[str]:
    """``n`` split labels for held-out phrasings: valid and test in turn (never train), or the
    one of them that has speakers; train only if neither has."""
    pool = [s for s in ("valid", "test") if available[s]] or ["train"]
    return [pool[i % len(pool)] for i in range(n)]


def plan_dialogues(conversations: ConversationSet, repeats: int = 4, seed: int = 0,
                   timing: TimingConfig = TimingConfig(),
                   speakers: dict[str, list[EspeakVoice]] | None = None,
                   fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                   channel: UserChannelConfig = UserChannelConfig(),
                   emotion_mix: float = 0.5, exchange_paraphrase: float = 0.5) -> list[DialogueSpec]:
    """Every dialogue to make, in a fixed order: QA dialogues intent by intent, then exchanges.

    QA: ``repeats`` renderings of every phrasing of every intent (:meth:`Intent.all_phrasings`);
    seen phrasings are split train/valid/test by ``fractions``, held-out ones go to valid and
    test only. With ``emotion_mix`` the agent answers in another emotion than the intent's
    (uniformly drawn), so the emotion condition is not implied by the words. Exchanges: the
    first rendering as written; later ones reword each user turn with probability
    ``exchange_paraphrase`` (:func:`maata.data.conversations.paraphrase_line`).
    """
    if repeats < 1:
        raise DialogueError(f"repeats must be at least 1, got {repeats}")
    if not 0 <= emotion_mix <= 1:
        raise DialogueError(f"emotion_mix must be a probability in [0, 1], got {emotion_mix}")
    if not conversations.intents and not conversations.exchanges:
        raise DialogueError("the script set is empty: no intents or exchanges to make dialogues from")
    for intent in conversations.intents:
        V.prosody_for(intent.emotion)
    for ex in conversations.exchanges:
        for turn in ex.turns:
            V.prosody_for(turn.emotion)
    speakers = speakers if speakers is not None else user_speakers(seed, fractions=fractions)
    available = {s: bool(speakers.get(s)) for s in SPLITS}
    if not any(available.values()):
        raise DialogueError("no user speakers to plan dialogues with")
    rng = random.Random(seed)
    cyclers = {s: _Cycler(speakers[s], rng) for s in SPLITS if available[s]}
    interruptions = list(conversations.interruptions)
    backchannels = list(conversations.backchannels)
    rules = conversations.paraphrase

    def user_turn(text: str, emotion: str | None = None, prefix: str | None = None) -> TurnSpec:
        bc = rng.choice(backchannels) if backchannels and rng.random() < timing.backchannel_prob else None
        return TurnSpec("user", text, emotion, prefix, bc)

    def spec(uid: str, kind: str, split: str, voice: str, turns: list[TurnSpec], **kw) -> DialogueSpec:
        return DialogueSpec(uid, kind, split, cyclers[split].next(), voice, tuple(turns),
                            seed=rng.randrange(2 ** 31), rate_scale=round(rng.uniform(*channel.rate), 3),
                            pitch_shift=rng.randint(*channel.pitch), channel=channel.draw(rng), **kw)

    def answer_emotion(default: str) -> str:
        if rng.random() < emotion_mix:
            return rng.choice([e for e in EMOTIONS if e != default])
        return default

    plans: list[DialogueSpec] = []
    intents = conversations.intents
    for ii, intent in enumerate(intents):
        phrasings = intent.all_phrasings()
        seen = [(pi, r) for pi, p in enumerate(phrasings) if not p.heldout for r in range(repeats)]
        held = [(pi, r) for pi, p in enumerate(phrasings) if p.heldout for r in range(repeats)]
        labels = _quota(len(seen), fractions, available)
        rng.shuffle(labels)
        items = list(zip(seen, labels)) + list(zip(held, _heldout_labels(len(held), available)))
        for k, ((pi, r), split) in enumerate(items):
            phrasing = phrasings[pi]
            voice = VOICES[(ii + k) % len(VOICES)]
            turns = [user_turn(phrasing.text), TurnSpec("agent", intent.answer, answer_emotion(intent.emotion))]
            ids = [intent.id]
            if interruptions and len(intents) > 1 and rng.random() < timing.interrupt_prob:
                other = intents[(ii + rng.randrange(1, len(intents))) % len(intents)]
                # training never hears a held-out phrasing, not even as the second question
                options = [p.text for p in other.all_phrasings() if split != "train" or not p.heldout]
                turns += [user_turn(rng.choice(options), prefix=rng.choice(interruptions)),
                          TurnSpec("agent", other.answer, answer_emotion(other.emotion))]
                ids.append(other.id)
            plans.append(spec(f"qa-{intent.id}-p{pi}-r{r}", "qa", split, voice, turns,
                              intents=tuple(ids), phrasing=phrasing))
    exchanges = conversations.exchanges
    labels = _quota(len(exchanges) * repeats, fractions, available)
    rng.shuffle(labels)
    for ei, ex in enumerate(exchanges):
        for r in range(repeats):
            split = labels[ei * repeats + r]
            voice = VOICES[(ei + r) % len(VOICES)]
            cut = None
            candidates = [j for j in range(len(ex.turns) - 1)
                          if ex.turns[j].speaker == "agent" and ex.turns[j + 1].speaker == "user"]
            if interruptions and candidates and rng.random() < timing.interrupt_prob:
                cut = rng.choice(candidates) + 1
            turns = []
            for j, t in enumerate(ex.turns):
                if t.speaker == "user":
                    # the first rendering as written, later ones reworded half of the time
                    reword = rules is not None and r > 0 and rng.random() < exchange_paraphrase
                    text = paraphrase_line(t.text, rules, rng) if reword else t.text
                    turns.append(user_turn(text, t.emotion,
                                           rng.choice(interruptions) if j == cut else None))
                else:
                    turns.append(TurnSpec("agent", t.text, t.emotion))
            plans.append(spec(f"ex-{ex.id}-r{r}", "exchange", split, voice, turns, exchange=ex.id))
    return plans


# ---------------------------------------------------------------------------------------
# Rendering


@dataclass
class _Segment:
    start: int  # sample
    audio: np.ndarray
    words: list[tuple[int, str]]  # (absolute sample, word)
    kind: str = "turn"  # turn | backchannel
    emotion: str | None = None

    @property
    def end(self) -> int:
        return self.start + len(self.audio)


@dataclass
class RenderedDialogue:
    """One rendered dialogue: both channels (float32, same length, a whole number of frames)
    and its timeline in samples."""

    spec: DialogueSpec
    user: np.ndarray
    agent: np.ndarray
    sample_rate: int
    hop: int
    user_turns: list[tuple[int, int]]
    agent_turns: list[tuple[int, int]]
    backchannels: list[tuple[int, int]]
    interruptions: list[tuple[int, int]]  # (user starts the interruption, agent silent)
    segments: list[_Segment] = field(repr=False)  # the agent's, in time order
    turn_texts: list[dict[str, Any]] = field(default_factory=list)
    user_words: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end sample, word)
    response_gaps: list[int] = field(default_factory=list)  # samples from the user's stop to the agent's start

    @property
    def frames(self) -> int:
        return len(self.user) // self.hop

    @property
    def seconds(self) -> float:
        return len(self.user) / self.sample_rate

    def _f0(self, s: int) -> int:
        return s // self.hop

    def _f1(self, s: int) -> int:
        return min(self.frames, -(-s // self.hop))

    def text_tokens(self, tokenizer: Tokenizer) -> tuple[np.ndarray, list[list]]:
        """The agent's text stream int32 [T] and the placed words ``[frame, word]``."""
        return place_text([(seg.words, self._f1(seg.end)) for seg in self.segments],
                          self.frames, self.hop, tokenizer)

    def user_text_tokens(self, tokenizer: Tokenizer) -> tuple[np.ndarray, list[list]]:
        """What the user has said, int32 [T]: each user word's tokens from the frame where the
        word *ends* (once it has been heard, as a streaming recogniser would emit it), and the
        placed words ``[frame, word]``."""
        words = [(end - 1, w) for _, end, w in self.user_words]
        return place_text([(words, self.frames)], self.frames, self.hop, tokenizer)

    def emotion_ids(self) -> np.ndarray:
        """The agent's emotion id per frame, int8 [T]."""
        ids = np.zeros(self.frames, np.int8)
        turns = [s for s in self.segments if s.kind == "turn"]
        prev = 0
        for seg in turns:
            end = self._f1(seg.end)
            ids[prev:end] = EMOTIONS.index(seg.emotion or "NEUTRAL")
            prev = end
        if turns:
            ids[prev:] = EMOTIONS.index(turns[-1].emotion or "NEUTRAL")
        return ids

    def meta(self, agent_words: list[list] | None = None,
             user_words: list[list] | None = None) -> dict[str, Any]:
        s = self.spec
        frames = lambda spans: [[self._f0(a), self._f1(b)] for a, b in spans]  # noqa: E731
        emotions = s.emotions
        return {
            "id": s.id, "kind": s.kind, "split": s.split,
            "intent": s.intents[0] if s.intents else None, "intents": list(s.intents),
            "exchange": s.exchange, "user_speaker": s.speaker.speaker,
            "user_group": s.speaker.group, "voice": s.voice,
            "emotion": emotions[0] if emotions else "NEUTRAL", "emotions": emotions,
            "frame_rate": self.sample_rate / self.hop, "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "user_turns": frames(self.user_turns), "agent_turns": frames(self.agent_turns),
            "backchannels": frames(self.backchannels),
            "interruptions": [[self._f0(a), self._f1(b)] for a, b in self.interruptions],
            "turns": self.turn_texts,
            "agent_words": agent_words if agent_words is not None else [],
            "user_words": user_words if user_words is not None else [],
            "phrasing": ({"text": s.phrasing.text, "question": s.phrasing.question, "rule": s.phrasing.rule,
                          "heldout": s.phrasing.heldout} if s.phrasing is not None else None),
            "heldout_phrasing": bool(s.phrasing is not None and s.phrasing.heldout),
            "user_channel": {"name": s.channel.name, **asdict(s.channel)},
            "user_rate": s.rate_scale, "user_pitch_shift": s.pitch_shift,
            "response_gaps_ms": [round(1000 * g / self.sample_rate, 1) for g in self.response_gaps],
        }


def place_text(segments: Sequence[tuple[Sequence[tuple[int, str]], int]], n_frames: int, hop: int,
               tokenizer: Tokenizer) -> tuple[np.ndarray, list[list]]:
    """Frame-aligned text: for each ``(words, end_frame)`` segment, each word's tokens
    (``encode(" " + word)``) go from the frame of its start sample onwards, skipping frames
    already used, never at or past ``end_frame``. Returns int32 [n_frames] (EPAD elsewhere)
    and the ``[frame, word]`` of every word that got at least one token."""
    text = np.full(n_frames, EPAD_ID, np.int32)
    placed: list[list] = []
    for words, end in segments:
        end = min(end, n_frames)
        for sample, word in words:
            f = sample // hop
            first = None
            for tok in tokenizer.encode(" " + word):
                while f < end and text[f] != EPAD_ID:
                    f += 1
                if f >= end:
                    break
                text[f] = tok
                first = f if first is None else first
                f += 1
            if first is not None:
                placed.append([int(first), word])
    return text, placed


def _samples(seconds: float, sr: int) -> int:
    return int(round(seconds * sr))


def render_dialogue(spec: DialogueSpec, timing: TimingConfig = TimingConfig(),
                    sample_rate: int = 16000, hop: int = 640) -> RenderedDialogue:
    """Synthesise and lay out one dialogue (see the module docstring for the timing rules)."""
    V.agent_voice(spec.voice)
    rng = np.random.default_rng(spec.seed)
    sr = sample_rate
    uni = lambda r: float(rng.uniform(*r))  # noqa: E731
    user_gain = uni(timing.user_gain_db)
    user_segs: list[tuple[int, np.ndarray]] = []
    agent_segs: list[_Segment] = []
    user_turns: list[tuple[int, int]] = []
    backchannels: list[tuple[int, int]] = []
    interruptions: list[tuple[int, int]] = []
    turn_texts: list[dict[str, Any]] = []
    user_words: list[tuple[int, int, str]] = []
    gaps: list[int] = []
    last_agent: _Segment | None = None
    user_end = 0
    t = _samples(uni(timing.lead), sr)
    prev_speaker = None

    def speak_user(text: str, emotion: str | None) -> V.Speech:
        return V.speak_user(text, spec.speaker, emotion, sr, spec.rate_scale, spec.pitch_shift, user_gain)

    for turn in spec.turns:
        if turn.speaker == "user":
            speech = speak_user(turn.text, turn.emotion)
            audio, words = speech.audio, [(_samples(s, sr), w) for s, w in speech.words]
            if turn.prefix:
                pre = speak_user(turn.prefix, turn.emotion)
                gap = np.zeros(_samples(uni(timing.prefix_pause), sr), np.float32)
                shift = len(pre.audio) + len(gap)
                words = [(_samples(s, sr), w) for s, w in pre.words] + [(s + shift, w) for s, w in words]
                audio = np.concatenate([pre.audio, gap, audio])
            start = t
            interrupted = False
            if prev_speaker == "agent" and last_agent is not None:
                a0, a1 = last_agent.start, last_agent.end
                if turn.prefix and a1 - a0 > _samples(1.0, sr):
                    at = a0 + int(uni(timing.interrupt_at) * (a1 - a0))
                    at = min(max(at, a0 + _samples(0.5, sr)), a1 - _samples(0.3, sr))
                    stop = at + _samples(uni(timing.stop_delay), sr)
                    _truncate(last_agent, stop, _samples(timing.fade, sr))
                    agent_turns_end = last_agent.end
                    interruptions.append((at, agent_turns_end))
                    turn_texts[-1]["interrupted"] = True
                    start, interrupted = at, True
                elif (rng.random() < timing.overlap_prob
                      and len(audio) > _samples(timing.overlap[1] + 0.3, sr)
                      and a1 - a0 > _samples(1.0, sr)):
                    start = max(a1 - _samples(uni(timing.overlap), sr), a0 + (a1 - a0) // 2)
                else:
                    start = a1 + _samples(uni(timing.user_pause), sr)
            end = start + len(audio)
            ends = [w0 for w0, _ in words[1:]] + [len(audio)]
            user_words += [(start + w0, start + max(w1, w0 + 1), w) for (w0, w), w1 in zip(words, ends)]
            user_segs.append((start, audio))
            user_turns.append((start, end))
            turn_texts.append({"speaker": "user", "text": (f"{turn.prefix} {turn.text}" if turn.prefix
                                                           else turn.text),
                               "emotion": turn.emotion, "interrupts": interrupted})
            if turn.backchannel and len(audio) >= _samples(timing.backchannel_min_turn, sr):
                not_before = max(start, last_agent.end if last_agent is not None else 0) + _samples(0.2, sr)
                seg = _place_backchannel(turn.backchannel, spec.voice, start, end, words, not_before,
                                         timing, sr, rng)
                if seg is not None:
                    agent_segs.append(seg)
                    backchannels.append((seg.start, seg.end))
            user_end = end
            t = end
        elif turn.speaker == "agent":
            speech = V.speak_agent(turn.text, spec.voice, turn.emotion or "NEUTRAL", sr, rng)
            start = max(user_end + _samples(timing.draw_gap(rng), sr), t if prev_speaker == "agent" else 0,
                        user_turns[-1][0] if user_turns else 0)
            if prev_speaker == "user":
                gaps.append(start - user_end)
            seg = _Segment(start, speech.audio, [(start + _samples(s, sr), w) for s, w in speech.words],
                           "turn", turn.emotion or "NEUTRAL")
            agent_segs.append(seg)
            last_agent = seg
            turn_texts.append({"speaker": "agent", "text": turn.text, "emotion": seg.emotion,
                               "interrupted": False})
            t = seg.end
        else:
            raise DialogueError(f"{spec.id}: turn speaker must be 'user' or 'agent', got {turn.speaker!r}")
        prev_speaker = turn.speaker

    ends = [s + len(a) for s, a in user_segs] + [s.end for s in agent_segs]
    total = max(ends, default=t) + _samples(uni(timing.tail), sr)
    total = -(-total // hop) * hop
    user = np.zeros(total, np.float32)
    agent = np.zeros(total, np.float32)
    for s, a in user_segs:
        user[s:s + len(a)] += a
    for seg in agent_segs:
        agent[seg.start:seg.end] += seg.audio
    user = spec.channel.apply(user, sr, np.random.default_rng((spec.seed, 1)))
    np.clip(user, -1.0, 1.0, out=user)
    np.clip(agent, -1.0, 1.0, out=agent)
    agent_segs.sort(key=lambda s: s.start)
    agent_turns = [(s.start, s.end) for s in agent_segs if s.kind == "turn"]
    for entry, (a, b) in zip([x for x in turn_texts if x["speaker"] == "agent"], agent_turns):
        entry["start"], entry["end"] = a // hop, min(total // hop, -(-b // hop))
    for entry, (a, b) in zip([x for x in turn_texts if x["speaker"] == "user"], user_turns):
        entry["start"], entry["end"] = a // hop, min(total // hop, -(-b // hop))
    return RenderedDialogue(spec, user, agent, sr, hop, user_turns, agent_turns, backchannels,
                            interruptions, agent_segs, turn_texts, sorted(user_words), gaps)


def _truncate(seg: _Segment, stop: int, fade: int) -> None:
    """The agent stops at sample ``stop``: cut its audio there with a ``fade``-sample ramp."""
    n = max(0, min(len(seg.audio), stop - seg.start))
    audio = np.array(seg.audio[:n], np.float32)
    k = min(fade, n)
    if k:
        audio[n - k:] *= np.linspace(1.0, 0.0, k, dtype=np.float32)
    seg.audio = audio
    seg.words = [(s, w) for s, w in seg.words if s < seg.start + n]


def _place_backchannel(text: str, voice: str, u0: int, u1: int, words: list[tuple[int, str]],
                       not_before: int, timing: TimingConfig, sr: int,
                       rng: np.random.Generator) -> _Segment | None:
    """A quiet backchannel during the user's turn [u0, u1): just after a word starts between
    35% and 75% of the turn (preferring phrase starts), ending 200 ms before the user stops."""
    bc = V.speak_backchannel(text, voice, sr, timing.backchannel_gain_db)
    n = len(bc.audio)
    lo, hi = u0 + int(0.35 * (u1 - u0)), u0 + int(0.75 * (u1 - u0))
    starts = [u0 + s for s, _ in words]
    after_phrase = [u0 + words[i + 1][0] for i in range(len(words) - 1)
                    if words[i][1][-1:] in ".,?!"]
    latest = u1 - _samples(0.2, sr) - n
    for pool in (after_phrase, starts):
        cands = [s for s in pool if lo <= s <= hi and not_before <= s <= latest]
        if cands:
            s = int(cands[int(rng.integers(len(cands)))]) + _samples(float(rng.uniform(0.0, 0.15)), sr)
            s = min(s, latest)
            return _Segment(s, bc.audio, [(s + _samples(t, sr), w) for t, w in bc.words],
                            "backchannel", None)
    return None


# ---------------------------------------------------------------------------------------
# Tokenizer


def _script_texts(conversations: ConversationSet) -> list[str]:
    texts = [p.text for i in conversations.intents for p in i.all_phrasings()]
    texts += [i.answer for i in conversations.intents]
    texts += [t.text for e in conversations.exchanges for t in e.turns]
    texts += list(conversations.backchannels) + list(conversations.interruptions)
    texts += [V.THINKING_FILLER]
    return texts


def train_dialogue_tokenizer(conversations: ConversationSet, n_sentences: int = 20000, seed: int = 0,
                             vocab_size: int = 2000) -> Tokenizer:
    """The text-stream tokenizer: BPE over the conversation scripts (three times, so their
    words get whole pieces) plus ``n_sentences`` generated everyday sentences."""
    from maata.text.generator import generate_sentences

    texts = _script_texts(conversations) * 3
    if n_sentences > 0:
        texts += generate_sentences(n_sentences, seed=seed)
    return Tokenizer.train(texts, vocab_size=vocab_size)


# ---------------------------------------------------------------------------------------
# Workers: render + encode


_STATE: dict[str, Any] = {}


def _init_worker(codec: Any, tokenizer_path: str | None, timing: TimingConfig,
                 audio_dir: str | None, threads: int | None = 1, extra: Any = None) -> None:
    """Per-process state: the codec (a path or a loaded Codec), tokenizer and settings."""
    import torch

    from maata.checkpoint import load_codec

    if threads:
        torch.set_num_threads(threads)
    _STATE["codec"] = load_codec(codec) if isinstance(codec, (str, Path)) else codec
    _STATE["tokenizer"] = Tokenizer.load(tokenizer_path) if tokenizer_path else None
    _STATE["timing"] = timing
    _STATE["audio_dir"] = Path(audio_dir) if audio_dir else None
    _STATE["extra"] = extra


def _clock() -> tuple[float, float]:
    """(wall, CPU) seconds; CPU includes finished child processes (espeak forks, festival)."""
    t = os.times()
    return time.perf_counter(), t.user + t.system + t.children_user + t.children_system


def _encode(*channels: np.ndarray) -> np.ndarray:
    """Codes int16 [C, K, F] of equal-length mono channels, encoded as one batch."""
    import torch

    codec = _STATE["codec"]
    x = torch.from_numpy(np.stack(channels).astype(np.float32))[:, None]
    with torch.no_grad():
        codes = codec.encode(x)
    return codes.numpy().astype(np.int16)


_Timed = tuple[str, Record, tuple[float, float, float, float]]


def _times(t0, t1, t2) -> tuple[float, float, float, float]:
    """(render wall, encode wall, render CPU, encode CPU) from three :func:`_clock` readings."""
    return t1[0] - t0[0], t2[0] - t1[0], t1[1] - t0[1], t2[1] - t1[1]


def _dialogue_job(spec: DialogueSpec) -> _Timed | str:
    """Worker entry: (split, record, timings), or an error message."""
    codec = _STATE["codec"]
    try:
        t0 = _clock()
        r = render_dialogue(spec, _STATE["timing"], codec.cfg.sample_rate, codec.hop)
        text, placed = r.text_tokens(_STATE["tokenizer"])
        user_text, user_placed = r.user_text_tokens(_STATE["tokenizer"])
        emotion = r.emotion_ids()
        t1 = _clock()
        codes = _encode(r.user, r.agent)
        t2 = _clock()
    except (SynthError, ValueError, OSError, subprocess.TimeoutExpired) as e:
        return f"{spec.id}: {e}"
    if codes.shape[-1] != r.frames:
        return f"{spec.id}: codec gave {codes.shape[-1]} frames for {r.frames}"
    if _STATE["audio_dir"] is not None:
        from maata.audio import write_wav

        write_wav(_STATE["audio_dir"] / spec.split / f"{spec.id}.wav",
                  np.stack([r.user, r.agent], axis=1), r.sample_rate)
    record = Record({"user": codes[0], "agent": codes[1], "text": text, "user_text": user_text,
                     "emotion": emotion}, r.meta(placed, user_placed))
    return spec.split, record, _times(t0, t1, t2)


@dataclass(frozen=True)
class _ReferenceJob:
    intent: str
    text: str
    emotion: str
    voice: str
    seed: int
    default: bool = True  # the intent's own emotion (else an extra emotion rendering)


def _reference_job(job: _ReferenceJob) -> _Timed | str:
    """The agent's canonical rendering of one answer in one voice, as codes + text."""
    codec = _STATE["codec"]
    sr, hop = codec.cfg.sample_rate, codec.hop
    try:
        t0 = _clock()
        speech = V.speak_agent(job.text, job.voice, job.emotion, sr, np.random.default_rng(job.seed))
        n = -(-len(speech.audio) // hop) * hop
        audio = np.pad(speech.audio, (0, n - len(speech.audio)))
        frames = n // hop
        words = [(_samples(s, sr), w) for s, w in speech.words]
        text, placed = place_text([(words, frames)], frames, hop, _STATE["tokenizer"])
        t1 = _clock()
        codes = _encode(audio)[0]
        t2 = _clock()
    except (SynthError, ValueError, OSError, subprocess.TimeoutExpired) as e:
        return f"reference {job.intent}/{job.voice}/{job.emotion}: {e}"
    uid = f"ref-{job.intent}-{job.voice}" + ("" if job.default else f"-{job.emotion}")
    if _STATE["audio_dir"] is not None:
        from maata.audio import write_wav

        write_wav(_STATE["audio_dir"] / REFERENCE / f"{uid}.wav", audio, sr)
    meta = {"id": uid, "kind": "reference", "intent": job.intent, "voice": job.voice,
            "emotion": job.emotion, "text": job.text, "frames": frames,
            "seconds": round(n / sr, 3), "agent_words": placed}
    return REFERENCE, Record({"codes": codes, "text": text}, meta), _times(t0, t1, t2)


def _run_job(job: Any) -> Any:
    if isinstance(job, DialogueSpec):
        return _dialogue_job(job)
    if isinstance(job, _ReferenceJob):
        return _reference_job(job)
    return _speech_job(job)


def _run_all(jobs: Sequence[Any], init_args: tuple, workers: int) -> Iterator[Any]:
    """Results in job order, from this process (workers <= 1) or a spawn pool."""
    if workers <= 1 or len(jobs) <= 1:
        import torch

        threads = torch.get_num_threads()  # one thread encodes fastest on a shared CPU
        try:
            _init_worker(*init_args[:4], threads=1, extra=init_args[5] if len(init_args) > 5 else None)
            yield from map(_run_job, jobs)
        finally:
            torch.set_num_threads(threads)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        yield from pool.imap(_run_job, jobs, chunksize=max(1, min(8, len(jobs) // (workers * 8))))


class _ShardWriter:
    """Buffers records per split and writes ``<root>/<split>/shard-XXXXX.safetensors``."""

    def __init__(self, root: Path, size: int):
        self.root, self.size = root, size
        self.buffers: dict[str, list[Record]] = defaultdict(list)
        self.counts: Counter[str] = Counter()
        self.paths: list[Path] = []

    def add(self, split: str, record: Record) -> None:
        self.buffers[split].append(record)
        if len(self.buffers[split]) >= self.size:
            self.flush(split)

    def flush(self, split: str | None = None) -> None:
        for s in [split] if split else list(self.buffers):
            records = self.buffers[s]
            if records:
                path = self.root / s / f"shard-{self.counts[s]:05d}.safetensors"
                self.paths.append(write_shard(path, records))
                self.counts[s] += 1
                self.buffers[s] = []


def _clear_outputs(out: Path, splits: Sequence[str]) -> None:
    for s in splits:
        for p in (out / s).glob("shard-*.safetensors"):
            p.unlink()
    if (out / "audio").is_dir():
        shutil.rmtree(out / "audio")
    for name in (STATS_NAME,):
        if (out / name).exists():
            (out / name).unlink()


def _check_codec_path(codec: Any) -> None:
    if isinstance(codec, (str, Path)) and not Path(codec).is_file():
        raise FileNotFoundError(f"codec checkpoint not found: {codec}")


# ---------------------------------------------------------------------------------------
# The dialogue dataset


@dataclass(frozen=True)
class DialogueReport:
    """What :func:`build_dialogues` made."""

    out: Path
    stats: dict[str, Any]
    shards: list[Path]
    failures: list[str]
    seconds: float


def _subset(conversations: ConversationSet, max_intents: int | None,
            max_exchanges: int | None) -> ConversationSet:
    for name, n in (("max_intents", max_intents), ("max_exchanges", max_exchanges)):
        if n is not None and n < 0:
            raise DialogueError(f"{name} must be >= 0, got {n}")
    return replace(conversations,
                   intents=conversations.intents[:max_intents] if max_intents is not None else conversations.intents,
                   exchanges=(conversations.exchanges[:max_exchanges] if max_exchanges is not None
                              else conversations.exchanges))


def _reference_jobs(conversations: ConversationSet, seed: int, emotion_intents: int) -> list[_ReferenceJob]:
    """Every intent's answer in every voice in its own emotion, and for the emotion probe of
    the evaluation, ``emotion_intents`` intents per (voice, other emotion), spread over the
    intent list, so that an emotion's references are not all one intent's words."""
    intents = conversations.intents
    jobs = [_ReferenceJob(i.id, i.answer, i.emotion, v, seed * 100003 + n)
            for n, i in enumerate(intents) for v in VOICES]
    if emotion_intents > 0 and intents:
        stride = max(1, len(intents) // emotion_intents)
        extra: set[tuple[str, str]] = set()
        for e_n, emotion in enumerate(EMOTIONS):
            for k in range(min(emotion_intents, len(intents))):
                n = (e_n + k * stride) % len(intents)
                i = intents[n]
                if i.emotion != emotion and (i.id, emotion) not in extra:
                    extra.add((i.id, emotion))
                    jobs += [_ReferenceJob(i.id, i.answer, emotion, v, seed * 100003 + n + 7919 * (e_n + 1), False)
                             for v in VOICES]
    return jobs


@dataclass(frozen=True)
class _ShardPlan:
    """One output shard: its file and the jobs whose records it holds, in order."""

    split: str
    index: int
    jobs: tuple[Any, ...]

    def path(self, out: Path) -> Path:
        return out / self.split / f"shard-{self.index:05d}.safetensors"


def _shard_plans(plans: Sequence[DialogueSpec], refs: Sequence[_ReferenceJob], shard_size: int,
                 seed: int) -> list[_ShardPlan]:
    """Dialogues split by split, in a seeded shuffle (so any prefix of the shards, as a resumed
    build has, mixes intents, speakers and voices), cut into shards of ``shard_size``; then the
    reference shards. The assignment depends only on the plan, so a rerun finds the same files."""
    out: list[_ShardPlan] = []
    rng = random.Random(seed + 1)
    for split in SPLITS:
        mine = [p for p in plans if p.split == split]
        rng.shuffle(mine)
        out += [_ShardPlan(split, k, tuple(mine[i:i + shard_size]))
                for k, i in enumerate(range(0, len(mine), shard_size))]
    out += [_ShardPlan(REFERENCE, k, tuple(refs[i:i + shard_size]))
            for k, i in enumerate(range(0, len(refs), shard_size))]
    return out


BUILD_NAME = "build.json"


def _fingerprint(settings: dict[str, Any], shards: Sequence[_ShardPlan]) -> str:
    """A digest of everything that decides the shards' contents (settings and the plan)."""
    import hashlib

    h = hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str).encode())
    for sp in shards:
        h.update(f"{sp.split}/{sp.index}:".encode())
        for job in sp.jobs:
            h.update(repr(job).encode())
    return h.hexdigest()


def _readable_shard(path: Path, expected: int) -> list[dict[str, Any]] | None:
    """The metadata of an already written shard, or ``None`` if it is missing or unreadable.
    (Shards are written to a temporary file and renamed, so a file that exists is complete.)"""
    from maata.data.shards import ShardReader

    if not path.is_file():
        return None
    try:
        reader = ShardReader(path)
        metas = [reader.meta(i) for i in range(len(reader))]
    except Exception as e:  # a damaged file: make it again
        log.warning("rewriting unreadable shard %s (%s)", path, e)
        return None
    return metas if 0 < len(metas) <= expected else None


def build_dialogues(out: str | Path, codec: str | Path | Any, *, conversations: ConversationSet | None = None,
                    repeats: int = 4, workers: int = 1, seed: int = 0, timing: TimingConfig = TimingConfig(),
                    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                    variants: Sequence[str] | None = None, keep_audio: bool = False,
                    shard_size: int = 200, tokenizer: str | Path | None = None,
                    tokenizer_sentences: int = 20000, vocab_size: int = 2000,
                    max_intents: int | None = None, max_exchanges: int | None = None,
                    references: bool = True, reference_emotion_intents: int = 4,
                    channel: UserChannelConfig = UserChannelConfig(), emotion_mix: float = 0.5,
                    splits: Sequence[str] | None = None, overwrite: bool = False,
                    progress: bool = True) -> DialogueReport:
    """Render, encode and shard the dialogue dataset into ``out`` (see the module docstring).

    ``codec`` is a codec checkpoint path (needed for ``workers > 1``) or a loaded Codec;
    ``tokenizer`` an existing tokenizer file to use instead of training one;
    ``max_intents`` / ``max_exchanges`` take the first few scripts only (quick runs);
    ``splits`` (of train, valid, test, reference) writes only those shards, rendered exactly as
    in the full build with the same settings — e.g. the test split in another codec's codes,
    to evaluate a model of that codec on the very same dialogues.
    Dialogues that fail are logged and left out; more than 5% failing raises SynthError.

    **Resumable.** The shard each dialogue goes to is fixed by the plan, and ``out/build.json``
    records a fingerprint of the settings and plan. Run the same command again after an
    interruption and every shard already written is skipped; a different build in ``out`` is
    refused unless ``overwrite`` (which starts it afresh).
    """
    from tqdm import tqdm

    from maata.checkpoint import load_codec
    from maata.nn import weights_digest

    started = time.monotonic()
    _check_codec_path(codec)
    if shard_size < 1:
        raise DialogueError(f"shard size must be at least 1, got {shard_size}")
    if workers < 1:
        raise DialogueError(f"workers must be at least 1, got {workers}")
    if reference_emotion_intents < 0:
        raise DialogueError(f"reference_emotion_intents must be >= 0, got {reference_emotion_intents}")
    loaded = load_codec(codec) if isinstance(codec, (str, Path)) else codec
    if not hasattr(loaded, "encode") or not hasattr(loaded, "hop"):
        raise DialogueError(f"not a codec: {type(loaded).__name__}")
    conversations = _subset(conversations or load_conversations(), max_intents, max_exchanges)
    if not conversations.intents and not conversations.exchanges:
        raise DialogueError("the script set is empty: no intents or exchanges to make dialogues from")
    out = Path(out)
    speakers = user_speakers(seed, variants, fractions)
    plans = plan_dialogues(conversations, repeats, seed, timing, speakers, fractions, channel, emotion_mix)
    refs = _reference_jobs(conversations, seed, reference_emotion_intents) if references else []
    shard_plans = _shard_plans(plans, refs, shard_size, seed)
    if splits is not None:
        unknown = sorted(set(splits) - {*SPLITS, REFERENCE})
        if unknown or not splits:
            raise DialogueError(f"splits must be among {[*SPLITS, REFERENCE]}, got {list(splits)}")
        shard_plans = [sp for sp in shard_plans if sp.split in set(splits)]
    codec_sig = {"sample_rate": loaded.cfg.sample_rate, "hop": loaded.hop, "n_q": loaded.n_q,
                 "weights": weights_digest(loaded.state_dict())}  # a build resumes only with the same codec
    settings = {"format": "maata-dialogue-build/1", "seed": seed, "repeats": repeats,
                "timing": asdict(timing), "channel": asdict(channel), "emotion_mix": emotion_mix,
                "fractions": list(fractions), "shard_size": shard_size, "codec": codec_sig,
                **({} if splits is None else {"splits": sorted(set(splits))}),
                "tokenizer": str(tokenizer) if tokenizer else {"sentences": tokenizer_sentences,
                                                              "vocab_size": vocab_size}}
    fingerprint = _fingerprint(settings, shard_plans)
    build_path = out / BUILD_NAME
    previous = None
    if build_path.is_file():
        try:
            previous = json.loads(build_path.read_text(encoding="utf-8")).get("fingerprint")
        except (ValueError, OSError):
            previous = None
    resume = previous == fingerprint and not overwrite
    if not resume and not overwrite and (build_path.exists() or (out / STATS_NAME).exists()):
        raise DialogueError(f"{out} already exists with a different dialogue build ({BUILD_NAME}); "
                            "choose another --out, rerun with the same settings to resume, or pass --overwrite")
    if not resume:
        _clear_outputs(out, [*SPLITS, REFERENCE])
        for name in (BUILD_NAME, TOKENIZER_NAME):
            if (out / name).exists():
                (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    if (out / STATS_NAME).exists():
        (out / STATS_NAME).unlink()

    tok_path = out / TOKENIZER_NAME
    if resume and tok_path.is_file():
        tok = Tokenizer.load(tok_path)
    else:
        if tokenizer is not None:
            tok = Tokenizer.load(tokenizer)
        else:
            tok = train_dialogue_tokenizer(conversations, tokenizer_sentences, seed, vocab_size)
        tok.save(tok_path)
    write_code_space(out, loaded, codec if isinstance(codec, (str, Path)) else None)
    build_path.write_text(json.dumps({"fingerprint": fingerprint, "settings": settings,
                                      "shards": len(shard_plans), "records": len(plans) + len(refs)},
                                     ensure_ascii=False, indent=1, default=str), encoding="utf-8")

    acc: dict[str, Any] = defaultdict(Counter)
    counts: Counter[str] = Counter()
    paths: list[Path] = []
    pending: list[_ShardPlan] = []
    skipped_jobs = 0
    for sp in shard_plans:
        metas = _readable_shard(sp.path(out), len(sp.jobs)) if resume else None
        if metas is None:
            pending.append(sp)
            continue
        skipped_jobs += len(sp.jobs)
        counts[sp.split] += 1
        paths.append(sp.path(out))
        for meta in metas:
            _accumulate(acc, sp.split, meta)
    if resume and skipped_jobs:
        log.info("resuming %s: %d of %d shards already written", out, len(shard_plans) - len(pending),
                 len(shard_plans))

    jobs = [job for sp in pending for job in sp.jobs]
    audio_dir = str(out / "audio") if keep_audio else None
    codec_arg = str(codec) if isinstance(codec, (str, Path)) else loaded
    if workers > 1 and not isinstance(codec, (str, Path)):
        log.info("a loaded codec cannot be sent to workers: rendering in this process")
        workers = 1
    init_args = (codec_arg, str(tok_path), timing, audio_dir, 1)
    failures: list[str] = []
    timings: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(4))
    n_done: Counter[str] = Counter()
    results = iter(_run_all(jobs, init_args, workers)) if jobs else iter(())
    with tqdm(total=sum(len(sp.jobs) for sp in shard_plans), initial=skipped_jobs, desc="dialogues", unit="dlg",
              disable=not progress) as bar:
        for sp in pending:
            records: list[Record] = []
            for _ in sp.jobs:
                result = next(results)
                bar.update(1)
                if isinstance(result, str):
                    log.warning("skipped %s", result)
                    failures.append(result)
                    continue
                split, record, times = result
                kind = REFERENCE if split == REFERENCE else "dialogue"
                timings[kind] += times
                n_done[kind] += 1
                records.append(record)
            if records:
                paths.append(write_shard(sp.path(out), records))
                counts[sp.split] += 1
                for record in records:
                    _accumulate(acc, sp.split, record.meta)
    if len(failures) > MAX_FAILED * max(1, len(jobs)):
        raise SynthError(f"{len(failures)} of {len(jobs)} dialogues failed; first: {failures[0]}")
    _check_disjoint(acc)
    seconds = time.monotonic() - started
    per = {kind: dict(zip(("render_s", "encode_s", "render_cpu_s", "encode_cpu_s"),
                          np.round(timings[kind] / max(1, n_done[kind]), 4).tolist()))
           for kind in ("dialogue", REFERENCE)}
    stats = _stats(acc, speakers, counts, conversations, failures, seconds, per, tok, loaded,
                   repeats, seed, timing, workers)
    stats["resumed_shards"] = len(shard_plans) - len(pending) if resume else 0
    stats["made"] = {"dialogues": n_done["dialogue"], "references": n_done[REFERENCE],
                     "seconds": round(seconds, 1)}
    (out / STATS_NAME).write_text(json.dumps(stats, ensure_ascii=False, indent=1), encoding="utf-8")
    return DialogueReport(out, stats, sorted(paths), failures, seconds)


def _accumulate(acc: dict[str, Any], split: str, meta: dict[str, Any]) -> None:
    a = acc[split]
    a["records"] += 1
    a["frames"] += meta["frames"]
    a["seconds"] += meta["seconds"]
    if split == REFERENCE:
        return
    a[f"kind:{meta['kind']}"] += 1
    a[f"voice:{meta['voice']}"] += 1
    for e in meta["emotions"]:
        a[f"emotion:{e}"] += 1
    a["interruptions"] += len(meta["interruptions"])
    a["backchannels"] += len(meta["backchannels"])
    a["agent_turns"] += len(meta["agent_turns"])
    a["user_turns"] += len(meta["user_turns"])
    acc.setdefault("_speakers", defaultdict(set))[split].add(meta["user_speaker"])
    acc.setdefault("_groups", defaultdict(set))[split].add(meta["user_group"])
    if meta["intent"]:
        acc.setdefault("_intents", defaultdict(set))[split].add(meta["intent"])
        acc.setdefault("_renderings", defaultdict(Counter))[split][meta["intent"]] += 1
    a["heldout_phrasing"] += bool(meta.get("heldout_phrasing"))
    channel = (meta.get("user_channel") or {}).get("name", "clean")
    for part in channel.split(", "):
        a[f"channel:{part.split(' ')[0]}"] += 1
    acc.setdefault("_gaps", defaultdict(list))[split].extend(meta.get("response_gaps_ms") or [])


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    """min / p10 / median / p90 / max / share below zero of a list (None when empty)."""
    if not len(values):
        return None
    v = np.asarray(values, np.float64)
    return {"min": round(float(v.min()), 1), "p10": round(float(np.percentile(v, 10)), 1),
            "median": round(float(np.median(v)), 1), "p90": round(float(np.percentile(v, 90)), 1),
            "max": round(float(v.max()), 1), "negative": round(float(np.mean(v < 0)), 4)}


def _check_disjoint(acc: dict[str, Any]) -> None:
    groups = acc.get("_groups", {})
    for a in SPLITS:
        for b in SPLITS:
            if a < b and groups.get(a, set()) & groups.get(b, set()):
                raise DialogueError(f"user speakers shared by {a} and {b}: "
                                    f"{sorted(groups[a] & groups[b])[:3]}")


def _stats(acc, speakers, counts, conversations, failures, seconds, per, tok, codec, repeats, seed,
           timing, workers) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    spk = acc.get("_speakers", {})
    intents = acc.get("_intents", {})
    for s in [*SPLITS, REFERENCE]:
        a = acc.get(s, Counter())
        entry = {"records": a["records"], "shards": counts[s], "frames": a["frames"],
                 "hours": round(a["seconds"] / 3600, 4)}
        if s != REFERENCE:
            entry.update({
                "qa": a["kind:qa"], "exchanges": a["kind:exchange"],
                "intents": len(intents.get(s, ())),
                "user_speakers": len(spk.get(s, ())), "speakers": sorted(spk.get(s, ())),
                "speaker_pool": len(speakers.get(s, ())),
                "voices": {v: a[f"voice:{v}"] for v in VOICES},
                "emotions": {e: a[f"emotion:{e}"] for e in EMOTIONS},
                "user_turns": a["user_turns"], "agent_turns": a["agent_turns"],
                "backchannels": a["backchannels"], "interruptions": a["interruptions"],
                "heldout_phrasing": a["heldout_phrasing"],
                "user_channel": {c: a[f"channel:{c}"] for c in ("clean", "reverb", "telephone", "noise")},
                "renderings_per_intent": _spread(list(acc.get("_renderings", {}).get(s, Counter()).values())),
                "response_gap_ms": _spread(acc.get("_gaps", {}).get(s, [])),
            })
        splits[s] = entry
    return {
        "format": "maata-dialogues/1", "seed": seed, "repeats": repeats,
        "intents": len(conversations.intents), "exchanges": len(conversations.exchanges),
        "dialogues": sum(splits[s]["records"] for s in SPLITS),
        "hours": round(sum(splits[s]["hours"] for s in SPLITS), 4),
        "splits": splits,
        "codec": {"sample_rate": codec.cfg.sample_rate, "hop": codec.hop, "n_q": codec.n_q,
                  "frame_rate": codec.cfg.sample_rate / codec.hop},
        "tokenizer": {"file": TOKENIZER_NAME, "vocab_size": tok.vocab_size, "epad_id": EPAD_ID},
        "voices": {name: asdict(v) for name, v in V.AGENT_VOICES.items()},
        "timing": asdict(timing),
        "failures": failures[:50], "failed": len(failures),
        "seconds": round(seconds, 1), "workers": workers,
        "per_record": per,  # mean wall and CPU seconds per dialogue / reference, in a worker
    }


# ---------------------------------------------------------------------------------------
# Single-stream pre-training shards from a speech manifest


@dataclass(frozen=True)
class _SpeechJob:
    rows: tuple[tuple[str, ManifestRow], ...]  # (audio path, row)


def _speech_job(job: _SpeechJob) -> list[tuple[str, Record]] | str:
    """Load, pad and encode a batch of clips; one record per clip."""
    from maata.audio import load_audio
    from maata.data.phonemes import PhonemeVocab, frame_labels

    codec = _STATE["codec"]
    vocab: PhonemeVocab | None = _STATE["extra"]
    sr, hop = codec.cfg.sample_rate, codec.hop
    try:
        clips = [load_audio(p, sr)[0] for p, _ in job.rows]
        for (p, _), x in zip(job.rows, clips):
            if x.size == 0:
                raise ValueError(f"{p}: empty audio")
        n = -(-max(len(x) for x in clips) // hop) * hop
        codes = _encode(*[np.pad(x, (0, n - len(x))) for x in clips])  # causal: padding is harmless
    except (ValueError, OSError) as e:
        return f"{job.rows[0][0]}…: {e}"
    out = []
    for (path, row), x, c in zip(job.rows, clips, codes):
        frames = -(-len(x) // hop)
        arrays = {"codes": c[:, :frames]}
        if vocab is not None:
            arrays["phonemes"] = frame_labels(vocab.encode(row.phonemes), frames, sr / hop).astype(np.int16)
        meta = {"id": row.path, "speaker": row.speaker, "source": row.source, "text": row.text,
                "split": row.split, "seconds": round(len(x) / sr, 3), "frames": frames}
        out.append((row.split or "train", Record(arrays, meta)))
    return out


@dataclass(frozen=True)
class SpeechShardReport:
    out: Path
    stats: dict[str, Any]
    shards: list[Path]
    failures: list[str]
    seconds: float


def build_speech_shards(manifest: str | Path, codec: str | Path | Any, out: str | Path, *,
                        workers: int = 1, shard_size: int = 1000, batch: int = 16,
                        overwrite: bool = False, progress: bool = True) -> SpeechShardReport:
    """Encode every clip of a speech manifest into ``out/<split>/shard-XXXXX.safetensors``
    (field ``codes`` int16 [K, F]; plus ``phonemes`` int16 [F] (-100 = unknown) when any row
    has an alignment, with the manifest's ``phoneme_vocab.json`` or one built from it, copied
    to ``out``). Rows without a split go to train. Clips are batched by length (the codec is
    causal, so zero padding at the end does not change a clip's codes)."""
    from tqdm import tqdm

    from maata.checkpoint import load_codec
    from maata.data.manifest import audio_path, read_manifest
    from maata.data.phonemes import PhonemeVocab

    started = time.monotonic()
    _check_codec_path(codec)
    if shard_size < 1 or batch < 1 or workers < 1:
        raise DialogueError("shard_size, batch and workers must be at least 1")
    manifest = Path(manifest)
    rows = read_manifest(manifest)
    if not rows:
        raise DialogueError(f"{manifest}: the manifest has no rows")
    out = Path(out)
    if (out / STATS_NAME).exists() and not overwrite:
        raise DialogueError(f"{out / STATS_NAME} already exists; choose another --out or pass --overwrite")
    loaded = load_codec(codec) if isinstance(codec, (str, Path)) else codec
    vocab = None
    if any(r.phonemes is not None for r in rows):
        path = PhonemeVocab.path_for(manifest)
        vocab = PhonemeVocab.load(path) if path.is_file() else PhonemeVocab.from_manifest(rows)
    _clear_outputs(out, SPLITS)
    out.mkdir(parents=True, exist_ok=True)
    if vocab is not None:
        vocab.save(out / "phoneme_vocab.json")
    write_code_space(out, loaded, codec if isinstance(codec, (str, Path)) else None)
    jobs = []
    for split in SPLITS:
        mine = sorted((r for r in rows if (r.split or "train") == split), key=lambda r: (r.duration, r.path))
        for i in range(0, len(mine), batch):
            jobs.append(_SpeechJob(tuple((str(audio_path(manifest, r)), r) for r in mine[i:i + batch])))
    codec_arg = str(codec) if isinstance(codec, (str, Path)) else loaded
    if workers > 1 and not isinstance(codec, (str, Path)):
        workers = 1
    writer = _ShardWriter(out, shard_size)
    failures: list[str] = []
    acc: dict[str, Counter] = defaultdict(Counter)
    speakers: dict[str, set] = defaultdict(set)
    for result in tqdm(_run_all(jobs, (codec_arg, None, TimingConfig(), None, 1, vocab), workers),
                       total=len(jobs), desc="speech shards", unit="batch", disable=not progress):
        if isinstance(result, str):
            log.warning("skipped %s", result)
            failures.append(result)
            continue
        for split, record in result:
            writer.add(split, record)
            acc[split]["clips"] += 1
            acc[split]["frames"] += record.meta["frames"]
            acc[split]["seconds"] += record.meta["seconds"]
            speakers[split].add(record.meta["speaker"])
    writer.flush()
    if len(failures) > MAX_FAILED * len(jobs):
        raise DialogueError(f"{len(failures)} of {len(jobs)} batches failed; first: {failures[0]}")
    stats = {"format": "maata-speech-shards/1", "manifest": str(manifest),
             "phonemes": vocab is not None, "phoneme_classes": len(vocab) if vocab else 0,
             "splits": {s: {"clips": acc[s]["clips"], "frames": acc[s]["frames"],
                            "hours": round(acc[s]["seconds"] / 3600, 4), "speakers": len(speakers[s]),
                            "shards": writer.counts[s]} for s in SPLITS},
             "failures": failures[:50], "seconds": round(time.monotonic() - started, 1)}
    (out / STATS_NAME).write_text(json.dumps(stats, ensure_ascii=False, indent=1), encoding="utf-8")
    return SpeechShardReport(out, stats, writer.paths, failures, stats["seconds"])

