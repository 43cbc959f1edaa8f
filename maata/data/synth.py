"""A multi-speaker synthetic Telugu speech corpus, with phoneme alignments.

Until real recordings are imported, the codec and LM train on Telugu spoken by two offline
synthesisers:

* **espeak-ng** through libespeak-ng (ctypes): every voice variant (``te+f3``, ``te+klatt2``,
  ... about 100) at two pitch levels and its own speaking rate is a separate "speaker".
  The library reports a phoneme event (symbol and time in ms) for every phoneme it speaks,
  so each clip gets an exact phoneme alignment for free.
* **festival** with the Telugu NSK diphone voice (one real male speaker), at several speeds
  and pitch contours. No alignment (``phonemes: null``).

Each clip is one generated sentence (:mod:`maata.text.generator`), resampled to 16 kHz mono,
RMS-normalised to -16 dBFS and written as ``wavs/<speaker>/<id>.wav`` beside
``manifest.jsonl``. Splits are speaker-disjoint and coarser still: every pitch of one espeak
variant is held out together, and the festival voice (the only human recording) stays in
train. The phoneme vocabulary is saved as ``phoneme_vocab.json`` next to the manifest.

Everything is planned up front from the seed, so the same arguments give the same corpus
whatever the number of workers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import multiprocessing
import os
import pickle
import random
import re
import shutil
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar, Union

import numpy as np

from maata.audio import int16_to_float, load_audio, normalize_rms, resample, write_wav
from maata.data.manifest import (ManifestRow, SplitStats, assign_splits, summarize,
                                 write_manifest)
from maata.data.phonemes import PhonemeVocab

log = logging.getLogger(__name__)

__all__ = ["SynthError", "EspeakEngine", "EspeakSpeech", "EspeakVoice", "FestivalVoice", "SynthJob",
           "espeak_engine", "espeak_variants", "espeak_voices", "festival_voices",
           "festival_synthesize", "plan_jobs", "run_job",
           "synthesize_corpus", "CorpusReport"]

SAMPLE_RATE = 16000
TARGET_DBFS = -16.0
MAX_SECONDS = 30.0
MANIFEST_NAME = "manifest.jsonl"


class SynthError(ValueError):
    """A synthesiser that is missing, fails, or is given nothing to say. A ValueError, so
    the ``maata`` CLI reports it as one line for the user to act on."""


# ---------------------------------------------------------------------------------------
# espeak-ng through ctypes (layout from espeak-ng/speak_lib.h, API revision 12)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_SSML = 0x10


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """``espeak_EVENT``: 40 bytes on 64-bit Linux."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms from the start of the message
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))

Alignment = list[tuple[float, float, str]]


@dataclass(frozen=True)
class EspeakSpeech:
    """What espeak said: float32 audio at the engine's rate, the phoneme alignment
    ``[(start_s, end_s, symbol)]`` and word onsets ``[(text_position, length, start_s)]``
    (``text_position`` is espeak's 1-based character index into the text it was given)."""

    audio: np.ndarray
    phonemes: Alignment
    words: list[tuple[int, int, float]]


