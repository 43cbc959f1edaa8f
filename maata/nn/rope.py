"""Rotary position embeddings (RoPE), half-split pairing.

Channel ``i`` of a head is paired with channel ``i + Dh/2`` and the pair is rotated by
``pos · base^(-2i/Dh)`` (the GPT-NeoX/Llama layout: two contiguous halves, no strided gathers).
Every transformer in Maata uses these two functions; weights trained with the interleaved
pairing (``2i``, ``2i + 1``) are converted at load time with :func:`interleaved_to_half_split`,
which permutes the q/k projection rows so the attention scores are unchanged.
"""

from __future__ import annotations

import math

import torch

Rope = tuple[torch.Tensor, torch.Tensor]  # cos, sin [B, 1, T, Dh/2]


def rope_tables(pos: torch.Tensor, head_dim: int, dtype: torch.dtype, base: float = 10000.0) -> Rope:
    """cos, sin [B, 1, T, Dh/2] of the rotations at absolute positions ``pos`` (long [B, T]).

    Angles are computed in float64: a call is hours of frames, and float32 angles at positions
    ~1e5 would be off by ~1e-2 rad, blurring the relative positions RoPE encodes. Build them
    once per step and share them between the layers of a transformer.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    half = head_dim // 2
    inv = torch.exp(-math.log(base) * torch.arange(half, device=pos.device, dtype=torch.float64) / half)
    ang = pos[:, None, :, None].double() * inv
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate x [..., B, H, T, Dh] (e.g. q and k stacked on a leading axis) by ``rope``."""
    cos, sin = rope
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def interleaved_to_half_split(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows of a q or k projection [H · Dh, in] trained with interleaved RoPE pairs, reordered
    for :func:`apply_rope`: per head, the even channels first, then the odd ones.

    Rotation commutes with this permutation and q·k is unchanged when q and k are permuted
    alike, so the converted weights give the same attention as the originals.
    """
    if weight.shape[0] % head_dim or head_dim % 2:
        raise ValueError(f"{weight.shape[0]} rows do not split into heads of even size {head_dim}")
    order = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    heads = weight.shape[0] // head_dim
    return weight.reshape(heads, head_dim, *weight.shape[1:])[:, order].reshape(weight.shape)
