"""Codec evaluation on held-out speech: Maata (as served, streaming) against Opus.

``evaluate(codec, manifest)`` reads the manifest's test rows and, per file, runs

* Maata through the streaming API (``encode_step``/``decode_step`` one frame at a time, what
  the services run) with all codebooks, and the same codes with adaptive bitrate: frames
  quieter than ``cfg.silence_dbfs`` keep only ``cfg.silence_n_q`` codebooks (the rest are
  ``DROPPED``), reporting the bitrate spent in speech and in silence;
* Opus at each ``opus_kbps`` (``maata.codec.opus``);

and scores each output against the source with PESQ-WB, STOI, SI-SDR, log-mel distance and
DNSMOS (with its change from the source's DNSMOS). Means over files (optionally per speaker)
are written as JSON and a markdown table, with a spectrogram figure of one file.

``phoneme_probe(codec, manifest, vocab)`` measures how much phonetic content codebook 1
carries: a linear classifier from codebook-1 embeddings to frame phoneme labels (from the
rows' alignments via ``maata.data.phonemes``), trained on the train split and scored on the
test split. Manifests are read with ``maata.data.manifest``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maata.audio import load_audio
from maata.codec import metrics as M
from maata.codec.model import Codec
from maata.codec.opus import opus_roundtrip
from maata.data.manifest import ManifestRow, audio_path, read_manifest
from maata.data.phonemes import PhonemeVocab, frame_labels

log = logging.getLogger(__name__)

METRICS = ("kbps", "pesq_wb", "stoi", "si_sdr", "mel_distance", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak")
DNSMOS_KEYS = ("ovrl", "sig", "bak")
MAATA, MAATA_ADAPTIVE = "maata", "maata_adaptive"


# -- manifest ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Clip:
    """A manifest row with its audio file resolved."""

    path: Path
    row: ManifestRow


def read_split(manifest: str | Path, split: str, limit: int | None = None) -> list[Clip]:
    """The first ``limit`` clips of ``split`` in ``manifest`` (an error when the split is empty)."""
    rows = read_manifest(manifest)
    clips = [Clip(audio_path(manifest, r), r) for r in rows if r.split == split]
    if not clips:
        present = sorted({str(r.split) for r in rows})
        raise ValueError(f"{manifest}: no rows in split {split!r} (splits present: {', '.join(present) or 'none'})")
    return clips[:limit] if limit is not None else clips


def load_clip(clip: Clip, sr: int) -> np.ndarray:
    """The clip's audio as float32 mono at ``sr``."""
    if not clip.path.exists():
        raise FileNotFoundError(f"audio file in the manifest not found: {clip.path}")
    return load_audio(clip.path, sr=sr)[0]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op torch threads (None: leave as is), then restore."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def inference(codec: Codec, threads: int | None) -> Iterator[None]:
    """``codec`` in eval mode with ``threads`` torch threads for the block; both restored after
    (so training code can call the evaluation on its live model)."""
    was_training = codec.training
    codec.eval()
    try:
        with torch_threads(threads):
            yield
    finally:
        codec.train(was_training)


# -- Maata, streamed -----------------------------------------------------------------------------
def stream_encode(codec: Codec, x: np.ndarray, chunk: int | None = None) -> torch.Tensor:
    """Codes [1, n_q, ceil(T / hop)] of ``x`` fed to ``encode_step`` in chunks of ``chunk`` samples
    (one frame by default); the tail is zero-padded to a whole frame, as offline ``encode`` does."""
    chunk = chunk or codec.hop
    wav = torch.from_numpy(x)[None]
    wav = codec.pad_to_hop(wav)
    state = codec.init_state(1)
    codes = [codec.encode_step(state, wav[:, i: i + chunk]) for i in range(0, wav.shape[1], chunk)]
    return torch.cat(codes, dim=-1)


def stream_decode(codec: Codec, codes: torch.Tensor, frames_per_step: int = 1) -> np.ndarray:
    """PCM [B, F * hop] of codes [B, k, F] fed to ``decode_step`` ``frames_per_step`` frames at a time."""
    state = codec.init_state(codes.shape[0])
    pcm = [codec.decode_step(state, codes[..., i: i + frames_per_step])
           for i in range(0, codes.shape[-1], frames_per_step)]
    return torch.cat(pcm, dim=-1).numpy()


