"""The agent's four voices and its emotional prosody, for the synthetic dialogue data.

The S2S model speaks in one of four fixed voices (:data:`maata.lm.model.VOICES`). Until real
recordings exist each is a fixed synthesiser setting:

==========  =========================================================================
voice       synthesiser
==========  =========================================================================
male_1      espeak-ng ``te+m3``, pitch 45, 165 wpm
male_2      festival's Telugu NSK diphone voice (a real male speaker), F0 125 → 100 Hz
female_1    espeak-ng ``te+f2``, pitch 55, 170 wpm
female_2    espeak-ng ``te+f4``, pitch 72, 160 wpm
==========  =========================================================================

Their espeak variants (:data:`AGENT_VARIANTS`) are never used for user speakers, and
festival is never a user, so user and agent voices are disjoint.

Every emotion of :data:`maata.lm.model.EMOTIONS` maps to a :class:`Prosody`: speaking rate,
pitch, pitch range, energy, and a pitch/rate contour (a raised first word for SURPRISE; the
rising, lengthened phrase-final words of a Telugu-accented delivery). espeak realises the
contour with SSML ``<prosody>`` on single words, festival with the start/end of its F0 line.
LAUGH adds a laughter-like sound (a fast high-pitched "హహ్హహ్హా" over breathy bursts) before
or after the answer; THINKING puts a slow "హ్మ్" and a pause in front of it.

Every function returns :class:`Speech`: float32 audio at the requested rate, trimmed to the
speech with a 10 ms margin, plus the start time of every word. Word times come from
espeak-ng's word events (:meth:`maata.data.synth.EspeakEngine.speak`, exact) or, for
festival, from its pauses (phrase starts) and the words' lengths in between. espeak output
is deterministic (each call runs in a fresh forked child), so a dialogue renders the same
whatever was synthesised before it.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from maata.audio import normalize_rms, resample
from maata.data.synth import EspeakVoice, SynthError, espeak_engine, festival_synthesize
from maata.lm.model import EMOTIONS, VOICES

__all__ = ["VoiceError", "AgentVoice", "Prosody", "Speech", "AGENT_VOICES", "AGENT_VARIANTS",
           "EMOTION_PROSODY", "agent_voice", "prosody_for", "speak_agent", "speak_user",
           "speak_backchannel", "laugh_sound", "thinking_filler", "espeak_speak",
           "festival_speak", "THINKING_FILLER", "LAUGH_TEXT", "mean_f0", "words_of"]

TARGET_DBFS = -16.0
THINKING_FILLER = "హ్మ్"
LAUGH_TEXT = "హహ్హహ్హా"
_MARGIN_S = 0.01


class VoiceError(ValueError):
    """An unknown agent voice or emotion, or an impossible synthesiser setting."""


# ---------------------------------------------------------------------------------------
# Voices and prosody tables


@dataclass(frozen=True)
class AgentVoice:
    """One agent voice: an espeak-ng variant at a pitch/rate/range, or festival's NSK."""

    name: str
    engine: str  # "espeak" | "festival"
    variant: str = ""
    pitch: int = 50  # espeak 0-99
    rate: int = 170  # espeak words per minute
    range: int = 50  # espeak pitch range 0-99
    stretch: float = 1.1  # festival duration stretch
    f0_start: int = 125  # festival F0 line (Hz)
    f0_end: int = 100


AGENT_VOICES: dict[str, AgentVoice] = {
    "male_1": AgentVoice("male_1", "espeak", variant="m3", pitch=45, rate=165, range=55),
    "male_2": AgentVoice("male_2", "festival", stretch=1.1, f0_start=125, f0_end=100),
    "female_1": AgentVoice("female_1", "espeak", variant="f2", pitch=55, rate=170, range=60),
    "female_2": AgentVoice("female_2", "espeak", variant="f4", pitch=72, rate=160, range=65),
}
if set(AGENT_VOICES) != set(VOICES):  # the model's list is the source of truth
    raise ImportError(f"agent voices {sorted(AGENT_VOICES)} do not match the model's VOICES {VOICES}")

