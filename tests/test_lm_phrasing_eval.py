"""``maata lm eval`` reports the right answer separately for seen and held-out phrasings when the
dialogue records say how each question was phrased (the dialogue builder's ``heldout_phrasing``)."""

from __future__ import annotations

import json
import shutil

import pytest

from maata.data.shards import ShardReader, shard_paths, write_shard
from tests.support.lm_eval import lm_cli


def test_right_answer_seen_vs_heldout_phrasings(lm_eval_models, lm_eval_shards, tmp_path, monkeypatch, capsys):
    root = tmp_path / "shards"
    shutil.copytree(lm_eval_shards, root)
    for path in shard_paths(root, "test"):
        records = list(ShardReader(path))
        for i, rec in enumerate(records):
            rec.meta["heldout_phrasing"] = i % 2 == 1
        write_shard(path, records)
    out = tmp_path / "eval"
    assert lm_cli(["lm", "eval", "--checkpoint", str(lm_eval_models["lm"]),
                   "--codec", str(lm_eval_models["codec"]), "--shards",
                   str(root), "--out", str(out), "--detector", "codes", "--threads", "1", "--batch", "4",
                   "--max-reply-seconds", "2"], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "seen phrasings" in printed and "held-out phrasings" in printed
    ra = json.loads((out / "lm_eval.json").read_text())["right_answer"]
    seen, held = ra["seen_phrasings"], ra["heldout_phrasings"]
    assert seen["n"] + held["n"] == ra["n"] and seen["n"] > 0 and held["n"] > 0
    for key in ("top1", "top3", "reference_top1", "silent_replies"):
        assert seen[key] * seen["n"] + held[key] * held["n"] == pytest.approx(ra[key] * ra["n"])


def test_no_phrasing_split_without_the_metadata(lm_eval_models, lm_eval_shards, tmp_path, monkeypatch, capsys):
    out = tmp_path / "eval"
    assert lm_cli(["lm", "eval", "--checkpoint", str(lm_eval_models["lm"]),
                   "--codec", str(lm_eval_models["codec"]), "--shards",
                   str(lm_eval_shards), "--out", str(out), "--detector", "codes", "--threads", "1", "--batch", "4",
                   "--max-reply-seconds", "2", "--limit", "2"], monkeypatch) == 0
    assert "seen phrasings" not in capsys.readouterr().out
    assert "seen_phrasings" not in json.loads((out / "lm_eval.json").read_text())["right_answer"]


def test_right_answer_text_scores_the_inner_monologue():
    """A reply whose words are intent B's answer counts for B only; wrong, partial or no words do
    not; the seen/held-out split follows the records; the records' own text is the ceiling."""
    import numpy as np

    from maata.lm.dialogues import Dialogue
    from maata.lm.evaluate import right_answer_text

    EP, T = 3, 30
    answers = {"a": [(10, 11, 12, 13)], "b": [(20, 21, 22, 23)], "c": [(10, 11, 22, 23)]}

    def dialogue(i: int, intent: str, heldout: bool) -> Dialogue:
        text = np.full(T, EP)
        text[12:16] = answers[intent][0]
        meta = {"id": f"d{i}", "kind": "qa", "intent": intent, "heldout_phrasing": heldout,
                "user_turns": [[0, 10]], "agent_turns": [[12, 20]]}
        return Dialogue(np.zeros((2, T), np.int64), np.zeros((2, T), np.int64), text, None, meta)

    def reply(words: tuple[int, ...], at: int = 14) -> np.ndarray:
        t = np.full(T, EP)
        t[at:at + len(words)] = words
        t[:at] = -1 if at == 14 else EP
        return t

    dialogues = [dialogue(0, "b", False), dialogue(1, "a", False), dialogue(2, "c", True), dialogue(3, "a", True),
                 dialogue(4, "b", True)]
    texts = [reply((20, 21, 22, 23)),   # right and exact
             reply((10, 11, 12, 99)),   # right intent, not exact
             reply((20, 21, 22, 23)),   # c asked, b answered: wrong
             reply(()),                 # silent: wrong
             reply((20, 21, 22, 23), at=26)]  # b, but only from frame 26: still in the window
    res = right_answer_text(dialogues, texts, answers, window=25, epad=EP)
    assert res["n"] == 5 and res["chance"] == pytest.approx(1 / 3)
    assert res["top1"] == pytest.approx(3 / 5) and res["exact"] == pytest.approx(2 / 5)
    assert res["silent_replies"] == pytest.approx(1 / 5) and res["reference_top1"] == 1.0
    assert res["seen_phrasings"]["top1"] == 1.0 and res["heldout_phrasings"]["top1"] == pytest.approx(1 / 3)
    # a reply after the window, or after the user speaks again, does not count
    late = right_answer_text(dialogues[:1], [reply((20, 21, 22, 23), at=26)], answers, window=10, epad=EP)
    assert late["top1"] == 0.0 and late["silent_replies"] == 1.0