class EspeakEngine:
    """libespeak-ng in synchronous mode with phoneme events; one per process.

    espeak keeps global state, so use :func:`espeak_engine` rather than making several.
    """

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self._lib = ctypes.CDLL(name)
        except OSError as e:
            raise SynthError(f"cannot load libespeak-ng ({e}); apt-get install libespeak-ng1") from e
        self._lib.espeak_Info.restype = ctypes.c_char_p
        self._lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint,
                                           ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                           ctypes.c_void_p, ctypes.c_void_p]
        self.sample_rate = int(self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS))
        if self.sample_rate <= 0:
            raise SynthError("espeak_Initialize failed (is espeak-ng-data installed?)")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []
        self._words: list[tuple[int, int, int]] = []
        self._callback = _SynthCallback(self._on_audio)  # keep a reference: C holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)
        data = ctypes.c_char_p()
        self._lib.espeak_Info(ctypes.byref(data))
        self.data_path = Path((data.value or b"").decode())

    def _on_audio(self, wav: ctypes.POINTER(ctypes.c_short), n: int,
                  events: ctypes.POINTER(_Event)) -> int:
        """espeak's callback: collect samples, phoneme events and word events."""
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                symbol = bytes(ev.id.string).split(b"\0", 1)[0].decode("utf-8", "replace")
                self._events.append((ev.audio_position, symbol))
            elif ev.type == _EVENT_WORD and ev.length > 0 and ev.text_position > 0:
                self._words.append((ev.text_position, ev.length, ev.audio_position))
            i += 1
        return 0  # 0 = continue

    def synthesize(self, text: str, voice: str = "te", rate: int = 175,
                   pitch: int = 50) -> tuple[np.ndarray, Alignment]:
        """Speak ``text``; returns float32 audio at :attr:`sample_rate` and its phoneme
        alignment ``[(start_s, end_s, symbol)]`` (each phoneme lasts until the next starts,
        the last one until the end of the audio; zero-length events are dropped).
        See :meth:`speak` for word timings, pitch range and SSML."""
        speech = self.speak(text, voice, rate, pitch)
        return speech.audio, speech.phonemes

    def speak(self, text: str, voice: str = "te", rate: int = 175, pitch: int = 50,
              pitch_range: int = 50, ssml: bool = False) -> EspeakSpeech:
        """Speak ``text`` (SSML when ``ssml``); audio, phoneme alignment and word onsets.

        The same arguments always give the same samples. espeak keeps wave-generator state
        (flutter phase, noise, filter memories) from one utterance to the next and seeds
        libc's ``rand()`` from the clock, so each call runs in a forked child of this
        process, whose espeak has never spoken, with ``rand()`` seeded from the arguments.
        Forking costs a few milliseconds per clip. Never call ``espeak_Synth`` in this
        process directly: that would change the state every later child starts from.
        """
        if not text.strip():
            raise SynthError("nothing to say: text is empty")
        args = (text, voice, int(rate), int(pitch), int(pitch_range), bool(ssml))
        seed = zlib.crc32("|".join(map(str, args)).encode())
        return _in_child(lambda: self._speak(*args, seed=seed))

    def _speak(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int,
               ssml: bool, *, seed: int) -> EspeakSpeech:
        """The synthesis itself; changes espeak's state, so only ever run in a child."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise SynthError(f"espeak-ng has no voice {voice!r}")
        self._lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
        self._lib.espeak_SetParameter(_PARAM_RANGE, pitch_range, 0)
        _libc().srand(ctypes.c_uint(seed))
        self._chunks, self._events, self._words = [], [], []
        data = text.encode("utf-8") + b"\0"
        flags = _CHARS_UTF8 | (_SSML if ssml else 0)
        err = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, flags, None, None)
        if err != 0:
            raise SynthError(f"espeak_Synth failed with code {err} for {text!r}")
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        audio = int16_to_float(pcm)
        return EspeakSpeech(audio=audio,
                            phonemes=_events_to_alignment(self._events, len(audio) / self.sample_rate),
                            words=[(pos, length, ms / 1000.0) for pos, length, ms in self._words])


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)


T = TypeVar("T")


def _in_child(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a forked child and return its (pickled) result or raise its error.

    The parent's memory, and so its espeak state, is untouched by whatever ``fn`` does.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller's code
        status = 0
        try:
            os.close(read_fd)
            try:
                payload = pickle.dumps((True, fn()))
            except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent
                payload = pickle.dumps((False, SynthError(f"{type(e).__name__}: {e}")))
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(payload)
        except BaseException:  # noqa: BLE001
            status = 1
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not payload:
        raise SynthError(f"espeak child process failed (wait status {status})")
    ok, value = pickle.loads(payload)
    if not ok:
        raise value
    return value


def _events_to_alignment(events: Sequence[tuple[int, str]], duration: float) -> Alignment:
    """Phoneme onsets (ms) → contiguous ``(start_s, end_s, symbol)`` segments covering the
    clip; the few ms of lead-in before the first phoneme are labelled as pause ``_``."""
    onsets = sorted(((ms / 1000.0, sym) for ms, sym in events if sym), key=lambda e: e[0])
    if onsets and onsets[0][0] > 0:
        onsets.insert(0, (0.0, "_"))
    out: Alignment = []
    for i, (start, symbol) in enumerate(onsets):
        end = onsets[i + 1][0] if i + 1 < len(onsets) else duration
        start, end = min(start, duration), min(end, duration)
        if end > start:
            out.append((start, end, symbol))
    return out


@functools.lru_cache(maxsize=1)
def espeak_engine() -> EspeakEngine:
    """This process's espeak engine (created on first use)."""
    return EspeakEngine()