#: espeak variants that belong to agent voices: never used for users.
AGENT_VARIANTS: frozenset[str] = frozenset(v.variant for v in AGENT_VOICES.values() if v.variant)


@dataclass(frozen=True)
class Prosody:
    """How an emotion changes delivery, relative to the voice's own settings."""

    rate: float = 1.0  # speaking-rate multiplier
    pitch: int = 0  # espeak pitch points added; festival F0 × (1 + pitch / 100)
    range: float = 1.0  # pitch-range multiplier (espeak RANGE; festival's F0 fall)
    gain_db: float = 0.0  # loudness relative to -16 dBFS
    first_pitch: int = 0  # % pitch change on the first word (an excited/surprised onset)
    final_pitch: int = 0  # % pitch change on each phrase-final word (accent contour)
    final_rate: int = 100  # % rate of each phrase-final word (< 100: lengthened)
    laugh: bool = False  # add laughter before or after the words
    filler: bool = False  # start with a slow "హ్మ్" and a pause


EMOTION_PROSODY: dict[str, Prosody] = {
    "NEUTRAL": Prosody(),
    "HAPPY": Prosody(rate=1.08, pitch=12, range=1.3, gain_db=1.0),
    "LAUGH": Prosody(rate=1.1, pitch=14, range=1.35, gain_db=1.0, laugh=True),
    "EXCITED": Prosody(rate=1.18, pitch=18, range=1.5, gain_db=2.5, final_pitch=10),
    "EMPATHY": Prosody(rate=0.86, pitch=-8, range=0.7, gain_db=-3.0),
    "SURPRISE": Prosody(rate=1.05, pitch=15, range=1.6, gain_db=1.5, first_pitch=35),
    "THINKING": Prosody(rate=0.88, pitch=-4, range=0.8, gain_db=-1.5, filler=True),
    "TELUGU_ACCENT_HEAVY": Prosody(rate=0.92, range=1.4, final_pitch=25, final_rate=75),
    "TELUGU_ACCENT_MILD": Prosody(rate=0.97, range=1.15, final_pitch=12, final_rate=88),
}
if set(EMOTION_PROSODY) != set(EMOTIONS):
    raise ImportError(f"emotion prosody {sorted(EMOTION_PROSODY)} does not match the model's EMOTIONS")


def agent_voice(name: str) -> AgentVoice:
    """The agent voice called ``name``; :class:`VoiceError` lists the known ones."""
    try:
        return AGENT_VOICES[name]
    except (KeyError, TypeError):
        raise VoiceError(f"unknown agent voice {name!r}; voices: {', '.join(VOICES)}") from None


def prosody_for(emotion: str | None) -> Prosody:
    """The prosody of an emotion (``None`` = NEUTRAL); :class:`VoiceError` if unknown."""
    if emotion is None:
        return EMOTION_PROSODY["NEUTRAL"]
    try:
        return EMOTION_PROSODY[emotion]
    except (KeyError, TypeError):
        raise VoiceError(f"unknown emotion {emotion!r}; emotions: {', '.join(EMOTIONS)}") from None


# ---------------------------------------------------------------------------------------
# Speech: audio + word start times


@dataclass(frozen=True)
class Speech:
    """Mono float32 audio and the start time (s) of each spoken word."""

    audio: np.ndarray
    sample_rate: int
    words: tuple[tuple[float, str], ...]  # (start_s, word), in order

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


def words_of(text: str) -> list[str]:
    """The words of a script line: whitespace-separated, punctuation kept on its word."""
    return text.split()


def _letters(word: str) -> int:
    return sum(unicodedata.category(ch)[0] in "LM" for ch in word)


def _speech_bounds(audio: np.ndarray, sr: int, rel_db: float = -40.0) -> tuple[int, int]:
    """First and last sample of the speech (10 ms frames within ``rel_db`` of the loudest)."""
    n = max(1, int(0.01 * sr))
    frames = len(audio) // n
    if frames == 0:
        return 0, len(audio)
    rms = np.sqrt(np.mean(np.square(audio[: frames * n].reshape(frames, n), dtype=np.float64), 1))
    peak = float(rms.max())
    if peak <= 1e-6:
        return 0, 0
    active = np.flatnonzero(rms >= max(peak * 10 ** (rel_db / 20), 1e-5))
    return int(active[0]) * n, min(len(audio), (int(active[-1]) + 1) * n)


