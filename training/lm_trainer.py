"""Speech-LM training in three stages, each one command that starts from the previous stage's export.

1. ``pretrain``: next-token audio LM on single-stream speech codes (shard field ``codes``). The
   stream is the *agent* stream; the user channel is absent (-1, embedded as padding) and the
   text loss is off (no transcripts).
2. ``dialogue``: full-duplex fine-tuning on two-stream dialogues: the model reads the user's
   codes and predicts the agent's codes and, when the model and the records have it, the
   agent's inner-monologue text. Voice/emotion conditioning is off by default (every item is
   fed voice 0 / NEUTRAL) so the stage learns *what* to say and *when*.
3. ``voice``: the same data with the record's named voice and per-frame emotion as conditioning,
   plus the zero-shot speaker encoder: a ``voice.custom_fraction`` share of the items is fed
   ``lm.speaker_embedding(reference)`` as a custom voice, the reference being a segment of the
   agent channel of another record with the same agent voice.

The loss is the model's own (``LM.loss``: codebook 1 weighted by ``loss.first_codebook_weight``,
EPAD text targets down-weighted) with padding masked out; the text term is weighted by this
config's ``loss.text_weight`` (null: the model config's) and skipped on items without text.
The speaker encoder (and its projection) are frozen while no custom voices are trained, so
every trainable parameter gets a gradient each step (DDP needs that).

Optimiser: AdamW (no decay on norms, biases and embeddings), linear warm-up then cosine decay
to ``min_lr_ratio`` · lr, gradient clipping; bf16 autocast on CUDA. The loop, logging,
validation schedule and checkpoints are ``training.base.Trainer``'s. Under ``torchrun`` every
process trains its shard of the items with DDP (gloo on CPU, NCCL on GPU) via
``training/distributed.py``; rank 0 logs, checkpoints and exports. Checkpoints
(``training/checkpointing.py``) hold the weights, optimiser, scheduler, step, data position and
every rank's RNG, so ``--resume`` continues exactly (tests/test_lm_training.py checks it).

Run layout::

    <out>/config.yaml          resolved training config
    <out>/lm_config.json       the model's LMConfig (rebuilds the model on --resume)
    <out>/tb/                  TensorBoard scalars (losses per codebook, text accuracy, LR, grad norm, speed)
    <out>/checkpoints/step_*/  resumable training state
    <out>/loss_curves.png      redrawn at every checkpoint
    <out>/lm.safetensors       inference export (maata.lm.checkpoint.load_lm) — the next stage's --init-from
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from maata import config as cfglib
from maata.checkpoint import save_model
from maata.data.shards import CODE_SPACE_NAME, read_code_space
from maata.lm.checkpoint import load_lm, lm_config_from_dict
from maata.lm.model import LM, LMConfig, LMOutput, load_preset
from training import checkpointing, distributed
from training.base import RunConfig, Trainer, resolve_config_path, run
from training.lm_data import Collate, DialogueDataset, PretrainDataset

log = logging.getLogger(__name__)

STAGES = ("pretrain", "dialogue", "voice")
EXPORT_NAME = "lm.safetensors"
LM_CONFIG_NAME = "lm_config.json"


# -- configuration --------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    preset: str = "tiny"  # a name in maata/lm/presets or a YAML path (ignored with init_from / resume)
    overrides: dict[str, Any] = field(default_factory=dict)  # nested LMConfig fields


@dataclass
class LMDataConfig:
    shards: str = "data/shards"  # folder of code shards (<split>/ subfolders, or meta["split"])
    train_split: str = "train"
    valid_split: str = "valid"
    crop_frames: int = 250  # 10 s at 25 Hz
    valid_crop_frames: int = 250
    min_frames: int = 2
    fields: tuple[str, ...] = ("codes",)  # pretrain: the single-stream field(s) used as the agent stream
    text: bool = True  # dialogue stages: train the text stream when the model and the records have it
    voice_conditioning: bool = False  # feed the record's named voice (else voice 0)
    emotion_conditioning: bool = False  # feed the record's per-frame emotion (else NEUTRAL)
    # share of training crops whose user channel keeps only codebook 1 (the semantic one; the rest
    # fed as absent): pushes hearing onto the codes that carry the phonemes. 0 = off; valid crops never
    user_acoustic_dropout: float = 0.0
    num_workers: int = 0
    valid_max_batches: int = 8


@dataclass
class VoiceTrainConfig:
    custom_fraction: float = 0.0  # share of items fed a speaker embedding of another record (stage 3)
    reference_frames: int = 250  # reference clip length (frames) for the speaker encoder


@dataclass
class LMOptimConfig:
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    eps: float = 1e-8
    warmup_steps: int = 500
    min_lr_ratio: float = 0.1  # cosine decay to this share of lr at the last step
    clip: float = 1.0


@dataclass
class LMLossConfig:
    text_weight: float | None = None  # None: the model config's loss.text_weight
    # the user-transcript head (text.user_stream; the shards' user_text): trained in the dialogue
    # stages, and added to a model initialised from an export made without one
    user_text: bool = True
    user_text_weight: float | None = None  # None: the model config's loss.user_text_weight
    # curriculum: for the first N steps the audio loss is scaled by curriculum_audio_weight, so the
    # model first learns the text mapping (the user's words -> the answer's words), then the audio
    curriculum_text_steps: int = 0
    curriculum_audio_weight: float = 0.0


@dataclass
class LMTrainConfig(RunConfig):
    stage: str = "pretrain"  # pretrain | dialogue | voice
    model: ModelSpec = field(default_factory=ModelSpec)
    init_from: str = ""  # the previous stage's lm.safetensors (or its run folder)
    data: LMDataConfig = field(default_factory=LMDataConfig)
    voice: VoiceTrainConfig = field(default_factory=VoiceTrainConfig)
    optim: LMOptimConfig = field(default_factory=LMOptimConfig)
    loss: LMLossConfig = field(default_factory=LMLossConfig)
    export_fp16: bool = False  # the inference export in float16 (half the size; loads as float32)

    def validate(self) -> LMTrainConfig:
        if self.stage not in STAGES:
            raise cfglib.ConfigError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        for name in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise cfglib.ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not 0.0 <= self.voice.custom_fraction <= 1.0:
            raise cfglib.ConfigError(f"voice.custom_fraction must be in [0, 1], got {self.voice.custom_fraction}")
        if self.stage == "pretrain" and self.voice.custom_fraction > 0:
            raise cfglib.ConfigError("custom voices need dialogue records (stage voice), not pretraining")
        if self.loss.curriculum_text_steps < 0 or not 0.0 <= self.loss.curriculum_audio_weight <= 1.0:
            raise cfglib.ConfigError("loss.curriculum_text_steps must be ≥ 0 and loss.curriculum_audio_weight in "
                                     f"[0, 1], got {self.loss.curriculum_text_steps}, "
                                     f"{self.loss.curriculum_audio_weight}")
        if self.loss.user_text_weight is not None and self.loss.user_text_weight < 0:
            raise cfglib.ConfigError(f"loss.user_text_weight must be ≥ 0, got {self.loss.user_text_weight}")
        return self


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> LMTrainConfig:
    """Training config from YAML (``base:`` overlays) + overrides + ``MAATA_LMTRAIN__*`` environment."""
    return cfglib.load(LMTrainConfig, resolve_config_path(path), env_prefix="MAATA_LMTRAIN__",
                       overrides=overrides).validate()


def resolve_init(path: str | Path) -> Path:
    """``--init-from``: an ``lm.safetensors`` file, or a run folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / EXPORT_NAME
    if not p.exists():
        raise FileNotFoundError(f"--init-from: no LM export at {p} (train the previous stage first)")
    return p