def silent_frames(codec: Codec, x: np.ndarray) -> np.ndarray:
    """bool [F]: frames of ``x`` (zero-padded to whole frames) the adaptive codec sends thin."""
    return codec.silent_frames(codec.pad_to_hop(torch.from_numpy(x))[None])[0].numpy()


@dataclass
class MaataRun:
    full: np.ndarray  # reconstruction with every codebook
    adaptive: np.ndarray  # reconstruction with adaptive bitrate
    codes: torch.Tensor  # [1, n_q, F]
    adaptive_codes: torch.Tensor  # [1, n_q, F] with DROPPED entries
    silent: np.ndarray  # bool [F]


def run_maata(codec: Codec, x: np.ndarray) -> MaataRun:
    """Stream ``x`` through the codec once; decode full and adaptive codes as one batch of two calls.

    The output is time-aligned with ``x`` before scoring: a decoder that emits its samples
    ``codec.delay`` late (overlap-add) is fed that many more samples of silence after ``x`` and
    its output moved back by the delay. An unaligned constant delay would quietly cost PESQ and
    STOI (tests/test_codec_eval.py checks the alignment with a known delay)."""
    padded = np.concatenate([x, np.zeros(codec.delay, dtype=x.dtype)]) if codec.delay else x
    codes = stream_encode(codec, padded)
    silent = silent_frames(codec, padded)
    adaptive = codec.drop_silent(codes, torch.from_numpy(silent)[None])
    pcm = codec.aligned(torch.from_numpy(stream_decode(codec, torch.cat([codes, adaptive]))), x.size).numpy()
    return MaataRun(pcm[0], pcm[1], codes, adaptive, silent)


@dataclass
class BitSplit:
    """Bits and audio seconds spent in speech and in silence frames."""

    speech_bits: float = 0.0
    speech_s: float = 0.0
    silence_bits: float = 0.0
    silence_s: float = 0.0

    def add(self, other: BitSplit) -> None:
        self.speech_bits += other.speech_bits
        self.speech_s += other.speech_s
        self.silence_bits += other.silence_bits
        self.silence_s += other.silence_s

    def summary(self) -> dict[str, float | None]:
        total_s = self.speech_s + self.silence_s
        return {
            "kbps_speech": M.kbps(self.speech_bits, self.speech_s) if self.speech_s else None,
            "kbps_silence": M.kbps(self.silence_bits, self.silence_s) if self.silence_s else None,
            "silence_fraction": self.silence_s / total_s if total_s else None,
        }


def bit_split(codec: Codec, codes: torch.Tensor, silent: np.ndarray) -> BitSplit:
    """Split the bits of ``codes`` [1, n_q, F] between speech and silence frames."""
    frame_s = codec.hop / codec.cfg.sample_rate
    mask = torch.from_numpy(silent)
    return BitSplit(speech_bits=codec.bits(codes[..., ~mask]), speech_s=float((~mask).sum()) * frame_s,
                    silence_bits=codec.bits(codes[..., mask]), silence_s=float(mask.sum()) * frame_s)


# -- scoring -------------------------------------------------------------------------------------
def _try(name: str, fn: Callable[[], Any], where: str) -> Any:
    """``fn()``, or None (logged) when the metric cannot score this signal."""
    try:
        return fn()
    except M.MetricError as e:
        log.warning("%s: %s skipped: %s", where, name, e)
        return None


def source_dnsmos(x: np.ndarray, where: str) -> dict[str, float | None]:
    d = _try("DNSMOS", lambda: M.dnsmos(x), where)
    return {k: (getattr(d, k) if d else None) for k in DNSMOS_KEYS}


