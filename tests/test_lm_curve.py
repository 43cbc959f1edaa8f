"""``maata train curve``: the LM's learning curve over the checkpoints of its stages.

Two tiny stages (dialogue, then voice) train on the LM evaluation's shards; the curve evaluates
their checkpoints with the real evaluation, accumulates steps over the stages, writes JSON and a
PNG, and reuses what it has already evaluated."""

from __future__ import annotations

import json

import pytest
import torch

from tests.support.lm_eval import lm_cli

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def two_stages(lm_eval_shards, tmp_path_factory):
    from training.lm_trainer import load_config, train

    root = tmp_path_factory.mktemp("curve_runs")
    over = {"data": {"shards": str(lm_eval_shards), "valid_split": "test"}, "steps": 4, "checkpoint_every": 2,
            "keep_last": 5}
    train(load_config("lm_dialogue_smoke", over), root / "dialogue")
    train(load_config("lm_voice_smoke", {**over, "init_from": str(root / "dialogue"), "steps": 2}), root / "voice")
    return root / "dialogue", root / "voice"


def test_curve_points_accumulate_over_stages(two_stages, tmp_path):
    from training.lm_curve import curve_points, load_point

    dialogue, voice = two_stages
    points = curve_points([dialogue, voice])
    assert [(p.stage_step, p.step) for p in points] == [(2, 2), (4, 4), (2, 6)]
    assert [p.run for p in points] == [str(dialogue)] * 2 + [str(voice)]
    assert [(p.step) for p in curve_points([dialogue, voice], every=2)] == [4, 6]  # every 2nd, and each run's last
    # a checkpoint loads as the model it saved
    lm = load_point(points[0])
    assert not lm.training and lm.cfg.temporal.dim == 32
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        curve_points([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither checkpoints nor"):
        curve_points([tmp_path / "empty"])


def test_curve_cli_writes_json_png_and_reuses_points(two_stages, lm_eval_models, lm_eval_shards, tmp_path,
                                                     monkeypatch, capsys):
    dialogue, voice = two_stages
    out = tmp_path / "curve"
    argv = ["train", "curve", "--run", str(dialogue), "--run", str(voice), "--codec", str(lm_eval_models["codec"]),
            "--shards", str(lm_eval_shards), "--limit", "3", "--batch", "3", "--threads", "1", "--out", str(out)]
    monkeypatch.setattr("maata.cli.COMMAND_MODULES", ["training.commands", "training.lm_commands"])
    from maata import cli

    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "right (spoken)" in printed and "curve.png" in printed
    data = json.loads((out / "curve.json").read_text())
    assert data["settings"]["sampling"]["temperature"] == 0.8  # the served sampling by default, not greedy
    rows = data["rows"]
    assert [r["step"] for r in rows] == [2, 4, 6] and [r["stage"] for r in rows] == ["dialogue", "dialogue", "voice"]
    for r in rows:
        for key in ("right_answer", "right_answer_text", "text_acc_words"):
            assert r[key] is None or 0.0 <= r[key] <= 1.0, key
        assert r["ce_codebook1"] > 0 and r["chance"] == pytest.approx(1 / 3)
    assert (out / "curve.png").stat().st_size > 5000

    # a second run evaluates nothing again: the points are in curve.json
    def boom(*a, **k):
        raise AssertionError("evaluated a cached point")

    monkeypatch.setattr("maata.lm.evaluate.evaluate", boom)
    assert cli.main(argv) == 0
    assert json.loads((out / "curve.json").read_text())["rows"] == rows
    # continuing the curve in a later session: the dialogue stage's folder is gone, its rows stay
    # as history up to --start-step, and the voice run's points follow on from it
    gone = tmp_path / "gone_dialogue"
    later = tmp_path / "later"
    later.mkdir()
    history = []
    for r in rows:
        if r["stage"] == "dialogue":
            key = json.loads(r["key"])
            key[0] = str(gone)
            r = {**r, "run": str(gone), "key": json.dumps(key, sort_keys=True)}
        history.append(r)
    (later / "curve.json").write_text(json.dumps({"settings": data["settings"], "rows": history}))
    cont = [*argv[:2], "--run", str(voice), *argv[6:-1], str(later), "--start-step", "4"]
    assert cli.main(cont) == 0
    continued = json.loads((later / "curve.json").read_text())["rows"]
    assert [(r["step"], r["run"]) for r in continued] == [(2, str(gone)), (4, str(gone)), (6, str(voice))]
    # without --start-step the same folder makes a new curve: no history, the voice run from step 0
    assert cli.main(cont[:-2]) == 0
    assert [(r["step"], r["run"]) for r in json.loads((later / "curve.json").read_text())["rows"]] == [(2, str(voice))]
    # a row written by an older version of the curve is evaluated again
    data["rows"][0]["version"] = 1
    (out / "curve.json").write_text(json.dumps(data))
    with pytest.raises(AssertionError, match="evaluated a cached point"):
        cli.main(argv)
    # bad input: exit 2 with a message
    assert cli.main([*argv[:2], "--run", str(tmp_path / "nope"), *argv[4:]]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert cli.main([*argv, "--limit", "0"]) == 2
