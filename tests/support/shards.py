"""Synthetic code shards for the LM tests (training, evaluation, the user-transcript head):
single-stream pretraining records and QA dialogues whose answers depend on the intent and the
voice, written with ``maata.data.shards``, for the tiny LM of the smoke configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maata.data.shards import Record, write_shard
from maata.lm.model import VOICES

K, CARD, VT, EPAD = 8, 32, 40, 3  # the smoke configs' LM: 8 codebooks of 32 codes, 40 text tokens
INTENTS = ("time", "weather", "bank")


def write_pretrain_shards(root: Path, n_train: int = 6, n_valid: int = 2, seed: int = 0) -> Path:
    """Single-stream records (field ``codes``) in ``root/train`` and ``root/valid``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("valid", n_valid)):
        recs = [Record({"codes": rng.integers(0, CARD, (K, int(rng.integers(20, 50)))).astype(np.int16)},
                       {"id": f"{split}{i}", "speaker": f"spk{i}"}) for i in range(n)]
        write_shard(root / split / "shard0.safetensors", recs)
    return root


def _speech(rng: np.random.Generator, shape: tuple[int, int], silence: np.ndarray) -> np.ndarray:
    """Random codes whose first codebook never equals the silence code (a "codes" detector hears them)."""
    x = rng.integers(0, CARD, shape)
    x[0] = rng.integers(0, CARD - 1, shape[1])
    x[0] += x[0] >= silence[0]
    return x


def answer_codes(intent: str, voice: str, silence: np.ndarray) -> np.ndarray:
    """The agent's answer to ``intent`` in ``voice``: fixed codes per intent, shifted per voice."""
    a_len = 12 + 2 * INTENTS.index(intent)
    pattern = _speech(np.random.default_rng(100 + INTENTS.index(intent)), (K, a_len), silence)
    pattern[1:] = (pattern[1:] + 5 * VOICES.index(voice)) % CARD
    return pattern


def dialogue_record(i: int, split: str, rng: np.random.Generator, interrupted: bool = False,
                    silence: np.ndarray | None = None) -> Record:
    """A QA dialogue: the user asks (random codes), a pause, the agent answers with codes that
    depend on the intent and voice (so references can be matched); ``silence`` codes elsewhere.
    An interrupted dialogue has a second user turn 4 frames into the answer; the agent stops 2
    frames later."""
    silence = np.zeros(K, np.int64) if silence is None else np.asarray(silence, np.int64)
    intent = INTENTS[i % len(INTENTS)]
    voice = VOICES[(i // len(INTENTS)) % 2]
    q_end = int(rng.integers(8, 12))
    a_start = q_end + int(rng.integers(2, 4))
    a_len = 12 + 2 * INTENTS.index(intent)
    T = a_start + a_len + int(rng.integers(4, 8))
    user = np.repeat(silence[:, None], T, 1)
    user[:, :q_end] = _speech(rng, (K, q_end), silence)
    agent = np.repeat(silence[:, None], T, 1)
    pattern = answer_codes(intent, voice, silence)
    noisy = rng.random((K, a_len)) < 0.1
    noisy[0] = False
    agent[:, a_start:a_start + a_len] = np.where(noisy, rng.integers(0, CARD, (K, a_len)), pattern)
    a_end = a_start + a_len
    text = np.full(T, EPAD, np.int32)
    text[a_start:a_start + 6] = 4 + np.arange(6) + INTENTS.index(intent)
    emotion = np.zeros(T, np.int8)
    emotion[a_start:a_end] = 1 + INTENTS.index(intent)  # HAPPY, LAUGH, EXCITED
    user_turns = [[0, q_end]]
    interruptions = []
    if interrupted:
        s = a_start + 4
        user[:, s:s + 3] = _speech(rng, (K, 3), silence)
        user_turns.append([s, s + 3])
        interruptions.append(s)
        a_end = s + 2
        agent[:, a_end:] = silence[:, None]
    meta = {"id": f"{split}-{i}", "kind": "qa", "intent": intent, "voice": voice, "split": split,
            "user_speaker": f"{split}_spk{i % 2}", "user_turns": user_turns,
            "agent_turns": [[a_start, a_end]], "interruptions": interruptions}
    return Record({"user": user.astype(np.int16), "agent": agent.astype(np.int16), "text": text,
                   "emotion": emotion}, meta)


def write_dialogue_shards(root: Path, n_train: int = 8, n_valid: int = 2, n_test: int = 0, seed: int = 1,
                          by_folder: bool = False, silence: np.ndarray | None = None) -> Path:
    """Dialogue shards; splits as meta["split"] in one folder, or as <root>/<split>/ folders."""
    rng = np.random.default_rng(seed)
    splits = {"train": n_train, "valid": n_valid, "test": n_test}
    recs = {s: [dialogue_record(i, s, rng, interrupted=(s == "test" and i % 3 == 2), silence=silence)
                for i in range(n)] for s, n in splits.items() if n}
    if by_folder:
        for s, r in recs.items():
            write_shard(root / s / "shard0.safetensors", r)
    else:
        everything = [r for rs in recs.values() for r in rs]
        write_shard(root / "shard0.safetensors", everything[: len(everything) // 2])
        write_shard(root / "shard1.safetensors", everything[len(everything) // 2:])
    return root


__all__ = ["CARD", "EPAD", "INTENTS", "K", "VT", "answer_codes", "dialogue_record", "write_dialogue_shards",
           "write_pretrain_shards"]