def _finish(audio: np.ndarray, sr_in: int, sr: int, word_times: list[float | None],
            words: Sequence[str], gain_db: float) -> Speech:
    """Resample, trim to the speech (± 10 ms), normalise loudness, fill missing word times."""
    audio = resample(np.asarray(audio, np.float32), sr_in, sr)
    a, b = _speech_bounds(audio, sr)
    if b <= a:
        raise SynthError(f"the synthesiser produced silence for {' '.join(words)!r}")
    margin = int(_MARGIN_S * sr)
    a, b = max(0, a - margin), min(len(audio), b + margin)
    audio = normalize_rms(audio[a:b], TARGET_DBFS + gain_db)
    duration = len(audio) / sr
    offset = a / sr
    times = [None if t is None else min(max(t - offset, 0.0), duration) for t in word_times]
    return Speech(audio, sr, tuple(zip(_fill_times(times, words, duration), words)))


def _fill_times(times: list[float | None], words: Sequence[str], duration: float) -> list[float]:
    """Word starts with the unknown ones spread between their known neighbours in proportion
    to word length (the clip is trimmed, so an unknown first word starts at 0). The result
    is non-decreasing."""
    n = len(words)
    if n == 0:
        return []
    weight = [_letters(w) + 1 for w in words]
    out: list[float] = list(times)  # type: ignore[arg-type]
    if out[0] is None:
        out[0] = 0.0
    anchors = [i for i in range(n) if out[i] is not None] + [n]
    for a, b in zip(anchors, anchors[1:]):
        t_a = out[a]
        t_b = duration if b == n else out[b]
        total = sum(weight[a:b])
        for k in range(a + 1, b):
            out[k] = t_a + max(t_b - t_a, 0.0) * sum(weight[a:k]) / total
    for i in range(1, n):
        out[i] = max(out[i], out[i - 1])
    return out


# ---------------------------------------------------------------------------------------
# espeak-ng with word events (and SSML for per-word prosody)

_DEFAULT_RANGE = 50


def _phrase_final(words: Sequence[str]) -> list[bool]:
    return [i == len(words) - 1 or bool(re.search(r"[.,?!]$", w)) for i, w in enumerate(words)]


def _ssml_line(words: Sequence[str], prosody: Prosody) -> tuple[str, list[int], bool]:
    """The text to speak, each word's 1-based character position in it, and whether it is SSML
    (only when some word needs its own pitch or rate)."""
    final = _phrase_final(words)
    attrs: list[str] = []
    for i, _ in enumerate(words):
        pitch, rate = 0, 100
        if i == 0 and prosody.first_pitch:
            pitch += prosody.first_pitch
        if final[i]:
            pitch += prosody.final_pitch
            rate = prosody.final_rate
        a = (f' pitch="{pitch:+d}%"' if pitch else "") + (f' rate="{rate}%"' if rate != 100 else "")
        attrs.append(a)
    ssml = any(attrs)
    parts, positions, pos = [], [], 1
    if ssml:
        parts.append("<speak>")
        pos += len("<speak>")
    for i, (w, a) in enumerate(zip(words, attrs)):
        if i:
            parts.append(" ")
            pos += 1
        if a:
            open_tag = f"<prosody{a}>"
            parts.append(open_tag)
            pos += len(open_tag)
        positions.append(pos)
        parts.append(w)
        pos += len(w)
        if a:
            parts.append("</prosody>")
            pos += len("</prosody>")
    if ssml:
        parts.append("</speak>")
    return "".join(parts), positions, ssml


