"""Codec training losses: multi-scale mel reconstruction, hinge GAN, feature matching, phoneme CE.

Conventions follow DAC (``dac/nn/loss.py``) so that its published loss weights mean the same
here: the mel loss is the *sum* over scales of an L1 distance between log10 power mels, and
the adversarial and feature-matching terms are *sums* over discriminators (feature matching
also over layers) of per-tensor means. The GAN objective is the hinge loss (EnCodec, MelGAN)
rather than DAC's least squares: it saturates once a sample is confidently classified, which
keeps a strong discriminator from drowning the reconstruction terms.

Spectral features are always computed in float32 (autocast off): ``torch.stft`` has no bf16
kernels and log-mel differences of bf16 values would be too coarse to train on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maata.data.phonemes import IGNORE  # phoneme label meaning "no target for this frame"
from maata.nn.mel import MelSpectrogram


class MultiScaleMelLoss(nn.Module):
    """Sum over STFT scales of L1(log10 mel power) (+ optional L1 of linear mel magnitudes).

    Several window sizes trade time for frequency resolution: short windows see transients and
    pre-echo, long ones see pitch harmonics. DAC uses windows 32..2048 with 5..320 mel bands.
    """

    def __init__(self, sample_rate: int, windows: Sequence[int], n_mels: Sequence[int], clamp_eps: float = 1e-5,
                 log_weight: float = 1.0, mag_weight: float = 0.0):
        super().__init__()
        if len(windows) != len(n_mels):
            raise ValueError(f"mel loss needs one n_mels per window; got {list(windows)} and {list(n_mels)}")
        self.mels = nn.ModuleList(MelSpectrogram(sample_rate, w, m) for w, m in zip(windows, n_mels))
        self.clamp_eps, self.log_weight, self.mag_weight = clamp_eps, log_weight, mag_weight

    def forward(self, estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if estimate.shape != reference.shape:
            raise ValueError(f"mel loss inputs differ in shape: {tuple(estimate.shape)} vs {tuple(reference.shape)}")
        loss = estimate.new_zeros((), dtype=torch.float32)
        for mel in self.mels:
            x, y = mel(estimate), mel(reference)
            if self.log_weight:
                loss = loss + self.log_weight * F.l1_loss(self._log_power(x), self._log_power(y))
            if self.mag_weight:
                loss = loss + self.mag_weight * F.l1_loss(x, y)
        return loss

    def _log_power(self, m: torch.Tensor) -> torch.Tensor:
        return 2.0 * torch.log10(m.clamp(min=self.clamp_eps))


class MultiResolutionSTFTLoss(nn.Module):
    """Σ over STFT resolutions of spectral convergence + L1 log-magnitude (Parallel WaveGAN,
    Yamamoto et al. 2020), plus an optional power-law-compressed complex term.

    Spectral convergence ‖|Y| - |X|‖_F / ‖|X|‖_F weighs the loud, harmonic peaks; the log
    distance weighs every bin alike. Neither sees phase. The complex term compares
    |X|^c·e^{iφ} (c = 0.3) at each resolution: a decoder that predicts its own phase (the
    frame-rate codec) gets a gradient toward phases that agree with the input's, which keeps
    harmonics coherent across overlap-add frames without a discriminator.
    """

    def __init__(self, fft_sizes: Sequence[int] = (256, 512, 1024, 2048), complex_compress: float = 0.3,
                 eps: float = 1e-5):
        super().__init__()
        self.fft_sizes, self.c, self.eps = tuple(fft_sizes), complex_compress, eps
        for n in self.fft_sizes:
            self.register_buffer(f"window_{n}", torch.hann_window(n), persistent=False)

    def _spec(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return torch.stft(x, n, n // 4, window=getattr(self, f"window_{n}"), center=True, pad_mode="reflect",
                          return_complex=True)

    def forward(self, estimate: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns {"stft": Σ (SC + log-mag L1), "complex": Σ compressed complex MSE}."""
        if estimate.shape != reference.shape:
            raise ValueError(f"STFT loss inputs differ in shape: {tuple(estimate.shape)} vs {tuple(reference.shape)}")
        with torch.autocast(device_type=estimate.device.type, enabled=False):
            x = estimate.reshape(-1, estimate.shape[-1]).float()
            y = reference.reshape(-1, reference.shape[-1]).float()
            mag_loss = x.new_zeros(())
            cplx_loss = x.new_zeros(())
            for n in self.fft_sizes:
                sx, sy = self._spec(x, n), self._spec(y, n)
                mx, my = sx.abs().clamp(min=self.eps), sy.abs().clamp(min=self.eps)
                sc = torch.linalg.vector_norm(my - mx) / torch.linalg.vector_norm(my).clamp(min=self.eps)
                mag_loss = mag_loss + sc + F.l1_loss(torch.log(mx), torch.log(my))
                cx = sx * (mx.pow(self.c - 1.0))
                cy = sy * (my.pow(self.c - 1.0))
                cplx_loss = cplx_loss + (cx - cy).abs().pow(2).mean()
            return {"stft": mag_loss, "complex": cplx_loss}