def score(ref: np.ndarray, deg: np.ndarray, kbps: float, where: str,
          with_dnsmos: bool = True) -> dict[str, float | None]:
    """Every metric of ``deg`` against ``ref`` (None where a metric cannot score the pair)."""
    deg = np.clip(deg, -1.0, 1.0)
    out: dict[str, float | None] = {
        "kbps": kbps,
        "pesq_wb": _try("PESQ", lambda: M.pesq_wb(ref, deg), where),
        "stoi": _try("STOI", lambda: M.stoi(ref, deg), where),
        "si_sdr": _try("SI-SDR", lambda: M.si_sdr(ref, deg), where),
        "mel_distance": _try("mel distance", lambda: M.mel_distance(ref, deg), where),
    }
    d = _try("DNSMOS", lambda: M.dnsmos(deg), where) if with_dnsmos else None
    out.update({f"dnsmos_{k}": (getattr(d, k) if d else None) for k in DNSMOS_KEYS})
    return out


@dataclass
class FileResult:
    path: str
    speaker: str
    duration: float
    source_dnsmos: dict[str, float | None]
    systems: dict[str, dict[str, float | None]]
    bits: BitSplit  # adaptive run's speech/silence split

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "speaker": self.speaker, "duration": self.duration,
                "source_dnsmos": self.source_dnsmos, "systems": self.systems,
                "adaptive": self.bits.summary()}


def evaluate_file(codec: Codec, clip: Clip, opus_kbps: Sequence[float] = (6, 8), *, opus_vbr: str = "constrained",
                  with_dnsmos: bool = True) -> tuple[FileResult, dict[str, np.ndarray]]:
    """Score Maata (full, adaptive) and Opus on one manifest row; returns the result and the outputs."""
    sr = codec.cfg.sample_rate
    if sr != M.SR:
        raise ValueError(f"the metrics are defined at {M.SR} Hz; this codec runs at {sr} Hz")
    x = load_clip(clip, sr)
    where = clip.path.name
    seconds = x.size / sr
    run = run_maata(codec, x)
    outputs = {MAATA: run.full, MAATA_ADAPTIVE: run.adaptive}
    systems = {
        MAATA: score(x, run.full, M.codes_kbps(codec, run.codes, seconds), where, with_dnsmos),
        MAATA_ADAPTIVE: score(x, run.adaptive, M.codes_kbps(codec, run.adaptive_codes, seconds), where, with_dnsmos),
    }
    for k in opus_kbps:
        opus = opus_roundtrip(x, sr, k, vbr=opus_vbr)
        outputs[f"opus_{k:g}"] = opus.audio
        systems[f"opus_{k:g}"] = score(x, opus.audio, opus.kbps, where, with_dnsmos)
    result = FileResult(str(clip.path), clip.row.speaker, seconds,
                        source_dnsmos(x, where) if with_dnsmos else dict.fromkeys(DNSMOS_KEYS),
                        systems, bit_split(codec, run.adaptive_codes, run.silent))
    return result, {"source": x, **outputs}


# -- aggregation ---------------------------------------------------------------------------------
def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def aggregate(results: Sequence[FileResult]) -> dict[str, Any]:
    """Per-system means of every metric, DNSMOS deltas (system − source) and the adaptive bit split."""
    systems: dict[str, dict[str, float | None]] = {}
    for name in results[0].systems:
        means = {m: _mean(r.systems[name][m] for r in results) for m in METRICS}
        for k in DNSMOS_KEYS:
            means[f"dnsmos_{k}_delta"] = _mean(
                None if r.systems[name][f"dnsmos_{k}"] is None or r.source_dnsmos[k] is None
                else r.systems[name][f"dnsmos_{k}"] - r.source_dnsmos[k] for r in results)
        systems[name] = means
    bits = BitSplit()
    for r in results:
        bits.add(r.bits)
    return {
        "files": len(results),
        "seconds": float(sum(r.duration for r in results)),
        "source_dnsmos": {k: _mean(r.source_dnsmos[k] for r in results) for k in DNSMOS_KEYS},
        "systems": systems,
        "adaptive": bits.summary(),
    }


