"""Speech-LM training: data crops and batches, the three stages from the CLI, resume, DDP, overfitting.

Everything runs on small synthetic code shards (random codes written with maata.data.shards)
(tests/support/shards.py) and the tiny smoke configs (training/configs/lm_*_smoke.yaml), single-threaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from maata.lm.model import CUSTOM_VOICE, EMOTIONS, VOICES
from tests.support.ddp import dump_rank, run_two_ranks, weights_digest
from tests.support.models import TINY_FRAME
from tests.support.shards import CARD, EPAD, K, VT, write_dialogue_shards, write_pretrain_shards

torch.set_num_threads(1)


def smoke_config(stage: str, shards: Path, **overrides):
    from training.lm_trainer import load_config

    return load_config(f"lm_{stage}_smoke", {"data": {"shards": str(shards)}, **overrides})


@pytest.fixture(scope="module")
def pretrain_shards(tmp_path_factory) -> Path:
    return write_pretrain_shards(tmp_path_factory.mktemp("pretrain"))


@pytest.fixture(scope="module")
def dialogue_shards(tmp_path_factory) -> Path:
    return write_dialogue_shards(tmp_path_factory.mktemp("dialogue"))


def _train_cli(argv: list[str], monkeypatch) -> int:
    from maata import cli

    # the codec's `train` group plus ours; only the training area's commands
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["training.commands", "training.lm_commands"])
    return cli.main(argv)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


# -- data -------------------------------------------------------------------------------------------
def test_datasets_crop_pad_and_mask(pretrain_shards, dialogue_shards):
    from training.lm_data import Collate, DialogueDataset, PretrainDataset

    pre = PretrainDataset(pretrain_shards, "train", 24, n_q=K, codebook_size=CARD, epad_id=EPAD, seed=3)
    assert len(pre) == 6
    item = pre[0]
    assert item["agent"].shape == (K, 24) and (item["user"] == -1).all() and not item["has_text"]
    assert torch.equal(pre[0]["agent"], item["agent"])  # deterministic per (seed, epoch, index)
    pre.set_epoch(1)
    assert not torch.equal(pre[0]["agent"], item["agent"])  # a new crop next epoch

    dia = DialogueDataset(dialogue_shards, "train", 64, n_q=K, codebook_size=CARD, epad_id=EPAD, voices=VOICES,
                          emotions=EMOTIONS, voice_conditioning=True, emotion_conditioning=True,
                          custom_fraction=1.0, reference_frames=10, min_reference_frames=4, seed=0)
    assert len(dia) == 8  # meta split filters the mixed shards
    items = [dia[i] for i in range(3)]
    batch = Collate(EPAD)(items)
    T = max(it["agent"].shape[-1] for it in items)
    assert batch["agent"].shape == (3, K, T) and batch["user"].shape == (3, K, T)
    for b, it in enumerate(items):
        n = it["agent"].shape[-1]
        assert batch["frame_mask"][b, :n].all() and not batch["frame_mask"][b, n:].any()
        assert (batch["user"][b, :, n:] == -1).all() and (batch["text"][b, n:] == EPAD).all()
    assert batch["custom"].all() and (batch["voice"] == CUSTOM_VOICE).all()  # custom_fraction 1
    assert (batch["ref_len"] == 10).all()
    # the reference is agent speech of ANOTHER record with the SAME voice
    for idx in range(3):
        ref = dia[idx]["ref"]
        j = dia.items[idx]
        same_voice = [dia.items[p] for p in dia.by_voice[dia.voice_of[idx]] if p != idx]
        sources = [dia.records.arrays(s)["agent"].astype(np.int64) for s in same_voice]
        assert any(_contains(src, ref.numpy()) for src in sources)
        assert not _contains(dia.records.arrays(j)["agent"].astype(np.int64), ref.numpy())
    assert batch["emotion"].max() > 0  # emotion conditioning reads the field


def test_user_acoustic_dropout_keeps_only_the_semantic_codebook(dialogue_shards):
    from training.lm_data import DialogueDataset

    def items(p: float) -> list[dict]:
        ds = DialogueDataset(dialogue_shards, "train", 64, n_q=K, codebook_size=CARD, epad_id=EPAD, voices=VOICES,
                             emotions=EMOTIONS, seed=0, user_acoustic_dropout=p)
        return [ds[i] for i in range(len(ds))]

    full, dropped, half = items(0.0), items(1.0), items(0.5)
    for f, d in zip(full, dropped):
        assert torch.equal(d["user"][0], f["user"][0]) and torch.equal(d["agent"], f["agent"])
        assert (d["user"][1:] == -1).all() and (f["user"][1:] >= 0).any()
    n_dropped = sum(bool((h["user"][1:] == -1).all()) for h in half)
    assert 0 < n_dropped < len(half)  # a share of the crops, drawn per crop
    with pytest.raises(ValueError, match="user_acoustic_dropout"):
        DialogueDataset(dialogue_shards, "train", 64, n_q=K, codebook_size=CARD, epad_id=EPAD, voices=VOICES,
                        emotions=EMOTIONS, user_acoustic_dropout=1.5)


def _contains(codes: np.ndarray, piece: np.ndarray) -> bool:
    n = piece.shape[-1]
    return any(np.array_equal(codes[:, s:s + n], piece) for s in range(codes.shape[-1] - n + 1))


def test_held_emotion_gives_no_onset_cue():
    from maata.lm.dialogues import held_emotion

    e = np.array([0, 0, 0, 1, 1, 0, 0, 2, 2, 0])
    held = [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]  # each turn's emotion from the end of the one before
    assert held_emotion(e, [(3, 5), (7, 9)]).tolist() == held
    assert held_emotion(e).tolist() == held  # without turn metadata: NEUTRAL runs take the next emotion
    assert held_emotion(np.zeros(4, np.int64)).tolist() == [0, 0, 0, 0]
    assert held_emotion(np.array([0, 5, 5, -1, 99])).tolist() == [5, 5, 5, 5, 5]  # bad ids read as NEUTRAL


def test_train_lm_joins_an_existing_train_group():
    import argparse

    from training import commands, lm_commands

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    commands.register(sub)  # the codec's `train` group
    lm_commands.register(sub)
    lm_commands.register(sub)  # idempotent (e.g. also wired through add_lm_parser)
    args = parser.parse_args(["train", "lm", "--stage", "voice", "--out", "x", "--set", "a.b=1"])
    assert args.stage == "voice" and callable(args.func)
    assert parser.parse_args(["train", "codec", "--steps", "3"]).steps == 3
    assert lm_commands.overrides_from_args(args) == {"stage": "voice", "a": {"b": 1}}


def test_bad_shards_are_clear_errors(tmp_path, dialogue_shards):
    from training.lm_data import DialogueDataset, PretrainDataset

    with pytest.raises(FileNotFoundError, match="shards not found"):
        PretrainDataset(tmp_path / "nope", "train", 10, n_q=K, codebook_size=CARD, epad_id=EPAD)
    with pytest.raises(ValueError, match="no usable shards"):
        PretrainDataset(dialogue_shards, "train", 10, n_q=K, codebook_size=CARD, epad_id=EPAD)
    with pytest.raises(ValueError, match="codebook size"):
        DialogueDataset(dialogue_shards, "train", 10, n_q=K, codebook_size=8, epad_id=EPAD, voices=VOICES,
                        emotions=EMOTIONS)[0]
    with pytest.raises(ValueError, match="voice 'male_1'.*does not know"):
        DialogueDataset(dialogue_shards, "train", 10, n_q=K, codebook_size=CARD, epad_id=EPAD, voices=("x", "y"),
                        emotions=EMOTIONS, voice_conditioning=True)


# -- the stages, from the CLI -----------------------------------------------------------------------------
def test_three_stages_chain_from_the_cli(pretrain_shards, dialogue_shards, tmp_path, monkeypatch, capsys):
    from maata.lm.checkpoint import load_lm

    runs = {s: tmp_path / s for s in ("pretrain", "dialogue", "voice")}
    assert _train_cli(["train", "lm", "--stage", "pretrain", "--config", "lm_pretrain_smoke", "--shards",
                       str(pretrain_shards), "--out", str(runs["pretrain"]), "--set", "optim.lr=2e-3"],
                      monkeypatch) == 0
    assert "cb1=" in capsys.readouterr().out
    pre = load_lm(runs["pretrain"] / "lm.safetensors")
    assert "lr: 0.002" in (runs["pretrain"] / "config.yaml").read_text()
    assert _train_cli(["train", "lm", "--stage", "dialogue", "--config", "lm_dialogue_smoke", "--init-from",
                       str(runs["pretrain"]), "--shards", str(dialogue_shards), "--out", str(runs["dialogue"]),
                       "--steps", "3"], monkeypatch) == 0
    assert "text=" in capsys.readouterr().out
    dia = load_lm(runs["dialogue"] / "lm.safetensors")
    assert _train_cli(["train", "lm", "--stage", "voice", "--config", "lm_voice_smoke", "--init-from",
                       str(runs["dialogue"] / "lm.safetensors"), "--shards", str(dialogue_shards), "--out",
                       str(runs["voice"])], monkeypatch) == 0
    voice = load_lm(runs["voice"] / "lm.safetensors")

    a, b, c = pre.state_dict(), dia.state_dict(), voice.state_dict()
    assert dia.cfg == pre.cfg == voice.cfg  # later stages keep the model the first one built
    spk = [k for k in a if k.startswith(("speaker_encoder.", "speaker_proj."))]
    # the speaker encoder is frozen until the voice stage, which trains it
    assert all(torch.equal(a[k], b[k]) for k in spk)
    assert any(not torch.equal(b[k], c[k]) for k in spk)
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("temporal."))
    for run in runs.values():
        assert (run / "loss_curves.png").stat().st_size > 1000
        assert list((run / "tb").glob("events.out.tfevents.*"))
        assert (run / "lm_config.json").exists() and (run / "checkpoints").is_dir()


def test_cli_bad_inputs_exit_2(pretrain_shards, dialogue_shards, tmp_path, monkeypatch, capsys):
    base = ["train", "lm", "--config", "lm_pretrain_smoke", "--out", str(tmp_path / "run")]
    assert _train_cli(base + ["--stage", "pretrain", "--shards", str(tmp_path / "missing")], monkeypatch) == 2
    assert "shards not found" in capsys.readouterr().err
    assert _train_cli(base + ["--stage", "pretrain", "--shards", str(dialogue_shards)], monkeypatch) == 2
    assert "no usable shards" in capsys.readouterr().err
    assert _train_cli(["train", "lm", "--stage", "dialogue", "--config", "lm_dialogue_smoke", "--shards",
                       str(dialogue_shards), "--out", str(tmp_path / "d"), "--init-from", str(tmp_path / "nope")],
                      monkeypatch) == 2
    assert "--init-from" in capsys.readouterr().err
    assert _train_cli(base + ["--stage", "pretrain", "--shards", str(pretrain_shards), "--set", "nonsense"],
                      monkeypatch) == 2
    assert _train_cli(base + ["--stage", "pretrain", "--shards", str(pretrain_shards), "--set", "optim.lr_g=1"],
                      monkeypatch) == 2
    assert "unknown config key" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        _train_cli(base + ["--stage", "finetune"], monkeypatch)
    assert e.value.code == 2
    # a finished run is not overwritten by accident
    assert _train_cli(base + ["--stage", "pretrain", "--shards", str(pretrain_shards)], monkeypatch) == 0
    assert _train_cli(base + ["--stage", "pretrain", "--shards", str(pretrain_shards)], monkeypatch) == 2
    assert "--resume" in capsys.readouterr().err


# -- resume, overfit ----------------------------------------------------------------------------------------
def _run(shards: Path, out: Path, resume: bool = False, crash_after: int | None = None):
    from training.lm_trainer import LMTrainer

    cfg = smoke_config("voice", shards, steps=6, checkpoint_every=2, eval_every=3, log_every=1,
                       optim={"warmup_steps": 2})
    trainer = LMTrainer(cfg, out, resume=resume)
    trainer.start_step = trainer.step
    if crash_after is not None:  # the process dies in the middle of step crash_after + 1
        step = trainer.train_step

        def dying(batch):
            if trainer.step == crash_after:
                raise KeyboardInterrupt
            return step(batch)

        trainer.train_step = dying
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
    else:
        trainer.fit()
    return trainer


def test_resume_continues_identically(dialogue_shards, tmp_path):
    # 4 batches per epoch: the crash at step 3 is mid-epoch, steps 3..6 cross an epoch boundary,
    # with custom-voice references drawn per item, validation passes and checkpoints in between
    straight = _run(dialogue_shards, tmp_path / "straight")
    _run(dialogue_shards, tmp_path / "resumed", crash_after=3)  # the last checkpoint is step 2
    resumed = _run(dialogue_shards, tmp_path / "resumed", resume=True)
    assert resumed.start_step == 2 and resumed.step == straight.step == 6 and resumed.epoch == straight.epoch
    a, b = straight.lm.state_dict(), resumed.lm.state_dict()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, differ[:5]
    sa, sb = straight.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert straight.sched.get_last_lr() == resumed.sched.get_last_lr()
    hist = resumed.history["total"]
    assert [s for s, _ in hist] == list(range(1, 7))  # the history carries over the restart


def test_loss_decreases_on_a_tiny_fixed_dataset(tmp_path):
    from training.lm_trainer import LMTrainer

    shards = write_dialogue_shards(tmp_path / "shards", n_train=2, n_valid=0)
    cfg = smoke_config("dialogue", shards, batch_size=2, steps=30, optim={"lr": 1e-2, "warmup_steps": 0})
    trainer = LMTrainer(cfg, tmp_path / "run")
    batch = next(trainer._batches())
    losses = [float(trainer.train_step(batch)["total"]) for _ in range(25)]
    assert all(np.isfinite(losses))
    assert min(losses[-3:]) < 0.6 * losses[0], losses


def test_export_round_trip_and_streaming(dialogue_shards, tmp_path):
    from maata.lm.checkpoint import load_lm
    from training.lm_trainer import LMTrainer

    trainer = LMTrainer(smoke_config("dialogue", dialogue_shards), tmp_path / "run")
    trainer.fit()
    lm = load_lm(tmp_path / "run" / "lm.safetensors")
    trainer.lm.eval()
    user = torch.randint(0, CARD, (1, K, 12))
    agent = torch.randint(0, CARD, (1, K, 12))
    text = torch.randint(0, VT, (1, 12))
    with torch.no_grad():
        assert torch.allclose(lm(user, agent, text).audio_logits, trainer.lm(user, agent, text).audio_logits,
                              atol=1e-5)
    # export_fp16: half the bytes, the same model within float16 rounding
    half = LMTrainer(smoke_config("dialogue", dialogue_shards, export_fp16=True, steps=1), tmp_path / "half")
    half.fit()
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(str(tmp_path / "half" / "lm.safetensors")).values()
            if v.is_floating_point()} == {torch.float16}
    half.lm.eval()
    with torch.no_grad():
        assert torch.allclose(load_lm(tmp_path / "half" / "lm.safetensors")(user, agent, text).audio_logits,
                              half.lm(user, agent, text).audio_logits, atol=5e-2)
    with pytest.raises(ValueError, match="not an LM checkpoint"):
        from maata.checkpoint import save_model
        from maata.codec import Codec, load_preset

        cfg = load_preset("default", env_prefix=None, frame=TINY_FRAME,
        base_channels=2, max_channels=4, latent_dim=4,
                          transformer={"layers": 0}, quantizer={"n_q": 1, "codebook_size": 4, "codebook_dim": 2})
        load_lm(save_model(tmp_path / "c.safetensors", Codec(cfg), cfg, kind="codec"))


# -- DDP ----------------------------------------------------------------------------------------------------
DDP_STEPS = 2


def test_ddp_two_cpu_processes_keep_identical_replicas(dialogue_shards, tmp_path):
    out = tmp_path / "run"
    r0, r1 = run_two_ranks(__file__, dialogue_shards, out)
    assert r0["step"] == r1["step"] == DDP_STEPS
    differ = [k for k in r0["tensors"] if not torch.equal(r0["tensors"][k], r1["tensors"][k])]
    assert not differ, differ[:10]
    assert r0["initial"] != r0["final"]  # training moved the weights
    assert r0["custom_rows"] + r1["custom_rows"] > 0  # the speaker encoder took part
    assert (out / "lm.safetensors").exists() and (out / "checkpoints" / f"step_{DDP_STEPS:08d}").is_dir()


def _worker(shards: str, out: str) -> None:
    """One rank: train the voice stage, then dump this replica's tensors."""
    from training import distributed
    from training.lm_trainer import LMTrainer

    torch.set_num_threads(1)
    cfg = smoke_config("voice", Path(shards), steps=DDP_STEPS, checkpoint_every=DDP_STEPS, eval_every=DDP_STEPS,
                       device="cpu", voice={"custom_fraction": 0.5})
    info = distributed.init("cpu")
    trainer = LMTrainer(cfg, out, info=info)
    initial = weights_digest(trainer.lm)
    batches = trainer._batches()
    custom_rows = 0
    first = next(batches)
    custom_rows += int(first["custom"].sum())
    trainer.epoch, trainer.batch_in_epoch = 0, 0  # fit() replays from the start
    trainer.fit()
    dump_rank(out, info.rank, step=trainer.step, tensors=dict(trainer.lm.state_dict()), initial=initial,
              final=weights_digest(trainer.lm), custom_rows=custom_rows)
    distributed.cleanup()


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
