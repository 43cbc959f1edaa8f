"""Code shards: precomputed codec tokens of many utterances or dialogues in a few files.

Training the S2S model reads codes, never audio, so the codec runs once over the corpus and
its codes are stored here. A shard is one safetensors file: every record's arrays are
concatenated along time per field (``<field>`` tensors) with a JSON index in the header
giving each record's offset, length and metadata. Records of one shard share their set of
fields. Reading is memory-mapped and random-access.

Fields used by the trainers (all optional except ``codes`` or ``user``/``agent``):

=================  ==============  ==========================================================
field              dtype, shape    meaning
=================  ==============  ==========================================================
``codes``          int16 [K, T]    single-stream speech codes (pre-training)
``user``           int16 [K, T]    the user's channel codes (dialogues)
``agent``          int16 [K, T]    the agent's channel codes (dialogues)
``text``           int32 [T]       the agent's inner-monologue token per frame (EPAD = none)
``user_text``      int32 [T]       what the user has said, each word once heard (EPAD = none)
``emotion``        int8  [T]       the agent's emotion id per frame
``phonemes``       int16 [T]       phoneme label per frame (-100 = unknown)
=================  ==============  ==========================================================

Metadata is free-form JSON per record (id, speaker, voice, split, turn timings, the intent of
a question, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "maata-shard/1"


@dataclass
class Record:
    """One utterance or dialogue: named arrays whose LAST axis is time (frames), plus metadata."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        lengths = {a.shape[-1] for a in self.arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"record {self.meta.get('id')!r}: fields have different lengths {sorted(lengths)}")
        return lengths.pop()


def write_shard(path: str | Path, records: list[Record]) -> Path:
    """Write ``records`` (same field names and dtypes, any lengths) to one safetensors file."""
    if not records:
        raise ValueError("a shard needs at least one record")
    names = sorted(records[0].arrays)
    for r in records:
        if sorted(r.arrays) != names:
            raise ValueError(f"record {r.meta.get('id')!r} has fields {sorted(r.arrays)}, expected {names}")
    index, offset = [], 0
    for r in records:
        n = r.frames
        index.append({"offset": offset, "frames": n, "meta": r.meta})
        offset += n
    tensors = {name: torch.from_numpy(np.ascontiguousarray(np.concatenate([r.arrays[name] for r in records], -1)))
               for name in names}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "index": json.dumps(index, ensure_ascii=False)})
    tmp.replace(path)
    return path


class ShardReader:
    """Random access to the records of one shard (``len``, ``[i]``, iteration)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"shard not found: {self.path}")
        self._file = safe_open(str(self.path), framework="pt")
        meta = self._file.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{self.path}: not a Maata shard (format {meta.get('format')!r})")
        self.index = json.loads(meta["index"])
        self.fields = list(self._file.keys())

    def __len__(self) -> int:
        return len(self.index)

    def meta(self, i: int) -> dict[str, Any]:
        return self.index[i]["meta"]

    def __getitem__(self, i: int) -> Record:
        if not -len(self) <= i < len(self):
            raise IndexError(f"record {i} out of range for {len(self)} records")
        entry = self.index[i]
        a, n = entry["offset"], entry["frames"]
        arrays = {name: self._file.get_slice(name)[..., a:a + n].numpy() for name in self.fields}
        return Record(arrays, entry["meta"])

    def __iter__(self) -> Iterator[Record]:
        for i in range(len(self)):
            yield self[i]


def shard_paths(root: str | Path, split: str | None = None) -> list[Path]:
    """Shards under ``root`` (``root/<split>/*.safetensors`` when ``split`` is given)."""
    base = Path(root) / split if split else Path(root)
    paths = sorted(base.glob("*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"no shards under {base}")
    return paths


# -- whose codes ------------------------------------------------------------------------------------
CODE_SPACE_NAME = "code_space.json"  # beside the shards: which codec's codes they hold


def write_code_space(root: str | Path, codec: Any, source: str | Path | None = None) -> Path:
    """Record in ``root/code_space.json`` which codec made the shards under ``root``: its
    ``code_space()`` digest (and, for people, the checkpoint path). The LM trainer copies the
    digest into the model's config, and ``maata.lm.compat`` then refuses any other codec."""
    path = Path(root) / CODE_SPACE_NAME
    info = {"code_space": codec.code_space(), "codec": None if source is None else str(source),
            "n_q": int(codec.n_q), "codebook_size": int(codec.cfg.quantizer.codebook_size),
            "frame_rate": float(codec.cfg.frame_rate)}
    path.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return path


def read_code_space(root: str | Path) -> str | None:
    """The codec digest recorded beside the shards under ``root`` (a folder, or a shard file's
    folder or its parent), or None when they predate the record."""
    root = Path(root)
    for folder in ([root] if root.is_dir() else []) + [root.parent, root.parent.parent]:
        path = folder / CODE_SPACE_NAME
        if path.is_file():
            return str(json.loads(path.read_text(encoding="utf-8"))["code_space"])
    return None


# -- finding shards, reading record metadata ---------------------------------------------------------
DEFAULT_SPLIT = "train"  # the split of records whose metadata names none


def find_shards(root: str | Path, split: str | None) -> tuple[list[Path], bool]:
    """Shard files for ``split`` and whether their records must still be filtered by ``meta["split"]``.

    ``<root>/<split>/*.safetensors`` when that folder holds shards; otherwise every shard under
    ``root`` (recursively), filtered by metadata. ``root`` may be a single shard file.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"shards not found: {root}")
    if root.is_file():
        return [root], split is not None
    if split is not None and (root / split).is_dir():
        paths = sorted((root / split).glob("*.safetensors"))
        if paths:
            return paths, False
    paths = sorted(root.rglob("*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"no shards (*.safetensors) under {root}")
    return paths, split is not None


def record_split(meta: dict[str, Any]) -> str:
    return str(meta.get("split") or DEFAULT_SPLIT)


def spans(meta: dict[str, Any], key: str) -> list[tuple[int, int]]:
    """Frame spans ``[(start, end), ...]`` from ``meta[key]`` (pairs, or dicts with start/end)."""
    out = []
    for v in meta.get(key) or []:
        if isinstance(v, dict):
            a, b = v.get("start"), v.get("end", v.get("stop"))
        elif isinstance(v, (list, tuple)) and len(v) >= 2:
            a, b = v[0], v[1]
        else:
            continue
        if a is not None and b is not None:
            out.append((int(a), int(b)))
    return sorted(out)


def points(meta: dict[str, Any], key: str) -> list[int]:
    """Frame indices from ``meta[key]``: plain numbers, or the start of pairs / dicts."""
    out = []
    for v in meta.get(key) or []:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(int(v))
        elif isinstance(v, dict) and ("start" in v or "frame" in v):
            out.append(int(v.get("start", v.get("frame"))))
        elif isinstance(v, (list, tuple)) and v:
            out.append(int(v[0]))
    return sorted(out)