def build_model(cfg: LMTrainConfig, out: Path, resume: bool) -> tuple[LM, str]:
    """The model to train and where it came from: the run's own config on resume, the previous
    stage's export with ``init_from``, else a fresh preset."""
    saved = out / LM_CONFIG_NAME
    if resume and saved.exists() and checkpointing.latest(out) is not None:
        return LM(lm_config_from_dict(json.loads(saved.read_text(encoding="utf-8")))), "resume"
    if cfg.init_from:
        path = resolve_init(cfg.init_from)
        lm = load_lm(path)
        lm.train()
        return lm, str(path)
    lm_cfg: LMConfig = load_preset(cfg.model.preset, env_prefix=None, **cfg.model.overrides)
    return LM(lm_cfg), f"preset {cfg.model.preset}"


def adopt_code_space(lm: LM, shards: str | Path) -> None:
    """Record in ``lm.cfg.codec`` which codec made the training shards (their
    ``code_space.json``), so that serving pairs the model with that codec only. ValueError when
    the model already records another codec: fine-tuning on another codec's codes would leave
    a model that fits neither."""
    space = read_code_space(shards)
    if space is None:
        log.warning("%s has no %s: the trained LM will not record which codec it needs", shards, CODE_SPACE_NAME)
        return
    if lm.cfg.codec and lm.cfg.codec != space:
        raise ValueError(f"the model was trained on the codes of codec {lm.cfg.codec}, but {shards} holds the codes "
                         f"of codec {space}: start from a model of that codec, or rebuild the shards with it")
    lm.cfg.codec = space


