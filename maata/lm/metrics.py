"""Measures used by the LM evaluation: speech on a code channel (``ChannelSpeech``, on the
levels and thresholds of ``maata.speech``), codec latents, DTW between utterances, a linear
probe, and turn-taking statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from maata.lm.dialogues import Dialogue
from maata.speech import decoded_silence_dbfs, frame_levels, speech_threshold


class ChannelSpeech:
    """Which frames of a code channel hold speech: decoded-audio energy, or codes unlike silence's.

    ``energy``: a frame speaks when its decoded level is over ``threshold_dbfs`` raised to at
    least ``margin_db`` above the codec's own decoded silence (``maata.speech``: a codec may
    decode digital silence to a floor near -40 dBFS; ``floor_dbfs`` holds it, ``effective_dbfs``
    the threshold used). ``codes``: a frame speaks when its first code differs from the code of
    digital silence.
    """

    def __init__(self, codec, mode: str = "energy", threshold_dbfs: float = -40.0, margin_db: float = 6.0):
        if mode not in ("energy", "codes"):
            raise ValueError(f"detector must be 'energy' or 'codes', got {mode!r}")
        self.codec, self.mode, self.threshold = codec, mode, threshold_dbfs
        zeros = torch.zeros(1, 1, codec.hop * 20, device=device_of(codec))
        silence = codec.encode(zeros)  # [1, K, 20]
        self.silence = int(silence[0, 0, -1])
        self.floor_dbfs = decoded_silence_dbfs(self._frame_db(silence[0].cpu().numpy()))
        self.effective_dbfs = speech_threshold(threshold_dbfs, self.floor_dbfs, margin_db)

    @torch.no_grad()
    def _frame_db(self, codes: np.ndarray) -> np.ndarray:
        c = torch.from_numpy(codes).long()[None].to(device_of(self.codec))
        pcm = self.codec.decode(c)[0, 0].float().cpu().numpy()
        return frame_levels(pcm[: codes.shape[-1] * self.codec.hop], self.codec.hop)

    @torch.no_grad()
    def __call__(self, codes: np.ndarray) -> np.ndarray:
        """codes [K, T] -> bool [T]."""
        if codes.shape[-1] == 0:
            return np.zeros(0, bool)
        if self.mode == "codes":
            return codes[0] != self.silence
        return self._frame_db(codes) > self.effective_dbfs


@torch.no_grad()
def latents(codec, codes: np.ndarray) -> torch.Tensor:
    """Codec latents [T, D] of codes [K, T] (float32)."""
    z = codec.quantizer.decode(torch.from_numpy(codes).long()[None].to(device_of(codec)))  # [1, D, T]
    return z[0].t().float().cpu().contiguous()


def device_of(module) -> torch.device:
    return next(module.parameters()).device


def speech_span(speaking: np.ndarray, a: int, b: int) -> tuple[int, int] | None:
    """[first, last + 1) of the speech frames in [a, b), or None when there are none."""
    idx = np.nonzero(speaking[a:b])[0]
    return None if idx.size == 0 else (a + int(idx[0]), a + int(idx[-1]) + 1)


def dtw_distances(x: torch.Tensor, refs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Path-normalised DTW distance (1 - cosine per frame pair) between x [N, D] and each ref [M_r, D].

    All references at once, anti-diagonal by anti-diagonal. Returns float [R].
    """
    R, N = len(refs), x.shape[0]
    lens = torch.tensor([r.shape[0] for r in refs])
    M = int(lens.max())
    Y = torch.zeros(R, M, x.shape[1])
    for r, y in enumerate(refs):
        Y[r, : y.shape[0]] = y
    cost = 1 - torch.einsum("nd,rmd->rnm", F.normalize(x, dim=-1), F.normalize(Y, dim=-1))
    inf = float("inf")
    cost = cost.masked_fill(torch.arange(M)[None, None, :] >= lens[:, None, None], inf)
    acc = torch.full((R, N + 1, M + 1), inf)
    acc[:, 0, 0] = 0.0
    for d in range(2, N + M + 1):
        i = torch.arange(max(1, d - M), min(N, d - 1) + 1)
        j = d - i
        best = torch.minimum(torch.minimum(acc[:, i - 1, j], acc[:, i, j - 1]), acc[:, i - 1, j - 1])
        acc[:, i, j] = cost[:, i - 1, j - 1] + best
    return acc[torch.arange(R), N, lens] / (N + lens).float()


