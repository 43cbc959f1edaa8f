"""``BatchedCodec``: many streams' encode and decode steps run as one batched codec step.

Pure PyTorch (no gRPC, no asyncio) so it is testable alone. Not thread-safe, with one
exception the service's batcher relies on: ``open`` may be called while ``run(slots)`` runs in
another thread, since ``run`` touches only the slots it is given and ``open`` only free ones.

The engine has two lanes, ``encoder`` (PCM -> codes) and ``decoder`` (codes -> PCM), each
holding one ``CodecState`` of ``max_streams`` slots. A stream ``open``s a slot (``SlotsFull``
when none is free), ``push``es input of any size, and ``close``s the slot when it ends; the
slot's state is reset (``Codec.reset``) so the next stream starts fresh.

``run()`` advances every slot that holds at least one whole frame of input: it takes
``f = min(whole frames pending)`` frames from each such slot, gathers those slots' state rows
into a sub-state, runs ONE ``encode_step`` / ``decode_step`` over them, and scatters the new
rows back; slots with more frames left go round again, so a call to ``run`` costs at most one
step per distinct pending-frame count. Slots with nothing to do are not in the step at all:
their rows of the (batch-first) state are untouched, so an idle stream never advances, and the
step costs what the active streams cost, not ``max_streams``. Pending samples live here, per
slot, never in the codec's own ``pending`` (which is shared by the batch): the codec only ever
sees whole frames, which is also what lets ``Codec.reset`` run at any time.

The result per stream equals single-stream streaming through the codec (and the offline
``Codec.encode`` / ``decode``) up to float rounding: a different batch composition changes
the float32 result by ~1e-7, which can flip a code only at an exact tie between two entries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import torch

from maata.codec import DROPPED, Codec, CodecState


class SlotsFull(RuntimeError):
    """Every slot of a lane is taken (the service answers RESOURCE_EXHAUSTED)."""


def _tree_map(fn: Any, tree: Any) -> Any:
    """Apply ``fn`` to every tensor of a nested list/tuple state, keeping the nesting."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    items = [_tree_map(fn, t) for t in tree]
    return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)  # named tuples take fields


def _tree_put(full: Any, rows: torch.Tensor, sub: Any) -> None:
    """Write the rows of ``sub`` into rows ``rows`` of the matching tensors of ``full``, in place."""
    if isinstance(full, torch.Tensor):
        full.index_copy_(0, rows, sub)
        return
    for f, s in zip(full, sub, strict=True):
        _tree_put(f, rows, s)


class _Lane(ABC):
    """One direction of the codec over ``max_streams`` slots: state, free slots, pending input."""

    name: str  # for messages: "encoder" / "decoder"
    PARTS: tuple[str, ...]  # the CodecState fields this lane's step reads and writes

    def __init__(self, codec: Codec, max_streams: int) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        self.codec = codec
        self.max_streams = max_streams
        self.state = codec.init_state(max_streams)
        self._free = list(range(max_streams - 1, -1, -1))  # pop() hands out slot 0 first
        self._open: set[int] = set()
        self._pending: list[torch.Tensor | None] = [None] * max_streams

    @property
    def open_slots(self) -> int:
        return len(self._open)

    def open(self) -> int:
        """Take a free slot for a new stream (its state is fresh)."""
        if not self._free:
            raise SlotsFull(f"all {self.max_streams} {self.name} slots are in use")
        slot = self._free.pop()
        self._open.add(slot)
        return slot

    def close(self, slot: int) -> None:
        """End the stream in ``slot``: drop its pending input, reset its state, free the slot."""
        self._check_open(slot)
        mask = torch.zeros(self.max_streams, dtype=torch.bool)
        mask[slot] = True
        self.codec.reset(self.state, mask)
        self._pending[slot] = None
        self._open.discard(slot)
        self._free.append(slot)

    def push(self, slot: int, x: torch.Tensor) -> None:
        """Queue input (already validated by ``prepare``) for ``slot``; ``run`` consumes it."""
        self._check_open(slot)
        old = self._pending[slot]
        self._pending[slot] = x if old is None else torch.cat([old, x], dim=-1)

    def frames_pending(self, slot: int) -> int:
        """Whole frames of input ``slot`` holds."""
        x = self._pending[slot]
        return 0 if x is None else self._frames(x)

    def run(self, slots: Iterable[int] | None = None) -> dict[int, torch.Tensor]:
        """Advance every slot holding whole frames (of ``slots``; default all open ones: a caller
        that knows which slots got input passes them); returns each advanced slot's output."""
        candidates = sorted(self._open if slots is None else set(slots))
        for slot in candidates:
            self._check_open(slot)
        out: dict[int, list[torch.Tensor]] = {}
        while ready := {s: n for s in candidates if (n := self.frames_pending(s))}:
            f = min(ready.values())
            stepped = sorted(ready)
            batch = torch.stack([self._take(s, f) for s in stepped])
            for s, y in zip(stepped, self._step_rows(stepped, batch), strict=True):
                out.setdefault(s, []).append(y)
        return {s: torch.cat(ys, dim=-1) for s, ys in out.items()}

    def _step_rows(self, slots: list[int], batch: torch.Tensor) -> torch.Tensor:
        """One codec step of ``batch`` over the state rows of ``slots`` (others untouched)."""
        if len(slots) == self.max_streams:  # everyone is in: step the whole state in place
            return self._step(self.state, batch)
        rows = torch.tensor(slots, dtype=torch.long, device=self.state.pending.device)
        sub = CodecState(pending=self.state.pending.new_zeros(len(slots), 0), encoder=[], enc_transformer=[],
                         dec_transformer=[], decoder=[])
        for part in self.PARTS:
            setattr(sub, part, _tree_map(lambda t: t.index_select(0, rows), getattr(self.state, part)))
        y = self._step(sub, batch)
        for part in self.PARTS:
            _tree_put(getattr(self.state, part), rows, getattr(sub, part))
        return y

    def _check_open(self, slot: int) -> None:
        if slot not in self._open:
            raise KeyError(f"{self.name} slot {slot} is not open")

    @abstractmethod
    def _frames(self, x: torch.Tensor) -> int: ...

    @abstractmethod
    def _take(self, slot: int, frames: int) -> torch.Tensor: ...

    @abstractmethod
    def _step(self, state: CodecState, batch: torch.Tensor) -> torch.Tensor: ...


