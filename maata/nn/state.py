"""Helpers for streaming states: nested lists/tuples of batch-first tensors."""

from __future__ import annotations

import torch


def reset_state(state, mask: torch.Tensor):
    """Zero the rows of ``mask`` (bool [B]) in every tensor of a nested state, in place.

    Every Maata streaming state is all zeros at the start of a stream, so this gives the
    masked slots to new streams.
    """
    if isinstance(state, torch.Tensor):
        state[mask] = 0  # every state tensor is batch-first
        return state
    for s in state:
        reset_state(s, mask)
    return state
