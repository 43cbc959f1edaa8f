"""Codec training loop: reconstruction + RVQ + semantic losses, then the GAN, on 1..N processes.

One step (DAC / EnCodec recipe)::

    out = codec(wav)                                   # reconstruction, codes, VQ losses, phoneme logits
    if step >= adv_start_step:                         # discriminator step on detached audio
        L_D = hinge(D(wav), D(out.audio.detach()))
    L_G = w_mel·mel + w_commit·commit + w_codebook·codebook + w_sem·phoneme CE
          [+ w_adv·hinge_G(D(out.audio)) + w_feat·feature matching]   # after adv_start_step

Both optimisers are AdamW (β = 0.8, 0.99) with an exponential LR decay per step; gradients are
clipped; on CUDA the forward passes run under bf16 autocast (spectra and losses stay float32).
The loop, logging, validation schedule and checkpoints are ``training.base.Trainer``'s.
The training YAML (``training/configs/codec_default.yaml``) picks the codec by preset name plus
overrides, so one trainer trains every preset. Under ``torchrun`` each process trains on its
shard of the data with DDP; rank 0 alone logs (TensorBoard, tqdm), plots, checkpoints and
exports ``<out>/codec.safetensors`` (``maata.checkpoint.load_codec`` reads it).

Run layout::

    <out>/config.yaml            the resolved training config
    <out>/tb/                    TensorBoard scalars (losses, grad norms, codebook usage, LR, speed)
    <out>/checkpoints/step_*/    resumable training state (training/checkpointing.py)
    <out>/loss_curves.png        redrawn at every checkpoint
    <out>/codec.safetensors      inference export (+ the phoneme vocabulary beside it, if any)
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from maata import config as cfglib
from maata.checkpoint import save_model
from maata.codec.model import Codec, CodecConfig, CodecOutput, load_preset
from training import checkpointing, distributed
from training.base import RunConfig, Trainer, plot_history, resolve_config_path, run
from training.discriminators import Discriminator, DiscriminatorConfig
from training.losses import (MultiResolutionSTFTLoss, MultiScaleMelLoss, code_counts, codebook_stats, discriminator_hinge_loss,
                             feature_matching_loss, generator_hinge_loss, semantic_loss, split_batch)

log = logging.getLogger(__name__)


# -- configuration --------------------------------------------------------------------------
@dataclass
class CodecSpec:
    preset: str = "default"  # a name from maata/codec/presets or a YAML path
    overrides: dict[str, Any] = field(default_factory=dict)  # nested CodecConfig fields


@dataclass
class DataConfig:
    manifest: str = "data/manifest.jsonl"
    train_split: str = "train"
    valid_split: str = "valid"
    segment_seconds: float = 1.0
    valid_segment_seconds: float = 2.0
    augment: bool = True
    num_workers: int = 1
    valid_max_batches: int = 16  # bounds the time of a validation pass


@dataclass
class OptimConfig:
    lr_g: float = 3e-4
    lr_d: float = 1e-4
    betas: tuple[float, float] = (0.8, 0.99)
    weight_decay: float = 0.01
    lr_gamma: float = 0.999996  # ExponentialLR factor per optimiser step
    clip_g: float = 1000.0
    clip_d: float = 10.0


@dataclass
class LossWeights:
    mel: float = 15.0
    adv: float = 1.0
    feature: float = 2.0
    commit: float = 0.25
    codebook: float = 1.0
    semantic: float = 1.0
    stft: float = 0.0  # multi-resolution spectral convergence + log-magnitude (frame-rate codec)
    complex: float = 0.0  # compressed complex STFT: phase coherence without a discriminator


@dataclass
class StftLossConfig:
    fft_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    complex_compress: float = 0.3


@dataclass
class MelLossConfig:
    windows: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
    n_mels: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320)
    log_weight: float = 1.0
    mag_weight: float = 0.0
    clamp_eps: float = 1e-5


@dataclass
class TrainConfig(RunConfig):
    codec: CodecSpec = field(default_factory=CodecSpec)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    weights: LossWeights = field(default_factory=LossWeights)
    mel: MelLossConfig = field(default_factory=MelLossConfig)
    stft: StftLossConfig = field(default_factory=StftLossConfig)
    steps: int = 200_000  # (RunConfig: batch size, seed, device, logging and checkpoint intervals)
    adv_start_step: int = 0
    # Autoencoder warm-up: the first steps skip the quantizer; then every codebook starts from
    # k-means on encoder outputs (kmeans_batches batches, kmeans_iters Lloyd iterations).
    quantizer_warmup_steps: int = 0
    kmeans_batches: int = 32
    kmeans_iters: int = 10
    export_fp16: bool = False  # the inference export in float16 (half the size; loads as float32)
    # Held-out quality curve: every quality_every steps, PESQ-WB and STOI of quality_clips
    # clips of the valid split (speakers disjoint from train and test), streamed through the
    # codec as a service would; <out>/quality.png and quality.json. 0 turns it off.
    quality_every: int = 0
    quality_clips: int = 8
    # Warm restart: start a new run from an inference checkpoint's weights (codebooks included)
    # with a fresh optimiser, for when a run's trainer state is gone (it is not kept in git).
    # The quantizer warm-up is skipped: the codebooks are already trained.
    init_from: str = ""


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Training config from YAML (``base:`` overlays allowed) + overrides + ``MAATA_TRAIN__*`` env."""
    return cfglib.load(TrainConfig, resolve_config_path(path), env_prefix="MAATA_TRAIN__", overrides=overrides)


