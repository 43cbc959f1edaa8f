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


# -- the head, old exports, the trainer --------------------------------------------------------------
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _tiny(user_stream: bool = True):
    from maata.lm.model import LM, load_preset

    cfg = load_preset("tiny", env_prefix=None, codebook_size=CARD, temporal={"dim": 32, "layers": 1, "heads": 2,
                                                                          "context": 32},
                      depth={"dim": 32, "layers": 1, "heads": 2}, text={"vocab_size": 400, "user_stream": user_stream},
                      conditioning={"speaker": {"dim": 16, "hidden": 16, "layers": 1, "heads": 2, "min_frames": 4,
                                                "max_frames": 32}})
    torch.manual_seed(0)
    return LM(cfg)


def test_user_text_head_logits_and_loss():
    lm = _tiny()
    B, T = 2, 12
    user, agent = torch.randint(0, CARD, (B, K, T)), torch.randint(0, CARD, (B, K, T))
    text, user_text = torch.randint(0, 400, (B, T)), torch.full((B, T), EPAD)
    user_text[:, 4] = 301
    out = lm(user, agent, text)
    assert out.user_text_logits.shape == (B, T, 400)
    plain = lm.loss(out, agent, text)
    assert plain.user_text is None
    with_user = lm.loss(out, agent, text, user_text=user_text)
    lc = lm.cfg.loss
    assert with_user.user_text > 0
    assert torch.allclose(with_user.total, plain.total + lc.user_text_weight * with_user.user_text)
    with_user.user_text.backward()
    assert lm.user_text_head.weight.grad.abs().sum() > 0
    assert lm.agent_emb.weight.grad.abs().sum() > 0  # it trains the temporal state that reads the user
    none = lm.loss(out, agent, text, user_text=user_text, user_text_mask=torch.zeros(B, T, dtype=torch.bool))
    assert float(none.user_text.detach()) == 0.0
    off = _tiny(user_stream=False)
    assert off.user_text_head is None and off(user, agent, text).user_text_logits is None


def test_exports_without_the_head_still_load(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from maata.checkpoint import read_metadata, save_model
    from maata.lm.checkpoint import load_lm, read_lm_config

    # an export as written before the head existed: no user_stream key in its config at all
    made = save_model(tmp_path / "made.safetensors", _tiny(user_stream=False), _tiny(user_stream=False).cfg,
                      kind="lm")
    meta = read_metadata(made)
    cfg = json.loads(meta["config"])
    del cfg["text"]["user_stream"]
    demo = tmp_path / "old.safetensors"
    save_file(load_file(str(made)), str(demo), metadata={**meta, "config": json.dumps(cfg)})
    assert "user_stream" not in read_metadata(demo)["config"]
    lm = load_lm(demo)
    assert lm.user_text_head is None and lm.cfg.text.user_stream is False
    lm.add_user_text_head()
    assert lm.user_text_head.weight.shape == (lm.text_vocab, lm.cfg.temporal.dim)
    path = save_model(tmp_path / "lm.safetensors", lm, lm.cfg, kind="lm")
    again = load_lm(path)
    assert read_lm_config(path).text.user_stream is True
    assert torch.equal(again.user_text_head.weight, lm.user_text_head.weight)


def test_trainer_adds_the_head_trains_it_and_runs_the_curriculum(tmp_path):
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from tests.support.shards import write_dialogue_shards

    from maata.checkpoint import save_model
    from maata.data.shards import ShardReader, shard_paths
    from training.lm_trainer import LMTrainer, load_config

    shards = write_dialogue_shards(tmp_path / "shards", n_train=4, n_valid=2, by_folder=True)
    for split in ("train", "valid"):
        for path in shard_paths(shards, split):
            records = list(ShardReader(path))
            for rec in records:
                ut = np.full(rec.frames, EPAD, np.int32)
                ut[2:6] = [10, 11, 12, 13]
                rec.arrays["user_text"] = ut
            write_shard(path, records)
    old = _tiny(user_stream=False)  # stands for an export made before the head existed
    init = save_model(tmp_path / "old.safetensors", old, old.cfg, kind="lm")
    cfg = load_config("lm_dialogue_smoke", {"data": {"shards": str(shards)}, "init_from": str(init),
                                            "loss": {"curriculum_text_steps": 1}, "batch_size": 2})
    trainer = LMTrainer(cfg, tmp_path / "run")
    assert trainer.lm.user_text_head is not None and trainer.lm.user_text_head.weight.requires_grad
    batches = trainer._batches()
    first = trainer.train_step(next(batches))  # the text phase: audio weighted 0
    assert "user_text" in first and float(first["user_text"]) > 0
    total_text = float(first["text"]) * trainer.step_module.text_weight + \
        float(first["user_text"]) * trainer.step_module.user_text_weight
    assert float(first["total"]) == pytest.approx(total_text, rel=1e-4)
    trainer.step = 1
    second = trainer.train_step(next(batches))  # then everything
    assert float(second["total"]) > float(second["text"]) * trainer.step_module.text_weight
    valid = trainer.evaluate()  # hearing is reported on the valid speakers too
    assert valid is not None and valid["user_text"] > 0 and 0.0 <= valid["user_text_acc"] <= 1.0
    pre = LMTrainer(load_config("lm_dialogue_smoke", {"data": {"shards": str(shards)},
                                                      "loss": {"user_text": False}}), tmp_path / "run2")
    assert pre.lm.user_text_head is not None and not pre.lm.user_text_head.weight.requires_grad
    assert "user_text" not in pre.train_step(next(pre._batches()))
    assert "user_text" not in (pre.evaluate() or {})


def test_eval_reports_how_many_user_words_the_head_recognises():
    """``teacher_forced`` scores the user-transcript head on the user's words only (EPAD frames and
    frames without agent codes left out): a head that always says token 7 gets the share of 7s."""
    from maata.lm.dialogues import Dialogue
    from maata.lm.evaluate import teacher_forced

    lm = _tiny().eval()
    with torch.no_grad():
        lm.user_text_head.weight.zero_()
        lm.user_text_head.bias.fill_(-10.0)
        lm.user_text_head.bias[7] = 10.0
    T = 12
    rng = np.random.default_rng(0)

    def dialogue(words: dict[int, int]) -> Dialogue:
        ut = np.full(T, EPAD)
        for t, w in words.items():
            ut[t] = w
        codes = rng.integers(0, CARD, (2, K, T))
        return Dialogue(codes[0], codes[1], None, None, {"id": "x"}, ut)

    res = teacher_forced(lm, [dialogue({2: 7, 5: 9}), dialogue({1: 7, 3: 7, 8: 11})], batch=2)
    assert res["user_text_acc_words"] == pytest.approx(3 / 5)
    none = teacher_forced(lm, [Dialogue(*rng.integers(0, CARD, (2, K, T)), None, None, {"id": "y"})])
    assert none["user_text_acc_words"] is None  # records without a transcript