class EncoderLane(_Lane):
    """PCM in (float [n] per push, any n), codes out (long [n_q, f] per advanced slot)."""

    PARTS = ("encoder", "enc_transformer")
    name = "encoder"

    def prepare(self, pcm: torch.Tensor) -> torch.Tensor:
        """Validate one stream's float PCM [n] (mono, finite) and bring it to the codec's dtype."""
        if pcm.dim() != 1 or not pcm.is_floating_point():
            raise ValueError(f"pcm must be float samples shaped [n], got {pcm.dtype} {tuple(pcm.shape)}")
        if not torch.isfinite(pcm).all():
            raise ValueError("audio contains NaN or infinite samples")
        return pcm.to(self.state.pending)

    def flush(self, slot: int) -> None:
        """Zero-pad ``slot``'s trailing partial frame to a whole one (the stream's input ended),
        as the offline ``Codec.encode`` pads the end of a file."""
        x = self._pending[slot]
        if x is not None and (r := x.shape[-1] % self.codec.hop):
            self.push(slot, x.new_zeros(self.codec.hop - r))

    def _frames(self, x: torch.Tensor) -> int:
        return x.shape[-1] // self.codec.hop

    def _take(self, slot: int, frames: int) -> torch.Tensor:
        x = self._pending[slot]
        n = frames * self.codec.hop
        self._pending[slot] = x[n:] if x.shape[-1] > n else None
        return x[:n]

    def _step(self, state: CodecState, batch: torch.Tensor) -> torch.Tensor:
        return self.codec.encode_step(state, batch)


class DecoderLane(_Lane):
    """Codes in (long [k, f] per push, 1 <= k <= n_q), PCM out (float [f * hop] per advanced slot)."""

    PARTS = ("dec_transformer", "decoder")
    name = "decoder"

    def prepare(self, codes: torch.Tensor) -> torch.Tensor:
        """Validate one stream's codes [k, f] (``CodeError`` if bad) and pad them to n_q
        codebooks with DROPPED, which decodes exactly like k codebooks."""
        if codes.dim() != 2:
            raise ValueError(f"codes must be shaped [codebooks, frames], got {tuple(codes.shape)}")
        codes = self.codec.check_codes(codes[None])[0]
        missing = self.codec.n_q - codes.shape[0]
        if missing:
            codes = torch.cat([codes, codes.new_full((missing, codes.shape[1]), DROPPED)])
        return codes.to(self.state.pending.device)

    def _frames(self, x: torch.Tensor) -> int:
        return x.shape[-1]

    def _take(self, slot: int, frames: int) -> torch.Tensor:
        x = self._pending[slot]
        self._pending[slot] = x[:, frames:] if x.shape[-1] > frames else None
        return x[:, :frames]

    def _step(self, state: CodecState, batch: torch.Tensor) -> torch.Tensor:
        return self.codec.decode_step(state, batch)


class BatchedCodec:
    """A codec serving up to ``max_streams`` encode and ``max_streams`` decode streams at once,
    each lane advanced by one batched step per ``run``."""

    def __init__(self, codec: Codec, max_streams: int) -> None:
        self.codec = codec.eval()
        self.encoder = EncoderLane(codec, max_streams)
        self.decoder = DecoderLane(codec, max_streams)

    @property
    def hop(self) -> int:
        return self.codec.hop

    @property
    def sample_rate(self) -> int:
        return self.codec.cfg.sample_rate

    @property
    def frame_seconds(self) -> float:
        return self.codec.hop / self.codec.cfg.sample_rate