def load_inference_weights(codec: Codec, path: str | Path) -> None:
    """Copy an exported checkpoint's weights into a training codec of the same shape."""
    from maata.checkpoint import load_weights, read_metadata

    meta = read_metadata(path)
    if meta.get("kind") != "codec":
        raise ValueError(f"{path} is not a codec checkpoint (kind={meta.get('kind')!r})")
    weights = {k: v.float() if v.is_floating_point() else v for k, v in load_weights(path).items()}
    try:
        codec.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit this run's codec (preset {codec.cfg.name!r}, arch {codec.cfg.arch!r}); "
                         f"a warm restart needs the same preset and overrides, and an architecture without weight "
                         f"norm (arch stft): {str(e).splitlines()[0]}") from None


def build_codec(spec: CodecSpec) -> Codec:
    """The codec of a preset + overrides, its quantizer kept in float32 under autocast."""
    cfg: CodecConfig = load_preset(spec.preset, env_prefix=None, **spec.overrides)
    codec = Codec(cfg)
    run_in_float32(codec.quantizer)
    return codec


def run_in_float32(module: nn.Module) -> nn.Module:
    """Run ``module``'s forward with autocast off and float32 inputs, even inside bf16 autocast.

    Used for the RVQ: nearest-code search and EMA codebook statistics need float32 (bf16
    sums over a batch lose codes), and its dead-code re-seeding writes batch vectors into
    float32 buffers, which fails for bf16 vectors. (Once the quantizer guards this itself,
    this wrapper is a harmless no-op.)
    """
    contexts: list[torch.autocast] = []

    def enter(mod: nn.Module, args: tuple) -> tuple:
        device = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        ctx = torch.autocast(device_type=device, enabled=False)
        ctx.__enter__()
        contexts.append(ctx)
        return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    def leave(mod: nn.Module, args: tuple, output: Any) -> None:
        contexts.pop().__exit__(None, None, None)

    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave, always_call=True)
    return module


# -- data -----------------------------------------------------------------------------------
def load_vocab(manifest: Path) -> tuple[Any, Path | None]:
    """The phoneme vocabulary saved next to the manifest, or (None, None) without one."""
    from maata.data.phonemes import PhonemeVocab

    path = PhonemeVocab.path_for(manifest)
    return (PhonemeVocab.load(path), path) if path.exists() else (None, None)


def build_dataset(cfg: TrainConfig, codec_cfg: CodecConfig, split: str, segment_seconds: float, augment: bool,
                  vocab: Any) -> Dataset:
    from maata.data.dataset import CodecDataset

    return CodecDataset(cfg.data.manifest, split, segment_seconds, sample_rate=codec_cfg.sample_rate,
                        hop=codec_cfg.hop, augment=augment, seed=cfg.seed, vocab=vocab)