def espeak_variants() -> list[str]:
    """Names of the installed espeak-ng voice variants (files in ``voices/!v``), sorted.

    espeak_SetVoiceByName accepts unknown variants silently, so the list comes from disk.
    """
    folder = espeak_engine().data_path / "voices" / "!v"
    if not folder.is_dir():
        raise SynthError(f"no espeak-ng voice variants at {folder}")
    return sorted(p.name for p in folder.iterdir() if p.is_file())


# ---------------------------------------------------------------------------------------
# festival (Telugu NSK diphone voice) through text2wave


def festival_synthesize(text: str, stretch: float = 1.4, f0_start: int = 130,
                        f0_end: int = 100, timeout: float = 60.0) -> tuple[np.ndarray, int]:
    """Speak ``text`` with festival's Telugu NSK voice; float32 audio and its rate.

    The voice's default intonation method is undefined in the Debian package (empty WAV,
    "Feature Int_Method not defined"); the DuffInt method works and takes a straight pitch
    contour from ``f0_start`` to ``f0_end`` Hz. ``stretch`` scales durations (the voice's
    default is 1.4).
    """
    if not text.strip():
        raise SynthError("nothing to say: text is empty")
    exe = shutil.which("text2wave")
    if exe is None:
        raise SynthError("text2wave not found; apt-get install festival festvox-te-nsk")
    setup = ["(voice_telugu_NSK_diphone)", "(Parameter.set 'Int_Method 'DuffInt)",
             f"(set! duffint_params '((start {int(f0_start)}) (end {int(f0_end)})))",
             f"(Parameter.set 'Duration_Stretch {float(stretch):.3f})"]
    with tempfile.TemporaryDirectory(prefix="maata-festival-") as tmp:
        src, wav = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
        src.write_text(text + "\n", encoding="utf-8")
        cmd = [exe, *(arg for s in setup for arg in ("-eval", s)), str(src), "-o", str(wav)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not wav.is_file() or wav.stat().st_size <= 44:
            detail = (proc.stderr or proc.stdout).strip()[-300:]
            raise SynthError(f"festival produced no audio for {text!r}: {detail or 'empty WAV'}")
        try:
            return load_audio(wav)
        except ValueError as e:
            raise SynthError(f"festival wrote an unreadable WAV for {text!r}: {e}") from e


# ---------------------------------------------------------------------------------------
# Voices and the job plan


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


@dataclass(frozen=True)
class EspeakVoice:
    """An espeak "speaker": a variant at a fixed base pitch (0-99) and rate (words/min)."""

    variant: str
    pitch: int
    rate: int

    @property
    def speaker(self) -> str:
        return f"espeak-{_slug(self.variant)}-p{self.pitch}"

    @property
    def group(self) -> str:
        """All pitches of one variant share a timbre, so they are held out together."""
        return f"espeak-{_slug(self.variant)}"


@dataclass(frozen=True)
class FestivalVoice:
    """A festival "speaker": the NSK voice at one duration stretch and pitch contour."""

    stretch: float
    f0_start: int
    f0_end: int

    @property
    def speaker(self) -> str:
        return f"festival-nsk-d{round(self.stretch * 10)}-f{self.f0_start}"

    @property
    def group(self) -> str:
        return "festival-nsk"


Voice = Union[EspeakVoice, FestivalVoice]
FESTIVAL_GROUP = "festival-nsk"


@dataclass(frozen=True)
class SynthJob:
    """One clip to make: text, voice, this clip's small prosody jitter, output path."""

    uid: str
    text: str
    voice: Voice
    rate_scale: float  # multiplies the voice's rate (espeak) or divides its stretch (festival)
    pitch_shift: int  # added to the voice's pitch (espeak, 0-99) or f0 contour (festival, Hz)

    @property
    def rel_path(self) -> str:
        return f"wavs/{self.voice.speaker}/{self.uid}.wav"


def espeak_voices(variants: Sequence[str], rng: random.Random) -> list[EspeakVoice]:
    """Two speakers per variant: a low and a high base pitch, each with its own rate."""
    voices = []
    for variant in variants:
        for low, high in ((20, 45), (55, 80)):
            voices.append(EspeakVoice(variant, rng.randint(low, high), rng.randint(145, 195)))
    return voices


def festival_voices() -> list[FestivalVoice]:
    """Nine NSK "speakers": three speeds × three pitch contours (start → end Hz)."""
    contours = ((115, 90), (140, 105), (170, 130))
    return [FestivalVoice(s, a, b) for s in (1.2, 1.4, 1.6) for a, b in contours]


def plan_jobs(sentences: Sequence[str], voices: Sequence[Voice], seed: int = 0) -> list[SynthJob]:
    """Deal sentences to voices round-robin (shuffled), so speakers get equal shares."""
    if not voices:
        raise SynthError("no voices to synthesise with")
    rng = random.Random(seed)
    order = list(voices)
    rng.shuffle(order)
    jobs = []
    for i, text in enumerate(sentences):
        voice = order[i % len(order)]
        jobs.append(SynthJob(uid=f"syn{i:06d}", text=text, voice=voice,
                             rate_scale=round(rng.uniform(0.92, 1.08), 3),
                             pitch_shift=rng.randint(-4, 4)))
    return jobs


# ---------------------------------------------------------------------------------------
# Running jobs


def _speak(job: SynthJob) -> tuple[np.ndarray, int, Alignment | None]:
    v = job.voice
    if isinstance(v, EspeakVoice):
        engine = espeak_engine()
        audio, alignment = engine.synthesize(
            job.text, voice=f"te+{v.variant}", rate=round(v.rate * job.rate_scale),
            pitch=min(99, max(0, v.pitch + job.pitch_shift)))
        return audio, engine.sample_rate, alignment
    audio, sr = festival_synthesize(job.text, stretch=v.stretch / job.rate_scale,
                                    f0_start=v.f0_start + job.pitch_shift,
                                    f0_end=v.f0_end + job.pitch_shift)
    return audio, sr, None


def run_job(job: SynthJob, out_dir: str | Path) -> ManifestRow:
    """Synthesise one clip, write its 16 kHz WAV under ``out_dir``, return its manifest row."""
    audio, sr, alignment = _speak(job)
    audio = normalize_rms(resample(audio, sr, SAMPLE_RATE), TARGET_DBFS)
    duration = len(audio) / SAMPLE_RATE
    if duration == 0:
        raise SynthError(f"{job.uid}: synthesiser returned no audio for {job.text!r}")
    if duration > MAX_SECONDS:
        raise SynthError(f"{job.uid}: {duration:.1f} s is longer than {MAX_SECONDS:.0f} s")
    write_wav(Path(out_dir) / job.rel_path, audio, SAMPLE_RATE)
    source = "espeak" if isinstance(job.voice, EspeakVoice) else "festival"
    return ManifestRow(path=job.rel_path, duration=duration, speaker=job.voice.speaker,
                       source=source, text=job.text, phonemes=alignment)


def _run_job_safe(args: tuple[SynthJob, str]) -> ManifestRow | str:
    """Worker entry: a row, or an error message (one bad clip must not stop the corpus)."""
    job, out_dir = args
    try:
        return run_job(job, out_dir)
    except (SynthError, ValueError, OSError, subprocess.TimeoutExpired) as e:
        return f"{job.uid} ({job.voice.speaker}): {e}"


def _run_all(jobs: Sequence[SynthJob], out_dir: Path, workers: int) -> Iterator[ManifestRow | str]:
    args = [(job, str(out_dir)) for job in jobs]
    if workers <= 1:
        yield from map(_run_job_safe, args)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(_run_job_safe, args, chunksize=4)


@dataclass(frozen=True)
class CorpusReport:
    """What :func:`synthesize_corpus` made."""

    manifest: Path
    vocab: Path
    vocab_size: int
    stats: dict[str, SplitStats]
    failures: list[str]
    seconds: float


def synthesize_corpus(out_dir: str | Path, n_sentences: int, *, workers: int = 1, seed: int = 0,
                      festival_fraction: float = 0.1, variants: Sequence[str] | None = None,
                      overwrite: bool = False, progress: bool = True) -> CorpusReport:
    """Make the corpus: ``n_sentences`` clips in ``out_dir`` plus manifest and phoneme vocab.

    ``festival_fraction`` of the clips (rounded) use festival; the rest espeak-ng, over all
    installed variants unless ``variants`` names some. Clips that fail are logged and left
    out; if more than 5% fail the run raises :class:`SynthError`.
    """
    from tqdm import tqdm

    from maata.text.generator import generate_sentences

    if n_sentences < 1:
        raise SynthError(f"--sentences must be at least 1, got {n_sentences}")
    if not 0 <= festival_fraction <= 1:
        raise SynthError(f"festival fraction must be in [0, 1], got {festival_fraction}")
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST_NAME
    if manifest.exists() and not overwrite:
        raise SynthError(f"{manifest} already exists; choose another --out or pass --overwrite")
    n_festival = round(n_sentences * festival_fraction)
    if n_festival and shutil.which("text2wave") is None:
        raise SynthError("text2wave not found; apt-get install festival festvox-te-nsk, "
                         "or use a festival fraction of 0")
    started = time.monotonic()
    rng = random.Random(seed)
    sentences = generate_sentences(n_sentences, seed=seed)
    installed = espeak_variants()
    unknown = sorted(set(variants or ()) - set(installed))
    if unknown:
        raise SynthError(f"unknown espeak-ng variant(s) {unknown}; installed: {', '.join(installed)}")
    espeak = espeak_voices(list(variants) if variants else installed, rng)
    jobs = (plan_jobs(sentences[:n_festival], festival_voices(), seed=seed + 1)
            + plan_jobs(sentences[n_festival:], espeak, seed=seed + 2))
    jobs = [SynthJob(f"syn{i:06d}", j.text, j.voice, j.rate_scale, j.pitch_shift)
            for i, j in enumerate(jobs)]

    rows: list[ManifestRow] = []
    failures: list[str] = []
    results = _run_all(jobs, out_dir, workers)
    for result in tqdm(results, total=len(jobs), desc="synth", unit="clip", disable=not progress):
        if isinstance(result, str):
            log.warning("skipped %s", result)
            failures.append(result)
        else:
            rows.append(result)
    if len(failures) > 0.05 * len(jobs):
        raise SynthError(f"{len(failures)} of {len(jobs)} clips failed; first: {failures[0]}")

    rows.sort(key=lambda r: r.path)
    group_of = {j.voice.speaker: j.voice.group for j in jobs}
    rows = assign_splits(rows, seed=seed, group=lambda r: group_of[r.speaker],
                         pinned={FESTIVAL_GROUP: "train"})
    write_manifest(manifest, rows)
    vocab = PhonemeVocab.from_manifest(rows)
    vocab_path = vocab.save(PhonemeVocab.path_for(manifest))
    return CorpusReport(manifest=manifest, vocab=vocab_path, vocab_size=len(vocab),
                        stats=summarize(rows), failures=failures,
                        seconds=time.monotonic() - started)


def default_workers() -> int:
    """All CPU cores this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
