"""The BatchedCodec engine alone (no gRPC): batched serving equals single-stream codec math,
slots are isolated, idle slots do not advance, closed slots start fresh."""

from __future__ import annotations

import pytest
import torch

from maata.codec import CodeError
from services.codec.engine import BatchedCodec, SlotsFull
from tests.support.models import TINY_CODEC, tiny_codec

torch.set_num_threads(1)

TINY = TINY_CODEC


def feed(engine: BatchedCodec, streams: dict[int, tuple[torch.Tensor, int]], rounds: int | None = None
         ) -> dict[int, torch.Tensor]:
    """Push each stream's audio (slot -> (wav, chunk size)) a chunk per round, run the encoder
    after every round (flushing streams that ended), and return each slot's codes."""
    out: dict[int, list[torch.Tensor]] = {slot: [] for slot in streams}
    pos = dict.fromkeys(streams, 0)
    while any(pos[s] < len(w) for s, (w, _) in streams.items()):
        for slot, (wav, size) in streams.items():
            if pos[slot] < len(wav):
                engine.encoder.push(slot, engine.encoder.prepare(wav[pos[slot]:pos[slot] + size]))
                pos[slot] += size
                if pos[slot] >= len(wav):
                    engine.encoder.flush(slot)
        for slot, codes in engine.encoder.run().items():
            out[slot].append(codes)
    return {slot: torch.cat(c, -1) for slot, c in out.items()}


def decode_all(engine: BatchedCodec, streams: dict[int, tuple[torch.Tensor, int]]) -> dict[int, torch.Tensor]:
    """Decode each slot's codes [n_q, F] in messages of the given number of frames, batched."""
    out: dict[int, list[torch.Tensor]] = {slot: [] for slot in streams}
    pos = dict.fromkeys(streams, 0)
    while any(pos[s] < c.shape[-1] for s, (c, _) in streams.items()):
        for slot, (codes, size) in streams.items():
            if pos[slot] < codes.shape[-1]:
                engine.decoder.push(slot, engine.decoder.prepare(codes[:, pos[slot]:pos[slot] + size]))
                pos[slot] += size
        for slot, pcm in engine.decoder.run().items():
            out[slot].append(pcm)
    return {slot: torch.cat(p) for slot, p in out.items()}


def test_streams_of_any_chunk_sizes_equal_offline() -> None:
    codec = tiny_codec()
    engine = BatchedCodec(codec, max_streams=4)
    hop = codec.hop
    g = torch.Generator().manual_seed(1)
    wavs = [torch.randn(hop * 9 + 37 * i, generator=g, dtype=torch.float64) * 0.3 for i in range(3)]
    slots = [engine.encoder.open() for _ in wavs]
    codes = feed(engine, {s: (w, size) for s, w, size in zip(slots, wavs, (97, hop, 1500))})
    for slot, wav in zip(slots, wavs):
        assert torch.equal(codes[slot], codec.encode(wav[None, None])[0])  # trailing partial frame padded
    dslots = [engine.decoder.open() for _ in wavs]
    audio = decode_all(engine, {d: (codes[s], k) for d, s, k in zip(dslots, slots, (1, 2, 5))})
    for d, s in zip(dslots, slots):
        assert (audio[d] - codec.decode(codes[s][None])[0, 0]).abs().max() <= 1e-9


def test_float32_batched_equals_single_stream() -> None:
    """At serving precision the batch composition moves the waveform by float rounding only.
    All slots step together (the whole-state path) until the shortest stream ends, then the
    other two go on through the gather/scatter path."""
    codec = tiny_codec(torch.float32)
    engine = BatchedCodec(codec, max_streams=3)
    g = torch.Generator().manual_seed(2)
    wavs = [torch.randn(codec.hop * n, generator=g) * 0.3 for n in (6, 6, 3)]
    slots = [engine.encoder.open() for _ in wavs]
    codes = feed(engine, {s: (w, 640) for s, w in zip(slots, wavs)})
    for slot, wav in zip(slots, wavs):
        state = codec.init_state(1)
        assert torch.equal(codes[slot], codec.encode_step(state, wav[None])[0])
    dslots = [engine.decoder.open() for _ in wavs]
    audio = decode_all(engine, {d: (codes[s], 1) for d, s in zip(dslots, slots)})
    for d, s in zip(dslots, slots):
        assert (audio[d] - codec.decode(codes[s][None])[0, 0]).abs().max() <= 1e-5


