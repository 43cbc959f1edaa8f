"""Speech manifests: one JSON object per line describing one clip.

Every corpus in Maata (synthetic, OpenSLR, Kathbath, Common Voice, IndicTTS, RESPIN) is
described by the same rows, so training reads them all the same way::

    {"path": "wavs/espeak-f3-p40/utt000012.wav", "duration": 3.42, "speaker": "espeak-f3-p40",
     "source": "espeak", "text": "...", "split": "train",
     "phonemes": [[0.0, 0.107, "n"], [0.107, 0.168, "a"], ...]}

``path`` is relative to the manifest's folder (so a corpus folder can be moved or copied
as a whole); ``phonemes`` is an optional time alignment ``[start_s, end_s, symbol]`` (``null``
when the source has none); ``meta`` optionally carries source-specific string fields
(gender, dialect). Splits are speaker-disjoint where a source has several voices: no
speaker's voice is in two splits, so valid/test measure generalisation to unseen voices. A
single-voice source (the Piper English voice) can only hold out sentences, so its speakers
appear in train and valid.

:func:`merge_manifests` joins several manifests into one (``maata data merge``), so a trainer
that reads one manifest can learn from several corpora.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from maata.data.phonemes import PhonemeVocab

__all__ = [
    "ManifestError",
    "ManifestRow",
    "SPLITS",
    "read_manifest",
    "write_manifest",
    "audio_path",
    "assign_splits",
    "check_speaker_disjoint",
    "summarize",
    "SplitStats",
    "merge_manifests",
    "MergeReport",
]

SPLITS = ("train", "valid", "test")
Alignment = list[tuple[float, float, str]]


class ManifestError(ValueError):
    """A manifest file or row that does not follow the format above."""


@dataclass(frozen=True)
class ManifestRow:
    """One clip. ``split`` is ``None`` until :func:`assign_splits` runs."""

    path: str
    duration: float
    speaker: str
    source: str
    text: str
    split: str | None = None
    phonemes: Alignment | None = None
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_row(self)

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON-ready dict (``meta`` only when non-empty)."""
        out: dict[str, Any] = {
            "path": self.path, "duration": round(self.duration, 4), "speaker": self.speaker,
            "source": self.source, "text": self.text, "split": self.split,
            "phonemes": None if self.phonemes is None
            else [[round(s, 4), round(e, 4), p] for s, e, p in self.phonemes],
        }
        if self.meta:
            out["meta"] = dict(self.meta)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "ManifestRow":
        """Build a row from a parsed JSON object; ManifestError names what is wrong."""
        if not isinstance(obj, Mapping):
            raise ManifestError(f"a row must be a JSON object, got {type(obj).__name__}")
        missing = [k for k in ("path", "duration", "speaker", "source", "text") if k not in obj]
        if missing:
            raise ManifestError(f"row is missing field(s) {missing}")
        unknown = set(obj) - {"path", "duration", "speaker", "source", "text", "split",
                              "phonemes", "meta"}
        if unknown:
            raise ManifestError(f"row has unknown field(s) {sorted(unknown)}")
        phonemes = obj.get("phonemes")
        if phonemes is not None:
            phonemes = _parse_alignment(phonemes)
        duration = obj["duration"]
        if isinstance(duration, bool) or not isinstance(duration, (int, float)):
            raise ManifestError(f"duration must be a number, got {duration!r}")
        meta = obj.get("meta") or {}
        if not isinstance(meta, Mapping):
            raise ManifestError(f"meta must be an object, got {meta!r}")
        return cls(path=obj["path"], duration=float(duration), speaker=obj["speaker"],
                   source=obj["source"], text=obj["text"], split=obj.get("split"),
                   phonemes=phonemes, meta={str(k): str(v) for k, v in meta.items()})


def _parse_alignment(value: Any) -> Alignment:
    if not isinstance(value, list):
        raise ManifestError(f"phonemes must be a list of [start_s, end_s, symbol], got {value!r}")
    out: Alignment = []
    for item in value:
        if (not isinstance(item, (list, tuple)) or len(item) != 3
                or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in item[:2])
                or not isinstance(item[2], str)):
            raise ManifestError(f"bad phoneme entry {item!r}: expected [start_s, end_s, symbol]")
        out.append((float(item[0]), float(item[1]), item[2]))
    return out


