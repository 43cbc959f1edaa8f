"""Importers for public Telugu speech datasets into Maata's manifest format.

Each dataset is read in its own on-disk layout, every clip is decoded (WAV via libsndfile,
m4a/mp3 via PyAV), resampled to 16 kHz mono, RMS-normalised to -16 dBFS like the synthetic
corpus, and written as ``wavs/<source>/<speaker>/<id>.wav`` beside ``manifest.jsonl``.
Transcripts go through :func:`maata.text.normalize.normalize_text`. Speakers are prefixed
with the source (``kathbath:1074``) so manifests from several datasets can be combined.

Splits are recomputed speaker-disjointly (80/10/10 over speakers) rather than copied from
the dataset, because not every dataset's own splits are speaker-disjoint (Kathbath's
``test_known`` shares speakers with train) and one rule for all sources keeps combined
manifests clean.

Formats (``--format``):

* ``openslr66``: ``line_index.tsv`` lines ``<fileid>\\t<sentence>`` (some have a stray
  middle field) beside ``<fileid>.wav`` at 48 kHz; ids look like ``tef_00106_00186447``
  (gender, speaker, utterance).
* ``kathbath``: ``data/telugu/<split>/`` holding ``<id>-<speaker>-<gender>.m4a`` (directly
  or in a subfolder) and ``transcription*.txt`` with ``<file>\\t<text>``.
* ``commonvoice``: ``te/clips/*.mp3`` with ``train.tsv``/``dev.tsv``/``test.tsv`` (columns
  ``client_id``, ``path``, ``sentence``, ...; read without quote handling).
* ``indictts``: ``txt.done.data`` festival lines ``( <id> "<text>" )`` and ``wav/<id>.wav``;
  the folder holding ``txt.done.data`` is one speaker.
* ``respin``: ``meta_*.json`` mapping utterance ids to ``text``, ``wav_path`` (relative to
  the JSON), ``duration``, ``dialect``, ``gender``, ``speaker_id``.

Lines that cannot be used (malformed, empty text, missing or undecodable audio, too long)
are skipped and reported with file and line; an import that yields no clip at all fails.
"""

from __future__ import annotations

import concurrent.futures
import csv
import json
import logging
import multiprocessing
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from maata.audio import AudioError, load_audio, normalize_rms, write_wav
from maata.data.manifest import ManifestRow, SplitStats, assign_splits, summarize, write_manifest
from maata.text.normalize import normalize_text

log = logging.getLogger(__name__)

__all__ = ["DatasetError", "SourceClip", "Scan", "FORMATS", "scan", "import_dataset",
           "ImportReport"]

SAMPLE_RATE = 16000
TARGET_DBFS = -16.0
MANIFEST_NAME = "manifest.jsonl"


class DatasetError(ValueError):
    """A source folder that does not look like the dataset it was said to be."""


@dataclass(frozen=True)
class SourceClip:
    """One utterance found in a dataset, before conversion."""

    audio: Path
    text: str
    speaker: str  # already prefixed with the source, e.g. "kathbath:1074"
    uid: str
    meta: dict[str, str] = field(default_factory=dict)


@dataclass
class Scan:
    """What a scanner found: usable clips and the reasons other lines were skipped."""

    clips: list[SourceClip] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "x"


