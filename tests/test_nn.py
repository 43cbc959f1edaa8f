"""maata.nn: the shared streaming transformer and RoPE.

Streaming equals offline exactly (float64, random chunks, past the ring's capacity), slots are
isolated and reset independently, inactive slots keep their state, prefill equals stepping,
and the RoPE conversion from interleaved pairs keeps attention scores.
"""

from __future__ import annotations

import math

import pytest
import torch

from maata.nn import (StreamingTransformer, apply_rope, interleaved_to_half_split, reset_state, rope_tables,
                      swiglu_hidden)

torch.set_num_threads(1)

VARIANTS = {  # the LM's temporal stack, the codec's bottleneck, the LM's depth stack (no positions)
    "rms-swiglu-rope": dict(norm="rms", ffn="swiglu"),
    "layer-gelu-scale-rope": dict(norm="layer", ffn="gelu", layer_scale=0.5),
    "no-positions": dict(rope_base=None),
}


def make(variant: str = "rms-swiglu-rope", dim: int = 16, layers: int = 2, heads: int = 2, context: int = 5,
         seed: int = 0) -> StreamingTransformer:
    torch.manual_seed(seed)
    return StreamingTransformer(dim, layers, heads, context, swiglu_hidden(dim), **VARIANTS[variant]).double().eval()


def chunks(total: int, g: torch.Generator, hi: int = 7) -> list[tuple[int, int]]:
    out, a = [], 0
    while a < total:
        b = min(total, a + int(torch.randint(1, hi, (1,), generator=g)))
        out.append((a, b))
        a = b
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_equals_offline_in_float64_with_random_chunks(variant, seed):
    """T = 4.6 × context: the ring wraps several times; the offline pass runs in blocks."""
    tr = make(variant, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 23, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ref = tr(x)
        state = tr.init_state(3, dtype=torch.float64)
        got = torch.cat([tr.step(state, x[:, a:b]) for a, b in chunks(x.shape[1], g)], dim=1)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    assert state.pos.tolist() == [23, 23, 23]


def test_offline_blocks_equal_one_dense_window_mask():
    """The blocked sliding-window pass equals attention with one dense [T, T] window mask."""
    tr = make(context=4)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    i = torch.arange(11)
    mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < 4)
    rope = rope_tables(i[None], tr.head_dim, x.dtype)
    with torch.no_grad():
        h = x
        for layer in tr.layers:
            h = layer(h, mask, rope)
        torch.testing.assert_close(tr(x), h, atol=1e-12, rtol=0)


def test_ring_holds_the_last_context_keys_at_their_positions():
    """After T frames, entry p mod C holds frame p's key (rotated at p) for the last C frames."""
    tr = make(context=5)
    x = torch.randn(2, 17, 16, dtype=torch.float64)
    with torch.no_grad():
        state = tr.init_state(2, dtype=torch.float64)
        tr.step(state, x)
        _, kept = tr._run(x, keep=5)
    for (k, v), kc, vc in zip(kept, state.keys, state.values):
        at = torch.arange(12, 17) % 5
        torch.testing.assert_close(kc[:, :, at], k, atol=1e-12, rtol=0)
        torch.testing.assert_close(vc[:, :, at], v, atol=1e-12, rtol=0)