# -- loss ---------------------------------------------------------------------------------------------
class TrainStep(nn.Module):
    """Speaker embedding + teacher-forced forward + losses in one module, so that DDP sees (and
    all-reduces) every parameter that takes part, the speaker encoder included."""

    def __init__(self, lm: LM, text_weight: float, train_speaker: bool, user_text_weight: float = 0.0):
        super().__init__()
        self.lm = lm
        self.text_weight = text_weight
        self.train_speaker = train_speaker
        self.user_text_weight = user_text_weight
        self.audio_scale = 1.0  # the curriculum's weight of the audio loss (1 once the text phase is over)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        lm = self.lm
        B = batch["agent"].shape[0]
        speaker = None
        anchor = None  # keeps the speaker encoder in the graph on batches without a custom voice
        if self.train_speaker:
            sc = lm.cfg.conditioning.speaker
            rows = batch["custom"]
            if "ref" in batch:
                rows = rows & (batch["ref_len"] >= sc.min_frames)
            speaker = torch.zeros(B, sc.dim, device=batch["agent"].device)
            if bool(rows.any()):
                emb = lm.speaker_embedding(batch["ref"][rows], batch["ref_len"][rows].cpu())
                speaker = speaker.index_put((rows.nonzero()[:, 0],), emb.to(speaker.dtype))
            else:
                dummy = torch.zeros(1, lm.n_q, sc.min_frames, dtype=torch.long, device=speaker.device)
                anchor = lm.speaker_embedding(dummy).sum() * 0.0
            voice = torch.where(rows, batch["voice"], batch["voice"].clamp(min=0))
        else:
            voice = batch["voice"].clamp(min=0)
        text = batch["text"] if lm.text_enabled else None
        out: LMOutput = lm(batch["user"], batch["agent"], text, voice, batch["emotion"], speaker)
        losses = lm.loss(LMOutput(out.audio_logits, out.audio_mask, None), batch["agent"], None,
                         frame_mask=batch["frame_mask"])
        result = {"audio": losses.audio, "per_codebook": losses.per_codebook}
        total = self.audio_scale * losses.audio
        if out.text_logits is not None:
            text_loss, text_acc, n_text = masked_text_loss(out.text_logits, batch["text"], batch["text_mask"],
                                                           lm.cfg.text.epad_id, lm.cfg.loss.epad_weight)
            total = total + self.text_weight * text_loss
            result.update(text=text_loss, text_acc=text_acc, text_frames=n_text)
        if self.user_text_weight > 0 and out.user_text_logits is not None and "user_text" in batch:
            mask = batch["user_text_mask"] & batch["frame_mask"]
            u_loss, u_acc, n_user = masked_text_loss(out.user_text_logits, batch["user_text"], mask,
                                                     lm.cfg.text.epad_id, lm.cfg.loss.epad_weight)
            total = total + self.user_text_weight * u_loss
            result.update(user_text=u_loss, user_text_acc=u_acc, user_text_frames=n_user)
        if anchor is not None:
            total = total + anchor
        result["total"] = total
        with torch.no_grad():
            pred = out.audio_logits.argmax(-1)
            m = out.audio_mask & batch["frame_mask"][:, None, :]
            hit = ((pred == batch["agent"]) & m).sum((0, 2)).float()
            result["acc_per_codebook"] = hit / m.sum((0, 2)).clamp(min=1)
        return result