# A discriminator's output: one (logits, feature maps) pair per sub-discriminator.
DiscOutput = list[tuple[torch.Tensor, list[torch.Tensor]]]


def split_batch(out: DiscOutput, n_first: int) -> tuple[DiscOutput, DiscOutput]:
    """Split a discriminator output computed on ``cat([a, b])`` into the outputs for a and b."""
    first = [(lg[:n_first], [f[:n_first] for f in fm]) for lg, fm in out]
    second = [(lg[n_first:], [f[n_first:] for f in fm]) for lg, fm in out]
    return first, second


def discriminator_hinge_loss(real: DiscOutput, fake: DiscOutput) -> torch.Tensor:
    """Σ_d mean(relu(1 - D(real))) + mean(relu(1 + D(fake))): push real ≥ 1, fake ≤ -1."""
    loss = real[0][0].new_zeros((), dtype=torch.float32)
    for (lr, _), (lf, _) in zip(real, fake):
        loss = loss + F.relu(1.0 - lr.float()).mean() + F.relu(1.0 + lf.float()).mean()
    return loss


def generator_hinge_loss(fake: DiscOutput) -> torch.Tensor:
    """Σ_d mean(relu(1 - D(fake))): the generator wants its audio scored as real."""
    loss = fake[0][0].new_zeros((), dtype=torch.float32)
    for lf, _ in fake:
        loss = loss + F.relu(1.0 - lf.float()).mean()
    return loss


def feature_matching_loss(real: DiscOutput, fake: DiscOutput) -> torch.Tensor:
    """Σ over discriminators and layers of L1(fake features, real features (detached)).

    A dense, stable signal (MelGAN): match the discriminator's internal view of real audio
    rather than only its verdict.
    """
    loss = real[0][0].new_zeros((), dtype=torch.float32)
    for (_, fr), (_, ff) in zip(real, fake):
        for a, b in zip(fr, ff):
            loss = loss + F.l1_loss(b.float(), a.detach().float())
    return loss


def semantic_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Phoneme cross-entropy of the codec's first-codebook head; returns (loss, accuracy).

    ``logits`` [B, F, C]; ``labels`` [B, L] with ``IGNORE`` for frames without a target.
    Labels are cut or padded (with IGNORE) to F frames: the codec pads audio to a whole
    frame, so it may have one frame more than the dataset labelled. With no labelled frame the
    loss is an exact zero that still depends on the logits, so every parameter takes part in
    the backward pass (DistributedDataParallel requires it).
    """
    B, Fr, C = logits.shape
    labels = labels[:, :Fr]
    if labels.shape[1] < Fr:
        labels = F.pad(labels, (0, Fr - labels.shape[1]), value=IGNORE)
    flat_logits, flat_labels = logits.reshape(-1, C).float(), labels.reshape(-1)
    valid = flat_labels != IGNORE
    n = valid.sum().clamp(min=1)
    loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE, reduction="sum") / n
    acc = ((flat_logits.argmax(-1) == flat_labels) & valid).sum() / n
    return loss, acc.detach()


def codebook_stats(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-level code usage (fraction of codes used) and perplexity from counts [n_q, K]."""
    total = counts.sum(-1, keepdim=True).clamp(min=1)
    p = counts / total
    entropy = -(p * torch.log(p.clamp(min=1e-12))).sum(-1)
    usage = (counts > 0).float().mean(-1)
    return usage, torch.exp(entropy)


def code_counts(codes: torch.Tensor, n_q: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Histogram [levels, K] of ``codes`` [B, levels, F], counting a level only for the items
    that used it (quantizer dropout gives item b ``n_q[b]`` levels)."""
    levels = codes.shape[1]
    active = (torch.arange(levels, device=codes.device)[None] < n_q[:, None])  # [B, levels]
    weights = active[:, :, None].expand_as(codes).float()
    offsets = (torch.arange(levels, device=codes.device) * codebook_size)[None, :, None]
    flat = (codes.clamp(min=0) + offsets).reshape(-1)
    hist = torch.bincount(flat, weights=weights.reshape(-1), minlength=levels * codebook_size)
    return hist.reshape(levels, codebook_size)


__all__ = ["DiscOutput", "MultiResolutionSTFTLoss", "MultiScaleMelLoss", "code_counts", "codebook_stats",
           "discriminator_hinge_loss", "feature_matching_loss", "generator_hinge_loss",
           "semantic_loss", "split_batch"]
