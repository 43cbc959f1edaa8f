"""The frame-rate codec's encoder and decoder (codec v2, ``arch: stft``).

The SEANet-style codec (``arch: seanet``) does its work at the sample rate: a stack of strided
convolutions down to the 25 Hz bottleneck and transposed convolutions back up, ×640. That
design needs GPU-days of adversarial training before voiced speech keeps its harmonics. This
one puts the work where the information is, at the frame rate, and lets fixed transforms do
the rest (the Vocos idea, made causal and streamable):

* :class:`STFTEncoder` reads causal STFT frames (a window that ends at each 10 ms hop and
  reaches only into the past, so the longer analysis window costs no latency), stacks the
  log-magnitudes of the hops that make one codec frame and runs causal ConvNeXt blocks at
  25 Hz.
* :class:`STFTDecoder` runs causal ConvNeXt blocks at 25 Hz, unfolds each frame into its
  10 ms hops (a linear map within the frame, so still causal), refines them with ConvNeXt
  blocks at 100 Hz and predicts each hop's log-magnitude and phase. An inverse real DFT and
  windowed overlap-add make the samples. With a periodic Hann synthesis window at 50 %
  overlap the windows sum to one, so no normalisation is needed.

Overlap-add finishes a sample only once the next hop's window has been added, so the decoder
emits its output ``window - hop`` samples late (10 ms at the default 320/160): the codec's
algorithmic latency is one frame plus that, 50 ms. :attr:`STFTDecoder.delay` states it; the
offline :meth:`STFTDecoder.forward` returns the signal *aligned* with the input (what the
training losses compare), the streaming :meth:`STFTDecoder.step` returns it ``delay`` samples
late; ``forward(z, aligned=False)`` gives exactly what streaming emits (tested).

Every transform is a matrix product (the DFT and its inverse as fixed bases), so a 40 ms
streaming step is a few dozen dense ops at batch 1 and plain GEMMs at batch 16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class FrameConfig:
    """Shape of the frame-rate codec (``CodecConfig.frame``)."""

    stft_hop: int = 160  # 10 ms at 16 kHz: the decoder's synthesis hop, the encoder's analysis hop
    analysis_window: int = 640  # encoder STFT window (causal: the past 40 ms; resolves 100 Hz harmonics)
    synthesis_window: int = 320  # decoder window: latency beyond the frame is window - hop
    enc_dim: int = 224
    enc_layers: int = 4
    dec_dim: int = 224
    dec_layers: int = 3
    fine_dim: int = 160  # decoder width at the hop rate (100 Hz)
    fine_layers: int = 3
    kernel: int = 7  # depthwise kernel, in frames at each block's rate
    mlp_mult: int = 3
    layer_scale: float = 0.1
    log_mag_floor: float = 1e-5


def _dft_basis(n_fft: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Real DFT as matrices: x [.., n_fft] @ cos -> Re, x @ (-sin) -> Im, each [n_fft, n_fft//2 + 1]."""
    n = torch.arange(n_fft, dtype=dtype)
    k = torch.arange(n_fft // 2 + 1, dtype=dtype)
    ang = 2 * math.pi * n[:, None] * k[None] / n_fft
    return torch.cos(ang), -torch.sin(ang)


def _idft_basis(n_fft: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse real DFT as matrices: (Re @ cr + Im @ ci) = irfft(Re + i Im, n_fft), each [n_fft//2 + 1, n_fft]."""
    k = torch.arange(n_fft // 2 + 1, dtype=dtype)
    n = torch.arange(n_fft, dtype=dtype)
    ang = 2 * math.pi * k[:, None] * n[None] / n_fft
    w = torch.full((n_fft // 2 + 1, 1), 2.0, dtype=dtype)
    w[0] = 1.0
    if n_fft % 2 == 0:
        w[-1] = 1.0  # DC and Nyquist appear once in the full spectrum
    return w * torch.cos(ang) / n_fft, -w * torch.sin(ang) / n_fft


def periodic_hann(n: int, dtype=torch.float64) -> torch.Tensor:
    return 0.5 - 0.5 * torch.cos(2 * math.pi * torch.arange(n, dtype=dtype) / n)


class CausalConvNeXt(nn.Module):
    """ConvNeXt block with a causal depthwise convolution: dwconv → LayerNorm → MLP → scale, + skip.

    Streams over [B, C, T] chunks of any length with a (kernel - 1)-frame input tail.
    """

    def __init__(self, dim: int, kernel: int, mlp_mult: int, layer_scale: float):
        super().__init__()
        self.kernel = kernel
        self.dw = nn.Conv1d(dim, dim, kernel, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, mlp_mult * dim)
        self.down = nn.Linear(mlp_mult * dim, dim)
        self.scale = nn.Parameter(torch.full((dim,), layer_scale))

    def _mix(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        h = self.down(F.gelu(self.up(self.norm(h.transpose(1, 2)))))
        return x + (h * self.scale).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, self.dw(F.pad(x, (self.kernel - 1, 0))))

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.zeros(batch, self.dw.in_channels, self.kernel - 1, device=device, dtype=dtype)

    def step(self, state: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.cat([state, x], dim=-1)
        return self._mix(x, self.dw(z)), z[..., z.shape[-1] - (self.kernel - 1):]


class _Blocks(nn.Module):
    def __init__(self, dim: int, n: int, cfg: FrameConfig):
        super().__init__()
        self.blocks = nn.ModuleList(CausalConvNeXt(dim, cfg.kernel, cfg.mlp_mult, cfg.layer_scale) for _ in range(n))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.norm(x.transpose(1, 2)).transpose(1, 2)

    def init_state(self, batch, device=None, dtype=torch.float32):
        return [b.init_state(batch, device, dtype) for b in self.blocks]

    def step(self, state, x):
        new = []
        for b, s in zip(self.blocks, state):
            x, s = b.step(s, x)
            new.append(s)
        return self.norm(x.transpose(1, 2)).transpose(1, 2), new


class STFTEncoder(nn.Module):
    """PCM [B, 1, F·hop] → latents [B, latent_dim, F], causal (no look-ahead)."""

    def __init__(self, hop: int, latent_dim: int, cfg: FrameConfig):
        super().__init__()
        if hop % cfg.stft_hop:
            raise ValueError(f"the codec hop {hop} must be a multiple of the STFT hop {cfg.stft_hop}")
        if cfg.analysis_window < cfg.stft_hop:
            raise ValueError("the analysis window must cover the STFT hop")
        self.hop, self.stft_hop, self.window = hop, cfg.stft_hop, cfg.analysis_window
        self.stack = hop // cfg.stft_hop
        self.tail = cfg.analysis_window - cfg.stft_hop
        self.floor = cfg.log_mag_floor
        cos, sin = _dft_basis(cfg.analysis_window)
        win = periodic_hann(cfg.analysis_window)[:, None]
        self.register_buffer("basis", torch.cat([win * cos, win * sin], 1).float(), persistent=False)
        self.bins = cfg.analysis_window // 2 + 1
        self.proj = nn.Conv1d(self.stack * self.bins, cfg.enc_dim, 1)
        self.blocks = _Blocks(cfg.enc_dim, cfg.enc_layers, cfg)
        self.out = nn.Conv1d(cfg.enc_dim, latent_dim, 1)

    def features(self, padded: torch.Tensor) -> torch.Tensor:
        """Stacked log-magnitudes [B, stack·bins, F] of ``padded`` [B, tail + F·hop]."""
        B = padded.shape[0]
        frames = padded.unfold(-1, self.window, self.stft_hop)  # [B, F·stack, window]
        spec = frames @ self.basis.to(frames.dtype)  # [B, F·stack, 2·bins]
        re, im = spec[..., : self.bins], spec[..., self.bins:]
        logmag = 0.5 * torch.log(re * re + im * im + self.floor ** 2)
        return logmag.reshape(B, -1, self.stack * self.bins).transpose(1, 2)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = F.pad(wav[:, 0], (self.tail, 0))
        return self.out(self.blocks(self.proj(self.features(x))))

    def init_state(self, batch: int, device=None, dtype=torch.float32):
        return [torch.zeros(batch, self.tail, device=device, dtype=dtype),
                self.blocks.init_state(batch, device, dtype)]

    def step(self, state, wav: torch.Tensor):
        x = torch.cat([state[0], wav[:, 0]], dim=-1)
        h, blocks = self.blocks.step(state[1], self.proj(self.features(x)))
        return self.out(h), [x[:, x.shape[-1] - self.tail:], blocks]


class STFTDecoder(nn.Module):
    """Latents [B, latent_dim, F] → PCM [B, 1, F·hop] through predicted STFT frames and overlap-add."""

    def __init__(self, hop: int, latent_dim: int, cfg: FrameConfig):
        super().__init__()
        win = cfg.synthesis_window
        if hop % cfg.stft_hop:
            raise ValueError(f"the codec hop {hop} must be a multiple of the STFT hop {cfg.stft_hop}")
        if win != 2 * cfg.stft_hop:
            raise ValueError("the synthesis window must be twice the STFT hop (Hann windows at 50 % overlap sum to one)")
        self.hop, self.stft_hop, self.window = hop, cfg.stft_hop, win
        self.stack = hop // cfg.stft_hop
        self.delay = win - cfg.stft_hop
        self.bins = win // 2 + 1
        self.fine_dim = cfg.fine_dim
        self.proj = nn.Conv1d(latent_dim, cfg.dec_dim, 1)
        self.blocks = _Blocks(cfg.dec_dim, cfg.dec_layers, cfg)
        self.unfold = nn.Conv1d(cfg.dec_dim, self.stack * cfg.fine_dim, 1)
        self.fine = _Blocks(cfg.fine_dim, cfg.fine_layers, cfg)
        self.head = nn.Conv1d(cfg.fine_dim, 2 * self.bins, 1)
        cr, ci = _idft_basis(win)
        w = periodic_hann(win)[None]
        self.register_buffer("synth", torch.cat([cr * w, ci * w], 0).float(), persistent=False)  # [2·bins, win]

    def _frames(self, hop_feats: torch.Tensor) -> torch.Tensor:
        """Windowed time frames [B, n, win] from the hop-rate features [B, fine_dim, n]."""
        out = self.head(hop_feats).transpose(1, 2)  # [B, n, 2·bins]
        logmag, phase = out[..., : self.bins], out[..., self.bins:]
        mag = torch.exp(logmag.clamp(max=6.0))
        spec = torch.cat([mag * torch.cos(phase), mag * torch.sin(phase)], -1)
        return spec @ self.synth.to(spec.dtype)

    def _to_hops(self, z: torch.Tensor) -> torch.Tensor:
        B, _, Fr = z.shape
        u = self.unfold(z)  # [B, stack·fine, F]
        return u.view(B, self.stack, self.fine_dim, Fr).permute(0, 2, 3, 1).reshape(B, self.fine_dim, Fr * self.stack)

    def _overlap_add(self, frames: torch.Tensor, carry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [B, n, 2h] → the n·h samples they complete (the first h of them finished by
        ``carry`` [B, h], the previous step's unfinished half) and the new unfinished half."""
        h = self.stft_hop
        first, second = frames[..., :h], frames[..., h:]
        prev = torch.cat([carry[:, None], second[:, :-1]], dim=1)
        return (first + prev).reshape(frames.shape[0], -1), second[:, -1]

    def forward(self, z: torch.Tensor, aligned: bool = True) -> torch.Tensor:
        """Offline decode. ``aligned``: sample t reconstructs input sample t (what the losses
        compare; the last hop's window is only half made, it ends the signal). Otherwise exactly
        what :meth:`step` emits for the same frames: the same signal ``delay`` samples late,
        starting with the first window's half that precedes the input."""
        frames = self._frames(self.fine(self._to_hops(self.blocks(self.proj(z)))))
        y, last = self._overlap_add(frames, frames.new_zeros(frames.shape[0], self.stft_hop))
        if not aligned:
            return y[:, None]
        # hop j's window covers input samples [(j - 1)·h, (j + 1)·h): drop the h samples before 0
        return torch.cat([y[:, self.stft_hop:], last], dim=-1)[:, None]

    def init_state(self, batch: int, device=None, dtype=torch.float32):
        return [self.blocks.init_state(batch, device, dtype), self.fine.init_state(batch, device, dtype),
                torch.zeros(batch, self.stft_hop, device=device, dtype=dtype)]

    def step(self, state, z: torch.Tensor):
        h, blocks = self.blocks.step(state[0], self.proj(z))
        g, fine = self.fine.step(state[1], self._to_hops(h))
        y, carry = self._overlap_add(self._frames(g), state[2])
        return y[:, None], [blocks, fine, carry]
