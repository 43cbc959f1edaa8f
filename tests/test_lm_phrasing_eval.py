"""``maata lm eval`` reports the right answer separately for seen and held-out phrasings when the
dialogue records say how each question was phrased (the dialogue builder's ``heldout_phrasing``)."""

from __future__ import annotations

import json
import shutil

import pytest

from maata.data.shards import ShardReader, shard_paths, write_shard
from test_lm_eval import _cli, models, shards  # noqa: F401  (module fixtures: tiny codec + LM, dialogue shards)


def test_right_answer_seen_vs_heldout_phrasings(models, shards, tmp_path, monkeypatch, capsys):  # noqa: F811
    root = tmp_path / "shards"
    shutil.copytree(shards, root)
    for path in shard_paths(root, "test"):
        records = list(ShardReader(path))
        for i, rec in enumerate(records):
            rec.meta["heldout_phrasing"] = i % 2 == 1
        write_shard(path, records)
    out = tmp_path / "eval"
    assert _cli(["lm", "eval", "--checkpoint", str(models["lm"]), "--codec", str(models["codec"]), "--shards",
                 str(root), "--out", str(out), "--detector", "codes", "--threads", "1", "--batch", "4",
                 "--max-reply-seconds", "2"], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "seen phrasings" in printed and "held-out phrasings" in printed
    ra = json.loads((out / "lm_eval.json").read_text())["right_answer"]
    seen, held = ra["seen_phrasings"], ra["heldout_phrasings"]
    assert seen["n"] + held["n"] == ra["n"] and seen["n"] > 0 and held["n"] > 0
    for key in ("top1", "top3", "reference_top1", "silent_replies"):
        assert seen[key] * seen["n"] + held[key] * held["n"] == pytest.approx(ra[key] * ra["n"])


def test_no_phrasing_split_without_the_metadata(models, shards, tmp_path, monkeypatch, capsys):  # noqa: F811
    out = tmp_path / "eval"
    assert _cli(["lm", "eval", "--checkpoint", str(models["lm"]), "--codec", str(models["codec"]), "--shards",
                 str(shards), "--out", str(out), "--detector", "codes", "--threads", "1", "--batch", "4",
                 "--max-reply-seconds", "2", "--limit", "2"], monkeypatch) == 0
    assert "seen phrasings" not in capsys.readouterr().out
    assert "seen_phrasings" not in json.loads((out / "lm_eval.json").read_text())["right_answer"]
