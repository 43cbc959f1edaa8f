"""The user's transcript (``user_text``, the auxiliary ASR-mode target) through the LM's
training data: dataset items and collated batches, with shards that have it and shards that do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maata.data.shards import Record, write_shard
from maata.lm.model import EMOTIONS, VOICES
from training.lm_data import DialogueDataset, collate

K, CARD, EPAD = 8, 64, 3


def _record(i: int, T: int, with_user_text: bool) -> Record:
    rng = np.random.default_rng(i)
    arrays = {"user": rng.integers(0, CARD, (K, T)).astype(np.int16),
              "agent": rng.integers(0, CARD, (K, T)).astype(np.int16),
              "text": np.full(T, EPAD, np.int32), "emotion": np.zeros(T, np.int8)}
    if with_user_text:
        ut = np.full(T, EPAD, np.int32)
        ut[[3, 5, 9]] = [300 + i, 301, 302]
        arrays["user_text"] = ut
    meta = {"id": f"d{i}", "split": "train", "voice": VOICES[i % len(VOICES)], "agent_turns": [[10, T - 2]]}
    return Record(arrays, meta)


@pytest.mark.parametrize("with_user_text", [True, False])
def test_user_text_items_and_batches(tmp_path, with_user_text):
    write_shard(tmp_path / "train" / "s.safetensors", [_record(i, 20 + 4 * i, with_user_text) for i in range(3)])
    ds = DialogueDataset(tmp_path, "train", 64, n_q=K, codebook_size=CARD, epad_id=EPAD, voices=VOICES,
                         emotions=EMOTIONS)
    items = [ds[i] for i in range(len(ds))]
    assert all(it["has_user_text"] is with_user_text for it in items)
    batch = collate(items, EPAD)
    T = max(it["agent"].shape[-1] for it in items)
    assert batch["user_text"].shape == batch["user_text_mask"].shape == (3, T)
    if with_user_text:
        for b, it in enumerate(items):
            n = it["agent"].shape[-1]
            assert torch.equal(batch["user_text"][b, :n], it["user_text"])
            assert batch["user_text_mask"][b, :n].all() and not batch["user_text_mask"][b, n:].any()
        assert batch["user_text"][0, 3].item() == 300 and (batch["user_text"][0, 10:] == EPAD).all()
    else:
        assert not batch["user_text_mask"].any() and (batch["user_text"] == EPAD).all()
    off = DialogueDataset(tmp_path, "train", 64, n_q=K, codebook_size=CARD, epad_id=EPAD, voices=VOICES,
                          emotions=EMOTIONS, user_text=False)
    assert off[0]["has_user_text"] is False
