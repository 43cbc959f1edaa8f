"""The causal streaming transformer shared by the codec and the LM.

One stack runs three ways over the same weights:

* ``forward(x)``: offline over a whole sequence [B, T, D] with a sliding-window causal mask
  (query t sees frames t - context + 1 .. t), computed in blocks of ``context`` queries so
  memory is O(T · context), not O(T²);
* ``step(state, x)``: streaming, frame by frame, in place on a :class:`TransformerState`;
* ``prefill(state, slot, x)``: a whole history at once, leaving the slot exactly as after
  stepping through it.

**State.** Per layer a fixed-capacity ring of the last ``context`` keys and values
[B, H, context, Dh] and per slot the number of frames seen, ``pos`` [B]. Frame p is written
by scatter into ring entry p mod context, its key already rotated at its absolute position, so
an entry keeps its meaning however often the ring wraps; entry j of a slot holds the frame
``age = (pos - j) mod context`` steps old and is attended iff that frame exists
(``age ≤ pos``). This is the offline window exactly, so streaming equals ``forward``. Every
tensor is batch-first and fixed-shape: a slot is reset by zeroing its rows (pos 0 = a new
stream), and one batch holds streams that started at different times.

**Layers.** Pre-norm: x += attn(norm(x)); x += ffn(norm(x)), with the norm (RMSNorm or
LayerNorm), the feed-forward (SwiGLU or a GELU MLP), an optional per-channel layer scale and
RoPE (or no positions at all) chosen per model.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from maata.nn.rope import Rope, apply_rope, rope_tables


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):  # normalise in float32, then back
            return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class SwiGLU(nn.Module):
    """silu(x W_a) ⊙ (x W_b), projected back; no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.w_out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(F.silu(a) * b)


