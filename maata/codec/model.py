"""The Maata codec: a causal encoder/decoder around a residual VQ, in two architectures.

* ``arch: stft`` (codec v2, the default preset): the work happens at the frame rate — causal
  STFT features and ConvNeXt blocks in, ConvNeXt blocks and a predicted STFT (log-magnitude +
  phase) with overlap-add out (:mod:`maata.codec.frame`).
* ``arch: seanet`` (codec v1, preset ``seanet``): a causal SEANet encoder/decoder at the sample
  rate with a bottleneck transformer (Mimi-style); sized for GPU-scale adversarial training.

Offline API (training, files)::

    out = codec(wav)                      # wav [B, 1, T] -> CodecOutput (reconstruction, codes, losses)
    codes = codec.encode(wav)             # [B, n_q, F]
    wav = codec.decode(codes)             # [B, 1, F * hop]

Streaming API (the contract every service uses)::

    state = codec.init_state(batch)
    codes = codec.encode_step(state, pcm)  # pcm [B, n] for any n; codes of the frames completed
    pcm = codec.decode_step(state, codes)  # codes [B, k, f] -> [B, f * hop]
    codec.reset(state, mask)               # give slots (bool [B]) to new calls

Chunked streaming gives the offline codes and waveform exactly (tests/test_codec_streaming.py).
Algorithmic latency is one frame plus the decoder's ``delay`` (``cfg.latency_ms``): the encoder
is causal with no look-ahead; the SEANet decoder emits a frame's samples as soon as its codes
arrive (delay 0), the STFT decoder ``synthesis_window - stft_hop`` samples later (overlap-add;
10 ms, so 50 ms in all for the default preset). Offline ``decode`` returns what streaming
emits (delayed by ``codec.delay``); ``forward`` (training) returns audio aligned with its input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maata import config as cfglib
from maata.codec.layers import BottleneckTransformer, CausalConv1d, CausalConvTranspose1d, ResidualUnit, Snake
from maata.codec.frame import FrameConfig, STFTDecoder, STFTEncoder
from maata.codec.quantizer import DROPPED, ResidualVQ
from maata.nn import CodeError, TransformerState, reset_state, weights_digest

ARCHS = ("seanet", "stft")

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class QuantizerConfig:
    n_q: int = 8
    codebook_size: int = 1024
    codebook_dim: int = 8  # DAC-style low-dimensional factorised codes
    l2norm: bool = True
    ema: bool = True
    decay: float = 0.99
    dead_code_threshold: float = 0.5  # dead when EMA usage < this x mean usage (~70 steps unused at decay 0.99)
    dropout_prob: float = 0.5  # quantizer dropout: any first k codebooks decode


@dataclass
class TransformerConfig:
    layers: int = 2  # 0 disables the bottleneck transformer
    heads: int = 4
    window: int = 100  # frames of attention context (4 s at 25 Hz)
    ff_mult: int = 2


@dataclass
class SemanticConfig:
    enabled: bool = True  # auxiliary phoneme head on codebook 1
    n_classes: int = 128  # phoneme inventory size (ids from maata.data's phoneme vocabulary)


@dataclass
class CodecConfig:
    name: str = "default"
    # "seanet" (v1: sample-rate convolutions) or "stft" (v2: frame-rate ConvNeXt + inverse STFT).
    # Checkpoints written before v2 carry no arch and are SEANet codecs, hence that default.
    arch: str = "seanet"
    sample_rate: int = 16000
    base_channels: int = 16
    strides: tuple[int, ...] = (4, 4, 5, 8)  # product = hop
    latent_dim: int = 128
    kernel_size: int = 7
    residual_kernel: int = 3
    residual_dilations: tuple[int, ...] = (1,)
    max_channels: int = 256
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    silence_dbfs: float = -50.0  # adaptive bitrate: frames quieter than this ...
    silence_n_q: int = 2  # ... are sent with this many codebooks
    frame: FrameConfig = field(default_factory=FrameConfig)  # arch "stft" only
    hop_samples: int = 0  # arch "stft": samples per codec frame (the SEANet hop is prod(strides))

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown codec arch {self.arch!r}; one of {', '.join(ARCHS)}")

    @property
    def hop(self) -> int:
        return self.hop_samples if self.arch == "stft" else math.prod(self.strides)

    @property
    def delay(self) -> int:
        """Samples the decoder's output lags the encoder's input (overlap-add), beyond the frame."""
        return self.frame.synthesis_window - self.frame.stft_hop if self.arch == "stft" else 0

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    @property
    def bitrate(self) -> float:
        return self.quantizer.n_q * math.log2(self.quantizer.codebook_size) * self.frame_rate

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency: one frame (no look-ahead) plus the decoder's delay."""
        return 1000.0 * (self.hop + self.delay) / self.sample_rate


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if p.stem != "base")