def test_slot_reset_isolates_a_new_stream():
    """Slot 1 is reset mid-stream and takes a new one: it equals that stream alone; the
    neighbours' outputs are those of their own uninterrupted streams."""
    tr = make(context=4)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 14, 16, generator=g, dtype=torch.float64)
    new = torch.randn(1, 8, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ref, ref_new = tr(x), tr(new)
        state = tr.init_state(3, dtype=torch.float64)
        first = tr.step(state, x[:, :6])
        tr.reset(state, torch.tensor([False, True, False]))
        feed = x[:, 6:].clone()
        feed[1] = new[0]
        second = tr.step(state, feed)
    torch.testing.assert_close(torch.cat([first, second], 1)[[0, 2]], ref[[0, 2]], atol=1e-12, rtol=0)
    torch.testing.assert_close(second[1:2], ref_new, atol=1e-12, rtol=0)
    assert state.pos.tolist() == [14, 8, 14]


def test_inactive_slots_keep_their_state_exactly():
    tr = make(context=3)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        ref = tr(x[:1])
        state = tr.init_state(2, dtype=torch.float64)
        tr.step(state, x[:, :2])
        frozen = [t[1].clone() for t in (*state.keys, *state.values, state.pos)]
        outs = [tr.step(state, x[:, t:t + 1], active=torch.tensor([True, False])) for t in range(2, 9)]
    for before, after in zip(frozen, (*state.keys, *state.values, state.pos)):
        assert torch.equal(before, after[1])
    torch.testing.assert_close(torch.cat(outs, 1)[:1], ref[:, 2:], atol=1e-12, rtol=0)
    assert state.pos.tolist() == [9, 2]


@pytest.mark.parametrize("T", [3, 5, 12])
def test_prefill_equals_stepping_through(T):
    """Before, at and past the ring's capacity (5); the next frames continue identically."""
    tr = make(context=5)
    x = torch.randn(1, T + 4, 16, dtype=torch.float64)
    with torch.no_grad():
        stepped = tr.init_state(2, dtype=torch.float64)
        tr.step(stepped, x.expand(2, -1, -1)[:, :T])
        filled = tr.init_state(2, dtype=torch.float64)
        tr.step(filled, torch.randn(2, 7, 16, dtype=torch.float64))  # old history in the slot: forgotten
        y = tr.prefill(filled, 1, x[:, :T])
        torch.testing.assert_close(y, tr(x[:, :T]), atol=1e-12, rtol=0)
        for a, b in zip((*stepped.keys, *stepped.values, stepped.pos), (*filled.keys, *filled.values, filled.pos)):
            torch.testing.assert_close(b[1], a[1], atol=1e-12, rtol=0)
        after = tr.step(filled, x.expand(2, -1, -1)[:, T:])[1]
    torch.testing.assert_close(after, tr(x)[0, T:], atol=1e-12, rtol=0)


@pytest.mark.parametrize("variant", ["rms-swiglu-rope", "no-positions"])
def test_aligned_steps_equal_indexed_steps(variant):
    """``step(at=...)`` (every slot at one known position, no wrap: slices instead of scatter and
    masks) gives what the general step gives, and refuses what it cannot do."""
    tr = make(variant, context=6)
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    with torch.no_grad():
        general, aligned = tr.init_state(3, dtype=torch.float64), tr.init_state(3, dtype=torch.float64)
        want = tr.step(general, x)
        got = torch.cat([tr.step(aligned, x[:, :2], at=0), tr.step(aligned, x[:, 2:], at=2)], dim=1)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert aligned.pos.tolist() == [6, 6, 6]
    with pytest.raises(ValueError, match="wrapping"):
        tr.step(aligned, x[:, :2], at=5)
    with pytest.raises(ValueError, match="active"):
        tr.step(tr.init_state(3, dtype=torch.float64), x[:, :1], torch.tensor([True, False, True]), at=0)


def test_float32_streaming_is_close_to_offline():
    tr = make(context=6).float()
    x = torch.randn(2, 20, 16)
    with torch.no_grad():
        state = tr.init_state(2)
        got = torch.cat([tr.step(state, x[:, t:t + 3]) for t in range(0, 20, 3)], dim=1)
        torch.testing.assert_close(got, tr(x), atol=1e-5, rtol=1e-5)


def test_rope_angles_are_exact_far_into_a_call():
    """Positions of a call hours long: angles computed in float64, only the result is float32."""
    pos = torch.tensor([[3_600_000]])  # 40 h at 25 Hz
    cos, sin = rope_tables(pos, 8, torch.float32)
    inv = [10000.0 ** (-2 * i / 8) for i in range(4)]
    want = torch.tensor([math.cos(3_600_000 * f) for f in inv], dtype=torch.float32)
    torch.testing.assert_close(cos[0, 0, 0], want, atol=1e-6, rtol=0)
    torch.testing.assert_close(cos.square() + sin.square(), torch.ones_like(cos))


def _interleaved_rope(x, pos, base=10000.0):
    """The pairing (2i, 2i + 1), written out as a reference."""
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos[:, None].double() * inv
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * ang.cos() - x2 * ang.sin(), x1 * ang.sin() + x2 * ang.cos()], dim=-1).flatten(-2)