def masked_text_loss(logits: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, epad_id: int,
                     epad_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's text loss (EPAD targets weighted ``epad_weight``) over ``mask`` frames only,
    the argmax accuracy on non-EPAD targets, and how many frames counted. Zero (still in the
    graph) when no frame has text."""
    B, T, V = logits.shape
    ce = F.cross_entropy(logits.reshape(B * T, V).float(), text.reshape(-1), reduction="none")
    m = mask.reshape(-1).to(ce.dtype)
    w = torch.where(text.reshape(-1) == epad_id, epad_weight, 1.0) * m
    loss = (ce * w).sum() / w.sum().clamp(min=1e-6)
    with torch.no_grad():
        words = (text.reshape(-1) != epad_id) & mask.reshape(-1)
        hit = (logits.reshape(B * T, V).argmax(-1) == text.reshape(-1)) & words
        acc = hit.sum().float() / words.sum().clamp(min=1).float()
    return loss, acc, m.sum()


def lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        span = max(total - warmup, 1)
        progress = min(max(step - warmup, 0) / span, 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices of linear layers; not norms, biases or embedding tables."""
    emb = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, keep = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in emb else keep).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


# -- the trainer ------------------------------------------------------------------------------------
class LMTrainer(Trainer):
    """One stage's run (``training.base.Trainer``): the LM in its ``TrainStep``, AdamW with
    warm-up + cosine decay, the stage's datasets, teacher-forced validation losses."""

    cfg: LMTrainConfig
    progress_keys = ("total", "cb1", "text")
    history_keys = ("total", "audio", "cb1", "text", "user_text")
    plot_groups = {"total": ("total", "valid_total"), "audio (codebook 1)": ("cb1", "valid_cb1", "audio"),
                   "text": ("text", "valid_text"), "hearing (user transcript)": ("user_text", "valid_user_text")}

    def __init__(self, cfg: LMTrainConfig, out_dir: str | Path, *, resume: bool = False,
                 info: distributed.DistInfo | None = None):
        self.progress_desc = f"lm {cfg.stage}"
        super().__init__(cfg.validate(), out_dir, resume=resume, info=info)
        if self.info.is_main:
            n = sum(p.numel() for p in self.lm.parameters())
            log.info("stage %s: %s model (%.1f M params) from %s, %d training items", cfg.stage, self.lm.cfg.name,
                     n / 1e6, self.source, len(self.train_set))

    # -- setup ------------------------------------------------------------------------------------
    def build(self, resume: bool) -> None:
        cfg = self.cfg
        self.lm, self.source = build_model(cfg, self.out, resume)
        adopt_code_space(self.lm, cfg.data.shards)
        use_user_text = cfg.loss.user_text and cfg.stage != "pretrain" and self.lm.text_enabled
        if use_user_text and self.lm.user_text_head is None:
            self.lm.add_user_text_head()  # an export made before the head existed
        self.lm.to(self.device).train()
        if self.lm.user_text_head is not None and not use_user_text:  # no transcript this stage: frozen
            self.lm.user_text_head.requires_grad_(False)
        self.train_speaker = cfg.stage == "voice" and cfg.voice.custom_fraction > 0
        if not self.train_speaker:  # unused this stage: frozen, so DDP expects no gradient
            for m in (self.lm.speaker_encoder, self.lm.speaker_proj):
                m.requires_grad_(False)
        tw = cfg.loss.text_weight if cfg.loss.text_weight is not None else self.lm.cfg.loss.text_weight
        uw = cfg.loss.user_text_weight if cfg.loss.user_text_weight is not None else self.lm.cfg.loss.user_text_weight
        self.step_module = TrainStep(self.lm, tw, self.train_speaker, uw if use_user_text else 0.0)
        o = cfg.optim
        self.opt = torch.optim.AdamW(param_groups(self.lm, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(o.warmup_steps, cfg.steps, o.min_lr_ratio))

    def wrap(self) -> None:
        self.ddp = distributed.wrap(self.step_module, self.info)

    def build_dataset(self, split: str, crop: int, random_crop: bool) -> Dataset:
        d, lm = self.cfg.data, self.lm
        common = dict(n_q=lm.n_q, codebook_size=lm.card, epad_id=lm.cfg.text.epad_id, seed=self.cfg.seed,
                      min_frames=d.min_frames, random_crop=random_crop)
        if self.cfg.stage == "pretrain":
            return PretrainDataset(d.shards, split, crop, fields=d.fields, **common)
        voice_stage = self.cfg.stage == "voice"
        sc = lm.cfg.conditioning.speaker
        return DialogueDataset(d.shards, split, crop, voices=lm.voices, emotions=lm.emotions,
                               text=d.text and lm.text_enabled, voice_conditioning=d.voice_conditioning,
                               emotion_conditioning=d.emotion_conditioning,
                               user_acoustic_dropout=d.user_acoustic_dropout if random_crop else 0.0,
                               custom_fraction=self.cfg.voice.custom_fraction if voice_stage and random_crop else 0.0,
                               reference_frames=min(self.cfg.voice.reference_frames, sc.max_frames),
                               min_reference_frames=sc.min_frames, **common)

    def build_data(self) -> None:
        d = self.cfg.data
        self.train_set = self.build_dataset(d.train_split, d.crop_frames, True)
        self.train_sampler = distributed.sampler(self.train_set, self.info, shuffle=True, seed=self.cfg.seed)
        self.batches_per_epoch = len(self.train_sampler) // self.cfg.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"the {d.train_split!r} split has {len(self.train_set)} items: fewer than one batch of "
                             f"{self.cfg.batch_size} per process on {self.info.world_size} process(es)")
        self.collate = Collate(self.lm.cfg.text.epad_id)
        self.has_text = bool(getattr(self.train_set, "text", False))  # the same on every rank: a stage's data
        try:
            self.valid_set = self.build_dataset(d.valid_split, d.valid_crop_frames, False)
        except (ValueError, FileNotFoundError) as e:
            log.warning("validation is skipped: %s", e)
            self.valid_set = None

    def write_run_files(self) -> None:
        (self.out / LM_CONFIG_NAME).write_text(json.dumps(cfglib.to_dict(self.lm.cfg), indent=1), encoding="utf-8")

    def collate_fn(self) -> Callable:
        return self.collate

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # -- one step -----------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = self._to_device(batch)
        lc = self.cfg.loss
        self.step_module.audio_scale = lc.curriculum_audio_weight if self.step < lc.curriculum_text_steps else 1.0
        with self._autocast():
            res = self.ddp(batch)
        self.opt.zero_grad(set_to_none=True)
        res["total"].backward()
        grad_norm = nn.utils.clip_grad_norm_([p for p in self.lm.parameters() if p.requires_grad],
                                             self.cfg.optim.clip)
        self.opt.step()
        self.sched.step()
        skip = ({"per_codebook", "acc_per_codebook", "text_frames", "user_text_frames"}
                | (set() if self.has_text else {"text", "text_acc"}))
        metrics = {k: v.detach().float() for k, v in res.items() if k not in skip}
        for k, v in enumerate(res["per_codebook"].detach()):
            metrics[f"cb{k + 1}"] = v.float()
        metrics["acc_cb1"] = res["acc_per_codebook"][0].detach().float()
        metrics["grad_norm"] = grad_norm.detach().float()
        frames = batch["frame_mask"].sum().float()
        metrics["frames"] = frames
        return metrics

    # -- logging ------------------------------------------------------------------------------------
    def window_scalars(self, means: dict[str, float], steps_per_s: float) -> dict[str, float]:
        frames_per_s = means.pop("frames", 0.0) * self.info.world_size * steps_per_s
        scalars = {}
        for k, v in means.items():
            group = "acc" if "acc" in k else "grad_norm" if k == "grad_norm" else "loss"
            scalars[f"{group}/{k}"] = v
        scalars.update({"lr": self.sched.get_last_lr()[0], "speed/steps_per_s": steps_per_s,
                        "speed/frames_per_s": frames_per_s,
                        "speed/audio_s_per_s": frames_per_s / self.lm.cfg.frame_rate})
        return scalars

    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Teacher-forced losses on (up to ``valid_max_batches`` batches of) the valid split, all ranks."""
        if self.valid_set is None:
            return None
        self.lm.eval()
        scale, self.step_module.audio_scale = self.step_module.audio_scale, 1.0  # valid totals stay comparable
        keys = ("total", "audio", "text", "text_acc") + tuple(f"cb{k + 1}" for k in range(self.lm.n_q))
        if not self.has_text:
            keys = keys[:2] + keys[4:]
        if self.step_module.user_text_weight > 0 and getattr(self.valid_set, "user_text", False):
            keys = ("user_text", "user_text_acc") + keys  # hearing: the user-transcript head on valid speakers
        sums = torch.zeros(len(keys) + 1, device=self.device)
        try:
            with self.valid_batches() as batches:
                for batch in batches:
                    batch = self._to_device(batch)
                    with self._autocast():
                        res = self.step_module(batch)
                    n = float(batch["agent"].shape[0])
                    vals = [res[k] for k in keys if not k.startswith("cb")] + list(res["per_codebook"])
                    sums += torch.stack([torch.as_tensor(v, device=self.device).float() * n for v in vals]
                                        + [torch.tensor(n, device=self.device)])
        finally:
            self.lm.train()
            self.step_module.audio_scale = scale
        distributed.all_reduce_sum(sums)
        if float(sums[-1]) == 0:
            return None
        return {k: float(sums[i] / sums[-1]) for i, k in enumerate(keys)}

    def validate(self) -> None:
        res = self.evaluate()
        if res is not None and self.info.is_main:
            for k, v in res.items():
                self.writer.add_scalar(f"valid/{k}", v, self.step)
            for k in ("total", "cb1", "text", "user_text"):  # the curves' valid points (text ones when trained)
                if k in res:
                    self.history.setdefault(f"valid_{k}", []).append([self.step, res[k]])
            log.info("step %d: valid loss %.4f (codebook 1 %.4f)", self.step, res["total"], res["cb1"])

    # -- checkpoints ----------------------------------------------------------------------------------
    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"lm": self.lm}

    def optimiser_state(self) -> dict[str, Any]:
        return {"optim": self.opt.state_dict(), "sched": self.sched.state_dict(), "stage": self.cfg.stage,
                "source": self.source}

    def load_optimiser_state(self, state: Mapping[str, Any]) -> None:
        if state.get("stage", self.cfg.stage) != self.cfg.stage:
            raise ValueError(f"{self.out} holds a {state['stage']!r} run; this is stage {self.cfg.stage!r} "
                             "(use another --out)")
        self.opt.load_state_dict(state["optim"])
        self.sched.load_state_dict(state["sched"])
        # the schedule of *this* config at the restored step (``steps`` may have been raised to
        # train longer): the scheduler keeps this config's lambda, so re-taking its last step
        # recomputes every group's lr (and ``get_last_lr``) for it
        self.sched.last_epoch -= 1
        self.sched.step()
        self.source = state.get("source", self.source)

    def export(self) -> Path:
        """Inference weights + LMConfig to ``<out>/lm.safetensors`` (``load_lm``; the next stage's --init-from)."""
        return save_model(self.out / EXPORT_NAME, self.lm, self.lm.cfg, kind="lm",
                          metadata={"step": self.step, "stage": self.cfg.stage},
                          dtype=torch.float16 if self.cfg.export_fp16 else None)

def train(cfg: LMTrainConfig, out_dir: str | Path, *, resume: bool = False) -> dict[str, float]:
    """Train one stage (one process, or one of those torchrun started). Returns the last logged
    metrics on rank 0 (an empty dict elsewhere)."""
    return run(LMTrainer, cfg, out_dir, resume=resume)
