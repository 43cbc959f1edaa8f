"""Codec training: losses, discriminators, the loop, checkpoint/resume, every preset, the CLI.

Everything runs on a tiny synthetic corpus (tones, chirps and noise written as WAVs with a
manifest, phoneme alignments and vocabulary) read by maata.data.dataset.CodecDataset, and tiny
model overrides (training/configs/codec_smoke.yaml), single-threaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from maata.codec.model import preset_names
from maata.data.phonemes import IGNORE, PhonemeVocab
from maata.nn.mel import mel_filterbank
from training import checkpointing, codec_trainer
from training.codec_trainer import CodecTrainer
from training.discriminators import Discriminator, DiscriminatorConfig
from tests.support.corpus import SR, smoke_config, write_corpus
from tests.support.models import TINY_FRAME
from training.losses import (MultiScaleMelLoss, code_counts, codebook_stats, discriminator_hinge_loss,
                             feature_matching_loss, generator_hinge_loss, semantic_loss)

torch.set_num_threads(1)

# a tiny codec v2 (frame-rate, the default preset) for the v2-only recipe steps
TINY_V2 = {"preset": "default", "overrides": {"frame": TINY_FRAME, "transformer": {"layers": 0}}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _tensors(*modules: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v for i, m in enumerate(modules) for k, v in m.state_dict().items()}


# -- losses -----------------------------------------------------------------------------------
def test_mel_filterbank_covers_the_spectrum():
    fb = mel_filterbank(SR, 1024, 80)
    assert fb.shape == (80, 513)
    assert (fb >= 0).all() and (fb.sum(1) > 0).all()  # no empty band
    assert (fb[:, 1:-1].sum(0) > 0).all()  # every inner bin feeds some band


def test_mel_loss_is_zero_for_identical_inputs_and_positive_otherwise():
    loss = MultiScaleMelLoss(SR, (32, 64, 128, 256, 512, 1024, 2048), (5, 10, 20, 40, 80, 160, 320))
    x = 0.1 * torch.randn(2, 1, 8000)
    assert loss(x, x.clone()).item() == 0.0
    assert loss(x, x + 0.01 * torch.randn_like(x)).item() > 0.0
    assert loss(0.5 * x, x).item() > loss(0.9 * x, x).item() > 0.0  # grows with the distortion
    with pytest.raises(ValueError, match="shape"):
        loss(x, x[..., :-1])


def test_hinge_and_feature_losses():
    real = [(torch.full((2, 1, 5), 2.0), [torch.ones(2, 3, 5)])]
    fake = [(torch.full((2, 1, 5), -2.0), [torch.zeros(2, 3, 5)])]
    assert discriminator_hinge_loss(real, fake).item() == 0.0  # confident and right: saturated
    assert discriminator_hinge_loss(fake, real).item() == pytest.approx(6.0)  # 3 + 3
    assert generator_hinge_loss(fake).item() == pytest.approx(3.0)
    assert generator_hinge_loss(real).item() == 0.0
    assert feature_matching_loss(real, fake).item() == pytest.approx(1.0)
    assert feature_matching_loss(real, real).item() == 0.0


def test_semantic_loss_aligns_labels_and_ignores_unlabelled_frames():
    logits = torch.randn(2, 5, 8, requires_grad=True)
    labels = torch.tensor([[1, 2, IGNORE, 3], [IGNORE] * 4])  # one frame short of the logits
    loss, acc = semantic_loss(logits, labels)
    ref = torch.nn.functional.cross_entropy(logits[0, [0, 1, 3]], torch.tensor([1, 2, 3]))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert 0.0 <= acc.item() <= 1.0
    none, _ = semantic_loss(logits, torch.full((2, 5), IGNORE))
    none.backward()  # no labels: exact zero, still connected to the graph (DDP needs every grad)
    assert none.item() == 0.0 and logits.grad is not None


def test_codebook_usage_counts_only_active_levels():
    codes = torch.tensor([[[0, 1, 1], [2, 2, 2]], [[3, 3, 3], [0, 0, 0]]])  # [B=2, n_q=2, F=3]
    counts = code_counts(codes, torch.tensor([2, 1]), codebook_size=4)
    assert counts.tolist() == [[1, 2, 0, 3], [0, 0, 3, 0]]  # item 1's level 2 was dropped
    usage, perplexity = codebook_stats(counts)
    assert usage.tolist() == [0.75, 0.25]
    assert perplexity[1].item() == pytest.approx(1.0)


# -- discriminators ---------------------------------------------------------------------------
def test_discriminator_output_shapes():
    cfg = DiscriminatorConfig(period_channels=(4, 8, 8, 16, 16), stft_channels=4)
    disc = Discriminator(cfg)
    x = (0.1 * torch.randn(3, 1, 8000)).requires_grad_()
    out = disc(x)
    assert len(out) == len(cfg.periods) + len(cfg.fft_sizes) == 8
    for (logits, fmaps), p in zip(out[:5], cfg.periods):
        rows = -(-8000 // p)
        for _ in range(4):  # four stride-3 layers fold the time axis
            rows = (rows - 1) // 3 + 1
        assert logits.shape == (3, 1, rows, p)
        assert len(fmaps) == len(cfg.period_channels) + 1 and fmaps[-1] is logits
        assert [f.shape[1] for f in fmaps[:-1]] == list(cfg.period_channels)
    for (logits, fmaps), n_fft in zip(out[5:], cfg.fft_sizes):
        frames = 8000 // (n_fft // 4) + 1
        assert logits.shape[:3] == (3, 1, frames)
        assert len(fmaps) == 5 * len(cfg.bands) + 1 and fmaps[-1] is logits
    generator_hinge_loss(out).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in disc.parameters())
    with pytest.raises(ValueError, match=r"\[B, 1, T\]"):
        disc(x[:, 0])


# -- the trainer ------------------------------------------------------------------------------
def test_training_reduces_the_loss_on_a_fixed_batch(corpus, tmp_path):
    cfg = smoke_config(corpus, adv_start_step=10_000,
                       codec={"overrides": {"quantizer": {"dropout_prob": 0.0}}})
    trainer = CodecTrainer(cfg, tmp_path / "run")
    batch = next(trainer._batches())
    mel = [float(trainer.train_step(batch)["mel"]) for _ in range(15)]
    assert all(np.isfinite(mel))
    assert min(mel[-3:]) < 0.85 * mel[0], mel


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_does_a_training_step(corpus, tmp_path, preset):
    cfg = smoke_config(corpus, codec={"preset": preset}, adv_start_step=0)
    trainer = CodecTrainer(cfg, tmp_path / "run")
    before = {k: v.clone() for k, v in _tensors(trainer.codec, trainer.disc).items()}
    metrics = trainer.train_step(next(trainer._batches()))
    for name in ("mel", "commit", "semantic", "adv", "feature", "d", "grad_norm_g", "grad_norm_d"):
        assert torch.isfinite(metrics[name]), (name, metrics[name])
    assert metrics["semantic"] > 0  # the corpus has alignments and a vocabulary
    after = _tensors(trainer.codec, trainer.disc)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("0.") for k in changed) and any(k.startswith("1.") for k in changed)


def _run(corpus: Path, out: Path, steps: int, resume: bool = False, checkpoint_every: int = 2) -> CodecTrainer:
    cfg = smoke_config(corpus, steps=steps, adv_start_step=1, eval_every=2, checkpoint_every=checkpoint_every,
                       log_every=1)
    trainer = CodecTrainer(cfg, out, resume=resume)
    trainer.fit()
    return trainer


def test_resume_continues_bit_identically(corpus, tmp_path):
    # 3 batches per epoch: stopping at step 2 stops mid-epoch; steps 3..5 cross an epoch
    # boundary, and the run has discriminator steps, validation passes and checkpoints in it.
    straight = _run(corpus, tmp_path / "straight", steps=5, checkpoint_every=100)
    _run(corpus, tmp_path / "resumed", steps=2, checkpoint_every=100)  # ends with a checkpoint at step 2
    resumed = _run(corpus, tmp_path / "resumed", steps=5, resume=True, checkpoint_every=100)
    assert resumed.step == straight.step == 5 and resumed.epoch == straight.epoch
    a, b = _tensors(straight.codec, straight.disc), _tensors(resumed.codec, resumed.disc)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, differ[:5]
    sa, sb = straight.opt_g.state_dict()["state"], resumed.opt_g.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


def test_validation_reads_at_most_valid_max_batches_and_leaves_the_rng_alone(corpus, tmp_path):
    """The trainers' shared valid reader: this rank's valid clips in order, capped at
    ``valid_max_batches``, and the training RNG streams as they were."""
    def trainer_reading(batches: int) -> CodecTrainer:
        data = {"manifest": str(corpus), "valid_max_batches": batches}
        return CodecTrainer(smoke_config(corpus, batch_size=1, data=data), tmp_path / str(batches))

    trainer, full = trainer_reading(1), trainer_reading(99)
    assert len(full.valid_set) == 2
    before = torch.get_rng_state()  # a DataLoader draws its base seed from it
    with trainer.valid_batches() as batches:
        capped = [b["wav"] for b in batches]
    with full.valid_batches() as batches:
        every = [b["wav"] for b in batches]
    assert len(capped) == 1 and len(every) == 2 and torch.equal(capped[0], every[0])
    assert torch.equal(torch.get_rng_state(), before)


def test_run_outputs_and_checkpoint_pruning(corpus, tmp_path):
    from maata.checkpoint import load_codec

    out = tmp_path / "run"
    trainer = _run(corpus, out, steps=6)
    steps = [s for s, _ in checkpointing.list_checkpoints(out)]
    assert steps == [4, 6]  # keep_last 2 of 2, 4, 6
    ckpt = checkpointing.latest(out)
    assert {p.name for p in ckpt.iterdir()} == {"codec.safetensors", "discriminator.safetensors", "state.pt"}
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert state["step"] == 6 and len(state["rng"]) == 1 and "valid_mel" in state["history"]
    codec = load_codec(out / "codec.safetensors")
    assert codec.cfg == trainer.codec.cfg
    wav = 0.1 * torch.randn(1, 1, 3200)
    trainer.codec.eval()
    with torch.no_grad():
        assert torch.allclose(codec(wav).audio, trainer.codec(wav).audio, atol=1e-5)
    assert (out / "loss_curves.png").stat().st_size > 1000
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "config.yaml").exists()
    assert PhonemeVocab.load(out / "phoneme_vocab.json") == PhonemeVocab.load(PhonemeVocab.path_for(corpus))
    with pytest.raises(ValueError, match="--resume"):
        CodecTrainer(smoke_config(corpus), out)


def test_cli_trains_codec_for_two_steps(corpus, tmp_path, monkeypatch, capsys):
    from maata import cli

    # only this area's commands: the other areas' command modules are not this test's concern
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["training.commands"])
    out = tmp_path / "cli_run"
    rc = cli.main(["train", "codec", "--config", "codec_smoke", "--manifest", str(corpus), "--out", str(out),
                   "--steps", "2", "--set", "optim.lr_g=5e-4"])
    assert rc == 0
    assert (out / "codec.safetensors").exists()
    assert "mel=" in capsys.readouterr().out
    assert "lr_g: 0.0005" in (out / "config.yaml").read_text()
    assert cli.main(["train", "codec", "--config", "codec_smoke", "--manifest", str(corpus), "--out", str(out),
                     "--set", "nonsense"]) == 2  # a bad override is a one-line user error


def test_config_rejects_unknown_keys(corpus):
    with pytest.raises(ValueError, match="unknown config key"):
        smoke_config(corpus, optim={"lr": 1.0})
    assert codec_trainer.resolve_config_path("codec_default").name == "codec_default.yaml"


def test_bf16_autocast_step_keeps_the_quantizer_in_float32(corpus, tmp_path):
    """The CUDA path (bf16 autocast), exercised with CPU autocast: a high dead-code threshold
    makes the quantizer re-seed codes from batch vectors at once, which must not see bf16."""
    cfg = smoke_config(corpus, adv_start_step=0, codec={"overrides": {"quantizer": {"dead_code_threshold": 1.0}}})
    trainer = CodecTrainer(cfg, tmp_path / "run")
    trainer._autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    metrics = trainer.train_step(next(trainer._batches()))
    assert all(torch.isfinite(v) for v in metrics.values())
    assert all(b.dtype in (torch.float32, torch.bool) for b in trainer.codec.quantizer.buffers())


def test_v2_warms_up_without_the_quantizer_then_starts_codebooks_by_kmeans(corpus, tmp_path):
    """Codec v2's recipe: autoencoder steps first (no codes), k-means codebooks from encoder
    outputs at the switch, spectral + complex STFT losses, and the held-out quality curve."""
    import json

    cfg = smoke_config(corpus, codec=TINY_V2, adv_start_step=1000, quantizer_warmup_steps=2, kmeans_batches=3,
                       kmeans_iters=3, steps=4, weights={"stft": 1.0, "complex": 1.0}, quality_every=4,
                       quality_clips=2, eval_every=4, checkpoint_every=4)
    trainer = CodecTrainer(cfg, tmp_path / "run")
    assert trainer.codec.cfg.arch == "stft" and not trainer.quantizer_ready()
    embed_before = trainer.codec.quantizer.levels[0].embed.clone()
    batches = trainer._batches()
    warm = trainer.train_step(next(batches))
    assert "stft" in warm and "complex" in warm and float(warm["commit"]) == 0.0  # no quantizer yet
    assert trainer._code_counts.sum() == 0
    trainer.step = 2  # the warm-up ends: this step initialises the codebooks first
    trainer.train_step(next(batches))
    assert trainer.quantizer_ready()
    assert not torch.equal(trainer.codec.quantizer.levels[0].embed, embed_before)
    assert trainer._code_counts.sum() > 0
    trainer.step = 3
    trainer.fit()
    curve = json.loads((tmp_path / "run" / "quality.json").read_text())
    assert curve["stoi"][-1][0] == 4 and 0.0 <= curve["stoi"][-1][1] <= 1.0
    assert (tmp_path / "run" / "quality.png").exists()


def test_kmeans_init_places_codes_on_the_data(corpus):
    """k-means codebooks quantise clustered latents far better than random codebooks."""
    from maata.codec.quantizer import ResidualVQ

    torch.manual_seed(0)
    centers = torch.randn(8, 6) * 3
    data = centers[torch.randint(0, 8, (800,))] + 0.05 * torch.randn(800, 6)
    rvq = ResidualVQ(6, 2, 16, 6, l2norm=False)  # 16 codes for 8 clusters: Lloyd's local optima aside
    rvq.train()
    errors = rvq.kmeans_init(data, iters=20)
    assert errors[0] < 0.05 and all(bool(vq.initialized) for vq in rvq.levels)
    random_error = (data - torch.randn(16, 6)[torch.randint(0, 16, (800,))]).pow(2).mean()
    assert errors[0] < 0.1 * float(random_error)


def test_warm_restart_from_an_exported_checkpoint(corpus, tmp_path):
    """Trainer state is not kept in git: a new run can start from the exported weights (fresh
    optimiser), skipping the quantizer warm-up because the codebooks are already trained."""
    common = dict(codec=TINY_V2, adv_start_step=1000, quantizer_warmup_steps=1, kmeans_batches=2, kmeans_iters=2,
                  steps=2, eval_every=2, checkpoint_every=2)
    first = CodecTrainer(smoke_config(corpus, **common), tmp_path / "a")
    first.fit()
    exported = tmp_path / "a" / "codec.safetensors"
    warm = CodecTrainer(smoke_config(corpus, **{**common, "quantizer_warmup_steps": 500}, init_from=str(exported)),
                        tmp_path / "b")
    assert warm.quantizer_ready() and warm.step == 0
    for k, v in _tensors(first.codec).items():
        torch.testing.assert_close(_tensors(warm.codec)[k], v)
    metrics = warm.train_step(next(warm._batches()))
    assert float(metrics["commit"]) > 0  # quantised from the first step: no second warm-up
    with pytest.raises(ValueError, match="does not fit"):
        CodecTrainer(smoke_config(corpus, init_from=str(exported)), tmp_path / "c")  # the SEANet smoke codec
