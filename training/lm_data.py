"""Training data of the speech LM: random crops of code shards, batched with padding and a frame mask.

Shards are the data contract of :mod:`maata.data.shards`. Two kinds of items:

* :class:`PretrainDataset` (stage 1): single-stream speech. A record's ``codes`` [K, T] (or any
  other ``fields``) is the *agent* stream the model learns to continue; the user channel is
  absent (``ABSENT_CODE`` = -1 everywhere, embedded as padding) and there is no text.
* :class:`DialogueDataset` (stages 2 and 3): two-stream dialogues. ``user`` and ``agent``
  codes, the agent's inner-monologue ``text`` (EPAD = no text this frame), the ``user_text``
  transcript of what the user has said (each word from the frame where it ends; the auxiliary
  ASR-mode target, when the shards have it), its ``emotion``
  per frame — *held* from before each agent turn (``maata.lm.dialogues.held_emotion``) so its
  onset is no cue for when to speak — and its named ``voice`` (record metadata). With
  ``custom_fraction`` > 0 (stage 3) that share of the items (in every batch, not whole batches)
  is marked *custom voice* and carries a reference clip: a segment of
  the agent channel of *another* record with the same agent voice (its agent turns when the
  metadata lists them), which the trainer turns into ``lm.speaker_embedding`` — the zero-shot
  speaker encoder learns to stand in for the named voice.

Every item is a random crop of ``crop_frames`` frames (shorter records are taken whole and
padded by :func:`collate`). Randomness comes from ``numpy.random.default_rng((seed, epoch,
index))``, so an item is the same in whichever worker and order it is made; a resumed run
sees exactly the items it would have seen (call :meth:`set_epoch` before each epoch).

Shard layout: ``<root>/<split>/*.safetensors`` when that folder exists; otherwise every shard
under ``<root>`` with the records whose ``meta["split"]`` is the split (records without a split
count as ``train``). ``root`` may also be one ``.safetensors`` file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from maata.data.shards import ShardReader, find_shards, record_split, spans
from maata.lm.dialogues import emotion_table, held_emotion
from maata.lm.model import ABSENT_CODE, CUSTOM_VOICE

log = logging.getLogger(__name__)


# -- finding records ------------------------------------------------------------------------------
class ShardRecords:
    """The records of one split over many shards: metadata up front, arrays on demand.

    Readers are opened lazily per process (safetensors handles do not pickle), so the object can
    go to DataLoader workers under any start method.
    """

    def __init__(self, root: str | Path, split: str | None, need: Sequence[str] = ()):
        paths, filter_split = find_shards(root, split)
        self.paths = paths
        self.entries: list[tuple[int, int]] = []  # (shard, record)
        self.metas: list[dict[str, Any]] = []
        self.frames: list[int] = []
        self.fields: set[str] | None = None
        self._readers: dict[int, ShardReader] = {}
        skipped = []
        for s, p in enumerate(paths):
            reader = ShardReader(p)
            missing = [f for f in need if f not in reader.fields]
            if missing:
                skipped.append(f"{p.name} (fields {sorted(reader.fields)})")
                continue
            self.fields = set(reader.fields) if self.fields is None else self.fields & set(reader.fields)
            for i, entry in enumerate(reader.index):
                meta = entry.get("meta") or {}
                if filter_split and record_split(meta) != split:
                    continue
                self.entries.append((s, i))
                self.metas.append(meta)
                self.frames.append(int(entry["frames"]))
            self._readers[s] = reader
        if skipped:
            msg = f"shards without the fields {list(need)} this stage needs: {', '.join(skipped[:5])}"
            if len(skipped) == len(paths):
                raise ValueError(f"{root}: no usable shards; {msg}")
            log.warning("skipped %s", msg)
        self.fields = self.fields or set()

    def __len__(self) -> int:
        return len(self.entries)

    def reader(self, s: int) -> ShardReader:
        if s not in self._readers:
            self._readers[s] = ShardReader(self.paths[s])
        return self._readers[s]

    def arrays(self, j: int) -> dict[str, np.ndarray]:
        s, i = self.entries[j]
        return self.reader(s)[i].arrays

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_readers"] = {}
        return d


# -- datasets -------------------------------------------------------------------------------------------
class _CropDataset(Dataset):
    def __init__(self, records: ShardRecords, crop_frames: int, seed: int, min_frames: int, random_crop: bool):
        if crop_frames < 1:
            raise ValueError(f"crop_frames must be ≥ 1, got {crop_frames}")
        self.records = records
        self.crop_frames, self.seed, self.random_crop = crop_frames, seed, random_crop
        self.epoch = 0
        self.min_frames = min_frames

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng_for(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, index))

    def _crop(self, n: int, rng: np.random.Generator) -> tuple[int, int]:
        if n <= self.crop_frames or not self.random_crop:
            return 0, min(n, self.crop_frames)
        start = int(rng.integers(0, n - self.crop_frames + 1))
        return start, start + self.crop_frames


class PretrainDataset(_CropDataset):
    """Single-stream items: ``fields`` of each record (default ``codes``) as the agent stream."""

    def __init__(self, root: str | Path, split: str | None, crop_frames: int, *, n_q: int, codebook_size: int,
                 epad_id: int, fields: Sequence[str] = ("codes",), seed: int = 0, min_frames: int = 2,
                 random_crop: bool = True):
        records = ShardRecords(root, split, need=tuple(fields))
        super().__init__(records, crop_frames, seed, min_frames, random_crop)
        self.items = [(j, f) for j in range(len(records)) for f in fields if records.frames[j] >= min_frames]
        if not self.items:
            raise ValueError(f"no records of ≥ {min_frames} frames with fields {list(fields)} in split {split!r} "
                             f"of {root}")
        self.n_q, self.card, self.epad = n_q, codebook_size, epad_id
        self.fields = tuple(fields)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        j, name = self.items[index]
        codes = self.records.arrays(j)[name]
        _check_codes(codes, self.n_q, self.card, f"record {self.records.metas[j].get('id')!r} field {name!r}")
        a, b = self._crop(codes.shape[-1], self.rng_for(index))
        agent = torch.from_numpy(codes[:, a:b].astype(np.int64))
        T = b - a
        return {"user": torch.full_like(agent, ABSENT_CODE), "agent": agent,
                "text": torch.full((T,), self.epad, dtype=torch.long), "has_text": False,
                "emotion": torch.zeros(T, dtype=torch.long), "voice": 0}


class DialogueDataset(_CropDataset):
    """Two-stream dialogue items (see the module docstring)."""

    def __init__(self, root: str | Path, split: str | None, crop_frames: int, *, n_q: int, codebook_size: int,
                 epad_id: int, voices: Sequence[str], emotions: Sequence[str], text: bool = True,
                 user_text: bool = True,
                 voice_conditioning: bool = True, emotion_conditioning: bool = True, custom_fraction: float = 0.0,
                 reference_frames: int = 250, min_reference_frames: int = 25, seed: int = 0, min_frames: int = 2,
                 random_crop: bool = True, user_acoustic_dropout: float = 0.0):
        if not 0.0 <= user_acoustic_dropout <= 1.0:
            raise ValueError(f"user_acoustic_dropout must be in [0, 1], got {user_acoustic_dropout}")
        self.user_acoustic_dropout = user_acoustic_dropout
        records = ShardRecords(root, split, need=("user", "agent"))
        super().__init__(records, crop_frames, seed, min_frames, random_crop)
        self.items = [j for j in range(len(records)) if records.frames[j] >= min_frames]
        if not self.items:
            raise ValueError(f"no dialogue records of ≥ {min_frames} frames in split {split!r} of {root}")
        self.n_q, self.card, self.epad = n_q, codebook_size, epad_id
        self.text = text and "text" in records.fields
        self.user_text = user_text and "user_text" in records.fields
        self.emotion = emotion_conditioning and "emotion" in records.fields
        self.emotion_map = emotion_table(emotions)
        self.voice_conditioning = voice_conditioning
        if not 0.0 <= custom_fraction <= 1.0:
            raise ValueError(f"custom_fraction must be in [0, 1], got {custom_fraction}")
        self.custom_fraction = custom_fraction
        self.reference_frames, self.min_reference_frames = reference_frames, min_reference_frames
        vid = {v: i for i, v in enumerate(voices)}
        self.voice_of: list[int] = []
        for j in self.items:
            v = records.metas[j].get("voice")
            if (voice_conditioning or custom_fraction > 0) and v is not None and v not in vid:
                raise ValueError(f"record {records.metas[j].get('id')!r} has voice {v!r}, which the model does not "
                                 f"know; model voices: {', '.join(voices)}")
            self.voice_of.append(vid.get(v, -1) if v is not None else -1)
        by_voice: dict[int, list[int]] = {}
        for pos, v in enumerate(self.voice_of):
            if v >= 0:
                by_voice.setdefault(v, []).append(pos)
        self.by_voice = by_voice
        if custom_fraction > 0 and not any(len(p) > 1 for p in by_voice.values()):
            log.warning("custom voices need two records with the same agent voice; none found: the speaker encoder "
                        "gets no training signal")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        j = self.items[index]
        meta = self.records.metas[j]
        arr = self.records.arrays(j)
        rng = self.rng_for(index)
        where = f"record {meta.get('id')!r}"
        user, agent = arr["user"], arr["agent"]
        _check_codes(user, self.n_q, self.card, f"{where} user", allow_absent=True)
        _check_codes(agent, self.n_q, self.card, f"{where} agent", allow_absent=True)
        a, b = self._crop(agent.shape[-1], rng)
        T = b - a
        item: dict[str, Any] = {"user": torch.from_numpy(user[:, a:b].astype(np.int64)),
                                "agent": torch.from_numpy(agent[:, a:b].astype(np.int64))}
        if self.user_acoustic_dropout > 0 and rng.random() < self.user_acoustic_dropout:
            # only the user's first (semantic, phoneme-bearing) codebook: the rest read as absent, so
            # the words must be heard from what carries them, not from speaker and channel detail
            item["user"][1:] = ABSENT_CODE
        if self.text:
            item["text"] = torch.from_numpy(arr["text"][a:b].astype(np.int64))
            item["has_text"] = True
        else:
            item["text"] = torch.full((T,), self.epad, dtype=torch.long)
            item["has_text"] = False
        if self.user_text:
            item["user_text"] = torch.from_numpy(arr["user_text"][a:b].astype(np.int64))
            item["has_user_text"] = True
        else:
            item["user_text"] = torch.full((T,), self.epad, dtype=torch.long)
            item["has_user_text"] = False
        if self.emotion:  # held from before the turn: its onset must not tell the model when to speak
            e = held_emotion(arr["emotion"].astype(np.int64), spans(meta, "agent_turns"))[a:b]
            item["emotion"] = torch.from_numpy(self.emotion_map[e])
        else:
            item["emotion"] = torch.zeros(T, dtype=torch.long)
        v = self.voice_of[index]
        item["voice"] = max(v, 0) if self.voice_conditioning else 0
        if self.custom_fraction > 0:
            item.update(self._reference(index, v, rng))
        return item

    def _reference(self, index: int, voice: int, rng: np.random.Generator) -> dict[str, Any]:
        """A reference clip of the same agent voice from another record (custom voice), or none."""
        custom = bool(rng.random() < self.custom_fraction)
        others = [p for p in self.by_voice.get(voice, []) if p != index] if voice >= 0 else []
        ref = torch.zeros(self.n_q, 0, dtype=torch.long)
        if custom and others:
            p = others[int(rng.integers(len(others)))]
            ref = self._reference_codes(self.items[p], rng)
        if ref.shape[-1] < self.min_reference_frames:
            custom, ref = False, torch.zeros(self.n_q, 0, dtype=torch.long)
        return {"custom": custom, "ref": ref}

    def _reference_codes(self, j: int, rng: np.random.Generator) -> torch.Tensor:
        agent = self.records.arrays(j)["agent"].astype(np.int64)
        turns = [(max(0, s), min(agent.shape[-1], e)) for s, e in spans(self.records.metas[j], "agent_turns")]
        speech = np.concatenate([agent[:, s:e] for s, e in turns if e > s], axis=-1) if turns else agent
        if speech.shape[-1] < self.min_reference_frames:
            speech = agent
        speech = speech[:, (speech >= 0).all(0)]  # a reference clip is complete codes only
        n, R = speech.shape[-1], self.reference_frames
        start = int(rng.integers(0, n - R + 1)) if n > R else 0
        return torch.from_numpy(np.ascontiguousarray(speech[:, start:start + R]))


def _check_codes(codes: np.ndarray, n_q: int, card: int, where: str, allow_absent: bool = False) -> None:
    if codes.ndim != 2 or codes.shape[0] != n_q:
        raise ValueError(f"{where}: codes shaped {list(codes.shape)}, the model needs [{n_q}, T]")
    if codes.size and (int(codes.max()) >= card or int(codes.min()) < (ABSENT_CODE if allow_absent else 0)):
        raise ValueError(f"{where}: code values in [{int(codes.min())}, {int(codes.max())}] do not fit the model's "
                         f"codebook size {card}")


# -- batching -------------------------------------------------------------------------------------------
def collate(items: list[dict[str, Any]], epad_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of items to the longest: agent 0, user ABSENT, text EPAD, emotion 0.

    ``frame_mask`` [B, T] is False on padding and on frames whose agent codes are incomplete
    (a -1 anywhere: nothing to predict there); ``text_mask`` [B, T] additionally on items
    without text. ``user_text`` [B, T] (EPAD where absent) and ``user_text_mask`` [B, T] (True
    on the real frames of items that have the user's transcript) are the auxiliary target. ``voice`` [B] holds CUSTOM_VOICE for custom-voice items, whose ``ref``
    [B, K, R] / ``ref_len`` [B] carry the reference clips (only when some item has one).
    """
    B = len(items)
    K = items[0]["agent"].shape[0]
    T = max(it["agent"].shape[-1] for it in items)
    agent = torch.zeros(B, K, T, dtype=torch.long)
    user = torch.full((B, K, T), ABSENT_CODE, dtype=torch.long)
    text = torch.full((B, T), epad_id, dtype=torch.long)
    user_text = torch.full((B, T), epad_id, dtype=torch.long)
    user_text_mask = torch.zeros(B, T, dtype=torch.bool)
    emotion = torch.zeros(B, T, dtype=torch.long)
    frame_mask = torch.zeros(B, T, dtype=torch.bool)
    text_mask = torch.zeros(B, T, dtype=torch.bool)
    voice = torch.zeros(B, dtype=torch.long)
    custom = torch.zeros(B, dtype=torch.bool)
    for b, it in enumerate(items):
        n = it["agent"].shape[-1]
        a = it["agent"]
        ok = (a >= 0).all(0)
        agent[b, :, :n] = a.clamp(min=0)
        user[b, :, :n] = it["user"]
        text[b, :n] = it["text"]
        emotion[b, :n] = it["emotion"]
        frame_mask[b, :n] = ok
        text_mask[b, :n] = ok & bool(it["has_text"])
        if "user_text" in it:
            user_text[b, :n] = it["user_text"]
            user_text_mask[b, :n] = bool(it.get("has_user_text", False))
        voice[b] = int(it["voice"])
        custom[b] = bool(it.get("custom", False))
    batch = {"user": user, "agent": agent, "text": text, "emotion": emotion, "voice": voice,
             "frame_mask": frame_mask, "text_mask": text_mask, "custom": custom,
             "user_text": user_text, "user_text_mask": user_text_mask}
    if any("ref" in it for it in items):
        R = max(max(it["ref"].shape[-1] for it in items if "ref" in it), 1)
        ref = torch.zeros(B, K, R, dtype=torch.long)
        ref_len = torch.zeros(B, dtype=torch.long)
        for b, it in enumerate(items):
            r = it.get("ref")
            if r is not None and r.shape[-1]:
                ref[b, :, : r.shape[-1]] = r
                ref_len[b] = r.shape[-1]
        batch["ref"], batch["ref_len"] = ref, ref_len
        batch["voice"] = torch.where(custom, torch.full_like(voice, CUSTOM_VOICE), voice)
    return batch


class Collate:
    """Picklable ``collate_fn`` bound to the EPAD id."""

    def __init__(self, epad_id: int):
        self.epad_id = epad_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate(items, self.epad_id)