def evaluate(codec: Codec, manifest: str | Path, split: str = "test", limit: int | None = None,
             opus_kbps: Sequence[float] = (6, 8), *, out_dir: str | Path | None = None, per_speaker: bool = False,
             opus_vbr: str = "constrained", with_dnsmos: bool = True, threads: int | None = 1,
             progress: bool = False) -> dict[str, Any]:
    """Evaluate ``codec`` against Opus on ``split`` of ``manifest`` (see the module docstring).

    ``threads``: torch threads while evaluating. One, as a served stream runs: per-frame steps
    are tiny, and on a shared CPU a second thread mostly waits at barriers (a 3.4 s file took
    0.8 s with one thread and 10-48 s with two on two busy cores).

    Returns the report (``overall`` means, optional ``per_speaker`` means, per-file ``files``).
    With ``out_dir`` it also writes ``codec_eval.json``, ``codec_eval.md`` and
    ``spectrograms.png`` (the first file: original / Maata / Opus at the lowest bitrate).
    """
    clips = read_split(manifest, split, limit)
    if not clips:
        raise ValueError(f"nothing to evaluate (limit={limit})")
    results, first_outputs = [], None
    with inference(codec, threads):
        for clip in _progress(clips, progress):
            result, outputs = evaluate_file(codec, clip, opus_kbps, opus_vbr=opus_vbr, with_dnsmos=with_dnsmos)
            results.append(result)
            if first_outputs is None:
                first_outputs = outputs
    cfg = codec.cfg
    report: dict[str, Any] = {
        "codec": {"name": cfg.name, "sample_rate": cfg.sample_rate, "frame_rate": cfg.frame_rate,
                  "n_q": codec.n_q, "bitrate_kbps": cfg.bitrate / 1000, "silence_dbfs": cfg.silence_dbfs,
                  "silence_n_q": cfg.silence_n_q},
        "manifest": str(manifest), "split": split, "opus_kbps": list(opus_kbps), "opus_vbr": opus_vbr,
        "overall": aggregate(results),
        "files": [r.as_dict() for r in results],
    }
    if per_speaker:
        by_speaker: dict[str, list[FileResult]] = defaultdict(list)
        for r in results:
            by_speaker[r.speaker].append(r)
        report["per_speaker"] = {s: aggregate(rs) for s, rs in sorted(by_speaker.items())}
    if out_dir is not None:
        report["outputs"] = write_report(report, first_outputs, Path(out_dir), min(opus_kbps, default=None))
    return report


def _progress(clips: Sequence[Clip], enabled: bool) -> Iterable[Clip]:
    if not enabled:
        return clips
    from tqdm import tqdm

    return tqdm(clips, desc="codec eval", unit="file")


# -- report files --------------------------------------------------------------------------------
def system_label(name: str, report: dict[str, Any]) -> str:
    if name == MAATA:
        return f"Maata {report['codec']['bitrate_kbps']:g} kbps"
    if name == MAATA_ADAPTIVE:
        return "Maata adaptive"
    return f"Opus {name.split('_', 1)[1]} kbps"