def test_idle_slots_do_not_advance() -> None:
    """A slot with no whole frame pending is left out of the step: its state rows stay bitwise
    the same, and its stream later continues as if the others had never run."""
    codec = tiny_codec()
    engine = BatchedCodec(codec, max_streams=4)
    hop = codec.hop
    busy, idle = engine.encoder.open(), engine.encoder.open()
    g = torch.Generator().manual_seed(3)
    wav = torch.randn(hop * 6, generator=g, dtype=torch.float64) * 0.3
    engine.encoder.push(idle, engine.encoder.prepare(wav[: hop + 100]))
    engine.encoder.run()  # idle's first frame is consumed, 100 samples stay pending
    before = [t.clone() for t in _tensors(engine.encoder.state)]
    for _ in range(3):
        engine.encoder.push(busy, engine.encoder.prepare(wav[:hop]))
        engine.encoder.run()
    after = _tensors(engine.encoder.state)
    for b, a in zip(before, after):
        assert torch.equal(b[idle], a[idle])
    engine.encoder.push(idle, engine.encoder.prepare(wav[hop + 100:]))
    rest = engine.encoder.run()[idle]
    assert torch.equal(rest, codec.encode(wav[None, None])[0, :, 1:])


def _tensors(state) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for part in (state.encoder, state.enc_transformer, state.dec_transformer, state.decoder):
        stack = [part]
        while stack:
            x = stack.pop()
            if isinstance(x, torch.Tensor):
                out.append(x)
            else:
                stack.extend(x)
    return out


def test_one_step_per_distinct_pending_count() -> None:
    """Slots are batched: 3 slots with 1, 1 and 3 frames pending take 2 encode steps, not 5."""
    codec = tiny_codec()
    engine = BatchedCodec(codec, max_streams=4)
    calls: list[int] = []
    step = codec.encode_step
    codec.encode_step = lambda state, pcm: calls.append(pcm.shape[0]) or step(state, pcm)  # type: ignore[method-assign]
    slots = [engine.encoder.open() for _ in range(3)]
    for slot, frames in zip(slots, (1, 1, 3)):
        engine.encoder.push(slot, torch.zeros(codec.hop * frames, dtype=torch.float64))
    out = engine.encoder.run()
    assert calls == [3, 1]
    assert [out[s].shape[-1] for s in slots] == [1, 1, 3]


def test_closed_slot_is_reused_fresh() -> None:
    codec = tiny_codec()
    engine = BatchedCodec(codec, max_streams=1)
    g = torch.Generator().manual_seed(4)
    first, second = (torch.randn(codec.hop * 3, generator=g, dtype=torch.float64) * 0.3 for _ in range(2))
    slot = engine.encoder.open()
    engine.encoder.push(slot, engine.encoder.prepare(first[:1000]))  # a partial frame stays pending
    engine.encoder.run()
    engine.encoder.close(slot)
    assert engine.encoder.open() == slot
    assert engine.encoder.frames_pending(slot) == 0
    engine.encoder.push(slot, engine.encoder.prepare(second))
    assert torch.equal(engine.encoder.run()[slot], codec.encode(second[None, None])[0])


def test_slots_run_out_and_come_back() -> None:
    engine = BatchedCodec(tiny_codec(), max_streams=2)
    slots = [engine.encoder.open(), engine.encoder.open()]
    with pytest.raises(SlotsFull, match="all 2 encoder slots are in use"):
        engine.encoder.open()
    assert engine.decoder.open() == 0  # the directions have their own slots
    engine.encoder.close(slots[1])
    assert engine.encoder.open() == slots[1]


def test_fewer_codebooks_decode_as_dropped_levels() -> None:
    codec = tiny_codec()
    engine = BatchedCodec(codec, max_streams=2)
    codes = codec.encode(torch.randn(1, 1, codec.hop * 4, dtype=torch.float64) * 0.3)[0]
    slot = engine.decoder.open()
    engine.decoder.push(slot, engine.decoder.prepare(codes[:2]))
    assert (engine.decoder.run()[slot] - codec.decode(codes[None, :2])[0, 0]).abs().max() <= 1e-9


@pytest.mark.parametrize("codes, match", [
    (torch.full((4, 2), 64), "code values must be in"),
    (torch.full((4, 2), -2), "code values must be in"),
    (torch.zeros(5, 2, dtype=torch.long), "5 codebooks"),
    (torch.zeros(0, 2, dtype=torch.long), "0 codebooks"),
])
def test_bad_codes_are_refused_before_the_engine(codes: torch.Tensor, match: str) -> None:
    engine = BatchedCodec(tiny_codec(), max_streams=1)
    with pytest.raises(CodeError, match=match):
        engine.decoder.prepare(codes)


def test_bad_audio_and_unknown_slots_are_refused() -> None:
    engine = BatchedCodec(tiny_codec(), max_streams=1)
    with pytest.raises(ValueError, match="NaN"):
        engine.encoder.prepare(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="shaped"):
        engine.encoder.prepare(torch.zeros(2, 3))
    with pytest.raises(KeyError, match="not open"):
        engine.encoder.push(0, torch.zeros(3, dtype=torch.float64))
