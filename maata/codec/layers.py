"""Causal, streamable building blocks of the codec.

Every stateful layer here runs two ways over the same weights:

* ``forward(x)``: offline over a whole sequence (training, batch encode/decode);
* ``step(state, x) -> (y, state)``: streaming over consecutive chunks, where ``state`` is a
  fixed-shape tensor (or tuple of tensors) made by ``init_state(batch, ...)``.

Feeding a sequence through ``step`` in chunks gives the same output as ``forward`` on the
whole sequence (up to float rounding): the tests check this for every layer and for the codec.
A slot of a batched state is reset by zeroing its rows (``state[mask] = 0``): all states are
zeros at the start of a stream, which is exactly the offline causal left padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def version_key(*tensors: torch.Tensor) -> tuple:
    """Identity and in-place version of ``tensors``: a cache of something computed from them is
    stale once this changes (an optimiser step, ``load_state_dict``, ``.to()``)."""
    return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)


class Snake(nn.Module):
    """Snake activation x + sin²(αx)/α with a learned per-channel α (BigVGAN/DAC)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha
        return torch.addcmul(x, self._inverse_alpha(), torch.sin(a * x).square())

    def _inverse_alpha(self) -> torch.Tensor:
        """1/α, cached at inference (streaming calls this every 40 ms step)."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return (self.alpha + 1e-9).reciprocal()
        key = version_key(self.alpha)
        if getattr(self, "_inv_key", None) != key:
            self._inv, self._inv_key = (self.alpha + 1e-9).reciprocal(), key
        return self._inv


class CausalConv1d(nn.Module):
    """Weight-normed Conv1d with causal left padding; streams with a (K - stride) input tail.

    Inputs to ``step`` must come in multiples of ``stride`` samples so that the tail keeps a
    fixed length (the codec only feeds whole frames, which guarantees it).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(cin, cout, kernel, stride=stride, dilation=dilation))
        self.stride = stride
        self.dilation = dilation
        self.effective_kernel = (kernel - 1) * dilation + 1
        if self.effective_kernel < stride:
            raise ValueError("kernel must cover the stride")
        self.pad = self.effective_kernel - stride
        self.cin = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.stride:
            raise ValueError(f"length {x.shape[-1]} is not a multiple of stride {self.stride}")
        return self.conv(F.pad(x, (self.pad, 0)))

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.zeros(batch, self.cin, self.pad, device=device, dtype=dtype)

    def step(self, state: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] % self.stride:
            raise ValueError(f"chunk of {x.shape[-1]} is not a multiple of stride {self.stride}")
        z = torch.cat([state, x], dim=-1)
        y = self.conv(z)
        return y, z[..., z.shape[-1] - self.pad:]