def test_interleaved_weights_converted_keep_attention_scores():
    heads, hd, dim, T = 3, 8, 12, 6
    g = torch.Generator().manual_seed(0)
    wq, wk = (torch.randn(heads * hd, dim, generator=g, dtype=torch.float64) for _ in range(2))
    x = torch.randn(T, dim, generator=g, dtype=torch.float64)
    pos = torch.arange(100, 100 + T)

    def scores(q, k):
        return torch.einsum("hqd,hkd->hqk", q, k)

    split = lambda y: y.view(T, heads, hd).transpose(0, 1)  # noqa: E731
    old = scores(_interleaved_rope(split(x @ wq.T), pos), _interleaved_rope(split(x @ wk.T), pos))
    rope = rope_tables(pos[None], hd, torch.float64)
    q = apply_rope(split(x @ interleaved_to_half_split(wq, hd).T)[None], rope)[0]
    k = apply_rope(split(x @ interleaved_to_half_split(wk, hd).T)[None], rope)[0]
    torch.testing.assert_close(scores(q, k), old, atol=1e-10, rtol=0)
    unconverted = scores(apply_rope(split(x @ wq.T)[None], rope)[0], apply_rope(split(x @ wk.T)[None], rope)[0])
    assert not torch.allclose(unconverted, old)  # without the conversion the scores differ


def test_reset_state_zeroes_only_masked_rows():
    s = [torch.ones(3, 2), (torch.ones(3, 4), torch.ones(3, dtype=torch.long))]
    reset_state(s, torch.tensor([False, True, False]))
    assert s[0][1].sum() == 0 and s[0][0].sum() == 2 and s[1][1][1] == 0 and s[1][1][0] == 1


def test_bad_configurations_and_inputs_are_refused():
    with pytest.raises(ValueError, match="context"):
        StreamingTransformer(16, 1, 2, 0, 32)
    with pytest.raises(ValueError, match="even head dimension"):
        StreamingTransformer(12, 1, 4, 4, 32)  # head dim 3
    StreamingTransformer(12, 1, 4, 4, 32, rope_base=None)  # fine without RoPE
    with pytest.raises(ValueError, match="norm"):
        StreamingTransformer(16, 1, 2, 4, 32, norm="batch")
    tr = make()
    with pytest.raises(ValueError, match="one stream"):
        tr.prefill(tr.init_state(2, dtype=torch.float64), 0, torch.randn(2, 3, 16, dtype=torch.float64))


# -- mel ----------------------------------------------------------------------------------------------
def test_mel_filters_have_unit_area_and_rising_centres():
    from maata.nn.mel import hz_to_mel, mel_filterbank

    fb = mel_filterbank(16000, 2048, 40, dtype=torch.float64)
    df = 16000 / 2048
    assert fb.shape == (40, 1025)
    wide = (fb > 0).sum(1) >= 8  # filters several bins wide integrate to 1 (Hz units)
    torch.testing.assert_close((fb.sum(1) * df)[wide], torch.ones(int(wide.sum()), dtype=torch.float64),
                               atol=0.03, rtol=0)
    assert bool((fb.argmax(1).diff() >= 0).all()) and int(fb.argmax(1)[-1]) > int(fb.argmax(1)[0])
    centre = 700 * (10 ** (hz_to_mel(8000) * 20 / 41 / 2595) - 1)  # the 20th filter's centre in Hz
    assert abs(int(fb[19].argmax()) * df - centre) <= df
    assert torch.equal(mel_filterbank(16000, 512, 20), mel_filterbank(16000, 512, 20))
    with pytest.raises(ValueError, match="f_min"):
        mel_filterbank(16000, 512, 20, f_min=9000)


def test_mel_spectrogram_puts_a_tone_in_its_band():
    from maata.nn.mel import MelSpectrogram, mel_filterbank

    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * torch.pi * 1000 * t)[None]
    mel = MelSpectrogram(16000, 1024, 64, power=2)(tone)  # [1, 64, frames]
    band = int(mel[0].mean(1).argmax())
    assert band == int(mel_filterbank(16000, 1024, 64)[:, round(1000 * 1024 / 16000)].argmax())
    torch.testing.assert_close(MelSpectrogram(16000, 1024, 64, power=2)(2 * tone), 4 * mel)  # power: quadratic
    magnitude = MelSpectrogram(16000, 1024, 64, power=1)
    torch.testing.assert_close(magnitude(2 * tone), 2 * magnitude(tone))  # magnitude: linear
