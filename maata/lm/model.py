"""The S2S "brain": a Moshi-style model that listens and speaks at once, frame by frame.

Every 40 ms frame (25 Hz) the model reads the user's 8 codec codes of that frame and writes
the agent's: its inner-monologue text token, then its 8 codes. Two transformers share the work
(the RQ-Transformer split of Moshi):

* the **temporal transformer** runs once per frame over the sum of the frame's input
  embeddings (agent codes and text token of the previous frame, user codes of this frame,
  voice and emotion) — causal, pre-norm RMSNorm, RoPE, SwiGLU, attention over the last
  ``context`` frames;
* the **depth transformer** runs inside a frame, conditioned on the temporal output, over
  ≤ 9 steps: text token, then codebook 1, ..., codebook 8, each step seeing the tokens drawn
  before it.

**Acoustic delay.** With ``acoustic_delay = d`` codebooks 2..8 of a frame are drawn ``d``
steps after codebook 1 (Moshi's delay pattern: the coarse, semantic codebook leads and the
acoustic detail follows with more context). ``delay_codes``/``undelay_codes`` move between the
*frame layout* (``codes[k, t]`` belongs to frame ``t``) and the *step layout* (``codes[k, s]``
is drawn at step ``s``; slots before the delay has elapsed hold ``BOS``). The model works in
the step layout; its API speaks frames.

Offline (training)::

    out = lm(user_codes, agent_codes, text, voice, emotion)   # LMOutput, logits in frame layout
    losses = lm.loss(out, agent_codes, text)

Streaming (the contract the generation service uses; see ``LM.step``)::

    state = lm.init_state(max_batch)
    slot = lm.acquire_slot(state, seed=1234)          # or lm.reset(state, mask, seed=...)
    out = lm.step(state, user_codes, active_mask, voice=..., emotion=..., sampling=...)
    lm.prefill(state, slot, user_codes, agent_codes, text)   # rebuild a call after a restart

Step-by-step streaming equals the teacher-forced forward (tests/test_lm_model.py), also past
the attention context (the ring KV cache and the offline sliding-window mask agree).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maata import config as cfglib
from maata.lm.sampling import Rule, SamplingBatch, SamplingParams, counter_uniform, draw
from maata.nn import (CodeError, ModelInputError, RMSNorm, StreamingTransformer, TransformerLayer, TransformerState,
                      rope_tables, swiglu_hidden)

PRESET_DIR = Path(__file__).parent / "presets"

VOICES: tuple[str, ...] = ("male_1", "male_2", "female_1", "female_2")
EMOTIONS: tuple[str, ...] = ("NEUTRAL", "HAPPY", "LAUGH", "EXCITED", "EMPATHY", "SURPRISE", "THINKING",
                             "TELUGU_ACCENT_HEAVY", "TELUGU_ACCENT_MILD")
CUSTOM_VOICE = -1  # voice id meaning "use the continuous speaker embedding of this slot"
CUSTOM_VOICE_NAME = "custom"
ABSENT_CODE = -1  # a user code that is missing (the codec's DROPPED level): embedded as padding
NOT_FORCED = -1  # in force_agent_codes / force_text: draw this token instead of forcing it
TEXT_STREAM = 0  # sampling stream ids: text is 0, codebook k is 1 + k


# -- errors -------------------------------------------------------------------------------------
class LMConfigError(cfglib.ConfigError):
    """An LMConfig that cannot build a model."""


#: bad input to the model: the base class of every input error below and of ``CodeError``
#: (codes or text tokens of the wrong shape, dtype or range), both shared with the codec
LMInputError = ModelInputError


class UnknownConditionError(LMInputError):
    """A voice or emotion that the model does not know."""


class UnknownVoiceError(UnknownConditionError):
    pass


class UnknownEmotionError(UnknownConditionError):
    pass


class SlotError(LMInputError):
    """A batch that does not fit the streaming state, or a slot index out of range."""


class NoFreeSlotError(SlotError):
    """Every slot of the state is in use."""


class ReferenceClipError(LMInputError):
    """A reference clip for a zero-shot voice that cannot be used (empty, NaN, too short)."""


# -- config -------------------------------------------------------------------------------------
@dataclass
class TemporalConfig:
    dim: int = 256
    layers: int = 6
    heads: int = 4
    ffn_hidden: int = 0  # 0: SwiGLU default, 8/3 · dim rounded up to a multiple of 64
    context: int = 250  # frames attended (10 s at 25 Hz) = ring KV cache capacity
    rope_base: float = 10000.0


@dataclass
class DepthConfig:
    dim: int = 128
    layers: int = 2
    heads: int = 4
    ffn_hidden: int = 0


@dataclass
class TextConfig:
    enabled: bool = True  # inner-monologue text stream
    vocab_size: int = 2000  # must equal the tokenizer's vocab_size
    epad_id: int = 3  # the tokenizer's EPAD ("no text this frame"), down-weighted in the loss
    # a head reading the user's transcript (what the user has said so far, each word once heard)
    # off the temporal state: an auxiliary training target (Moshi's ASR mode) that makes the model
    # follow the question's words; unused at inference. Exports made before it load with False.
    user_stream: bool = True


@dataclass
class SpeakerConfig:
    """The zero-shot speaker encoder: a reference clip's codec codes -> a speaker vector."""

    dim: int = 128  # size of the speaker vector (the LM's continuous voice input)
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    min_frames: int = 25  # 1 s at 25 Hz: shorter clips are refused
    max_frames: int = 500  # 20 s: longer clips are cropped to their first max_frames


@dataclass
class ConditioningConfig:
    voices: tuple[str, ...] = VOICES
    emotions: tuple[str, ...] = EMOTIONS
    speaker: SpeakerConfig = field(default_factory=SpeakerConfig)


@dataclass
class LossConfig:
    first_codebook_weight: float = 100.0  # Moshi's α: codebook 1 carries the semantics
    other_codebook_weight: float = 1.0
    text_weight: float = 1.0
    epad_weight: float = 0.5  # weight of EPAD text targets (they dominate the text stream)
    user_text_weight: float = 0.5  # the user-transcript head's loss (text.user_stream)