def espeak_speak(text: str, variant: str, pitch: int, rate: int, pitch_range: int = 50,
                 prosody: Prosody = Prosody(), sample_rate: int = 16000) -> Speech:
    """Speak ``text`` with espeak-ng ``te+variant`` under ``prosody``; exact word times."""
    words = words_of(text)
    if not words:
        raise SynthError("nothing to say: text is empty")
    line, positions, ssml = _ssml_line(words, prosody)
    engine = espeak_engine()
    spoken = engine.speak(line, f"te+{variant}" if variant else "te",
                          rate=int(np.clip(round(rate * prosody.rate), 80, 450)),
                          pitch=int(np.clip(pitch + prosody.pitch, 0, 99)),
                          pitch_range=int(np.clip(round(pitch_range * prosody.range), 0, 99)), ssml=ssml)
    times: list[float | None] = [None] * len(words)
    starts = np.asarray(positions)
    for pos, _, start_s in spoken.words:
        i = int(np.searchsorted(starts, pos, side="right")) - 1
        if 0 <= i < len(words) and pos < positions[i] + len(words[i]) and times[i] is None:
            times[i] = start_s
    return _finish(spoken.audio, engine.sample_rate, sample_rate, times, words, prosody.gain_db)


def _clean_festival(audio: np.ndarray, sr: int, rel_db: float = -32.0) -> np.ndarray:
    """festival's NSK voice leaves a DC offset and a low noise floor in pauses: high-pass at
    70 Hz, then gate 10 ms frames quieter than ``rel_db`` below the loudest or within 8 dB
    of the noise floor (20 ms hold, 5 ms ramps), so pauses are silent and the clip trims to
    its speech."""
    from scipy.signal import butter, sosfilt

    x = np.asarray(audio, np.float64)
    if x.size == 0:
        return x.astype(np.float32)
    x = sosfilt(butter(2, 70, "highpass", fs=sr, output="sos"), x - x[: max(1, sr // 100)].mean())
    n = max(1, sr // 100)
    frames = -(-len(x) // n)
    padded = np.pad(x, (0, frames * n - len(x)))
    rms = np.sqrt(np.mean(padded.reshape(frames, n) ** 2, axis=1))
    if rms.max() <= 0:
        return x.astype(np.float32)
    floor = float(np.percentile(rms, 20))  # the pauses' noise
    open_ = rms >= max(rms.max() * 10 ** (rel_db / 20), floor * 10 ** (8 / 20))
    open_ = np.convolve(open_.astype(float), np.ones(5), "same") > 0  # hold ±20 ms
    gain = np.repeat(open_.astype(float), n)[: len(x)]
    ramp = np.hanning(max(3, sr // 200))
    gain = np.convolve(gain, ramp / ramp.sum(), "same")
    return (x * gain).astype(np.float32)


def _pause_anchors(audio: np.ndarray, sr: int, words: Sequence[str],
                   min_pause: float = 0.12) -> list[float | None]:
    """Word starts known from the pauses of gated audio: the first word at the speech onset,
    and the first word of each later phrase (after , . ? !) at the end of a pause, when the
    pauses can be matched to the phrase breaks. Other words: ``None``."""
    times: list[float | None] = [None] * len(words)
    n = max(1, sr // 100)
    frames = len(audio) // n
    if frames == 0 or not words:
        return times
    active = np.abs(audio[: frames * n]).reshape(frames, n).max(1) > 1e-4
    idx = np.flatnonzero(active)
    if idx.size == 0:
        return times
    first, last = int(idx[0]), int(idx[-1])
    times[0] = first / 100
    pauses = []  # (end_s, length_s) of silent runs inside the speech
    run = 0
    for f in range(first, last + 1):
        if not active[f]:
            run += 1
        elif run:
            if run / 100 >= min_pause:
                pauses.append((f / 100, run / 100))
            run = 0
    final = _phrase_final(words)
    breaks = [i + 1 for i in range(len(words) - 1) if final[i]]
    if not breaks or not pauses:
        return times
    if len(pauses) > len(breaks):
        longest = sorted(sorted(pauses, key=lambda p: -p[1])[: len(breaks)])
        pauses = longest
    if len(pauses) == len(breaks):
        for i, (end, _) in zip(breaks, pauses):
            times[i] = end
    return times


def festival_speak(text: str, stretch: float, f0_start: int, f0_end: int,
                   prosody: Prosody = Prosody(), sample_rate: int = 16000) -> Speech:
    """Speak ``text`` with festival's NSK voice under ``prosody``. Word times: phrase starts
    from the pauses, the words in between in proportion to their length."""
    words = words_of(text)
    if not words:
        raise SynthError("nothing to say: text is empty")
    scale = 1 + prosody.pitch / 100
    mid = (f0_start + f0_end) / 2
    half = (f0_start - f0_end) / 2 * prosody.range
    start = (mid + half) * scale * (1 + prosody.first_pitch / 100)
    end = (mid - half) * scale * (1 + prosody.final_pitch / 100)
    final_stretch = 100 / prosody.final_rate if prosody.final_rate else 1.0
    # festival has one stretch per utterance: final lengthening becomes a little slower overall
    audio, sr = festival_synthesize(text, stretch=stretch / prosody.rate * final_stretch ** 0.3,
                                    f0_start=round(start), f0_end=round(end))
    audio = _clean_festival(audio, sr)
    return _finish(audio, sr, sample_rate, _pause_anchors(audio, sr, words), words,
                   prosody.gain_db)


# ---------------------------------------------------------------------------------------
# Agent and user speech


def _speak_voice(text: str, voice: AgentVoice, prosody: Prosody, sample_rate: int) -> Speech:
    if voice.engine == "festival":
        return festival_speak(text, voice.stretch, voice.f0_start, voice.f0_end, prosody, sample_rate)
    return espeak_speak(text, voice.variant, voice.pitch, voice.rate, voice.range, prosody, sample_rate)


@functools.lru_cache(maxsize=256)
def _agent_words(text: str, voice: str, emotion: str, sample_rate: int) -> Speech:
    """The words of an agent line in a voice and emotion, without laughter or filler (cached:
    the agent says the same answers many times)."""
    p = replace(prosody_for(emotion), laugh=False, filler=False)
    speech = _speak_voice(text, agent_voice(voice), p, sample_rate)
    speech.audio.flags.writeable = False
    return speech


@functools.lru_cache(maxsize=16)
def _laugh_voiced(voice: str, sample_rate: int) -> np.ndarray:
    v = agent_voice(voice)
    p = Prosody(rate=1.6, pitch=25, range=1.6, final_rate=100)
    return _speak_voice(LAUGH_TEXT, v, p, sample_rate).audio


def laugh_sound(voice: str, sample_rate: int = 16000,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """A laughter-like sound in ``voice``: fast, high "హహ్హహ్హా" over breathy noise bursts."""
    rng = rng if rng is not None else np.random.default_rng(0)
    voiced = _laugh_voiced(voice, sample_rate).copy()
    n = len(voiced) + int(0.12 * sample_rate)
    t = np.arange(n) / sample_rate
    rate_hz = rng.uniform(4.5, 6.0)
    bursts = np.clip(np.sin(2 * np.pi * rate_hz * t), 0, None) ** 2
    bursts *= np.exp(-t / max(n / sample_rate, 1e-3) * 1.5)  # the laugh dies away
    noise = rng.standard_normal(n).astype(np.float32)
    noise = np.diff(noise, prepend=0.0) * 0.5  # tilt towards high frequencies: breath
    breath = (noise * bursts).astype(np.float32)
    rms_v = float(np.sqrt(np.mean(voiced ** 2))) or 1e-3
    rms_b = float(np.sqrt(np.mean(breath ** 2))) or 1e-3
    out = breath * (rms_v / rms_b) * 10 ** (-9 / 20)
    out[: len(voiced)] += voiced
    return normalize_rms(out.astype(np.float32), TARGET_DBFS + 1.0)


@functools.lru_cache(maxsize=16)
def thinking_filler(voice: str, sample_rate: int = 16000) -> Speech:
    """A slow, low "హ్మ్" in ``voice`` (the THINKING emotion's lead-in)."""
    p = Prosody(rate=0.8, pitch=-6, range=0.6, gain_db=-3.0, final_rate=50)
    return _speak_voice(THINKING_FILLER, agent_voice(voice), p, sample_rate)


def _silence(seconds: float, sr: int) -> np.ndarray:
    return np.zeros(int(round(seconds * sr)), np.float32)


def speak_agent(text: str, voice: str, emotion: str, sample_rate: int = 16000,
                rng: np.random.Generator | None = None) -> Speech:
    """One agent turn: ``text`` in ``voice`` with ``emotion``'s prosody, plus laughter (LAUGH)
    or the thinking filler (THINKING). ``rng`` places the laugh and sizes the pauses."""
    agent_voice(voice)
    p = prosody_for(emotion)
    rng = rng if rng is not None else np.random.default_rng(0)
    main = _agent_words(text, voice, emotion, sample_rate)
    parts: list[np.ndarray] = []
    words: list[tuple[float, str]] = []
    t = 0.0

    def add(audio: np.ndarray, ws: Sequence[tuple[float, str]] = ()) -> None:
        nonlocal t
        words.extend((t + s, w) for s, w in ws)
        parts.append(audio)
        t += len(audio) / sample_rate

    if p.filler:
        filler = thinking_filler(voice, sample_rate)
        add(filler.audio, filler.words)
        add(_silence(rng.uniform(0.3, 0.7), sample_rate))
    laugh_first = p.laugh and rng.random() < 0.5
    if laugh_first:
        add(laugh_sound(voice, sample_rate, rng))
        add(_silence(rng.uniform(0.12, 0.3), sample_rate))
    add(main.audio, main.words)
    if p.laugh and not laugh_first:
        add(_silence(rng.uniform(0.1, 0.25), sample_rate))
        add(laugh_sound(voice, sample_rate, rng))
    return Speech(np.concatenate(parts).astype(np.float32), sample_rate, tuple(words))


@functools.lru_cache(maxsize=256)
def _backchannel_words(text: str, voice: str, sample_rate: int) -> Speech:
    p = Prosody(rate=1.2, pitch=-2, range=0.8)
    return _speak_voice(text, agent_voice(voice), p, sample_rate)


def speak_backchannel(text: str, voice: str, sample_rate: int = 16000,
                      gain_db: float = -12.0) -> Speech:
    """A backchannel (ఆ, అవును, హ్మ్ ...) in ``voice``: brisk, flat, ``gain_db`` below normal."""
    s = _backchannel_words(text, voice, sample_rate)
    return Speech((s.audio * 10 ** (gain_db / 20)).astype(np.float32), sample_rate, s.words)


def speak_user(text: str, speaker: EspeakVoice, emotion: str | None = None,
               sample_rate: int = 16000, rate_scale: float = 1.0, pitch_shift: int = 0,
               gain_db: float = 0.0) -> Speech:
    """A user's line by an espeak user speaker (never an agent variant), with the emotion's
    prosody (no laughter or filler) and this utterance's small rate/pitch jitter."""
    if speaker.variant in AGENT_VARIANTS:
        raise VoiceError(f"espeak variant {speaker.variant!r} is reserved for an agent voice")
    p = replace(prosody_for(emotion), laugh=False, filler=False)
    p = replace(p, rate=p.rate * rate_scale, gain_db=p.gain_db + gain_db)
    return espeak_speak(text, speaker.variant, speaker.pitch + pitch_shift, speaker.rate,
                        _DEFAULT_RANGE, p, sample_rate)


# ---------------------------------------------------------------------------------------
# Measurement (tests, sanity checks)


def mean_f0(audio: np.ndarray, sample_rate: int, fmin: float = 60.0, fmax: float = 450.0) -> float:
    """Median F0 (Hz) of the voiced 40 ms frames, by autocorrelation; NaN if none is voiced."""
    x = np.asarray(audio, np.float64)
    n = int(0.04 * sample_rate)
    hop = n // 2
    lo, hi = int(sample_rate / fmax), int(sample_rate / fmin)
    level = np.sqrt(np.mean(x ** 2)) if x.size else 0.0
    f0s = []
    for i in range(0, len(x) - n, hop):
        fr = x[i:i + n] - x[i:i + n].mean()
        if np.sqrt(np.mean(fr ** 2)) < 0.3 * level:
            continue
        ac = np.correlate(fr, fr, "full")[n - 1:]
        k = lo + int(np.argmax(ac[lo:hi]))
        if ac[0] > 0 and ac[k] > 0.4 * ac[0]:
            f0s.append(sample_rate / k)
    return float(np.median(f0s)) if f0s else float("nan")

