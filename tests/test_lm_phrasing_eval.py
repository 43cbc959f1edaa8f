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