def _check_row(row: ManifestRow) -> None:
    """Field checks shared by construction and reading, with messages a person can act on."""
    for name in ("path", "speaker", "source", "text"):
        value = getattr(row, name)
        if not isinstance(value, str):
            raise ManifestError(f"{name} must be a string, got {value!r}")
    if not row.path:
        raise ManifestError("path is empty")
    if not row.speaker:
        raise ManifestError(f"{row.path}: speaker is empty")
    if not row.text.strip():
        raise ManifestError(f"{row.path}: text is empty")
    if not (math.isfinite(row.duration) and row.duration > 0):
        raise ManifestError(f"{row.path}: duration must be a positive number, got {row.duration}")
    if row.split is not None and row.split not in SPLITS:
        raise ManifestError(f"{row.path}: split must be one of {SPLITS} or null, got {row.split!r}")
    if row.phonemes is not None:
        for start, end, symbol in row.phonemes:
            if not (0 <= start <= end) or not symbol:
                raise ManifestError(f"{row.path}: bad phoneme segment {[start, end, symbol]}")


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """All rows of a JSONL manifest. Blank lines are skipped; any bad line raises
    :class:`ManifestError` naming the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(ManifestRow.from_json(json.loads(line)))
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            except ManifestError as e:
                raise ManifestError(f"{path}:{lineno}: {e}") from e
    return rows


def write_manifest(path: str | Path, rows: Iterable[ManifestRow]) -> Path:
    """Write rows as JSONL (UTF-8, Telugu unescaped) atomically: a reader never sees half a
    file. The temporary file has a unique name, so two writers of the same manifest do not
    take each other's file away (the last rename wins)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def audio_path(manifest_path: str | Path, row: ManifestRow) -> Path:
    """The audio file of ``row``: its ``path`` taken relative to the manifest's folder."""
    return Path(manifest_path).parent / row.path


