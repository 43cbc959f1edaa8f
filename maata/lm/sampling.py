"""Token sampling for the S2S model: temperature, top-k, greedy, reproducible per call.

Randomness is *counter-based*: the uniform number behind each draw is a hash of
``(seed, frame, stream)`` where ``seed`` belongs to the call (its slot), ``frame`` is the
call's own frame counter and ``stream`` says which token of the frame is drawn (text, then
codebook 1..8). Nothing random lives in the state besides the seed, so

* a call's tokens depend only on its own seed and inputs, never on which other calls share
  the batch or on the order slots were stepped in;
* a call rebuilt after a restart (``LM.prefill``) continues with exactly the draws it would
  have made, because the counter is the frame index and is restored with the history.

Each draw is an inverse-CDF sample over the whole vocabulary in id order (fixed length), so
the arithmetic is the same for a row whatever the other rows hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF


class SamplingError(ValueError):
    """Sampling parameters out of range."""


@dataclass(frozen=True)
class SamplingParams:
    """How one call samples its tokens. Temperature 0 means greedy (argmax).

    ``top_k`` 0 means no limit. Audio and text have separate settings because the text
    (inner monologue) stream wants to be much more conservative than the acoustic codes.
    """

    temperature: float = 0.8
    top_k: int = 250
    text_temperature: float = 0.7
    text_top_k: int = 25

    def __post_init__(self) -> None:
        for name in ("temperature", "text_temperature"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and v == v and v != float("inf")):
                raise SamplingError(f"{name} must be a finite number ≥ 0 (0 = greedy), got {v!r}")
        for name in ("top_k", "text_top_k"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                raise SamplingError(f"{name} must be an integer ≥ 0 (0 = no limit), got {v!r}")


GREEDY = SamplingParams(temperature=0.0, top_k=0, text_temperature=0.0, text_top_k=0)


@dataclass
class SamplingBatch:
    """Per-row sampling settings as tensors ([B] each), the form the model consumes."""

    temperature: torch.Tensor  # float [B]
    top_k: torch.Tensor  # long [B]
    text_temperature: torch.Tensor  # float [B]
    text_top_k: torch.Tensor  # long [B]

    @classmethod
    def from_params(cls, params: SamplingParams | Sequence[SamplingParams | None] | SamplingBatch | None,
                    batch: int, device: torch.device | str | None = None) -> SamplingBatch:
        """One ``SamplingParams`` for all rows, one per row (``None`` = defaults), or a batch as is."""
        if isinstance(params, SamplingBatch):
            for name in ("temperature", "top_k", "text_temperature", "text_top_k"):
                t = getattr(params, name)
                if t.shape != (batch,):
                    raise SamplingError(f"SamplingBatch.{name} must be shaped [{batch}], got {tuple(t.shape)}")
            if (params.temperature < 0).any() or (params.text_temperature < 0).any():
                raise SamplingError("temperatures must be ≥ 0")
            if (params.top_k < 0).any() or (params.text_top_k < 0).any():
                raise SamplingError("top_k must be ≥ 0")
            return params
        if params is None or isinstance(params, SamplingParams):
            rows = [params or SamplingParams()] * batch
        else:
            rows = [p or SamplingParams() for p in params]
            if len(rows) != batch:
                raise SamplingError(f"got sampling params for {len(rows)} rows, the batch has {batch}")
            for p in rows:
                if not isinstance(p, SamplingParams):
                    raise SamplingError(f"expected SamplingParams or None per row, got {type(p).__name__}")

        def col(name: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([getattr(p, name) for p in rows], dtype=dtype, device=device)

        return cls(col("temperature", torch.float32), col("top_k", torch.long),
                   col("text_temperature", torch.float32), col("text_top_k", torch.long))


def _mul32(x: torch.Tensor, m: int) -> torch.Tensor:
    """(x * m) mod 2**32 for x in [0, 2**32), exact in int64 (no intermediate above 2**49)."""
    lo = x * (m & 0xFFFF)
    hi = ((x * (m >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser with good avalanche (the "lowbias32" hash)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def counter_uniform(seed: torch.Tensor, counter: torch.Tensor, streams: int | Sequence[int]) -> torch.Tensor:
    """Uniform numbers in [0, 1) from per-row ``seed`` and ``counter`` (long [B]).

    ``streams``: one stream id (-> float64 [B]) or several (-> float64 [B, S]). A pure
    function of its arguments: the same (seed, counter, stream) always gives the same number,
    on any device and in any batch.
    """
    one = isinstance(streams, int)
    ids = torch.as_tensor([streams] if one else list(streams), dtype=torch.long, device=seed.device)
    seed = seed.long()[:, None]
    counter = counter.long()[:, None]
    h = _mix32(seed & _MASK32)
    h = _mix32(h ^ ((seed >> 32) & _MASK32))
    h = _mix32(h ^ (counter & _MASK32))
    h = _mix32(h ^ ((counter >> 32) & _MASK32))
    h = _mix32(h ^ (ids[None, :] & _MASK32))  # [B, S]
    h2 = _mix32(h ^ 0x9E3779B9)
    bits = ((h >> 5) << 26) | (h2 >> 6)  # 53 random bits, like random.random()
    u = bits.double() / float(1 << 53)
    return u[:, 0] if one else u


@dataclass
class Rule:
    """Per-row sampling settings prepared once per step, reused for every draw with that vocabulary."""

    sampled: torch.Tensor  # bool [B]: temperature > 0 (else argmax)
    any_sampled: bool
    inv_temperature: torch.Tensor  # float [B, 1]
    k: torch.Tensor  # long [B]: tokens kept (V = all)
    ks: list[int]  # the distinct k < V among sampled rows (usually one)
    vocab: int

    @classmethod
    def make(cls, temperature: torch.Tensor, top_k: torch.Tensor, vocab: int) -> Rule:
        """temperature: float [B] (0 = argmax); top_k: long [B] (0 = whole vocabulary)."""
        sampled = temperature > 0
        any_sampled = bool(sampled.any())
        k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
        ks = torch.unique(k[sampled & (k < vocab)]).tolist() if any_sampled else []
        inv = temperature.clamp(min=1e-5).reciprocal()[:, None]
        return cls(sampled, any_sampled, inv, k, ks, vocab)


def draw(logits: torch.Tensor, rule: Rule, uniform: torch.Tensor) -> torch.Tensor:
    """Draw one token per row of ``logits`` [B, V] under ``rule``; uniform: float64 [B] in [0, 1).

    Top-k keeps the tokens whose logit is ≥ the k-th largest (ties with it are kept too).
    Inverse-CDF over the vocabulary in id order: every row's arithmetic has the same shape
    and order whatever the other rows hold, so a row's draw never depends on its batch.
    """
    B, V = logits.shape
    if V != rule.vocab:
        raise SamplingError(f"logits have {V} classes, the rule was made for {rule.vocab}")
    greedy = logits.argmax(-1)
    if not rule.any_sampled:
        return greedy
    logits = logits.float()
    threshold = torch.full((B, 1), float("-inf"), device=logits.device)
    for kk in rule.ks:
        kth = torch.kthvalue(logits, V - kk + 1, dim=-1, keepdim=True).values  # exact k-th largest logit
        threshold = torch.where(rule.k[:, None] == kk, kth, threshold)
    kept = logits >= threshold
    scaled = (logits * rule.inv_temperature.to(logits.dtype)).masked_fill(~kept, float("-inf"))
    cdf = torch.softmax(scaled.double(), dim=-1).cumsum(-1)
    x = uniform.double()[:, None] * cdf[:, -1:]
    drawn = torch.searchsorted(cdf, x, right=True).clamp_(max=V - 1)
    # rounding could only ever land past the last kept token: fall back to the argmax then
    drawn = torch.where(kept.gather(1, drawn), drawn, greedy[:, None])[:, 0]
    return torch.where(rule.sampled, drawn, greedy)


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
           uniform: torch.Tensor) -> torch.Tensor:
    """One draw per row of ``logits`` [B, V]: temperature float [B] (0 = argmax), top_k long
    [B] (0 = all), uniform float64 [B] (e.g. from ``counter_uniform``). Returns long [B]."""
    return draw(logits, Rule.make(temperature, top_k, logits.shape[-1]), uniform)