def _find(src: Path, pattern: str, what: str) -> list[Path]:
    """Files matching ``pattern`` anywhere under ``src``; DatasetError if there are none."""
    if not src.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {src}")
    found = sorted(src.rglob(pattern))
    if not found:
        raise DatasetError(f"no {pattern} under {src}; is this {what}?")
    return found


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their numbers, tolerant of a BOM and CRLF endings."""
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield lineno, line


# ---------------------------------------------------------------------------------------
# Scanners: one per dataset layout

_OPENSLR_ID = re.compile(r"^(te[mf])_(\d+)_\d+$")


def scan_openslr66(src: Path) -> Scan:
    """OpenSLR 66 (Telugu crowd-sourced TTS corpus, male and female folders)."""
    out = Scan()
    for index in _find(src, "line_index.tsv", "OpenSLR 66"):
        for lineno, line in _read_lines(index):
            fields = [f.strip() for f in line.split("\t")]
            fields = [f for f in fields if f] if len(fields) > 2 else fields
            if len(fields) < 2 or not fields[0]:
                out.skipped.append(f"{index}:{lineno}: expected <fileid>\\t<sentence>")
                continue
            uid, text = fields[0], fields[-1]
            m = _OPENSLR_ID.match(uid)
            speaker = f"{m.group(1)}_{m.group(2)}" if m else index.parent.name
            meta = {"gender": "female" if m.group(1) == "tef" else "male"} if m else {}
            out.clips.append(SourceClip(index.parent / f"{uid}.wav", text, f"openslr66:{speaker}",
                                        uid, meta))
    return out


_KATHBATH_NAME = re.compile(r"^(?P<id>[^-]+)-(?P<spk>[^-]+)-(?P<gender>[mfMF])$")


def _pick_transcriptions(files: list[Path]) -> list[Path]:
    """One transcription file per folder: the numbers-as-words one (``*_n2w``) if present."""
    by_dir: dict[Path, list[Path]] = {}
    for f in files:
        by_dir.setdefault(f.parent, []).append(f)
    return [next((f for f in fs if "n2w" in f.stem), sorted(fs)[0]) for _, fs in sorted(by_dir.items())]


def scan_kathbath(src: Path) -> Scan:
    """Kathbath (AI4Bharat read speech), one folder per split."""
    out = Scan()
    for trans in _pick_transcriptions(_find(src, "transcription*.txt", "Kathbath")):
        files = sorted(trans.parent.rglob("*.m4a"))
        audio_index = {p.stem: p for p in files} | {p.name: p for p in files}
        for lineno, line in _read_lines(trans):
            name, sep, text = line.partition("\t")
            name = name.strip()
            if not sep or not name:
                out.skipped.append(f"{trans}:{lineno}: expected <file>\\t<text>")
                continue
            base = Path(name).name
            audio = audio_index.get(base) or audio_index.get(Path(base).stem) or trans.parent / name
            m = _KATHBATH_NAME.match(Path(base).stem)
            speaker = m.group("spk") if m else "unknown"
            meta = {"split": trans.parent.name}
            if m:
                meta["gender"] = "female" if m.group("gender").lower() == "f" else "male"
            out.clips.append(SourceClip(audio, text, f"kathbath:{speaker}", Path(base).stem, meta))
    return out


_CV_SPLITS = ("train.tsv", "dev.tsv", "test.tsv")


def scan_commonvoice(src: Path) -> Scan:
    """Mozilla Common Voice, Telugu (``te``) folder; train/dev/test (not ``validated``,
    which repeats them)."""
    out = Scan()
    roots = sorted({p.parent for p in _find(src, "train.tsv", "Common Voice")
                    if (p.parent / "clips").is_dir()})
    if not roots:
        raise DatasetError(f"no Common Voice folder (train.tsv beside clips/) under {src}")
    seen: set[Path] = set()
    for root in roots:
        for name in _CV_SPLITS:
            tsv = root / name
            if not tsv.is_file():
                continue
            with open(tsv, encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                missing = {"client_id", "path", "sentence"} - set(reader.fieldnames or ())
                if missing:
                    raise DatasetError(f"{tsv}: header lacks column(s) {sorted(missing)}")
                for lineno, rec in enumerate(reader, 2):
                    clip, client = (rec.get("path") or "").strip(), (rec.get("client_id") or "").strip()
                    if not clip or not client or rec.get("sentence") is None:
                        out.skipped.append(f"{tsv}:{lineno}: missing path, client_id or sentence")
                        continue
                    audio = root / "clips" / clip
                    if audio in seen:
                        continue
                    seen.add(audio)
                    meta = {k: rec[k] for k in ("gender", "age", "accents")
                            if rec.get(k) not in (None, "")}
                    out.clips.append(SourceClip(audio, rec["sentence"], f"commonvoice:{client}",
                                                Path(clip).stem, meta))
    return out


_FESTIVAL_LINE = re.compile(r'^\(\s*(\S+)\s+"(.*)"\s*\)\s*$')


def scan_indictts(src: Path) -> Scan:
    """IndicTTS (IIT Madras): festival-style prompts; each ``txt.done.data`` folder is a speaker."""
    out = Scan()
    for prompts in _find(src, "txt.done.data", "IndicTTS"):
        folder = prompts.parent
        rel = folder.relative_to(src)
        speaker = _slug(str(rel)) if str(rel) != "." else _slug(src.name)
        for lineno, line in _read_lines(prompts):
            m = _FESTIVAL_LINE.match(line.strip())
            if not m:
                out.skipped.append(f'{prompts}:{lineno}: expected ( <id> "<text>" )')
                continue
            uid, text = m.group(1), m.group(2).replace('\\"', '"')
            candidates = [folder / "wav" / f"{uid}.wav", folder / "wavs" / f"{uid}.wav",
                          folder / f"{uid}.wav"]
            audio = next((c for c in candidates if c.is_file()), candidates[0])
            out.clips.append(SourceClip(audio, text, f"indictts:{speaker}", uid))
    return out


def _respin_records(meta_file: Path) -> Iterable[tuple[str, Any]]:
    try:
        data = json.loads(meta_file.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{meta_file}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if isinstance(data, dict):
        return data.items()
    if isinstance(data, list):
        return ((str(r.get("utterance_id", i)) if isinstance(r, dict) else str(i), r)
                for i, r in enumerate(data))
    raise DatasetError(f"{meta_file}: expected an object of utterances, got {type(data).__name__}")


def scan_respin(src: Path) -> Scan:
    """RESPIN (IISc) dialect speech: ``meta_*.json`` describes every utterance."""
    out = Scan()
    for meta_file in _find(src, "meta_*.json", "RESPIN"):
        for uid, rec in _respin_records(meta_file):
            if not isinstance(rec, dict) or not rec.get("wav_path") or "text" not in rec:
                out.skipped.append(f"{meta_file}: {uid}: needs text and wav_path")
                continue
            speaker = str(rec.get("speaker_id_reassigned") or "NA")
            if speaker == "NA":
                speaker = str(rec.get("speaker_id") or "unknown")
            meta = {k: str(rec[k]) for k in ("dialect", "gender", "domain") if rec.get(k)}
            audio = meta_file.parent / rec["wav_path"]
            out.clips.append(SourceClip(audio, str(rec["text"]), f"respin:{speaker}", str(uid), meta))
    return out


FORMATS: dict[str, Callable[[Path], Scan]] = {
    "openslr66": scan_openslr66,
    "kathbath": scan_kathbath,
    "commonvoice": scan_commonvoice,
    "indictts": scan_indictts,
    "respin": scan_respin,
}


def scan(fmt: str, src: str | Path) -> Scan:
    """Find the clips of dataset ``fmt`` under ``src`` (no audio is read yet)."""
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {fmt!r}; choose from {', '.join(FORMATS)}")
    return FORMATS[fmt](Path(src))


# ---------------------------------------------------------------------------------------
# Conversion


def convert_clip(clip: SourceClip, source: str, out_dir: Path,
                 max_seconds: float = 30.0) -> ManifestRow | str:
    """Decode, resample, normalise and write one clip; its row, or why it was skipped."""
    text = normalize_text(clip.text)
    if not text:
        return f"{clip.audio}: empty text"
    try:
        audio, _ = load_audio(clip.audio, SAMPLE_RATE)
    except FileNotFoundError:
        return f"{clip.audio}: audio file missing"
    except AudioError as e:  # its message already names the file
        return str(e) if str(clip.audio) in str(e) else f"{clip.audio}: {e}"
    duration = len(audio) / SAMPLE_RATE
    if duration == 0:
        return f"{clip.audio}: audio is empty"
    if duration > max_seconds:
        return f"{clip.audio}: {duration:.1f} s is longer than {max_seconds:g} s"
    speaker_dir = _slug(clip.speaker.split(":", 1)[-1])
    rel = f"wavs/{source}/{speaker_dir}/{_slug(clip.uid)}.wav"
    write_wav(out_dir / rel, normalize_rms(audio, TARGET_DBFS), SAMPLE_RATE)
    return ManifestRow(path=rel, duration=duration, speaker=clip.speaker, source=source,
                       text=text, meta=clip.meta)


def _convert(args: tuple[SourceClip, str, Path, float]) -> ManifestRow | str:
    return convert_clip(*args)


@dataclass(frozen=True)
class ImportReport:
    """What :func:`import_dataset` wrote and what it skipped."""

    manifest: Path
    stats: dict[str, SplitStats]
    skipped: list[str]


def import_dataset(fmt: str, src: str | Path, out_dir: str | Path, *, workers: int = 1,
                   seed: int = 0, max_seconds: float = 30.0, overwrite: bool = False,
                   progress: bool = True) -> ImportReport:
    """Import dataset ``fmt`` from ``src`` into ``out_dir`` (WAVs + ``manifest.jsonl``)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST_NAME
    if manifest.exists() and not overwrite:
        raise DatasetError(f"{manifest} already exists; choose another --out or pass --overwrite")
    found = scan(fmt, src)
    jobs = [(clip, fmt, out_dir, max_seconds) for clip in found.clips]
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = list(tqdm(pool.map(_convert, jobs, chunksize=8), total=len(jobs),
                                desc=f"import {fmt}", unit="clip", disable=not progress))
    else:
        results = [_convert(j) for j in tqdm(jobs, desc=f"import {fmt}", unit="clip",
                                             disable=not progress)]
    rows = [r for r in results if isinstance(r, ManifestRow)]
    skipped = found.skipped + [r for r in results if isinstance(r, str)]
    for reason in skipped[:20]:
        log.warning("skipped %s", reason)
    if len(skipped) > 20:
        log.warning("... and %d more skipped", len(skipped) - 20)
    if not rows:
        first = f"; first problem: {skipped[0]}" if skipped else ""
        raise DatasetError(f"no usable clips imported from {src}{first}")
    rows = assign_splits(rows, seed=seed)
    write_manifest(manifest, rows)
    return ImportReport(manifest=manifest, stats=summarize(rows), skipped=skipped)