def load_preset(name_or_path: str | Path = "default", env_prefix: str | None = "MAATA_CODEC__", **overrides) -> CodecConfig:
    """A preset by name (``maata/codec/presets/<name>.yaml``) or a YAML path, plus overrides."""
    p = Path(name_or_path)
    if not p.suffix:
        p = PRESET_DIR / f"{name_or_path}.yaml"
        if not p.exists():
            raise ValueError(f"unknown codec preset {name_or_path!r}; presets: {', '.join(preset_names())}")
    return cfglib.load(CodecConfig, p, env_prefix=env_prefix, overrides=overrides or None)


def _channels(cfg: CodecConfig) -> list[int]:
    return [min(cfg.base_channels * 2 ** i, cfg.max_channels) for i in range(len(cfg.strides) + 1)]


class _CausalStack(nn.Module):
    """conv_in → blocks (each a list of layers) → act → conv_out → out_act, offline or streaming."""

    conv_in: CausalConv1d
    blocks: nn.ModuleList
    act: Snake
    conv_out: CausalConv1d

    def out_act(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _layers(self):
        yield self.conv_in
        for block in self.blocks:
            yield from block
        yield self.act
        yield self.conv_out

    def forward(self, x):
        for m in self._layers():
            x = m(x)
        return self.out_act(x)

    def init_state(self, batch, device=None, dtype=torch.float32):
        return [m.init_state(batch, device, dtype) for m in self._layers() if not isinstance(m, Snake)]

    def step(self, state, x):
        new, i = [], 0
        for m in self._layers():
            if isinstance(m, Snake):
                x = m(x)
            else:
                x, s = m.step(state[i], x)
                new.append(s)
                i += 1
        return self.out_act(x), new


class Encoder(_CausalStack):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        ch = _channels(cfg)
        self.conv_in = CausalConv1d(1, ch[0], cfg.kernel_size)
        self.blocks = nn.ModuleList()
        for i, s in enumerate(cfg.strides):
            self.blocks.append(nn.ModuleList(
                [ResidualUnit(ch[i], cfg.residual_kernel, d) for d in cfg.residual_dilations]
                + [Snake(ch[i]), CausalConv1d(ch[i], ch[i + 1], 2 * s, stride=s)]))
        self.act = Snake(ch[-1])
        self.conv_out = CausalConv1d(ch[-1], cfg.latent_dim, 3)


class Decoder(_CausalStack):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        ch = _channels(cfg)
        self.conv_in = CausalConv1d(cfg.latent_dim, ch[-1], cfg.kernel_size)
        self.blocks = nn.ModuleList()
        for i in reversed(range(len(cfg.strides))):
            s = cfg.strides[i]
            self.blocks.append(nn.ModuleList(
                [Snake(ch[i + 1]), CausalConvTranspose1d(ch[i + 1], ch[i], 2 * s, stride=s)]
                + [ResidualUnit(ch[i], cfg.residual_kernel, d) for d in cfg.residual_dilations]))
        self.act = Snake(ch[0])
        self.conv_out = CausalConv1d(ch[0], 1, cfg.kernel_size)

    def out_act(self, x):
        return torch.tanh(x)


@dataclass
class CodecOutput:
    audio: torch.Tensor  # [B, 1, T]
    codes: torch.Tensor  # [B, n_q, F]
    commit_loss: torch.Tensor
    codebook_loss: torch.Tensor
    semantic_logits: torch.Tensor | None  # [B, F, n_classes]
    n_q: torch.Tensor  # [B] codebooks used per item (quantizer dropout)


@dataclass
class CodecState:
    """Streaming state of a batch of calls. Every tensor is batch-first and fixed-shape."""

    pending: torch.Tensor  # [B, n] input samples not yet making a whole frame (n < hop, shared)
    encoder: list
    enc_transformer: TransformerState
    dec_transformer: TransformerState
    decoder: list

    @property
    def batch(self) -> int:
        return self.pending.shape[0]


class Codec(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        self.hop = cfg.hop
        self.delay = cfg.delay
        if cfg.arch == "stft":
            self.encoder = STFTEncoder(cfg.hop, cfg.latent_dim, cfg.frame)
            self.decoder = STFTDecoder(cfg.hop, cfg.latent_dim, cfg.frame)
        else:
            self.encoder = Encoder(cfg)
            self.decoder = Decoder(cfg)
        t = cfg.transformer
        self.enc_transformer = BottleneckTransformer(cfg.latent_dim, t.layers, t.heads, t.window, t.ff_mult)
        self.dec_transformer = BottleneckTransformer(cfg.latent_dim, t.layers, t.heads, t.window, t.ff_mult)
        q = cfg.quantizer
        self.quantizer = ResidualVQ(cfg.latent_dim, q.n_q, q.codebook_size, q.codebook_dim, dropout_prob=q.dropout_prob,
                                    l2norm=q.l2norm, ema=q.ema, decay=q.decay, dead_code_threshold=q.dead_code_threshold)
        self.semantic_head = nn.Linear(cfg.latent_dim, cfg.semantic.n_classes) if cfg.semantic.enabled else None
        self._compiled: tuple | None = None  # compile_streaming()

    @property
    def n_q(self) -> int:
        return self.cfg.quantizer.n_q

    # -- validation ---------------------------------------------------------------------------
    def _check_wav(self, wav: torch.Tensor, streaming: bool = False) -> torch.Tensor:
        want = "[B, n]" if streaming else "[B, 1, T]"
        if wav.dim() != (2 if streaming else 3) or (not streaming and wav.shape[1] != 1):
            raise ValueError(f"audio must be shaped {want} (mono); got {tuple(wav.shape)}")
        if not wav.is_floating_point():
            raise ValueError(f"audio must be float PCM in [-1, 1], got dtype {wav.dtype}")
        if not torch.isfinite(wav).all():
            raise ValueError("audio contains NaN or infinite samples")
        return wav

    def check_codes(self, codes: torch.Tensor, allow_dropped: bool = True) -> torch.Tensor:
        if codes.dim() != 3:
            raise CodeError(f"codes must be shaped [B, n_q, frames], got {tuple(codes.shape)}")
        if codes.dtype not in (torch.int64, torch.int32, torch.int16):
            raise CodeError(f"codes must be integers, got {codes.dtype}")
        if not 1 <= codes.shape[1] <= self.n_q:
            raise CodeError(f"codes have {codes.shape[1]} codebooks; this codec decodes 1..{self.n_q}")
        lo = DROPPED if allow_dropped else 0
        if codes.numel() and (int(codes.min()) < lo or int(codes.max()) >= self.cfg.quantizer.codebook_size):
            raise CodeError(f"code values must be in [0, {self.cfg.quantizer.codebook_size - 1}]"
                            + (f" (or {DROPPED} for a dropped level)" if allow_dropped else "")
                            + f"; got [{int(codes.min())}, {int(codes.max())}]")
        return codes.long()

    def pad_to_hop(self, wav: torch.Tensor) -> torch.Tensor:
        r = (-wav.shape[-1]) % self.hop
        return F.pad(wav, (0, r)) if r else wav

    # -- offline ------------------------------------------------------------------------------
    def forward(self, wav: torch.Tensor, n_q: int | None = None, quantize: bool = True) -> CodecOutput:
        """Training pass; ``audio`` is aligned with ``wav`` (sample t reconstructs sample t).

        ``quantize=False`` skips the quantizer (the autoencoder warm-up before the codebooks
        are initialised from encoder outputs): ``codes`` is then empty and the VQ losses zero."""
        wav = self.pad_to_hop(self._check_wav(wav))
        z = self.enc_transformer(self.encoder(wav))
        if quantize:
            q = self.quantizer(z, n_q)
            quantized, codes, commit, cb, first, used = (q.quantized, q.codes, q.commit_loss, q.codebook_loss,
                                                         q.first_level, q.n_q)
        else:
            zero = z.new_zeros(())
            quantized, codes, commit, cb, first = z, z.new_zeros(z.shape[0], 0, z.shape[-1], dtype=torch.long), zero, zero, z
            used = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        logits = None
        if self.semantic_head is not None:
            logits = self.semantic_head(first.transpose(1, 2))
        return CodecOutput(self._decode_latents(quantized, aligned=True), codes, commit, cb, logits, used)

    def _decode_latents(self, z: torch.Tensor, aligned: bool) -> torch.Tensor:
        y = self.dec_transformer(z)
        return self.decoder(y, aligned=aligned) if self.cfg.arch == "stft" else self.decoder(y)

    def latents(self, wav: torch.Tensor) -> torch.Tensor:
        """Continuous encoder latents [B, D, F] (before quantisation)."""
        return self.enc_transformer(self.encoder(self.pad_to_hop(self._check_wav(wav))))

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, n_q: int | None = None, adaptive: bool = False) -> torch.Tensor:
        """[B, 1, T] -> codes [B, n_q, ceil(T / hop)] (the end is zero-padded to a whole frame).

        ``adaptive``: frames whose input is quieter than ``cfg.silence_dbfs`` keep only the first
        ``cfg.silence_n_q`` codebooks; the rest are ``DROPPED`` (-1) and cost no bits.
        """
        wav = self.pad_to_hop(self._check_wav(wav))
        codes = self.quantizer.encode(self.latents(wav), n_q)
        return self.drop_silent(codes, self.silent_frames(wav[:, 0])) if adaptive else codes

    def silent_frames(self, pcm: torch.Tensor) -> torch.Tensor:
        """bool [B, F]: which whole frames of ``pcm`` [B, F * hop] are quieter than ``cfg.silence_dbfs``."""
        frames = pcm.reshape(pcm.shape[0], -1, self.hop)
        db = 10 * torch.log10(frames.pow(2).mean(-1).clamp(min=1e-12))
        return db < self.cfg.silence_dbfs

    def drop_silent(self, codes: torch.Tensor, silent: torch.Tensor) -> torch.Tensor:
        """Adaptive bitrate: codebooks ``cfg.silence_n_q``.. become ``DROPPED`` in ``silent`` [B, F] frames."""
        k = self.cfg.silence_n_q
        codes = codes.clone()
        codes[:, k:] = torch.where(silent[:, None], torch.full_like(codes[:, k:], DROPPED), codes[:, k:])
        return codes

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, k, F] -> [B, 1, F·hop], exactly what ``decode_step`` emits for them (the
        STFT decoder's output is ``delay`` samples late: see :meth:`aligned`)."""
        codes = self.check_codes(codes)
        return self._decode_latents(self.quantizer.decode(codes), aligned=False)

    def aligned(self, decoded: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Decoded audio [..., n] moved ``delay`` samples earlier so that sample t matches input
        sample t; the signal ends ``delay`` samples early unless the input was followed by
        ``delay`` more samples (e.g. one more frame). ``length`` trims or zero-pads the result."""
        out = decoded[..., self.delay:]
        if length is not None:
            out = out[..., :length] if out.shape[-1] >= length else F.pad(out, (0, length - out.shape[-1]))
        return out

    @torch.no_grad()
    def silence_codes(self, n_q: int | None = None) -> torch.Tensor:
        """The codes [n_q] of digital silence in a stream that has run for a while (the
        filler the generation engine feeds when a caller sends nothing)."""
        p = next(self.parameters())
        frames = max(8, int(math.ceil(self.cfg.sample_rate / self.hop)))
        codes = self.encode(torch.zeros(1, 1, frames * self.hop, device=p.device, dtype=p.dtype), n_q)
        return codes[0, :, -1].clone()

    @torch.no_grad()
    def code_space(self) -> str:
        """A 16-hex digest of what decides this codec's codes: the encoder side (``encoder``,
        ``enc_transformer``) and the codebooks with their input projections, rounded to float16.

        Two codecs with the same digest turn the same audio into the same codes, so an LM
        trained on one's codes can be served with the other: a float32 trainer checkpoint and
        its float16 export agree, and so does a codec whose decoder alone was fine-tuned. Any
        change to the encoder or the codebooks gives another digest (``maata.lm.compat``)."""
        def decides_codes(name: str) -> bool:
            if name.startswith(("encoder.", "enc_transformer.")):
                return True
            return name.startswith("quantizer.") and (name.endswith(".embed") or ".proj_in." in name)

        return weights_digest({k: v for k, v in self.state_dict().items() if decides_codes(k)}, torch.float16)

    def bits(self, codes: torch.Tensor) -> int:
        """Bits needed to send ``codes`` (DROPPED entries are free)."""
        return int((codes != DROPPED).sum()) * int(math.log2(self.cfg.quantizer.codebook_size))

    # -- streaming ----------------------------------------------------------------------------
    def init_state(self, batch: int, device=None) -> CodecState:
        p = next(self.parameters())
        device, dtype = device or p.device, p.dtype
        return CodecState(
            pending=torch.zeros(batch, 0, device=device, dtype=dtype),
            encoder=self.encoder.init_state(batch, device, dtype),
            enc_transformer=self.enc_transformer.init_state(batch, device, dtype),
            dec_transformer=self.dec_transformer.init_state(batch, device, dtype),
            decoder=self.decoder.init_state(batch, device, dtype),
        )

    def reset(self, state: CodecState, mask: torch.Tensor) -> None:
        """Start new calls in the slots of ``mask`` (bool [B]): their history is forgotten."""
        mask = torch.as_tensor(mask, dtype=torch.bool, device=state.pending.device)
        if mask.shape != (state.batch,):
            raise ValueError(f"reset mask must be shaped [{state.batch}], got {tuple(mask.shape)}")
        if state.pending.shape[1] and mask.any():
            raise ValueError("slots can only be reset at a frame boundary (pending samples exist); "
                             "feed whole frames of hop samples to batched streams")
        for part in (state.encoder, state.enc_transformer, state.dec_transformer, state.decoder):
            reset_state(part, mask)

    @torch.no_grad()
    def encode_step(self, state: CodecState, pcm: torch.Tensor, n_q: int | None = None,
                    adaptive: bool = False) -> torch.Tensor:
        """Feed ``pcm`` [B, n] (any n ≥ 0); returns codes [B, n_q, f] of the f frames it completed.

        ``adaptive``: as in :meth:`encode`, silent frames keep only the first codebooks."""
        pcm = self._check_wav(pcm, streaming=True)
        if pcm.shape[0] != state.batch:
            raise ValueError(f"pcm batch {pcm.shape[0]} does not match the state's {state.batch}")
        buf = torch.cat([state.pending, pcm.to(state.pending.dtype)], dim=1)
        f = buf.shape[1] // self.hop
        state.pending = buf[:, f * self.hop:]
        if f == 0:
            return torch.zeros(state.batch, n_q or self.n_q, 0, dtype=torch.long, device=pcm.device)
        core = self._compiled[0] if self._compiled else self._encode_frames
        codes, state.encoder, state.enc_transformer = core(state.encoder, state.enc_transformer,
                                                          buf[:, None, : f * self.hop], n_q)
        return self.drop_silent(codes, self.silent_frames(buf[:, : f * self.hop])) if adaptive else codes

    @torch.no_grad()
    def decode_step(self, state: CodecState, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, k, f] -> pcm [B, f * hop]."""
        codes = self.check_codes(codes)
        if codes.shape[0] != state.batch:
            raise ValueError(f"codes batch {codes.shape[0]} does not match the state's {state.batch}")
        if codes.shape[-1] == 0:
            return state.pending.new_zeros(state.batch, 0)
        core = self._compiled[1] if self._compiled else self._decode_frames
        pcm, state.decoder, state.dec_transformer = core(state.decoder, state.dec_transformer, codes)
        return pcm

    # The two pure cores of a streaming step (states in, states out; no validation, no Python-side
    # bookkeeping): what torch.compile traces.
    def _encode_frames(self, encoder_state: list, transformer_state: TransformerState, frames: torch.Tensor, n_q: int | None):
        z, encoder_state = self.encoder.step(encoder_state, frames)
        z = self.enc_transformer.step(transformer_state, z)
        return self.quantizer.encode(z, n_q), encoder_state, transformer_state

    def _decode_frames(self, decoder_state: list, transformer_state: TransformerState, codes: torch.Tensor):
        z = self.dec_transformer.step(transformer_state, self.quantizer.decode(codes))
        y, decoder_state = self.decoder.step(decoder_state, z)
        return y[:, 0], decoder_state, transformer_state

    def compile_streaming(self, **options) -> Codec:
        """Run ``encode_step``/``decode_step`` through ``torch.compile`` (inductor; ``options``
        go to it, default ``dynamic=False``). On CPU one 40 ms step gets ~1.8x faster at batch 1
        (``bench/codec_speed.py``), after a compile of ~30 s for every new input shape (batch
        size, frames per step): for serving with steady shapes. Outputs equal eager's."""
        options = {"dynamic": False, **options}
        self._compiled = (torch.compile(self._encode_frames, **options), torch.compile(self._decode_frames, **options))
        return self