class CausalConvTranspose1d(nn.Module):
    """Weight-normed transposed conv with kernel = 2 × stride, causal.

    Computed as one matmul per input frame followed by overlap-add of two halves: frame t
    writes its first half to output block t and its second half to block t + 1. Streaming
    carries the last second half to the next step; offline drops it at the end. This is
    exactly ``ConvTranspose1d`` with the right ``stride`` samples trimmed, and much faster on
    CPU than the generic transposed convolution for the short chunks of streaming.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int):
        super().__init__()
        if kernel != 2 * stride:
            raise ValueError(f"kernel must be 2 x stride, got kernel={kernel} stride={stride}")
        self.conv = weight_norm(nn.ConvTranspose1d(cin, cout, kernel, stride=stride))
        self.stride = stride
        self.cout = cout

    def _halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.conv.weight  # [cin, cout, 2s]
        y = torch.matmul(x.transpose(1, 2), w.reshape(w.shape[0], -1))  # [B, T, cout*2s]
        y = y.view(x.shape[0], x.shape[2], self.cout, 2, self.stride)
        return y[:, :, :, 0], y[:, :, :, 1]  # each [B, T, cout, s]

    def _assemble(self, first: torch.Tensor, second_prev: torch.Tensor) -> torch.Tensor:
        out = first + second_prev + self.conv.bias[None, None, :, None]
        return out.permute(0, 2, 1, 3).reshape(first.shape[0], self.cout, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self._halves(x)
        prev = F.pad(second[:, :-1], (0, 0, 0, 0, 1, 0))
        return self._assemble(first, prev)

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.zeros(batch, 1, self.cout, self.stride, device=device, dtype=dtype)

    def step(self, state: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = self._halves(x)
        prev = torch.cat([state, second[:, :-1]], dim=1)
        return self._assemble(first, prev), second[:, -1:]


class ResidualUnit(nn.Module):
    """SEANet residual unit: Snake → dilated causal conv (C→C/2) → Snake → 1×1 conv (→C), + skip."""

    def __init__(self, channels: int, kernel: int, dilation: int, compress: int = 2):
        super().__init__()
        hidden = max(channels // compress, 1)
        self.act1 = Snake(channels)
        self.conv1 = CausalConv1d(channels, hidden, kernel, dilation=dilation)
        self.act2 = Snake(hidden)
        self.conv2 = CausalConv1d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act2(self.conv1(self.act1(x))))

    def init_state(self, batch: int, device=None, dtype=torch.float32):
        return self.conv1.init_state(batch, device, dtype)

    def step(self, state, x):
        h, state = self.conv1.step(state, self.act1(x))
        return x + self.conv2(self.act2(h)), state


def rope_tables(pos: torch.Tensor, head_dim: int, dtype: torch.dtype, base: float = 10000.0):
    """cos, sin [B, 1, T, Dh/2] of rotary embeddings at absolute positions ``pos`` (long [B, T]).

    Angles in float64: a call is hours of frames, and float32 angles at positions ~1e5 would be
    off by ~1e-2 rad. Computed once per step and shared by every layer of a transformer.
    """
    inv = torch.exp(-math.log(base) * torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float64) / head_dim)
    ang = pos[:, None, :, None].double() * inv
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x [..., T, Dh] by the angles of ``cos``/``sin``."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class LocalAttentionLayer(nn.Module):
    """Pre-norm causal transformer layer with attention limited to the last ``window`` frames.

    Streaming keeps a ring buffer of the last ``window`` keys/values (already rotated with
    RoPE at their absolute positions), so memory is fixed however long the call.
    """

    def __init__(self, dim: int, heads: int, window: int, ff_mult: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError("dim must be divisible by heads")
        self.heads, self.window, self.head_dim = heads, window, dim // heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim))
        # layer scale, small at init so the transformer starts close to identity (Mimi)
        self.scale1 = nn.Parameter(torch.full((dim,), 0.01))
        self.scale2 = nn.Parameter(torch.full((dim,), 0.01))

    def _qkv(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]):
        B, T, D = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        qk = apply_rope(qkv[:2], *rope)  # q and k rotated together
        return qk[0], qk[1], qkv[2]

    def _finish(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Residual + projection of the attention output a [B, H, T, Dh], then the feed-forward."""
        B, T, D = x.shape
        x = torch.addcmul(x, self.scale1, self.proj(a.transpose(1, 2).reshape(B, T, D)))
        return torch.addcmul(x, self.scale2, self.ff(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        pos = torch.arange(T, device=x.device)[None].expand(B, T)
        q, k, v = self._qkv(x, rope_tables(pos, self.head_dim, x.dtype))
        i = torch.arange(T, device=x.device)
        mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < self.window)
        return self._finish(x, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

    def init_state(self, batch: int, device=None, dtype=torch.float32):
        k = torch.zeros(batch, self.heads, self.window, self.head_dim, device=device, dtype=dtype)
        pos = torch.zeros(batch, dtype=torch.long, device=device)  # frames seen so far
        return k, torch.zeros_like(k), pos

    def frame_step(self, state, xt: torch.Tensor, rope, slot: torch.Tensor, valid: torch.Tensor):
        """One frame xt [B, 1, D]; ``rope``, ``slot`` (ring index [B]) and ``valid`` (bool [B, W])
        come from :func:`frame_inputs`, shared by all layers of a transformer."""
        kc, vc, pos = state
        q, k, v = self._qkv(xt, rope)
        index = slot[:, None, None, None].expand(-1, self.heads, 1, self.head_dim)
        kc, vc = kc.scatter(2, index, k), vc.scatter(2, index, v)
        a = F.scaled_dot_product_attention(q, kc, vc, attn_mask=valid[:, None, None, :])
        return self._finish(xt, a), (kc, vc, pos + 1)

    def step(self, state, x: torch.Tensor):
        """x: [B, T, D] new frames (any T ≥ 1)."""
        outs = []
        for t in range(x.shape[1]):  # frame by frame: exact ring-buffer semantics for any chunk
            y, state = self.frame_step(state, x[:, t: t + 1], *frame_inputs(state[2], self.window, self.head_dim, x.dtype))
            outs.append(y)
        return torch.cat(outs, dim=1), state


def frame_inputs(pos: torch.Tensor, window: int, head_dim: int, dtype: torch.dtype):
    """What every layer needs for the next frame, given frames seen so far ``pos`` (long [B]):
    RoPE tables at ``pos``, the ring slot it writes, and which ring entries it may attend to
    (those written within the last ``window`` frames, this one included)."""
    slot = pos % window
    age = (slot[:, None] - torch.arange(window, device=pos.device)) % window  # frames since slot j was written
    valid = age <= pos[:, None]  # entries never written in this stream are invalid
    return rope_tables(pos[:, None], head_dim, dtype), slot, valid


class StreamingTransformer(nn.Module):
    """A stack of LocalAttentionLayers over [B, D, T] feature maps (channels-first)."""

    def __init__(self, dim: int, layers: int, heads: int, window: int, ff_mult: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(LocalAttentionLayer(dim, heads, window, ff_mult) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        for layer in self.layers:
            h = layer(h)
        return h.transpose(1, 2)

    def init_state(self, batch: int, device=None, dtype=torch.float32):
        return [layer.init_state(batch, device, dtype) for layer in self.layers]

    def step(self, state, x: torch.Tensor):
        if not self.layers:
            return x, state
        h, first = x.transpose(1, 2), self.layers[0]
        outs = []
        for t in range(h.shape[1]):  # every layer sees the same positions: one set of inputs per frame
            shared = frame_inputs(state[0][2], first.window, first.head_dim, h.dtype)
            ht, new = h[:, t: t + 1], []
            for layer, s in zip(self.layers, state):
                ht, s = layer.frame_step(s, ht, *shared)
                new.append(s)
            outs.append(ht)
            state = new
        return torch.cat(outs, dim=1).transpose(1, 2), state


def reset_state(state, mask: torch.Tensor):
    """Zero the rows of ``mask`` (bool [B]) in every tensor of a nested state, in place."""
    if isinstance(state, torch.Tensor):
        state[mask] = 0  # every state tensor is batch-first
        return state
    for s in state:
        reset_state(s, mask)
    return state