def _fmt(v: float | None, digits: int = 2, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def markdown_table(report: dict[str, Any]) -> str:
    """The results table: one row per system; DNSMOS cells show the score and its change from the source."""
    overall = report["overall"]
    head = ["System", "kbps", "PESQ-WB", "STOI", "SI-SDR (dB)", "Mel dist", "DNSMOS OVRL (Δ)", "SIG (Δ)", "BAK (Δ)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in overall["systems"].items():
        cells = [system_label(name, report), _fmt(m["kbps"]), _fmt(m["pesq_wb"]), _fmt(m["stoi"], 3),
                 _fmt(m["si_sdr"], 1), _fmt(m["mel_distance"])]
        cells += [f"{_fmt(m[f'dnsmos_{k}'])} ({_fmt(m[f'dnsmos_{k}_delta'], signed=True)})" for k in DNSMOS_KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    src, ad = overall["source_dnsmos"], overall["adaptive"]
    lines += [
        "",
        f"{overall['files']} files, {overall['seconds']:.1f} s (split {report['split']!r}). "
        f"Source DNSMOS: OVRL {_fmt(src['ovrl'])}, SIG {_fmt(src['sig'])}, BAK {_fmt(src['bak'])}.",
        f"Maata adaptive: {_fmt(ad['kbps_speech'])} kbps in speech, {_fmt(ad['kbps_silence'])} kbps in silence "
        f"({_fmt(None if ad['silence_fraction'] is None else 100 * ad['silence_fraction'], 0)}% of frames silent, "
        f"below {report['codec']['silence_dbfs']:g} dBFS). Opus VBR: {report['opus_vbr']}; kbps are measured "
        "(bits sent / audio seconds).",
    ]
    if "per_speaker" in report:
        names = list(overall["systems"])
        heads = " | ".join(f"{system_label(n, report)} PESQ / STOI" for n in names)
        lines += ["", f"| Speaker | Files | {heads} |",
                  "|" + "---|" * (len(names) + 2)]
        for spk, agg in report["per_speaker"].items():
            cells = [f"{_fmt(agg['systems'][n]['pesq_wb'])} / {_fmt(agg['systems'][n]['stoi'], 3)}" for n in names]
            lines.append(f"| {spk} | {agg['files']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_spectrograms(outputs: dict[str, np.ndarray], names: Sequence[tuple[str, str]], path: Path, sr: int) -> Path:
    """Stacked log-mel spectrograms of ``outputs[key]`` for each (key, title) in ``names``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(names), 1, figsize=(10, 2.4 * len(names)), sharex=True, squeeze=False)
    hop = 256
    for ax, (key, title) in zip(axes[:, 0], names):
        spec = M.log_mel(np.clip(outputs[key], -1, 1), hop=hop)
        ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=-11.5, vmax=spec.max(),
                  extent=(0, spec.shape[1] * hop / sr, 0, spec.shape[0]))
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("mel bin")
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], outputs: dict[str, np.ndarray] | None, out_dir: Path,
                 opus_kbps: float | None) -> dict[str, str]:
    """Write ``codec_eval.json``, ``codec_eval.md`` and ``spectrograms.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "codec_eval.json", "markdown": out_dir / "codec_eval.md",
             "spectrograms": out_dir / "spectrograms.png"}
    files = {k: str(v) for k, v in paths.items()}
    paths["json"].write_text(json.dumps({**report, "outputs": files}, indent=2, ensure_ascii=False) + "\n")
    paths["markdown"].write_text("# Codec evaluation\n\n" + markdown_table(report))
    if outputs is not None:
        names = [("source", "original"), (MAATA, system_label(MAATA, report))]
        if opus_kbps is not None:
            names.append((f"opus_{opus_kbps:g}", system_label(f"opus_{opus_kbps:g}", report)))
        plot_spectrograms(outputs, names, paths["spectrograms"], report["codec"]["sample_rate"])
    return files


# -- phoneme probe -------------------------------------------------------------------------------
Labeler = Callable[[Clip, int], Sequence[int]]  # (clip, n_frames) -> a label per frame, negative = none


@torch.no_grad()
def codebook1_features(codec: Codec, x: np.ndarray, kind: str = "vector") -> torch.Tensor:
    """Per-frame features [F, D] of codebook 1: its code vector (``vector``, D = latent_dim)
    or a one-hot of its code index (``onehot``, D = codebook_size)."""
    codes = codec.encode(torch.from_numpy(x)[None, None], n_q=1)  # offline = streaming codes
    if kind == "vector":
        return codec.quantizer.first_level(codes)[0].t().contiguous()
    if kind == "onehot":
        return torch.nn.functional.one_hot(codes[0, 0], codec.cfg.quantizer.codebook_size).float()
    raise ValueError(f"probe features must be 'vector' or 'onehot', got {kind!r}")


@dataclass
class ProbeData:
    features: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)

    def add(self, feats: torch.Tensor, labels: Sequence[int]) -> None:
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        n = min(len(feats), len(y))  # a label sequence may be a frame longer/shorter
        keep = y[:n] >= 0  # negative labels (IGNORE): frames with no known phoneme
        self.features.append(feats[:n][keep])
        self.labels.append(y[:n][keep])

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = (torch.cat(self.features), torch.cat(self.labels)) if self.features else (None, None)
        if y is None or not len(y):
            raise ValueError(f"the phoneme probe has no labelled frames in the {split} split "
                             "(rows need a 'phonemes' alignment)")
        return x, y


def collect_probe_data(codec: Codec, clips: Sequence[Clip], labeler: Labeler, kind: str = "vector") -> ProbeData:
    """Codebook-1 features and frame labels of every clip."""
    data = ProbeData()
    for clip in clips:
        feats = codebook1_features(codec, load_clip(clip, codec.cfg.sample_rate), kind)
        data.add(feats, labeler(clip, feats.shape[0]))
    return data


def train_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                       n_classes: int, *, steps: int = 300, lr: float = 0.05, weight_decay: float = 1e-4,
                       seed: int = 0) -> dict[str, float]:
    """Multinomial logistic regression (full-batch Adam on standardised features).

    Returns train/test accuracy and the majority-class test accuracy (the chance floor that
    a probe must beat for its accuracy to mean anything).
    """
    gen = torch.Generator().manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    layer = torch.nn.Linear(xtr.shape[1], n_classes)
    with torch.no_grad():
        layer.weight.normal_(0, 0.01, generator=gen)
        layer.bias.zero_()
    opt = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(layer(xtr), train_y).backward()
            opt.step()
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(layer(xtr), train_y)
        acc_train = (layer(xtr).argmax(-1) == train_y).float().mean().item()
        acc_test = (layer(xte).argmax(-1) == test_y).float().mean().item()
    majority = int(torch.bincount(train_y, minlength=n_classes).argmax())
    return {"train_accuracy": acc_train, "test_accuracy": acc_test,
            "majority_accuracy": (test_y == majority).float().mean().item(), "final_loss": loss.item()}


def phoneme_labeler(vocab: PhonemeVocab, frame_rate: float) -> Labeler:
    """Frame labels from a clip's ``phonemes`` alignment: the vocab id at each frame's centre."""
    return lambda clip, n_frames: frame_labels(vocab.encode(clip.row.phonemes), n_frames, frame_rate)


def probe_vocab(manifest: str | Path) -> PhonemeVocab:
    """The manifest's saved vocab (``phoneme_vocab.json`` beside it), else one built from its train rows."""
    path = PhonemeVocab.path_for(manifest)
    if path.exists():
        return PhonemeVocab.load(path)
    return PhonemeVocab.from_manifest(r for r in read_manifest(manifest) if r.split == "train")


def phoneme_probe(codec: Codec, manifest: str | Path, vocab: PhonemeVocab | None = None, *, labeler: Labeler | None = None,
                  n_classes: int | None = None, features: str = "vector", limit: int | None = None,
                  steps: int = 300, threads: int | None = 1) -> dict[str, Any]:
    """Linear-probe accuracy of frame phoneme labels from codebook-1 embeddings (train -> test split).

    Labels come from each row's ``phonemes`` alignment through ``vocab`` (default: the
    manifest's saved vocab, else one built from its train rows) and
    ``maata.data.phonemes.frame_labels``; unaligned frames are left out. ``labeler`` replaces
    that (tests use synthetic labels); ``n_classes`` then defaults to the largest label + 1.
    ``threads``: torch threads while probing (see :func:`evaluate`).
    """
    if labeler is None:
        vocab = vocab or probe_vocab(manifest)
        labeler = phoneme_labeler(vocab, codec.cfg.frame_rate)
    with inference(codec, threads):
        train = collect_probe_data(codec, read_split(manifest, "train", limit), labeler, features)
        test = collect_probe_data(codec, read_split(manifest, "test", limit), labeler, features)
        (xtr, ytr), (xte, yte) = train.tensors("train"), test.tensors("test")
        n_classes = n_classes or (len(vocab) if vocab is not None else int(max(ytr.max(), yte.max())) + 1)
        result = train_linear_probe(xtr, ytr, xte, yte, n_classes, steps=steps)
    return {**result, "features": features, "n_classes": n_classes,
            "train_frames": int(len(ytr)), "test_frames": int(len(yte))}
