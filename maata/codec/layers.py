"""Causal, streamable building blocks of the codec.

Every stateful layer here runs two ways over the same weights:

* ``forward(x)``: offline over a whole sequence (training, batch encode/decode);
* ``step(state, x) -> (y, state)``: streaming over consecutive chunks, where ``state`` is a
  fixed-shape tensor (or tuple of tensors) made by ``init_state(batch, ...)``.

Feeding a sequence through ``step`` in chunks gives the same output as ``forward`` on the
whole sequence (up to float rounding): the tests check this for every layer and for the codec.
A slot of a batched state is reset by zeroing its rows (``state[mask] = 0``): all states are
zeros at the start of a stream, which is exactly the offline causal left padding. The
bottleneck transformer is :class:`maata.nn.StreamingTransformer` (its ``step`` updates the
state in place and returns the output only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from maata.nn import StreamingTransformer, TransformerState, interleaved_to_half_split


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


class BottleneckTransformer(StreamingTransformer):
    """The codec's bottleneck transformer: :class:`maata.nn.StreamingTransformer` (LayerNorm,
    GELU MLP, layer scale 0.01, RoPE) over channels-first latents [B, D, T], attending to the
    last ``window`` frames.

    Weights saved under the codec's earlier layer names (``norm1``, ``qkv``, ``proj``, ``norm2``,
    ``ff.0``/``ff.2``, ``scale1``/``scale2``, RoPE on interleaved pairs) are renamed on load and
    their q/k rows permuted to the half-split pairing, so those checkpoints compute the same.
    """

    def __init__(self, dim: int, layers: int, heads: int, window: int, ff_mult: int = 4):
        super().__init__(dim, layers, heads, window, ff_mult * dim, norm="layer", ffn="gelu", layer_scale=0.01)
        self.register_load_state_dict_pre_hook(_upgrade_interleaved_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)

    def step(self, state: TransformerState, x: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """Frames x [B, D, T] -> [B, D, T]; ``state`` is updated in place."""
        return super().step(state, x.transpose(1, 2), active).transpose(1, 2)

    def prefill(self, state: TransformerState, slot: int, x: torch.Tensor) -> torch.Tensor:
        return super().prefill(state, slot, x.transpose(1, 2)).transpose(1, 2)


_RENAMED = {"norm1.": "attn_norm.", "proj.": "out_proj.", "norm2.": "ffn_norm.", "ff.0.": "ffn.w_in.",
            "ff.2.": "ffn.w_out.", "scale1": "attn_scale", "scale2": "ffn_scale"}


def _upgrade_interleaved_layers(module: BottleneckTransformer, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: earlier layer names and interleaved RoPE -> this layout (in place)."""
    for i in range(len(module.layers)):
        p = f"{prefix}layers.{i}."
        if p + "qkv.weight" not in state_dict:
            continue
        w = state_dict.pop(p + "qkv.weight")
        q, k, v = w.chunk(3, dim=0)
        hd = module.head_dim
        state_dict[p + "qkv_proj.weight"] = torch.cat([interleaved_to_half_split(q, hd),
                                                       interleaved_to_half_split(k, hd), v])
        for key in [key for key in state_dict if key.startswith(p)]:
            rest = key[len(p):]
            for old, new in _RENAMED.items():
                if rest.startswith(old):
                    state_dict[p + new + rest[len(old):]] = state_dict.pop(key)
                    break