# -- linear probe ---------------------------------------------------------------------------------------
class LinearProbe:
    """Multinomial logistic regression on standardised features (L-BFGS, L2 penalty)."""

    def __init__(self, l2: float = 1e-3, iters: int = 200):
        self.l2, self.iters = l2, iters
        self.classes: list[str] = []

    def fit(self, X: np.ndarray, labels: Sequence[str]) -> LinearProbe:
        self.classes = sorted(set(labels))
        y = torch.tensor([self.classes.index(v) for v in labels])
        x = torch.from_numpy(np.asarray(X, np.float64))
        self.mu, self.sd = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-6)
        x = (x - self.mu) / self.sd
        self.W = torch.zeros(x.shape[1], len(self.classes), dtype=torch.float64, requires_grad=True)
        self.b = torch.zeros(len(self.classes), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([self.W, self.b], lr=1.0, max_iter=self.iters, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(x @ self.W + self.b, y) + self.l2 * (self.W ** 2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        return self

    def predict(self, X: np.ndarray) -> list[str]:
        x = (torch.from_numpy(np.asarray(X, np.float64)) - self.mu) / self.sd
        with torch.no_grad():
            idx = (x @ self.W + self.b).argmax(-1)
        return [self.classes[i] for i in idx.tolist()]


def pooled(z: torch.Tensor) -> np.ndarray:
    """Mean and standard deviation over frames of latents [T, D] -> [2D]."""
    return torch.cat([z.mean(0), z.std(0, unbiased=False)]).double().numpy()


# -- turn-taking ---------------------------------------------------------------------------------------
def _mask(spans_: Sequence[tuple[int, int]], T: int) -> np.ndarray:
    m = np.zeros(T, bool)
    for a, b in spans_:
        m[a:b] = True
    return m


@dataclass
class TurnStats:
    delays_ms: list[float] = field(default_factory=list)
    unanswered: int = 0
    answered_turns: int = 0
    agent_frames: int = 0
    user_frames: int = 0
    overlap_frames: int = 0
    stops_ms: list[float] = field(default_factory=list)
    not_stopped: int = 0
    interruptions: int = 0  # interruptions the agent was speaking at

    def add(self, d: Dialogue, speaking: np.ndarray, frame_ms: float, stop_frames: int, max_stop: int) -> None:
        T = d.frames
        users = d.user_turns()
        interrupts = set(d.interruptions())
        agent_starts = [a for a, _ in d.agent_turns()]
        user_mask = _mask(users, T)
        self.agent_frames += int(speaking.sum())
        self.user_frames += int(user_mask.sum())
        self.overlap_frames += int((speaking & user_mask).sum())
        for k, (s, e) in enumerate(users):
            nxt = users[k + 1][0] if k + 1 < len(users) else T
            if agent_starts and not any(s <= a < nxt for a in agent_starts):
                continue  # the reference agent does not answer this turn (e.g. a backchannel pause)
            self.answered_turns += 1
            idx = np.nonzero(speaking[e:nxt])[0]
            if idx.size:
                self.delays_ms.append(float(idx[0]) * frame_ms)
            else:
                self.unanswered += 1
        for i in sorted(interrupts):
            if not speaking[max(0, i - 3): i + 1].any():
                continue
            self.interruptions += 1
            run, stop = 0, None
            for t in range(i, min(T, i + max_stop)):
                run = 0 if speaking[t] else run + 1
                if run >= stop_frames:
                    stop = t - stop_frames + 1
                    break
            if stop is None:
                self.not_stopped += 1
            else:
                self.stops_ms.append(float(stop - i) * frame_ms)

    def summary(self) -> dict[str, Any]:
        def dist(v: list[float]) -> dict[str, Any]:
            if not v:
                return {"n": 0, "mean": None, "median": None, "p90": None}
            a = np.asarray(v)
            return {"n": int(a.size), "mean": float(a.mean()), "median": float(np.median(a)),
                    "p90": float(np.percentile(a, 90))}

        return {
            "start_delay_ms": dist(self.delays_ms),
            "unanswered_rate": self.unanswered / self.answered_turns if self.answered_turns else None,
            "turns": self.answered_turns,
            "overlap_rate": self.overlap_frames / self.agent_frames if self.agent_frames else None,
            "talk_over_user_rate": self.overlap_frames / self.user_frames if self.user_frames else None,
            "agent_speech_share": None,
            "stop_ms": dist(self.stops_ms),
            "stopped_rate": (len(self.stops_ms) / self.interruptions) if self.interruptions else None,
            "interruptions": self.interruptions,
        }
