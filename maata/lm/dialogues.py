"""Dialogue records as the LM sees them: two code channels, text, emotion and turn metadata
read from code shards, and the emotion conditioning a live call would have."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maata.data.shards import ShardReader, find_shards, points, record_split, spans
from maata.lm.model import EMOTIONS


def emotion_table(lm_emotions: Sequence[str], shard_emotions: Sequence[str] = EMOTIONS) -> np.ndarray:
    """Shard emotion id -> LM emotion id (by name); names the LM lacks map to its first emotion."""
    index = {n: i for i, n in enumerate(lm_emotions)}
    return np.array([index.get(n, 0) for n in shard_emotions], dtype=np.int64)


@dataclass
class Dialogue:
    """One two-stream record: codes int64 [K, T], optional text/emotion/user_text [T], and its metadata."""

    user: np.ndarray
    agent: np.ndarray
    text: np.ndarray | None
    emotion: np.ndarray | None  # shard emotion ids (maata.lm.EMOTIONS order)
    meta: dict[str, Any]
    user_text: np.ndarray | None = None  # the user's words as heard, one token per frame (EPAD = none)

    @property
    def id(self) -> str:
        return str(self.meta.get("id", "?"))

    @property
    def frames(self) -> int:
        return self.agent.shape[-1]

    @property
    def intent(self) -> str | None:
        it = self.meta.get("intent")
        return str(it) if it is not None and self.meta.get("kind", "qa") == "qa" else None

    @property
    def voice(self) -> str | None:
        return self.meta.get("voice")

    def user_turns(self) -> list[tuple[int, int]]:
        return [(max(0, a), min(self.frames, b)) for a, b in spans(self.meta, "user_turns") if b > a]

    def agent_turns(self) -> list[tuple[int, int]]:
        return [(max(0, a), min(self.frames, b)) for a, b in spans(self.meta, "agent_turns") if b > a]

    def interruptions(self) -> list[int]:
        return [p for p in points(self.meta, "interruptions") if 0 <= p < self.frames]

    def emotion_name(self, a: int = 0, b: int | None = None) -> str | None:
        """The majority emotion of frames [a, b) (None without an emotion field)."""
        if self.emotion is None:
            return None
        e = self.emotion[a:b]
        e = e[(e >= 0) & (e < len(EMOTIONS))]
        return EMOTIONS[Counter(e.tolist()).most_common(1)[0][0]] if e.size else EMOTIONS[0]


def load_dialogues(root: str | Path, split: str | None, limit: int | None = None,
                   select: Callable[[dict[str, Any]], bool] | None = None) -> list[Dialogue]:
    """Dialogue records (fields ``user`` and ``agent``) of ``split``; at most ``limit``; only
    those whose metadata ``select`` accepts (called once per record, in order, before any array
    is read)."""
    paths, filter_split = find_shards(root, split)
    out: list[Dialogue] = []
    for p in paths:
        reader = ShardReader(p)
        if not {"user", "agent"} <= set(reader.fields):
            continue
        for i in range(len(reader)):
            if filter_split and record_split(reader.meta(i)) != split:
                continue
            if select is not None and not select(reader.meta(i)):
                continue
            r = reader[i]
            a = r.arrays
            out.append(Dialogue(a["user"].astype(np.int64), a["agent"].astype(np.int64),
                                a["text"].astype(np.int64) if "text" in a else None,
                                a["emotion"].astype(np.int64) if "emotion" in a else None, dict(r.meta),
                                a["user_text"].astype(np.int64) if "user_text" in a else None))
            if limit is not None and len(out) >= limit:
                return out
    return out


def held_emotion(emotion: np.ndarray, agent_turns: Sequence[tuple[int, int]] = ()) -> np.ndarray:
    """Per-frame emotion (shard ids) as a call is conditioned: known *before* the agent speaks.

    The records mark the agent's emotion on its speech frames only; fed like that, the switch
    from NEUTRAL would tell the model when to start talking — a cue no live call has. So each
    agent turn's (majority) emotion is held from the end of the previous agent turn to the end
    of this one, and the last turn's after it. Without turn metadata, every NEUTRAL run takes
    the emotion of the next emotional frame (after the last one, the previous emotion).
    """
    e = np.where((emotion >= 0) & (emotion < len(EMOTIONS)), emotion, 0).astype(np.int64)
    T = e.size
    turns = sorted((max(0, a), min(T, b)) for a, b in agent_turns if min(T, b) > max(0, a))
    if turns:
        out = np.zeros(T, np.int64)
        prev, value = 0, 0
        for a, b in turns:
            value = Counter(e[a:b].tolist()).most_common(1)[0][0]
            out[prev:b] = value
            prev = b
        out[prev:] = value
        return out
    out = e.copy()
    nxt = None
    for t in range(T - 1, -1, -1):
        if e[t]:
            nxt = e[t]
        elif nxt is not None:
            out[t] = nxt
    last = None
    for t in range(T):
        if e[t]:
            last = e[t]
        elif out[t] == 0 and last is not None:
            out[t] = last
    return out