# -- the trainer ----------------------------------------------------------------------------
class CodecTrainer(Trainer):
    """One codec training run (``training.base.Trainer``): the codec and its discriminator,
    their optimisers, the GAN step, k-means codebooks after the warm-up, the valid mel loss and
    the held-out quality curve."""

    cfg: TrainConfig
    progress_desc = "codec"
    progress_keys = ("mel", "adv", "d")
    history_keys = ("mel", "stft", "complex", "adv", "feature", "d", "commit", "semantic")
    plot_groups = {"reconstruction (mel)": ("mel", "valid_mel"), "spectral (STFT)": ("stft", "complex"),
                   "adversarial": ("adv", "feature", "d"), "quantizer / semantic": ("commit", "semantic")}

    # -- setup --------------------------------------------------------------------------------
    def build(self, resume: bool) -> None:
        cfg = self.cfg
        self.codec = build_codec(cfg.codec).to(self.device)
        self.warm_started = bool(cfg.init_from) and not resume
        if self.warm_started:
            load_inference_weights(self.codec, cfg.init_from)
        self.disc = Discriminator(cfg.discriminator).to(self.device)
        self.mel_loss = MultiScaleMelLoss(self.codec.cfg.sample_rate, cfg.mel.windows, cfg.mel.n_mels,
                                          cfg.mel.clamp_eps, cfg.mel.log_weight, cfg.mel.mag_weight).to(self.device)
        self.stft_loss = MultiResolutionSTFTLoss(cfg.stft.fft_sizes, cfg.stft.complex_compress).to(self.device)
        self.opt_g, self.sched_g = self._optimiser(self.codec, cfg.optim.lr_g)
        self.opt_d, self.sched_d = self._optimiser(self.disc, cfg.optim.lr_d)

    def wrap(self) -> None:
        self.g, self.d = distributed.wrap(self.codec, self.info), distributed.wrap(self.disc, self.info)

    def _optimiser(self, module: nn.Module, lr: float):
        o = self.cfg.optim
        opt = torch.optim.AdamW(module.parameters(), lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=o.lr_gamma)

    def build_data(self) -> None:
        d, ccfg = self.cfg.data, self.codec.cfg
        self.vocab, self.vocab_path = load_vocab(Path(d.manifest))
        if self.vocab is not None and ccfg.semantic.enabled and len(self.vocab) > ccfg.semantic.n_classes:
            raise ValueError(f"the phoneme vocabulary has {len(self.vocab)} symbols but the codec's semantic head "
                             f"{ccfg.semantic.n_classes} classes; set codec.overrides.semantic.n_classes")
        self.train_set = build_dataset(self.cfg, ccfg, d.train_split, d.segment_seconds, d.augment, self.vocab)
        self.train_sampler = distributed.sampler(self.train_set, self.info, shuffle=True, seed=self.cfg.seed)
        self.batches_per_epoch = len(self.train_sampler) // self.cfg.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"the {d.train_split!r} split has {len(self.train_set)} segments: fewer than one batch of "
                             f"{self.cfg.batch_size} per process on {self.info.world_size} process(es)")
        try:
            self.valid_set = build_dataset(self.cfg, ccfg, d.valid_split, d.valid_segment_seconds, False, self.vocab)
        except ValueError as e:  # e.g. a manifest without a valid split: train anyway
            log.warning("validation is skipped: %s", e)
            self.valid_set = None

    def epoch_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.epoch)

    # -- one step -----------------------------------------------------------------------------
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimisation step of the discriminator (after warm-up) and the codec; returns
        the step's detached losses and grad norms."""
        wav = batch["wav"].to(self.device, non_blocking=True)
        labels = batch["phonemes"].to(self.device, non_blocking=True)
        adversarial = self.step >= self.cfg.adv_start_step
        quantize = self.step >= self.cfg.quantizer_warmup_steps or self.warm_started
        if quantize and self.cfg.quantizer_warmup_steps and not self.quantizer_ready():
            self.kmeans_init()
        with self._autocast():
            out: CodecOutput = self.g(wav, quantize=quantize)
        wav, recon = self._trim_delay(wav, out.audio.float())
        metrics: dict[str, torch.Tensor] = {}
        if adversarial:
            metrics.update(self._discriminator_step(wav, recon.detach()))
        losses = self._generator_losses(wav, recon, out, labels, adversarial, metrics)
        total = sum(getattr(self.cfg.weights, name) * value for name, value in losses.items())
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        metrics["grad_norm_g"] = nn.utils.clip_grad_norm_(self.codec.parameters(), self.cfg.optim.clip_g)
        self.opt_g.step()
        self.sched_g.step()
        if quantize:
            self._code_counts += code_counts(out.codes.detach(), out.n_q, self.codec.cfg.quantizer.codebook_size)
        metrics.update({k: v.detach() for k, v in losses.items()}, total_g=total.detach())
        return metrics

    def _trim_delay(self, wav: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Input and reconstruction without their last ``codec.delay`` samples, the ones the
        frame-rate decoder has only half made (its overlap-add ends there): what the losses compare."""
        n = wav.shape[-1] - self.codec.delay
        return wav[..., :n], recon[..., :n]

    def _discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        with self._autocast():
            out_real, out_fake = split_batch(self.d(torch.cat([real, fake])), real.shape[0])
        loss = discriminator_hinge_loss(out_real, out_fake)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.disc.parameters(), self.cfg.optim.clip_d)
        self.opt_d.step()
        self.sched_d.step()
        return {"d": loss.detach(), "grad_norm_d": grad_norm}

    def _generator_losses(self, wav: torch.Tensor, recon: torch.Tensor, out: CodecOutput, labels: torch.Tensor,
                          adversarial: bool, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The codec's losses, named as their weights in ``cfg.weights``; extra diagnostics go to ``metrics``."""
        losses = {"mel": self.mel_loss(recon, wav), "commit": out.commit_loss.float(),
                  "codebook": out.codebook_loss.float()}
        if self.cfg.weights.stft or self.cfg.weights.complex:
            losses.update(self.stft_loss(recon, wav))
        if out.semantic_logits is not None:
            losses["semantic"], metrics["semantic_acc"] = semantic_loss(out.semantic_logits, labels)
        if adversarial:
            # The discriminator is frozen: the generator's gradient flows through it to the
            # audio without computing (or all-reducing) discriminator gradients.
            self.disc.requires_grad_(False)
            try:
                with self._autocast():
                    d_real, d_fake = split_batch(self.disc(torch.cat([wav, recon])), wav.shape[0])
                losses["adv"] = generator_hinge_loss(d_fake)
                losses["feature"] = feature_matching_loss(d_real, d_fake)
            finally:
                self.disc.requires_grad_(True)
        return losses

    # -- quantizer initialisation -------------------------------------------------------------
    def quantizer_ready(self) -> bool:
        return all(bool(vq.initialized) for vq in self.codec.quantizer.levels)

    @torch.no_grad()
    def kmeans_init(self) -> None:
        """After the autoencoder warm-up: codebooks from k-means on encoder outputs of
        ``kmeans_batches`` training batches (rank 0's, broadcast, so every rank agrees)."""
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(self.cfg.seed + self.step)
        loader = DataLoader(self.train_set, batch_size=self.cfg.batch_size, shuffle=True, generator=gen,
                            num_workers=self.cfg.data.num_workers, drop_last=True)
        latents = []
        self.codec.eval()
        try:
            with checkpointing.preserved_rng():
                for i, batch in enumerate(loader):
                    if i >= self.cfg.kmeans_batches:
                        break
                    z = self.codec.latents(batch["wav"].to(self.device)).float()
                    latents.append(z.transpose(1, 2).reshape(-1, z.shape[1]))
        finally:
            self.codec.train()
        flat = torch.cat(latents)
        if self.info.distributed:
            import torch.distributed as dist

            n = torch.tensor([flat.shape[0]], device=self.device)
            dist.broadcast(n, 0)
            flat = flat[: int(n)] if flat.shape[0] >= int(n) else torch.cat([flat, flat[: int(n) - flat.shape[0]]])
            dist.broadcast(flat, 0)
        errors = self.codec.quantizer.kmeans_init(flat, self.cfg.kmeans_iters, seed=self.cfg.seed)
        self._paused += time.perf_counter() - t0
        log.info("step %d: codebooks from k-means on %d encoder frames (%.1f s); residual error per level %s",
                 self.step, flat.shape[0], time.perf_counter() - t0, " ".join(f"{e:.3g}" for e in errors))

    # -- logging ------------------------------------------------------------------------------
    def _reset_window(self) -> None:
        super()._reset_window()
        q = self.codec.cfg.quantizer
        self._code_counts = torch.zeros(q.n_q, q.codebook_size, device=self.device)

    def window_scalars(self, means: dict[str, float], steps_per_s: float) -> dict[str, float]:
        usage, perplexity = codebook_stats(distributed.all_reduce_sum(self._code_counts))
        scalars = {_scalar_name(k): v for k, v in means.items()}
        scalars.update({f"codebook/usage_q{i}": float(u) for i, u in enumerate(usage)})
        scalars.update({f"codebook/perplexity_q{i}": float(p) for i, p in enumerate(perplexity)})
        scalars.update({"lr/g": self.sched_g.get_last_lr()[0], "lr/d": self.sched_d.get_last_lr()[0],
                        "speed/steps_per_s": steps_per_s,
                        "speed/audio_s_per_s": steps_per_s * self.cfg.batch_size * self.info.world_size
                        * self.cfg.data.segment_seconds})
        return scalars

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean mel loss over (up to ``valid_max_batches`` batches of) the valid split, all ranks."""
        if self.valid_set is None:
            return None
        codec = self.codec
        codec.eval()
        total = torch.zeros(2, device=self.device)
        try:
            with self.valid_batches() as batches:
                for batch in batches:
                    wav = batch["wav"].to(self.device)
                    with self._autocast():
                        recon = codec(wav, quantize=self.quantizer_ready()).audio.float()
                    wav, recon = self._trim_delay(wav, recon)
                    total += torch.stack([self.mel_loss(recon, wav) * wav.shape[0],
                                          torch.tensor(float(wav.shape[0]), device=self.device)])
        finally:
            codec.train()
        distributed.all_reduce_sum(total)
        return float(total[0] / total[1].clamp(min=1))

    def validate(self) -> None:
        mel = self.evaluate()
        if mel is not None and self.info.is_main:
            self.writer.add_scalar("valid/mel", mel, self.step)
            self.history.setdefault("valid_mel", []).append([self.step, mel])
            log.info("step %d: valid mel loss %.4f", self.step, mel)
        if self.cfg.quality_every and self.step % self.cfg.quality_every == 0 and self.info.is_main:
            self._quality()

    def quality(self) -> dict[str, float] | None:
        """Mean PESQ-WB / STOI of the first ``quality_clips`` valid clips, streamed and aligned."""
        from maata.codec import evaluate as ev

        try:
            clips = ev.read_split(self.cfg.data.manifest, self.cfg.data.valid_split)
            clips = clips[:: max(1, len(clips) // self.cfg.quality_clips)][: self.cfg.quality_clips]  # across speakers
        except ValueError as e:
            log.warning("quality curve skipped: %s", e)
            return None
        codec, scores = self.codec, {"pesq_wb": [], "stoi": []}
        codec.eval()
        try:
            with torch.no_grad(), checkpointing.preserved_rng():
                for clip in clips:
                    x = ev.load_clip(clip, codec.cfg.sample_rate)
                    s = ev.score(x, ev.run_maata(codec, x).full, 0.0, clip.path.name, with_dnsmos=False)
                    for k in scores:
                        if s[k] is not None:
                            scores[k].append(s[k])
        finally:
            codec.train()
        return {k: float(sum(v) / len(v)) for k, v in scores.items() if v}

    def _quality(self) -> None:
        q = self.quality()
        if not q:
            return
        for k, v in q.items():
            self.writer.add_scalar(f"valid/{k}", v, self.step)
            self.history.setdefault(f"valid_{k}", []).append([self.step, v])
        log.info("step %d: held-out (valid) %s", self.step, "  ".join(f"{k} {v:.3f}" for k, v in q.items()))
        import json

        curve = {k.removeprefix("valid_"): self.history[k] for k in ("valid_pesq_wb", "valid_stoi") if k in self.history}
        (self.out / "quality.json").write_text(json.dumps({"clips": self.cfg.quality_clips, **curve}, indent=1))
        plot_history(self.history, self.out / "quality.png",
                     {"held-out PESQ-WB": ("valid_pesq_wb",), "held-out STOI": ("valid_stoi",)})

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"codec": self.codec, "discriminator": self.disc}

    def optimiser_state(self) -> dict[str, Any]:
        return {"optim_g": self.opt_g.state_dict(), "optim_d": self.opt_d.state_dict(),
                "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict()}

    def load_optimiser_state(self, state: Mapping[str, Any]) -> None:
        self.opt_g.load_state_dict(state["optim_g"])
        self.opt_d.load_state_dict(state["optim_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])

    def export(self) -> Path:
        """Inference weights + codec config to ``<out>/codec.safetensors`` (+ the vocabulary)."""
        path = save_model(self.out / "codec.safetensors", self.codec, self.codec.cfg, kind="codec",
                          metadata={"step": self.step, "preset": self.cfg.codec.preset},
                          dtype=torch.float16 if self.cfg.export_fp16 else None)
        if self.vocab_path is not None:
            shutil.copyfile(self.vocab_path, self.out / self.vocab_path.name)
        return path

# -- helpers --------------------------------------------------------------------------------
def _scalar_name(metric: str) -> str:
    """TensorBoard tag of a step metric: grad_norm_g -> grad_norm/g, mel -> loss/mel."""
    if metric.startswith("grad_norm_"):
        return "grad_norm/" + metric.removeprefix("grad_norm_")
    if metric == "semantic_acc":
        return "semantic/accuracy"
    return "loss/" + metric


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False) -> dict[str, float]:
    """Train a codec (one process, or one of the processes torchrun started).

    Returns the last logged metrics on rank 0 (an empty dict on the other ranks)."""
    return run(CodecTrainer, cfg, out_dir, resume=resume)


__all__ = ["CodecTrainer", "TrainConfig", "build_codec", "load_config", "plot_history", "resolve_config_path",
           "train"]