def assign_splits(rows: Sequence[ManifestRow], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  seed: int = 0, group: Callable[[ManifestRow], str] | None = None,
                  pinned: Mapping[str, str] | None = None) -> list[ManifestRow]:
    """Give every row a train/valid/test split so that no group spans two splits.

    ``group`` maps a row to the unit that is held out whole; it defaults to the speaker.
    Passing a coarser group (e.g. one espeak variant at every pitch) keeps near-identical
    voices out of each other's splits as well. ``pinned`` forces groups into a split (e.g.
    the only real human voice into train) and they do not count towards the fractions.

    The other groups are shuffled with ``seed`` and cut by count: valid and test each get
    ``round(n * fraction)`` groups, at least one when ``n >= 3`` and the fraction is > 0,
    and train gets the rest. With fewer than three groups everything goes to train.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    group = group or (lambda r: r.speaker)
    pinned = dict(pinned or {})
    bad = {g: s for g, s in pinned.items() if s not in SPLITS}
    if bad:
        raise ValueError(f"pinned splits must be one of {SPLITS}, got {bad}")
    free = sorted({group(r) for r in rows} - set(pinned))
    random.Random(seed).shuffle(free)
    n = len(free)

    def count(fraction: float) -> int:
        if n < 3 or fraction == 0:
            return 0
        return max(1, round(n * fraction))

    n_valid, n_test = count(fractions[1]), count(fractions[2])
    split_of = dict(pinned)
    split_of.update({g: "valid" for g in free[:n_valid]})
    split_of.update({g: "test" for g in free[n_valid:n_valid + n_test]})
    split_of.update({g: "train" for g in free[n_valid + n_test:]})
    out = [replace(r, split=split_of[group(r)]) for r in rows]
    check_speaker_disjoint(out)
    return out


def check_speaker_disjoint(rows: Iterable[ManifestRow]) -> None:
    """Raise ManifestError if any speaker appears in more than one split."""
    splits: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        splits[r.speaker].add(str(r.split))
    shared = {spk: sorted(s) for spk, s in splits.items() if len(s) > 1}
    if shared:
        example = next(iter(shared.items()))
        raise ManifestError(f"{len(shared)} speaker(s) appear in more than one split, "
                            f"e.g. {example[0]!r} in {example[1]}")


@dataclass(frozen=True)
class SplitStats:
    """Size of one split: clips, hours, distinct speakers, clips with a phoneme alignment."""

    clips: int
    hours: float
    speakers: int
    aligned: int


def summarize(rows: Iterable[ManifestRow]) -> dict[str, SplitStats]:
    """Per-split statistics (plus ``"all"``) for reports and logs."""
    groups: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in rows:
        groups[str(r.split)].append(r)
        groups["all"].append(r)
    return {
        name: SplitStats(
            clips=len(rs),
            hours=sum(r.duration for r in rs) / 3600,
            speakers=len({r.speaker for r in rs}),
            aligned=sum(r.phonemes is not None for r in rs),
        )
        for name, rs in sorted(groups.items())
    }


@dataclass(frozen=True)
class MergeReport:
    """What :func:`merge_manifests` wrote: the manifest, the phoneme vocabulary built from
    the merged alignments (None when no row has one), rows per input, per-split statistics."""

    manifest: Path
    vocab: Path | None
    rows_per_input: dict[str, int]
    stats: dict[str, SplitStats]


def merge_manifests(out: str | Path, inputs: Sequence[str | Path], *, absolute: bool = False,
                    check_audio: bool = True) -> MergeReport:
    """Join ``inputs`` into one manifest at ``out``, rewriting every ``path`` so that it
    still points at the same audio file: relative to ``out``'s folder (the default; the
    merged manifest then moves with the corpora as long as their relative places stay),
    or absolute with ``absolute=True``.

    Rows keep their splits and fields. Refused with :class:`ManifestError`: no inputs, the
    output among the inputs, a speaker name in two inputs (two different voices would be
    counted as one, and a held-out voice could leak into train), the same audio file twice,
    and, with ``check_audio``, rows whose audio file is missing. The phoneme vocabulary is
    rebuilt from all the merged alignments and saved as ``phoneme_vocab.json`` beside
    ``out`` (when only one input has alignments it equals that input's own vocabulary).
    """
    out = Path(out)
    if not inputs:
        raise ManifestError("nothing to merge: give at least one input manifest")
    out_abs = Path(os.path.abspath(out))
    srcs = [Path(os.path.abspath(p)) for p in inputs]
    if out_abs in srcs:
        raise ManifestError(f"the output {out} is also an input; write the merge elsewhere")
    merged: list[ManifestRow] = []
    speaker_home: dict[str, Path] = {}
    seen_audio: dict[Path, Path] = {}
    missing: list[str] = []
    per_input: dict[str, int] = {}
    for src in srcs:
        rows = read_manifest(src)
        per_input[str(src)] = len(rows)
        for row in rows:
            home = speaker_home.setdefault(row.speaker, src)
            if home != src:
                raise ManifestError(f"speaker {row.speaker!r} is in both {home} and {src}; "
                                    "speaker names must be unique across merged corpora")
            audio = Path(os.path.abspath(src.parent / row.path))
            if audio in seen_audio:
                raise ManifestError(f"{audio} is listed twice (in {seen_audio[audio]} and {src})")
            seen_audio[audio] = src
            if check_audio and not audio.is_file():
                missing.append(str(audio))
            path = str(audio) if absolute else os.path.relpath(audio, out_abs.parent)
            merged.append(replace(row, path=path))
    if missing:
        raise ManifestError(f"{len(missing)} audio file(s) listed in the inputs do not exist, "
                            f"e.g. {missing[0]}")
    manifest = write_manifest(out, merged)
    vocab_path = PhonemeVocab.path_for(out)
    if any(r.phonemes is not None for r in merged):
        PhonemeVocab.from_manifest(merged).save(vocab_path)
    else:  # a vocabulary left from an earlier merge would no longer describe these rows
        vocab_path.unlink(missing_ok=True)
        vocab_path = None
    return MergeReport(manifest=manifest, vocab=vocab_path, rows_per_input=per_input,
                       stats=summarize(merged))