@dataclass
class LMConfig:
    name: str = "tiny"
    n_q: int = 8  # codebooks per frame (the codec's)
    codebook_size: int = 1024
    frame_rate: float = 25.0
    acoustic_delay: int = 1  # steps codebooks 2..n_q lag codebook 1 (0 or 1 in practice)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    text: TextConfig = field(default_factory=TextConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    # the ``Codec.code_space()`` digest of the codec whose codes the model was trained on (set by
    # the trainer from the shards' code_space.json; "" = not recorded, as in older exports)
    codec: str = ""

    @property
    def delays(self) -> tuple[int, ...]:
        """Delay (in steps) of each codebook relative to the frame it belongs to."""
        return (0,) + (self.acoustic_delay,) * (self.n_q - 1)

    @property
    def context_seconds(self) -> float:
        return self.temporal.context / self.frame_rate

    def validate(self) -> LMConfig:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise LMConfigError(f"LM config {self.name!r}: {msg}")

        need(self.n_q >= 1, f"n_q must be ≥ 1, got {self.n_q}")
        need(self.codebook_size >= 2, f"codebook_size must be ≥ 2, got {self.codebook_size}")
        need(self.acoustic_delay >= 0, f"acoustic_delay must be ≥ 0, got {self.acoustic_delay}")
        for part, c in (("temporal", self.temporal), ("depth", self.depth),
                        ("conditioning.speaker", self.conditioning.speaker)):
            dim = c.hidden if isinstance(c, SpeakerConfig) else c.dim
            need(c.layers >= 0, f"{part}.layers must be ≥ 0")
            need(dim > 0 and c.heads > 0 and dim % c.heads == 0,
                 f"{part}: dim {dim} must be a positive multiple of heads {c.heads}")
            need((dim // c.heads) % 2 == 0, f"{part}: head dim {dim // c.heads} must be even (RoPE)")
        need(self.temporal.context >= 1, f"temporal.context must be ≥ 1 frame, got {self.temporal.context}")
        if self.text.enabled:
            need(self.text.vocab_size >= 2, f"text.vocab_size must be ≥ 2, got {self.text.vocab_size}")
            need(self.loss.user_text_weight >= 0, f"loss.user_text_weight must be ≥ 0, got {self.loss.user_text_weight}")
            need(0 <= self.text.epad_id < self.text.vocab_size,
                 f"text.epad_id {self.text.epad_id} is outside the vocabulary of {self.text.vocab_size}")
        cond = self.conditioning
        need(len(cond.voices) >= 1 and len(set(cond.voices)) == len(cond.voices), "voices must be unique, ≥ 1")
        need(CUSTOM_VOICE_NAME not in cond.voices, f"{CUSTOM_VOICE_NAME!r} is reserved for zero-shot voices")
        need(len(cond.emotions) >= 1 and len(set(cond.emotions)) == len(cond.emotions),
             "emotions must be unique, ≥ 1")
        need(1 <= cond.speaker.min_frames <= cond.speaker.max_frames, "need 1 ≤ speaker.min_frames ≤ max_frames")
        need(cond.speaker.dim >= 1, "speaker.dim must be ≥ 1")
        lw = self.loss
        need(min(lw.first_codebook_weight, lw.other_codebook_weight, lw.text_weight, lw.epad_weight) >= 0,
             "loss weights must be ≥ 0")
        need(lw.first_codebook_weight + lw.other_codebook_weight * (self.n_q - 1) > 0, "audio loss weights sum to 0")
        return self


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name_or_path: str | Path = "tiny", env_prefix: str | None = "MAATA_LM__", **overrides) -> LMConfig:
    """A preset by name (``maata/lm/presets/<name>.yaml``) or a YAML path, plus overrides.

    Nested overrides are dicts: ``load_preset("tiny", temporal={"layers": 2})``.
    """
    p = Path(name_or_path)
    if not p.suffix:
        p = PRESET_DIR / f"{name_or_path}.yaml"
        if not p.exists():
            raise LMConfigError(f"unknown LM preset {name_or_path!r}; presets: {', '.join(preset_names())}")
    cfg = cfglib.load(LMConfig, p, env_prefix=env_prefix, overrides=overrides or None)
    return cfg.validate()


# -- delay pattern ------------------------------------------------------------------------------
def _shift(x: torch.Tensor, delays: Sequence[int], fill: float | int, time_dim: int, forward: bool) -> torch.Tensor:
    time_dim = time_dim % x.dim()
    cb_dim = time_dim - 1
    if cb_dim < 0 or x.shape[cb_dim] != len(delays):
        raise CodeError(f"expected {len(delays)} codebooks on dim {cb_dim}, got shape {tuple(x.shape)}")
    T = x.shape[time_dim]
    out = torch.full_like(x, fill)
    for k, d in enumerate(delays):
        n = T - d
        if n <= 0:
            continue
        src, dst = x.select(cb_dim, k), out.select(cb_dim, k)
        t = time_dim - 1  # the codebook dim is gone after select
        if forward:
            dst.narrow(t, d, n).copy_(src.narrow(t, 0, n))
        else:
            dst.narrow(t, 0, n).copy_(src.narrow(t, d, n))
    return out


def delay_codes(codes: torch.Tensor, delays: Sequence[int], fill: float | int, time_dim: int = -1) -> torch.Tensor:
    """Frame layout -> step layout: ``out[k, t] = codes[k, t - delays[k]]``, ``fill`` before that.

    The codebook axis is the one just before ``time_dim`` (``[..., K, T]`` by default).
    """
    return _shift(codes, delays, fill, time_dim, forward=True)


def undelay_codes(codes: torch.Tensor, delays: Sequence[int], fill: float | int, time_dim: int = -1) -> torch.Tensor:
    """Step layout -> frame layout: ``out[k, t] = codes[k, t + delays[k]]``; the last
    ``delays[k]`` frames of codebook k, not drawn yet within the window, are ``fill``."""
    return _shift(codes, delays, fill, time_dim, forward=False)


# -- layers -------------------------------------------------------------------------------------
def _ffn_hidden(dim: int, hidden: int) -> int:
    return hidden if hidden > 0 else swiglu_hidden(dim)


def _temporal(cfg: TemporalConfig) -> StreamingTransformer:
    """The temporal transformer: causal over frames, attention over the last ``context`` frames
    (RMSNorm, SwiGLU, RoPE); streaming keeps a ring KV cache of ``context`` frames per slot."""
    return StreamingTransformer(cfg.dim, cfg.layers, cfg.heads, cfg.context, _ffn_hidden(cfg.dim, cfg.ffn_hidden),
                                rope_base=cfg.rope_base)


class DepthTransformer(nn.Module):
    """Small causal transformer inside one frame: step j predicts token j of the frame.

    Step j's input is a per-step projection of the temporal output plus the embedding of
    token j-1 (step 0 sees the projection only). No positional encoding is needed beyond the
    per-step projections and embeddings. The stack is a :class:`StreamingTransformer` whose
    context is the frame's steps: ``step`` fills a fresh state (``init_state``) step by step.
    """

    def __init__(self, cfg: DepthConfig, in_dim: int, in_vocabs: Sequence[int], out_vocabs: Sequence[int]):
        super().__init__()
        if len(in_vocabs) != len(out_vocabs) - 1:
            raise LMConfigError("depth transformer: need one input vocabulary per step after the first")
        self.steps, self.dim = len(out_vocabs), cfg.dim
        self.proj = nn.Linear(in_dim, self.steps * cfg.dim, bias=False)
        self.emb = nn.ModuleList(nn.Embedding(v, cfg.dim) for v in in_vocabs)
        self.transformer = StreamingTransformer(cfg.dim, cfg.layers, cfg.heads, self.steps,
                                                _ffn_hidden(cfg.dim, cfg.ffn_hidden), rope_base=None)
        self.norm = RMSNorm(cfg.dim)
        self.heads = nn.ModuleList(nn.Linear(cfg.dim, v, bias=False) for v in out_vocabs)
        self.register_load_state_dict_pre_hook(_upgrade_depth_keys)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """Temporal output [N, D] -> every step's conditioning [N, steps, d]."""
        return self.proj(h).view(h.shape[0], self.steps, self.dim)

    def forward(self, h: torch.Tensor, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Teacher forcing. h [N, D]; tokens [N, steps] (the targets). Returns logits per step."""
        x = self.project(h)
        x = torch.cat([x[:, :1]] + [x[:, j:j + 1] + self.emb[j - 1](tokens[:, j - 1:j]) for j in range(1, self.steps)],
                      dim=1)
        x = self.norm(self.transformer(x))
        return [head(x[:, j]) for j, head in enumerate(self.heads)]

    def init_state(self, n: int, device=None, dtype: torch.dtype = torch.float32) -> TransformerState:
        """An empty frame for ``n`` rows (one per frame being drawn)."""
        return self.transformer.init_state(n, device, dtype)

    def step(self, j: int, cond: torch.Tensor, prev: torch.Tensor | None, state: TransformerState) -> torch.Tensor:
        """Step j: cond [N, d] (``project(h)[:, j]``), prev long [N] (token j-1; None at j=0).

        ``state`` (from ``init_state``) holds the earlier steps of this frame; updated in place.
        """
        x = cond if prev is None else cond + self.emb[j - 1](prev)
        x = self.transformer.step(state, x[:, None], at=j)
        return self.heads[j](self.norm(x)[:, 0])


def _upgrade_depth_keys(module: DepthTransformer, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: checkpoints that store the depth layers as ``blocks.{i}`` (the
    committed demo LM does) load into ``transformer.layers.{i}``; renamed in place."""
    old = prefix + "blocks."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "transformer.layers." + key[len(old):]] = state_dict.pop(key)


class SpeakerEncoder(nn.Module):
    """Reference clip -> speaker vector, for zero-shot voices.

    Input is the clip's **codec codes** [B, n_q, T] (the service already runs the codec, so no
    second feature pipeline; codes at 25 Hz keep the encoder tiny). Summed per-codebook
    embeddings go through a few bidirectional transformer blocks, then mean+std pooling over
    the valid frames, a linear map, and L2 normalisation (scaled by √dim so entries are O(1)).
    """

    def __init__(self, cfg: SpeakerConfig, n_q: int, codebook_size: int):
        super().__init__()
        self.pad = codebook_size
        self.emb = nn.Embedding(n_q * (codebook_size + 1), cfg.hidden)
        self.register_buffer("offsets", torch.arange(n_q) * (codebook_size + 1), persistent=False)
        self.blocks = nn.ModuleList(TransformerLayer(cfg.hidden, cfg.heads, swiglu_hidden(cfg.hidden))
                                    for _ in range(cfg.layers))
        self.head_dim = cfg.hidden // cfg.heads
        self.norm = RMSNorm(cfg.hidden)
        self.out = nn.Linear(2 * cfg.hidden, cfg.dim)
        self.dim = cfg.dim

    def forward(self, codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """codes long [B, n_q, T] (entries past ``lengths`` [B] are ignored) -> [B, dim]."""
        B, K, T = codes.shape
        valid = torch.arange(T, device=codes.device)[None, :] < lengths[:, None]  # [B, T]
        codes = torch.where(valid[:, None], codes, torch.full_like(codes, self.pad))
        x = self.emb(codes + self.offsets[:, None]).sum(1)  # [B, T, hidden]
        rope = rope_tables(torch.arange(T, device=codes.device)[None], self.head_dim, x.dtype)
        mask = valid[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask, rope)
        x = self.norm(x)
        w = valid[..., None].to(x.dtype)
        n = w.sum(1).clamp(min=1)
        mean = (x * w).sum(1) / n
        std = (((x - mean[:, None]) ** 2 * w).sum(1) / n).clamp(min=1e-6).sqrt()
        v = self.out(torch.cat([mean, std], dim=-1))
        return F.normalize(v, dim=-1) * math.sqrt(self.dim)


# -- outputs and state --------------------------------------------------------------------------
@dataclass
class LMOutput:
    """Teacher-forced logits, aligned with the targets (no shifting needed for the loss)."""

    audio_logits: torch.Tensor  # [B, K, T, codebook_size]: logits of agent_codes[:, k, t]
    audio_mask: torch.Tensor  # bool [B, K, T]: False where codebook k of frame t falls past the window (delay)
    text_logits: torch.Tensor | None  # [B, T, text_vocab]: logits of text[:, t]
    user_text_logits: torch.Tensor | None = None  # [B, T, text_vocab]: logits of user_text[:, t]


@dataclass
class LMLoss:
    total: torch.Tensor  # text_weight · text + user_text_weight · user_text + audio
    audio: torch.Tensor  # weighted mean of per_codebook
    per_codebook: torch.Tensor  # [K] cross-entropy of each codebook (unweighted)
    text: torch.Tensor | None  # cross-entropy of the text stream (EPAD down-weighted)
    user_text: torch.Tensor | None = None  # cross-entropy of the user's transcript (EPAD down-weighted)


@dataclass
class LMState:
    """Streaming state of ``max_batch`` slots. Every tensor is batch-first and fixed-shape;
    a slot is reset by zeroing its rows (position 0 means "start of call": the model then
    feeds BOS instead of the stored previous tokens)."""

    keys: list[torch.Tensor]  # per temporal layer [B, H, context, Dh], RoPE-rotated at absolute positions
    values: list[torch.Tensor]  # per temporal layer [B, H, context, Dh]
    pos: torch.Tensor  # long [B]: frames stepped in the slot's current call
    recent: torch.Tensor  # long [B, max_delay + 1, K]: last drawn agent codes, step layout, ring by pos
    prev_text: torch.Tensor  # long [B]: the text token drawn at the previous step
    seed: torch.Tensor  # long [B]: the call's sampling seed
    in_use: torch.Tensor  # bool [B]: slots handed out by acquire_slot / prefill

    @property
    def batch(self) -> int:
        return self.pos.shape[0]

    @property
    def temporal(self) -> TransformerState:
        """The temporal transformer's state: a view of ``keys``, ``values`` and ``pos``."""
        return TransformerState(self.keys, self.values, self.pos)

    def slot_tensors(self) -> list[torch.Tensor]:
        """Every per-slot tensor (all but in_use): row b is slot b."""
        return [*self.keys, *self.values, self.pos, self.recent, self.prev_text, self.seed]


@dataclass
class StepOutput:
    """What one ``LM.step`` produced. Rows of inactive slots hold -1 (and ``ready`` False)."""

    agent_codes: torch.Tensor  # long [B, K]: the agent frame completed at this step (valid where ready)
    ready: torch.Tensor  # bool [B]: a whole frame is out (the slot is active and past the delay)
    frame: torch.Tensor  # long [B]: call-relative index of that frame (step - acoustic_delay), -1 if none
    text_token: torch.Tensor  # long [B]: text token of the frame begun at this step (-1: text disabled)
    step_codes: torch.Tensor  # long [B, K]: codes drawn at this step, step layout (BOS before the delay)
    text_logits: torch.Tensor | None = None  # [B, V_text] when return_logits
    audio_logits: torch.Tensor | None = None  # [B, K, codebook_size], step layout, when return_logits


Names = str | int | Sequence[str | int] | torch.Tensor | None


@dataclass
class _StepInputs:
    """``step``'s inputs, validated, as tensors; inactive rows blanked (codes 0, nothing forced)."""

    active: torch.Tensor  # bool [B]
    user: torch.Tensor  # long [B, K]
    voice: torch.Tensor  # long [B]
    emotion: torch.Tensor  # long [B]
    speaker: torch.Tensor | None  # [B, S]
    params: SamplingBatch
    force: torch.Tensor | None  # long [B, K], NOT_FORCED where drawn
    force_text: torch.Tensor | None  # long [B]


# -- the model ----------------------------------------------------------------------------------
class LM(nn.Module):
    """The full-duplex speech LM (see the module docstring for the layouts and the API)."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg.validate()
        K, V = cfg.n_q, cfg.codebook_size
        D = cfg.temporal.dim
        self.n_q, self.card = K, V
        self.delays = cfg.delays
        self.max_delay = max(self.delays)
        self.text_enabled = cfg.text.enabled
        self.text_vocab = cfg.text.vocab_size if cfg.text.enabled else 0
        self.voices = tuple(cfg.conditioning.voices)
        self.emotions = tuple(cfg.conditioning.emotions)
        n_inputs = 2 * K + 3 + int(self.text_enabled)
        std = 1.0 / math.sqrt(n_inputs)  # the frame input is a sum of n_inputs embeddings: keep it O(1)

        # index V of each codebook table: BOS ("no code yet") for the agent, absent for the user
        self.agent_emb = nn.Embedding(K * (V + 1), D)
        self.user_emb = nn.Embedding(K * (V + 1), D)
        self.register_buffer("code_offsets", torch.arange(K) * (V + 1), persistent=False)
        self.register_buffer("delay_steps", torch.tensor(self.delays), persistent=False)  # [K]
        self.text_emb = nn.Embedding(self.text_vocab + 1, D) if self.text_enabled else None  # index V_text = BOS
        self.voice_emb = nn.Embedding(len(self.voices), D)
        self.emotion_emb = nn.Embedding(len(self.emotions), D)
        self.speaker_proj = nn.Linear(cfg.conditioning.speaker.dim, D, bias=False)
        self.speaker_encoder = SpeakerEncoder(cfg.conditioning.speaker, K, V)
        for emb in (self.agent_emb, self.user_emb, self.text_emb, self.voice_emb, self.emotion_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=std)

        self.temporal = _temporal(cfg.temporal)
        self.out_norm = RMSNorm(D)
        text = [self.text_vocab] if self.text_enabled else []
        # depth step j+1 embeds token j: the text token, then codebooks 1..K-1 (which may be BOS)
        self.depth = DepthTransformer(cfg.depth, D, in_vocabs=text + [V + 1] * (K - 1), out_vocabs=text + [V] * K)
        self.text_offset = int(self.text_enabled)  # depth step of codebook 0
        self.user_text_head = None
        if self.text_enabled and cfg.text.user_stream:
            self.add_user_text_head()

    def add_user_text_head(self) -> None:
        """Give the model the user-transcript head (``text.user_stream``): a linear map from the
        temporal state of frame t to the logits of ``user_text[t]``. Also how a model exported
        without one (an earlier checkpoint) gets it for further training."""
        if not self.text_enabled:
            raise LMInputError("the user-transcript head needs the text stream (text.enabled)")
        if self.user_text_head is None:
            self.cfg.text.user_stream = True
            self.user_text_head = nn.Linear(self.cfg.temporal.dim, self.text_vocab)
            nn.init.normal_(self.user_text_head.weight, std=0.02)
            nn.init.zeros_(self.user_text_head.bias)
            self.user_text_head.to(self.out_norm.weight.device)

    # -- names and ids ----------------------------------------------------------------------------
    @property
    def bos(self) -> int:
        """Agent-code id meaning "no code yet" (start of call, or before the acoustic delay)."""
        return self.card

    @property
    def text_bos(self) -> int:
        return self.text_vocab

    def voice_ids(self, voices: Names, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Voice names or ids -> long tensor (``"custom"`` / -1: the slot's speaker embedding).

        None means the first voice. With ``shape`` ([B] or [B, T]) one value is broadcast to
        all, and for [B, T] one value per item is held over time.
        """
        table = {n: i for i, n in enumerate(self.voices)} | {CUSTOM_VOICE_NAME: CUSTOM_VOICE}
        return self._ids(voices, table, CUSTOM_VOICE, len(self.voices), UnknownVoiceError, "voice", shape)

    def emotion_ids(self, emotions: Names, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Emotion names (e.g. ``"HAPPY"``) or ids -> long tensor, broadcast to ``shape`` if given."""
        table = {n: i for i, n in enumerate(self.emotions)}
        return self._ids(emotions, table, 0, len(self.emotions), UnknownEmotionError, "emotion", shape)

    def _ids(self, value: Names, table: dict[str, int], lo: int, n: int, err: type[UnknownConditionError],
             what: str, shape: tuple[int, ...] | None) -> torch.Tensor:
        device = self.code_offsets.device
        known = ", ".join(table)
        if value is None:
            value = 0
        if isinstance(value, torch.Tensor):
            if value.dtype in (torch.bool,) or value.is_floating_point() or value.is_complex():
                raise err(f"{what} ids must be integers, got {value.dtype}")
            ids = value.to(device=device, dtype=torch.long)
        else:
            items = [value] if isinstance(value, (str, int)) else list(value)
            out = []
            for v in items:
                if isinstance(v, str):
                    if v not in table:
                        raise err(f"unknown {what} {v!r}; known: {known}")
                    out.append(table[v])
                elif isinstance(v, int) and not isinstance(v, bool):
                    out.append(v)
                else:
                    raise err(f"{what} must be a name or an integer id, got {v!r}")
            ids = torch.tensor(out, dtype=torch.long, device=device)
            if isinstance(value, (str, int)):
                ids = ids.reshape(())
        if ids.numel() and (int(ids.min()) < lo or int(ids.max()) >= n):
            raise err(f"{what} ids must be in [{lo}, {n - 1}] ({known}); got [{int(ids.min())}, {int(ids.max())}]")
        if shape is not None:
            if ids.dim() == 0:
                ids = ids.expand(shape)
            elif ids.dim() == 1 and len(shape) == 2 and ids.shape[0] == shape[0]:
                ids = ids[:, None].expand(shape)  # one per item, constant over time
            if tuple(ids.shape) != tuple(shape):
                raise err(f"{what} must be one value, one per item or one per frame {list(shape)}; "
                          f"got shape {tuple(ids.shape)}")
        return ids

    # -- validation ---------------------------------------------------------------------------------
    def _check_int(self, x: torch.Tensor, name: str, shape: tuple[int, ...], desc: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise CodeError(f"{name} must be a tensor shaped {desc}, got {type(x).__name__}")
        if tuple(x.shape) != tuple(shape):
            raise CodeError(f"{name} must be shaped {desc} = {list(shape)}, got {tuple(x.shape)}")
        if x.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise CodeError(f"{name} must be integer ids, got dtype {x.dtype}")
        return x.to(device=self.code_offsets.device, dtype=torch.long)

    @staticmethod
    def _check_range(x: torch.Tensor, name: str, lo: int, hi: int, rows: torch.Tensor | None = None,
                     note: str = "") -> None:
        """Values must lie in [lo, hi) (only in ``rows`` [B] bool, when given)."""
        v = x[rows] if rows is not None else x
        if v.numel() and (int(v.min()) < lo or int(v.max()) >= hi):
            raise CodeError(f"{name} values must be in [{lo}, {hi - 1}]{note}; got [{int(v.min())}, {int(v.max())}]")

    def _check_speaker(self, speaker: torch.Tensor | None, lead: tuple[int, ...], need: torch.Tensor,
                       rows: torch.Tensor | None = None) -> torch.Tensor | None:
        """speaker [*lead, S] float, finite where a custom voice uses it (``need`` bool [*lead])."""
        S = self.cfg.conditioning.speaker.dim
        if speaker is None:
            if bool(need.any()):
                raise UnknownVoiceError(f"voice {CUSTOM_VOICE_NAME!r} needs a speaker embedding "
                                        f"(speaker=[..., {S}], e.g. from lm.speaker_embedding(reference_codes))")
            return None
        if not isinstance(speaker, torch.Tensor) or not speaker.is_floating_point():
            raise LMInputError(f"speaker must be a float tensor shaped {list(lead) + [S]}")
        if tuple(speaker.shape) != tuple(lead) + (S,):
            raise LMInputError(f"speaker must be shaped {list(lead) + [S]}, got {tuple(speaker.shape)}")
        speaker = speaker.to(self.code_offsets.device, self.speaker_proj.weight.dtype)
        used = need if rows is None else need & rows
        if not bool(torch.isfinite(speaker[used]).all()):
            raise LMInputError("speaker embedding contains NaN or infinite values")
        return torch.where(used[..., None], speaker, torch.zeros_like(speaker))  # unused rows may hold garbage

    # -- embeddings -----------------------------------------------------------------------------------
    def _embed(self, prev_agent: torch.Tensor, user: torch.Tensor, prev_text: torch.Tensor | None,
               voice: torch.Tensor, emotion: torch.Tensor, speaker: torch.Tensor | None) -> torch.Tensor:
        """Sum of a frame's input embeddings. prev_agent, user: [B, K, T] (user may hold ABSENT_CODE);
        prev_text [B, T]; voice, emotion [B, T]; speaker [B, S] or None. Returns [B, T, D]."""
        off = self.code_offsets[None, :, None]
        x = self.agent_emb(prev_agent + off).sum(1)
        user = torch.where(user < 0, torch.full_like(user, self.card), user)
        x = x + self.user_emb(user + off).sum(1)
        if self.text_emb is not None:
            x = x + self.text_emb(prev_text)
        v = self.voice_emb(voice.clamp(min=0))
        if speaker is not None:
            sp = self.speaker_proj(speaker)[:, None]  # [B, 1, D]
            v = torch.where((voice == CUSTOM_VOICE)[..., None], sp, v)
        return x + v + self.emotion_emb(emotion)

    def speaker_embedding(self, reference_codes: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None,
                          ) -> torch.Tensor:
        """Reference clip(s) as codec codes [n_q, T] or [B, n_q, T] -> speaker vectors [B, S].

        Encode the clip with the codec (non-adaptive, so no dropped levels) first. ``lengths``
        gives each clip's valid frames in a padded batch. Clips shorter than
        ``speaker.min_frames`` are refused; longer than ``max_frames`` are cropped.
        """
        sc = self.cfg.conditioning.speaker
        x = reference_codes
        if not isinstance(x, torch.Tensor):
            raise ReferenceClipError(f"reference clip must be a tensor of codec codes, got {type(x).__name__}")
        if x.is_floating_point():
            if x.numel() and not bool(torch.isfinite(x).all()):
                raise ReferenceClipError("reference clip contains NaN or infinite values")
            raise ReferenceClipError(f"reference clip must be integer codec codes [n_q, frames], got {x.dtype} "
                                     "(encode the audio with the codec first)")
        if x.dim() == 2:
            x = x[None]
        if x.dim() != 3 or x.shape[1] != self.n_q:
            raise ReferenceClipError(f"reference codes must be shaped [{self.n_q}, T] or [B, {self.n_q}, T], "
                                     f"got {tuple(reference_codes.shape)}")
        B, _, T = x.shape
        if B == 0 or T == 0:
            raise ReferenceClipError("reference clip is empty")
        if lengths is None:
            lens = torch.full((B,), T, dtype=torch.long)
        else:
            lens = torch.as_tensor(lengths, dtype=torch.long).reshape(-1)
            if lens.shape != (B,) or int(lens.max()) > T:
                raise ReferenceClipError(f"lengths must be {B} values ≤ {T}, got {lens.tolist()}")
        short = int(lens.min())
        if short < sc.min_frames:
            raise ReferenceClipError(f"reference clip too short: {short} frames ({short / self.cfg.frame_rate:.2f} s); "
                                     f"need ≥ {sc.min_frames} ({sc.min_frames / self.cfg.frame_rate:.2f} s)")
        x = self._check_int(x, "reference codes", (B, self.n_q, T), "[B, n_q, T]")
        valid = torch.arange(T, device=x.device)[None, :] < lens.to(x.device)[:, None]
        self._check_range(x.transpose(1, 2)[valid], "reference codes", 0, self.card)
        x, lens = x[:, :, : sc.max_frames], lens.clamp(max=sc.max_frames).to(x.device)
        return self.speaker_encoder(x, lens)

    # -- offline ------------------------------------------------------------------------------------------
    def _check_history(self, user_codes: torch.Tensor, agent_codes: torch.Tensor, text: torch.Tensor | None,
                       B: int, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        K = self.n_q
        user = self._check_int(user_codes, "user_codes", (B, K, T), "[B, n_q, T]")
        agent = self._check_int(agent_codes, "agent_codes", (B, K, T), "[B, n_q, T]")
        self._check_range(user, "user_codes", ABSENT_CODE, self.card, note=f" ({ABSENT_CODE}: absent)")
        self._check_range(agent, "agent_codes", 0, self.card)
        if self.text_enabled:
            if text is None:
                raise CodeError("this model has a text stream: pass text tokens [B, T] "
                                "(EPAD where the agent says nothing)")
            text = self._check_int(text, "text", (B, T), "[B, T]")
            self._check_range(text, "text", 0, self.text_vocab)
        elif text is not None:
            raise CodeError("this model has no text stream (text.enabled is false): pass text=None")
        return user, agent, text

    def forward(self, user_codes: torch.Tensor, agent_codes: torch.Tensor, text: torch.Tensor | None = None,
                voice: Names = None, emotion: Names = None, speaker: torch.Tensor | None = None) -> LMOutput:
        """Teacher-forced pass. user_codes, agent_codes: long [B, K, T] (frame layout); text: [B, T];
        voice/emotion: names or ids, one per item [B] or per frame [B, T]; speaker: [B, S] for
        items whose voice is ``"custom"``. Logits come back aligned with the targets."""
        if not isinstance(agent_codes, torch.Tensor) or agent_codes.dim() != 3:
            raise CodeError(f"agent_codes must be shaped [B, n_q, T], got "
                            f"{tuple(agent_codes.shape) if isinstance(agent_codes, torch.Tensor) else agent_codes!r}")
        B, _, T = agent_codes.shape
        if T == 0:
            raise CodeError("need at least one frame")
        user, agent, text = self._check_history(user_codes, agent_codes, text, B, T)
        voice_t = self.voice_ids(voice, (B, T))
        emotion_t = self.emotion_ids(emotion, (B, T))
        sp = self._check_speaker(speaker, (B,), (voice_t == CUSTOM_VOICE).any(1))

        steps = delay_codes(agent, self.delays, self.bos)  # [B, K, T] step layout
        start = torch.full((B, self.n_q, 1), self.bos, dtype=torch.long, device=agent.device)
        prev = torch.cat([start, steps[:, :, :-1]], dim=2)
        prev_text = None
        if text is not None:
            prev_text = torch.cat([torch.full((B, 1), self.text_bos, dtype=torch.long, device=text.device),
                                   text[:, :-1]], dim=1)
        x = self._embed(prev, user, prev_text, voice_t, emotion_t, sp)
        h = self.temporal(x)
        h = self.out_norm(h).reshape(B * T, -1)
        targets = steps.transpose(1, 2)  # [B, T, K]
        if text is not None:
            targets = torch.cat([text[..., None], targets], dim=-1)
        logits = self.depth(h, targets.reshape(B * T, -1))
        text_logits = logits[0].view(B, T, -1) if self.text_enabled else None
        user_text_logits = self.user_text_head(h).view(B, T, -1) if self.user_text_head is not None else None
        audio = torch.stack([lg.view(B, T, -1) for lg in logits[self.text_offset:]], dim=1)  # [B, K, T, V]
        audio = undelay_codes(audio, self.delays, 0.0, time_dim=2)
        t = torch.arange(T, device=agent.device)
        mask = (t[None, :] + self.delay_steps[:, None]) < T  # [K, T]
        return LMOutput(audio, mask[None].expand(B, -1, -1), text_logits, user_text_logits)

    def loss(self, out: LMOutput, agent_codes: torch.Tensor, text: torch.Tensor | None = None,
             frame_mask: torch.Tensor | None = None, user_text: torch.Tensor | None = None,
             user_text_mask: torch.Tensor | None = None) -> LMLoss:
        """Cross-entropies of ``forward``'s logits against the targets it was given.

        frame_mask: bool [B, T], False on padding frames. Codebook 1 is weighted by
        ``loss.first_codebook_weight`` against ``other_codebook_weight`` for the rest; EPAD
        text targets by ``loss.epad_weight``. ``user_text`` [B, T] (with ``user_text_mask``, True
        on frames that have the transcript) adds the user-transcript loss, weighted
        ``loss.user_text_weight``, when the model has the head.
        """
        lc = self.cfg.loss
        B, K, T, V = out.audio_logits.shape
        agent = self._check_int(agent_codes, "agent_codes", (B, K, T), "[B, n_q, T]")
        mask = out.audio_mask
        if frame_mask is not None:
            mask = mask & frame_mask.to(mask.device, torch.bool)[:, None, :]
        ce = F.cross_entropy(out.audio_logits.reshape(-1, V).float(), agent.reshape(-1), reduction="none")
        ce = ce.view(B, K, T) * mask
        per_cb = ce.sum((0, 2)) / mask.sum((0, 2)).clamp(min=1)
        w = torch.full((K,), lc.other_codebook_weight, device=per_cb.device)
        w[0] = lc.first_codebook_weight
        audio = (w * per_cb).sum() / w.sum()
        text_loss = None
        total = audio
        if out.text_logits is not None:
            if text is None:
                raise CodeError("text targets are needed for the text loss")
            text = self._check_int(text, "text", (B, T), "[B, T]")
            tce = F.cross_entropy(out.text_logits.reshape(B * T, -1).float(), text.reshape(-1), reduction="none")
            tw = torch.where(text.reshape(-1) == self.cfg.text.epad_id, lc.epad_weight, 1.0)
            if frame_mask is not None:
                tw = tw * frame_mask.reshape(-1).to(tw.device, tw.dtype)
            text_loss = (tce * tw).sum() / tw.sum().clamp(min=1e-6)
            total = total + lc.text_weight * text_loss
        user_loss = None
        if out.user_text_logits is not None and user_text is not None:
            user_text = self._check_int(user_text, "user_text", (B, T), "[B, T]")
            uce = F.cross_entropy(out.user_text_logits.reshape(B * T, -1).float(), user_text.reshape(-1),
                                  reduction="none")
            uw = torch.where(user_text.reshape(-1) == self.cfg.text.epad_id, lc.epad_weight, 1.0)
            if user_text_mask is not None:
                uw = uw * user_text_mask.reshape(-1).to(uw.device, uw.dtype)
            if frame_mask is not None:
                uw = uw * frame_mask.reshape(-1).to(uw.device, uw.dtype)
            user_loss = (uce * uw).sum() / uw.sum().clamp(min=1e-6)
            total = total + lc.user_text_weight * user_loss
        return LMLoss(total, audio, per_cb, text_loss, user_loss)

    # -- streaming state ------------------------------------------------------------------------------
    def delay(self, frames: torch.Tensor) -> torch.Tensor:
        """Agent codes [..., K, T] frame layout -> step layout (BOS before the delay)."""
        return delay_codes(frames, self.delays, self.bos)

    def undelay(self, steps: torch.Tensor, fill: int = 0) -> torch.Tensor:
        """Step layout [..., K, T] (e.g. stacked ``StepOutput.step_codes``) -> frame layout;
        codebooks not drawn yet (the last ``acoustic_delay`` frames of codebooks 2..K) are ``fill``."""
        return undelay_codes(steps, self.delays, fill)

    def init_state(self, max_batch: int) -> LMState:
        """A state of ``max_batch`` free slots on the model's device, in the model's dtype."""
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise SlotError(f"max_batch must be a positive integer, got {max_batch!r}")
        p = next(self.parameters())
        device, dtype = p.device, p.dtype
        t = self.temporal.init_state(max_batch, device, dtype)
        long = dict(dtype=torch.long, device=device)
        return LMState(
            keys=t.keys,
            values=t.values,
            pos=t.pos,
            recent=torch.zeros(max_batch, self.max_delay + 1, self.n_q, **long),
            prev_text=torch.zeros(max_batch, **long),
            seed=torch.zeros(max_batch, **long),
            in_use=torch.zeros(max_batch, dtype=torch.bool, device=device),
        )

    def _mask(self, state: LMState, mask, name: str) -> torch.Tensor:
        m = torch.as_tensor(mask, device=state.pos.device)
        if m.dtype != torch.bool or m.shape != (state.batch,):
            raise SlotError(f"{name} must be bool [{state.batch}] (one per slot), got {m.dtype} {tuple(m.shape)}")
        return m

    def reset(self, state: LMState, mask, seed: int | torch.Tensor | None = None) -> None:
        """Start new calls in the slots of ``mask`` (bool [B]): their history is forgotten.

        ``seed``: the calls' sampling seed (an int for all, or long [B]); None draws a fresh
        random seed per slot from torch's global RNG.
        """
        m = self._mask(state, mask, "reset mask")
        for t in state.slot_tensors():
            t[m] = 0
        n = int(m.sum())
        if seed is None:
            s = torch.randint(0, 2**62, (n,), device=state.pos.device)
        elif isinstance(seed, torch.Tensor):
            if seed.shape != (state.batch,):
                raise SlotError(f"seed tensor must be shaped [{state.batch}], got {tuple(seed.shape)}")
            s = seed.to(state.pos.device, torch.long)[m]
        else:
            s = torch.full((n,), int(seed), dtype=torch.long, device=state.pos.device)
        state.seed[m] = s

    def acquire_slot(self, state: LMState, seed: int | None = None) -> int:
        """Hand out a free slot (reset, marked in use); raises NoFreeSlotError when full."""
        free = (~state.in_use).nonzero()
        if free.numel() == 0:
            raise NoFreeSlotError(f"all {state.batch} slots are in use")
        slot = int(free[0, 0])
        self._reset_slot(state, slot, seed)
        state.in_use[slot] = True
        return slot

    def release_slot(self, state: LMState, slot: int) -> None:
        """Give a slot back (its call has ended); its history is forgotten."""
        self._check_slot(state, slot)
        self._reset_slot(state, slot, 0)
        state.in_use[slot] = False

    def _check_slot(self, state: LMState, slot: int) -> int:
        if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < state.batch:
            raise SlotError(f"slot must be an integer in [0, {state.batch - 1}], got {slot!r}")
        return slot

    def _reset_slot(self, state: LMState, slot: int, seed: int | None) -> None:
        m = torch.zeros(state.batch, dtype=torch.bool, device=state.pos.device)
        m[slot] = True
        self.reset(state, m, seed)

    # -- streaming ------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, state: LMState, user_codes: torch.Tensor, active_mask, *, voice: Names = None,
             emotion: Names = None, speaker: torch.Tensor | None = None,
             sampling: SamplingParams | Sequence[SamplingParams | None] | SamplingBatch | None = None,
             force_agent_codes: torch.Tensor | None = None, force_text: torch.Tensor | None = None,
             return_logits: bool = False) -> StepOutput:
        """Advance every active slot by one frame.

        user_codes: long [B, K], the user's codes of this frame (B = the state's max_batch;
        ABSENT_CODE = -1 for a missing level). active_mask: bool [B]; inactive slots keep their
        state untouched and do not influence the others (their codes, forcing and speaker
        rows are not checked, so a free slot may hold anything).
        voice / emotion: names or ids, one for all or one per slot ([B]); voice ``"custom"`` uses
        ``speaker`` [B, S]. sampling: one SamplingParams, one per slot, or a SamplingBatch.
        force_agent_codes [B, K] (step layout) / force_text [B]: teacher forcing, NOT_FORCED = -1
        entries are drawn as usual.
        """
        B, K = state.batch, self.n_q
        dev = state.pos.device
        p = state.pos.clone()  # positions before this step (state.pos advances below)
        inp = self._step_inputs(state, p, user_codes, active_mask, voice, emotion, speaker, sampling,
                                force_agent_codes, force_text)
        active = inp.active
        M = state.recent.shape[1]
        rows = torch.arange(B, device=dev)
        first = p == 0
        prev = torch.where(first[:, None], self.bos, state.recent[rows, (p - 1) % M])
        prev_text = torch.where(first, self.text_bos, state.prev_text)[:, None] if self.text_enabled else None
        x = self._embed(prev[:, :, None], inp.user[:, :, None], prev_text, inp.voice[:, None], inp.emotion[:, None],
                        inp.speaker)
        h = self.out_norm(self.temporal.step(state.temporal, x, active))[:, 0]  # advances state.pos
        text_tok, step_codes, text_logits, audio_logits = self._depth_generate(h, p, state.seed, inp)

        # commit the active slots
        act = active.nonzero()[:, 0]
        state.recent[act, p[act] % M] = step_codes[act]
        if self.text_enabled:
            state.prev_text[act] = text_tok[act]
        frame = p - self.max_delay
        ready = active & (frame >= 0)
        agent = state.recent[rows[:, None], (frame[:, None] + self.delay_steps) % M, torch.arange(K, device=dev)]

        neg = torch.full_like(step_codes, -1)
        return StepOutput(
            agent_codes=torch.where(ready[:, None], agent, neg),
            ready=ready,
            frame=torch.where(ready, frame, -1),
            text_token=torch.where(active, text_tok, -1),
            step_codes=torch.where(active[:, None], step_codes, neg),
            text_logits=text_logits if return_logits else None,
            audio_logits=audio_logits if return_logits else None,
        )

    def _step_inputs(self, state: LMState, p: torch.Tensor, user_codes, active_mask, voice: Names, emotion: Names,
                     speaker, sampling, force_agent_codes, force_text) -> _StepInputs:
        """Validate ``step``'s inputs (active rows only, for codes) and blank the inactive rows."""
        B, K = state.batch, self.n_q
        if not isinstance(user_codes, torch.Tensor) or user_codes.dim() != 2:
            raise CodeError(f"user_codes must be shaped [B, n_q] = [{B}, {K}], got "
                            f"{tuple(user_codes.shape) if isinstance(user_codes, torch.Tensor) else user_codes!r}")
        if user_codes.shape[0] != B:
            raise SlotError(f"batch of {user_codes.shape[0]} does not match the state's max_batch {B} "
                            "(pass one row per slot and mark unused slots inactive)")
        active = self._mask(state, active_mask, "active_mask")
        user = self._check_int(user_codes, "user_codes", (B, K), "[B, n_q]")
        self._check_range(user, "user_codes", ABSENT_CODE, self.card, active, f" ({ABSENT_CODE}: absent)")
        user = torch.where(active[:, None], user, 0)
        voice_t = torch.where(active, self.voice_ids(voice, (B,)), 0)
        emotion_t = self.emotion_ids(emotion, (B,))
        sp = self._check_speaker(speaker, (B,), voice_t == CUSTOM_VOICE, active)
        params = SamplingBatch.from_params(sampling, B, state.pos.device)
        force = None
        if force_agent_codes is not None:
            force = self._check_int(force_agent_codes, "force_agent_codes", (B, K), "[B, n_q]")
            self._check_range(force, "force_agent_codes", NOT_FORCED, self.card + 1, active,
                              f" ({NOT_FORCED}: draw; {self.bos}: BOS, only before the delay)")
            force = torch.where(active[:, None], force, NOT_FORCED)
            elapsed = p[:, None] >= self.delay_steps
            if bool(((force == self.bos) & elapsed).any()):
                raise CodeError(f"force_agent_codes holds BOS ({self.bos}) for a codebook whose delay has elapsed")
        ftext = None
        if force_text is not None:
            if not self.text_enabled:
                raise CodeError("this model has no text stream: force_text must be None")
            ftext = self._check_int(force_text, "force_text", (B,), "[B]")
            self._check_range(ftext, "force_text", NOT_FORCED, self.text_vocab, active)
            ftext = torch.where(active, ftext, NOT_FORCED)
        return _StepInputs(active, user, voice_t, emotion_t, sp, params, force, ftext)

    def _depth_generate(self, h: torch.Tensor, p: torch.Tensor, seed: torch.Tensor, inp: _StepInputs,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """One frame of the depth transformer: the text token, then codebooks 1..K, each drawn
        (or forced) before the next depth step sees it. h: temporal output [B, D]; p: positions [B].

        Returns (text token [B] or -1s, step codes [B, K], text logits [B, V_text] or None,
        audio logits [B, K, codebook_size]).
        """
        B, K = h.shape[0], self.n_q
        cond = self.depth.project(h)
        cache = self.depth.init_state(B, h.device, h.dtype)
        uniform = counter_uniform(seed, p, [TEXT_STREAM] + [1 + k for k in range(K)])  # [B, 1 + K]
        params = inp.params
        audio_rule = Rule.make(params.temperature, params.top_k, self.card)
        text_tok = torch.full((B,), -1, dtype=torch.long, device=h.device)
        text_logits = None
        prev: torch.Tensor | None = None
        if self.text_enabled:
            text_logits = self.depth.step(0, cond[:, 0], None, cache)
            rule = Rule.make(params.text_temperature, params.text_top_k, self.text_vocab)
            text_tok = draw(text_logits, rule, uniform[:, TEXT_STREAM])
            if inp.force_text is not None:
                text_tok = torch.where(inp.force_text >= 0, inp.force_text, text_tok)
            prev = text_tok
        codes, audio_logits = [], []
        for k in range(K):
            j = k + self.text_offset
            logits = self.depth.step(j, cond[:, j], prev, cache)
            tok = draw(logits, audio_rule, uniform[:, 1 + k])
            if inp.force is not None:
                tok = torch.where(inp.force[:, k] >= 0, inp.force[:, k], tok)
            tok = torch.where(p < self.delays[k], self.bos, tok)  # the delay has not elapsed: nothing to draw
            codes.append(tok)
            audio_logits.append(logits)
            prev = tok
        return text_tok, torch.stack(codes, dim=1), text_logits, torch.stack(audio_logits, dim=1)

    @torch.no_grad()
    def prefill(self, state: LMState, slot: int, user_codes: torch.Tensor, agent_codes: torch.Tensor,
                text: torch.Tensor | None = None, *, voice: Names = None, emotion: Names = None,
                speaker: torch.Tensor | None = None, seed: int | None = None) -> None:
        """Rebuild ``slot`` from a stored history of T frames (a call reconnected after a restart).

        user_codes, agent_codes: [K, T] frame layout; text: [T]; voice/emotion: one value or one
        per frame [T]; speaker: [S] for a custom voice; seed: the call's seed (as given to reset).
        The slot ends exactly as after T ``step`` calls that drew these agent codes and text:
        the next ``step`` continues the call (same draws, same outputs). The last
        ``acoustic_delay`` frames of codebooks 2..K are not used — they are drawn by the next
        steps (store ``lm.undelay(step_codes)`` with any fill).
        """
        self._check_slot(state, slot)
        K = self.n_q
        if not isinstance(agent_codes, torch.Tensor) or agent_codes.dim() != 2:
            raise CodeError(f"agent_codes must be shaped [n_q, T], got "
                            f"{tuple(agent_codes.shape) if isinstance(agent_codes, torch.Tensor) else agent_codes!r}")
        if agent_codes.shape[0] != K:
            raise CodeError(f"agent_codes must be shaped [n_q, T] = [{K}, T], got {tuple(agent_codes.shape)}")
        T = agent_codes.shape[1]
        if isinstance(user_codes, torch.Tensor) and user_codes.dim() == 2:
            user_codes = user_codes[None]
        if isinstance(text, torch.Tensor) and text.dim() == 1:
            text = text[None]
        # the unused tail of the delayed codebooks may hold anything (e.g. a fill of -1)
        agent = agent_codes[None].clone()
        unused = undelay_codes(torch.zeros_like(agent, dtype=torch.bool), self.delays, True)
        agent = agent.masked_fill(unused, 0)
        user, agent, text = self._check_history(user_codes, agent, text, 1, T)
        voice_t = self.voice_ids(voice, (T,))[None]
        emotion_t = self.emotion_ids(emotion, (T,))[None]
        if isinstance(speaker, torch.Tensor) and speaker.dim() == 1:
            speaker = speaker[None]
        sp = self._check_speaker(speaker, (1,), (voice_t == CUSTOM_VOICE).any(1))

        self._reset_slot(state, slot, seed)
        state.in_use[slot] = True
        if T == 0:
            return
        steps = delay_codes(agent, self.delays, self.bos)
        start = torch.full((1, K, 1), self.bos, dtype=torch.long, device=agent.device)
        prev = torch.cat([start, steps[:, :, :-1]], dim=2)
        prev_text = None
        if text is not None:
            prev_text = torch.cat([torch.full((1, 1), self.text_bos, dtype=torch.long, device=text.device),
                                   text[:, :-1]], dim=1)
        x = self._embed(prev, user, prev_text, voice_t, emotion_t, sp)
        self.temporal.prefill(state.temporal, slot, x)  # the ring cache and pos, as after T steps
        M = state.recent.shape[1]
        for s in range(max(0, T - M), T):
            state.recent[slot, s % M] = steps[0, :, s]
        if text is not None:
            state.prev_text[slot] = text[0, -1]