class GeluMLP(nn.Module):
    """Linear → GELU → Linear, with biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_in = nn.Linear(dim, hidden)
        self.w_out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_out(F.gelu(self.w_in(x)))


def swiglu_hidden(dim: int) -> int:
    """The usual SwiGLU width, 8/3 · dim rounded up to a multiple of 64 (same parameters as a 4× MLP)."""
    return 64 * math.ceil(8 * dim / 3 / 64)


NORMS = {"rms": RMSNorm, "layer": nn.LayerNorm}
FFNS = {"swiglu": SwiGLU, "gelu": GeluMLP}


class TransformerLayer(nn.Module):
    """Pre-norm attention + feed-forward layer. The attention itself is left to the caller
    (``qkv``, then ``finish``) so the same weights serve the offline masked pass, the ring-cache
    step and bidirectional use with a padding mask (``forward``)."""

    def __init__(self, dim: int, heads: int, ffn_hidden: int, *, norm: str = "rms", ffn: str = "swiglu",
                 layer_scale: float | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be a multiple of heads {heads}")
        if norm not in NORMS or ffn not in FFNS:
            raise ValueError(f"norm must be one of {sorted(NORMS)} and ffn one of {sorted(FFNS)}; "
                             f"got {norm!r}, {ffn!r}")
        self.heads, self.head_dim = heads, dim // heads
        self.attn_norm = NORMS[norm](dim)
        self.qkv_proj = nn.Linear(dim, 3 * dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.ffn_norm = NORMS[norm](dim)
        self.ffn = FFNS[ffn](dim, ffn_hidden)
        if layer_scale is not None:  # small at init: the layer starts close to identity (CaiT, Mimi)
            self.attn_scale = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.ffn_scale = nn.Parameter(torch.full((dim,), float(layer_scale)))
        else:
            self.attn_scale = self.ffn_scale = None

    def qkv(self, x: torch.Tensor, rope: Rope | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, D] -> q, k, v [B, H, T, Dh] (q and k rotated when ``rope`` tables are given)."""
        B, T, _ = x.shape
        qkv = self.qkv_proj(self.attn_norm(x)).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is None:
            return qkv[0], qkv[1], qkv[2]
        qk = apply_rope(qkv[:2], rope)  # q and k rotated together
        return qk[0], qk[1], qkv[2]

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Residual attention output (attn [B, H, T, Dh]), then the residual feed-forward."""
        B, T, D = x.shape
        a = self.out_proj(attn.transpose(1, 2).reshape(B, T, D))
        x = x + a if self.attn_scale is None else torch.addcmul(x, self.attn_scale, a)
        f = self.ffn(self.ffn_norm(x))
        return x + f if self.ffn_scale is None else torch.addcmul(x, self.ffn_scale, f)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, rope: Rope | None = None,
                causal: bool = False) -> torch.Tensor:
        q, k, v = self.qkv(x, rope)
        return self.finish(x, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal))


class TransformerState(NamedTuple):
    """Streaming state of a :class:`StreamingTransformer` for a batch of slots."""

    keys: list[torch.Tensor]  # per layer [B, H, context, Dh], rotated at their absolute positions
    values: list[torch.Tensor]  # per layer [B, H, context, Dh]
    pos: torch.Tensor  # long [B]: frames seen by each slot (its next frame's position)

    @property
    def batch(self) -> int:
        return self.pos.shape[0]


def window_mask(q0: int, q1: int, k0: int, k1: int, context: int, device=None) -> torch.Tensor:
    """Bool [q1 - q0, k1 - k0]: query frame i may see key frame j iff 0 ≤ i - j < context."""
    d = torch.arange(q0, q1, device=device)[:, None] - torch.arange(k0, k1, device=device)[None, :]
    return (d >= 0) & (d < context)


class StreamingTransformer(nn.Module):
    """Causal transformer over [B, T, D] frames with attention over the last ``context`` frames
    (see the module docstring). ``rope_base=None`` gives no positional encoding (inputs that
    carry their own position, like the LM's depth steps)."""

    def __init__(self, dim: int, layers: int, heads: int, context: int, ffn_hidden: int, *, norm: str = "rms",
                 ffn: str = "swiglu", layer_scale: float | None = None, rope_base: float | None = 10000.0):
        super().__init__()
        if context < 1:
            raise ValueError(f"context must be ≥ 1 frame, got {context}")
        if layers and rope_base is not None and (dim // heads) % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {dim // heads}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.context, self.rope_base = context, rope_base
        self.layers = nn.ModuleList(
            TransformerLayer(dim, heads, ffn_hidden, norm=norm, ffn=ffn, layer_scale=layer_scale) for _ in range(layers))

    def _rope(self, pos: torch.Tensor, dtype: torch.dtype) -> Rope | None:
        return None if self.rope_base is None else rope_tables(pos, self.head_dim, dtype, self.rope_base)

    # -- offline ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D], every frame attending to the last ``context`` frames."""
        return self._run(x, keep=0)[0]

    def _run(self, x: torch.Tensor, keep: int) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """forward, plus per layer the keys/values of the last ``keep`` frames."""
        B, T, _ = x.shape
        C = self.context
        rope = self._rope(torch.arange(T, device=x.device)[None], x.dtype)
        kept = []
        for layer in self.layers:
            q, k, v = layer.qkv(x, rope)
            if T <= C:  # the window holds everything: plain causal attention
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # blocks of C queries, each over its own block and the one before
                parts = []
                for c in range(0, T, C):
                    e, s = min(c + C, T), max(0, c - C)
                    mask = window_mask(c, e, s, e, C, x.device)
                    parts.append(F.scaled_dot_product_attention(q[:, :, c:e], k[:, :, s:e], v[:, :, s:e],
                                                                attn_mask=mask))
                a = torch.cat(parts, dim=2)
            if keep:
                kept.append((k[:, :, T - min(keep, T):], v[:, :, T - min(keep, T):]))
            x = layer.finish(x, a)
        return x, kept

    # -- streaming ----------------------------------------------------------------------------------
    def init_state(self, batch: int, device=None, dtype: torch.dtype = torch.float32) -> TransformerState:
        shape = (batch, self.heads, self.context, self.head_dim)
        return TransformerState(keys=[torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers],
                                values=[torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers],
                                pos=torch.zeros(batch, dtype=torch.long, device=device))

    @staticmethod
    def reset(state: TransformerState, mask: torch.Tensor) -> None:
        """Start new streams in the slots of ``mask`` (bool [B])."""
        for t in (*state.keys, *state.values, state.pos):
            t[mask] = 0

    def step(self, state: TransformerState, x: torch.Tensor, active: torch.Tensor | None = None, *,
             at: int | None = None) -> torch.Tensor:
        """Frames x [B, T, D] (any T ≥ 1) following each slot's history -> [B, T, D].

        Updates ``state`` in place. ``active`` (bool [B]): only these slots take the frames;
        the others are computed (fixed shapes) but their state is left exactly as it was.
        ``at``: every slot is known to be at this position and the frames do not wrap the ring
        (``at + T ≤ context``; e.g. the steps within one LM frame): entries are then addressed by
        slicing, with no per-slot index or mask — the same result, fewer small ops.
        """
        if not self.layers:
            if active is None:
                state.pos.add_(x.shape[1])
            else:
                state.pos.add_(active.long() * x.shape[1])
            return x
        if at is not None:
            if active is not None or not 0 <= at <= self.context - x.shape[1]:
                raise ValueError(f"step(at={at}) needs every slot active and {x.shape[1]} frames to fit "
                                 f"the context of {self.context} without wrapping")
            outs = [self._frame_at(state, x[:, t: t + 1], at + t) for t in range(x.shape[1])]
        else:
            outs = [self._frame(state, x[:, t: t + 1], active) for t in range(x.shape[1])]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def _frame_at(self, state: TransformerState, x: torch.Tensor, p: int) -> torch.Tensor:
        """One frame x [B, 1, D] at position ``p`` for every slot, ring not wrapped."""
        rope = None if self.rope_base is None else self._rope(torch.full((1, 1), p, device=x.device), x.dtype)
        for layer, kc, vc in zip(self.layers, state.keys, state.values):
            q, k, v = layer.qkv(x, rope)
            kc[:, :, p] = k[:, :, 0]
            vc[:, :, p] = v[:, :, 0]
            x = layer.finish(x, F.scaled_dot_product_attention(q, kc[:, :, :p + 1], vc[:, :, :p + 1]))
        state.pos.add_(1)
        return x

    def _frame(self, state: TransformerState, x: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
        """One frame x [B, 1, D]: what every layer shares (positions, ring entry, mask) is built once."""
        pos, C = state.pos, self.context
        slot = pos % C
        age = (slot[:, None] - torch.arange(C, device=pos.device)) % C  # frames since entry j was written
        valid = (age <= pos[:, None])[:, None, None, :]  # never-written entries are not attended
        rope = self._rope(pos[:, None], x.dtype)
        index = slot[:, None, None, None].expand(-1, self.heads, 1, self.head_dim)
        keep = None if active is None else ~active[:, None, None, None]
        for layer, kc, vc in zip(self.layers, state.keys, state.values):
            q, k, v = layer.qkv(x, rope)
            if keep is not None:  # inactive slots write back what their entry already held
                k = torch.where(keep, kc.gather(2, index), k)
                v = torch.where(keep, vc.gather(2, index), v)
            kc.scatter_(2, index, k)
            vc.scatter_(2, index, v)
            x = layer.finish(x, F.scaled_dot_product_attention(q, kc, vc, attn_mask=valid))
        if active is None:
            pos.add_(1)
        else:
            pos.add_(active.long())
        return x

    def prefill(self, state: TransformerState, slot: int, x: torch.Tensor) -> torch.Tensor:
        """A stream's whole history x [1, T, D] at once, into ``slot`` -> [1, T, D].

        The slot ends exactly as after ``step`` through the T frames from a reset; its previous
        contents are forgotten.
        """
        if x.dim() != 3 or x.shape[0] != 1:
            raise ValueError(f"prefill takes one stream [1, T, D], got {tuple(x.shape)}")
        y, kept = self._run(x, keep=self.context)
        T = x.shape[1]
        for t in (*state.keys, *state.values):
            t[slot] = 0
        at = torch.arange(T - min(T, self.context), T, device=x.device) % self.context
        for (k, v), kc, vc in zip(kept, state.keys, state.values):
            kc[slot][:, at] = k[0].to(kc.dtype)
            vc[slot][:, at] = v[0].to(vc.dtype)
        state.pos[slot] = T
        return y
