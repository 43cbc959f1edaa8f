"""Chunked streaming through the codec equals the offline codec, layer by layer and end to end."""

import pytest
import torch

from maata.codec import DROPPED, Codec, CodeError, load_preset
from maata.codec.layers import BottleneckTransformer, CausalConv1d, CausalConvTranspose1d
from tests.support.models import TINY_CODEC, TINY_FRAME

torch.set_num_threads(1)


ARCHS = ["stft", "seanet"]  # codec v2 (frame-rate, the default preset) and v1 (SEANet)


def small_codec(seed=0, arch="stft", **over):
    torch.manual_seed(seed)
    if arch == "stft":
        # the tiny frame-rate codec, two layers deep where a layer's state carries across chunks,
        # under the preset's own bottleneck transformer
        frame = {**TINY_FRAME, "enc_layers": 2, "fine_layers": 2}
        over = {"latent_dim": 16, "frame": frame, "quantizer": TINY_CODEC["quantizer"], **over}
        preset = "default"
    else:
        over = {**TINY_CODEC, **over}
        preset = "seanet"
    codec = Codec(load_preset(preset, env_prefix=None, **over))
    # a training pass initialises the EMA codebooks from data, as in real use
    codec.train()
    codec(torch.randn(2, 1, 640 * 12) * 0.3)
    return codec.eval()


def random_chunks(total, rng, lo=1, hi=1500):
    cuts, pos = [], 0
    while pos < total:
        n = int(torch.randint(lo, hi, (1,), generator=rng))
        cuts.append((pos, min(total, pos + n)))
        pos += n
    return cuts


@pytest.mark.parametrize("kernel,stride,dilation", [(7, 1, 1), (3, 1, 3), (8, 4, 1), (16, 8, 1)])
def test_conv_streams_like_offline(kernel, stride, dilation):
    torch.manual_seed(0)
    conv = CausalConv1d(3, 5, kernel, stride=stride, dilation=dilation)
    x = torch.randn(2, 3, stride * 30)
    ref = conv(x)
    state, outs = conv.init_state(2), []
    for a, b in [(0, stride), (stride, stride * 11), (stride * 11, stride * 12), (stride * 12, stride * 30)]:
        y, state = conv.step(state, x[..., a:b])
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, -1), ref, atol=1e-5, rtol=0)


def test_conv_transpose_matches_torch_and_streams():
    torch.manual_seed(0)
    m = CausalConvTranspose1d(6, 3, 10, 5)
    x = torch.randn(2, 6, 9)
    ref = torch.nn.functional.conv_transpose1d(x, m.conv.weight, m.conv.bias, stride=5)[..., :-5]
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=0)
    state, outs = m.init_state(2), []
    for a, b in [(0, 1), (1, 5), (5, 9)]:
        y, state = m.step(state, x[..., a:b])
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, -1), ref, atol=1e-5, rtol=0)


def test_bottleneck_transformer_streams_past_the_window():
    """Channels-first latents [B, D, T] through the shared streaming transformer, past its window."""
    torch.manual_seed(0)
    tr = BottleneckTransformer(16, 2, 2, window=4, ff_mult=2)
    x = torch.randn(2, 16, 13)
    ref = tr(x)
    state, outs = tr.init_state(2), []
    for a, b in [(0, 3), (3, 4), (4, 13)]:
        outs.append(tr.step(state, x[..., a:b]))
    torch.testing.assert_close(torch.cat(outs, -1), ref, atol=1e-5, rtol=0)


def stream(codec, wav, rng):
    """Encode then decode ``wav`` [B, 1, T] chunk by chunk, chunk sizes drawn from ``rng``."""
    state = codec.init_state(wav.shape[0])
    codes, audio = [], []
    for a, b in random_chunks(wav.shape[-1], rng):
        c = codec.encode_step(state, wav[:, 0, a:b])
        codes.append(c)
        audio.append(codec.decode_step(state, c))
    return torch.cat(codes, -1), torch.cat(audio, -1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_codec_streaming_random_chunks_is_exact_in_float64(seed, arch):
    """In float64 rounding cannot flip a nearest-code choice: codes and audio match exactly."""
    codec = small_codec(seed, arch).double()
    g = torch.Generator().manual_seed(seed)
    wav = torch.randn(2, 1, codec.hop * 17, generator=g, dtype=torch.float64) * 0.3
    ref_codes = codec.encode(wav)
    codes, audio = stream(codec, wav, g)
    assert torch.equal(codes, ref_codes)
    assert (audio - codec.decode(ref_codes)[:, 0]).abs().max() <= 1e-9


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_codec_streaming_random_chunks_matches_offline_in_float32(seed, arch):
    """float32, the serving precision: streamed latents and waveform within 1e-4 of offline.

    Chunked and whole-sequence convolutions round differently (~1e-7), which can flip a code
    only where two codebook entries are equally near; any code that differs must be such a tie.
    """
    codec = small_codec(seed, arch)
    g = torch.Generator().manual_seed(seed)
    wav = torch.randn(2, 1, codec.hop * 17, generator=g) * 0.3
    ref_codes = codec.encode(wav)
    codes, _ = stream(codec, wav, g)
    differ = (codes != ref_codes).nonzero().tolist()
    assert len(differ) <= 1
    for b, level, t in differ:
        assert _is_tie(codec, wav[b:b + 1], ref_codes[b:b + 1], level, t)
    # the waveform path: streaming decode of the offline codes equals offline decode
    state, audio = codec.init_state(2), []
    for a, b in [(0, 1), (1, 2), (2, 9), (9, 17)]:
        audio.append(codec.decode_step(state, ref_codes[..., a:b]))
    assert (torch.cat(audio, -1) - codec.decode(ref_codes)[:, 0]).abs().max() <= 1e-4


@torch.no_grad()
def _is_tie(codec, wav, codes, level, t, tol=1e-4):
    """Whether, at (level, frame t), the best and second-best codes are within ``tol``."""
    z = codec.latents(wav)
    residual = z - codec.quantizer.decode(codes[:, :level]) if level > 0 else z  # the first level reads z itself
    vq = codec.quantizer.levels[level]
    proj = vq._project(residual)[0, t]
    sims = (vq._codebook() @ proj).sort(descending=True).values
    return float(sims[0] - sims[1]) < tol


def test_default_preset_streams_exactly():
    torch.manual_seed(0)
    codec = Codec(load_preset("default", env_prefix=None))
    codec.train()
    codec(torch.randn(2, 1, 640 * 8) * 0.3)
    codec.eval()
    wav = torch.randn(1, 1, 640 * 12) * 0.3
    ref_codes = codec.encode(wav)
    ref = codec.decode(ref_codes)[:, 0]
    state, out = codec.init_state(1), []
    for a in range(0, wav.shape[-1], 640):  # the services' 40 ms frames
        out.append(codec.decode_step(state, codec.encode_step(state, wav[:, 0, a:a + 640])))
    assert (torch.cat(out, -1) - ref).abs().max() <= 1e-4


def test_slot_reset_gives_new_call_a_fresh_stream():
    codec = small_codec()
    hop = codec.hop
    wav = torch.randn(2, hop * 6) * 0.3
    state = codec.init_state(2)
    codec.decode_step(state, codec.encode_step(state, wav[:, : hop * 3]))
    codec.reset(state, torch.tensor([False, True]))
    # slot 1 now starts over: its codes must equal a fresh stream's; slot 0 continues
    new_call = torch.randn(1, hop * 3) * 0.3
    codes = codec.encode_step(state, torch.cat([wav[:1, hop * 3:], new_call]))
    fresh = codec.init_state(1)
    assert torch.equal(codes[1:], codec.encode_step(fresh, new_call))
    cont = codec.init_state(1)
    assert torch.equal(codes[:1], codec.encode_step(cont, wav[:1])[..., 3:])


def test_reset_refuses_mid_frame():
    codec = small_codec()
    state = codec.init_state(2)
    codec.encode_step(state, torch.zeros(2, 10))
    with pytest.raises(ValueError, match="frame boundary"):
        codec.reset(state, torch.tensor([True, False]))


def test_any_first_k_codebooks_decode():
    codec = small_codec()
    wav = torch.randn(1, 1, codec.hop * 4) * 0.3
    codes = codec.encode(wav)
    for k in range(1, codec.n_q + 1):
        assert codec.decode(codes[:, :k]).shape == (1, 1, codec.hop * 4)


def test_adaptive_bitrate_drops_levels_in_silence():
    codec = small_codec()
    hop = codec.hop
    wav = torch.cat([torch.randn(1, 1, hop * 4) * 0.3, torch.zeros(1, 1, hop * 4)], -1)
    codes = codec.encode(wav, adaptive=True)
    k = codec.cfg.silence_n_q
    assert (codes[:, k:, 4:] == DROPPED).all() and (codes[:, :, :4] >= 0).all()
    assert codec.bits(codes) < codec.bits(codec.encode(wav))
    assert codec.decode(codes).shape[-1] == hop * 8


def test_algorithmic_latency_is_one_frame_plus_overlap_add():
    cfg = load_preset("default", env_prefix=None)
    # v2: the 40 ms frame + the inverse STFT's window - hop (10 ms); v1 emits at once
    assert cfg.latency_ms == 50.0 and cfg.bitrate == 2000.0 and cfg.delay == 160
    assert load_preset("seanet", env_prefix=None).latency_ms == 40.0
    codec = small_codec()
    state = codec.init_state(1)
    # the codes of a frame come out as soon as its last sample is in, not later
    assert codec.encode_step(state, torch.zeros(1, codec.hop - 1)).shape[-1] == 0
    assert codec.encode_step(state, torch.zeros(1, 1)).shape[-1] == 1


@pytest.mark.parametrize("bad,match", [
    (torch.full((1, 1, 640), float("nan")), "NaN"),
    (torch.zeros(1, 2, 640), "mono"),
    (torch.zeros(1, 640, dtype=torch.int16), "shaped"),
    (torch.zeros(1, 1, 640, dtype=torch.int16), "float"),
])
def test_bad_audio_is_rejected(bad, match):
    codec = small_codec()
    with pytest.raises(ValueError, match=match):
        codec.encode(bad)


@pytest.mark.parametrize("codes,match", [
    (torch.full((1, 4, 3), 64), "code values"),
    (torch.full((1, 4, 3), -2), "code values"),
    (torch.zeros(1, 5, 3, dtype=torch.long), "codebooks"),
    (torch.zeros(4, 3, dtype=torch.long), "shaped"),
    (torch.zeros(1, 4, 3), "integers"),
])
def test_bad_codes_are_rejected(codes, match):
    codec = small_codec()
    with pytest.raises(CodeError, match=match):
        codec.decode(codes)
    state = codec.init_state(codes.shape[0] if codes.dim() == 3 else 1)
    with pytest.raises(CodeError):
        codec.decode_step(state, codes)


def test_streaming_batch_mismatch_is_rejected():
    codec = small_codec()
    state = codec.init_state(2)
    with pytest.raises(ValueError, match="batch"):
        codec.encode_step(state, torch.zeros(3, 640))


def _reference_rvq(rvq, x):
    """The training-time formulas level by level (project, normalise, nearest, project out)."""
    residual, codes, out = x, [], torch.zeros_like(x)
    for vq in rvq.levels:
        c = vq._nearest(vq._project(residual))
        q = vq.proj_out(torch.nn.functional.embedding(c, vq._codebook())).transpose(1, 2)
        residual, out = residual - q, out + q
        codes.append(c)
    return torch.stack(codes, 1), out


@pytest.mark.parametrize("l2norm", [True, False])
def test_inference_lookup_quantizer_equals_the_training_formulas(l2norm):
    """Inference encodes with one affine map per level and decodes by one table gather; in float64
    the codes and vectors equal the projected, normalised nearest-neighbour search exactly."""
    codec = small_codec(0, quantizer={**TINY_CODEC["quantizer"], "l2norm": l2norm}).double()
    x = torch.randn(3, codec.cfg.latent_dim, 9, dtype=torch.float64)
    ref_codes, ref_out = _reference_rvq(codec.quantizer, x)
    codes = codec.quantizer.encode(x)
    assert torch.equal(codes, ref_codes)
    with torch.no_grad():
        torch.testing.assert_close(codec.quantizer.decode(codes), ref_out, atol=1e-12, rtol=0)


def test_inference_tables_follow_the_weights():
    """The cached lookup tables are rebuilt when training or a weight load changes the codebooks."""
    codec = small_codec(1)
    x = torch.randn(2, codec.cfg.latent_dim, 7)
    before = codec.quantizer.encode(x)
    codec.train()
    codec(torch.randn(2, 1, 640 * 12) * 0.3)  # EMA updates every codebook in place
    codec.eval()
    assert torch.equal(codec.quantizer.encode(x), _reference_rvq(codec.quantizer, x)[0])
    fresh = small_codec(2)
    fresh.load_state_dict(codec.state_dict())
    assert torch.equal(fresh.quantizer.encode(x), codec.quantizer.encode(x))
    with torch.no_grad():
        codec.quantizer.levels[0].proj_out.weight.mul_(2)  # the decode table must follow
        torch.testing.assert_close(codec.quantizer.decode(before), _reference_rvq_decode(codec.quantizer, before))


def _reference_rvq_decode(rvq, codes):
    return sum(vq.proj_out(torch.nn.functional.embedding(codes[:, i], vq._codebook())).transpose(1, 2)
               for i, vq in enumerate(rvq.levels))


def test_compiled_streaming_equals_eager():
    """``compile_streaming`` (torch.compile of the two streaming cores) changes speed, not output
    (float64, so that a reordered sum cannot flip a nearest-code choice)."""
    eager, compiled = small_codec(3).double(), small_codec(3).double().compile_streaming()
    g = torch.Generator().manual_seed(3)
    wav = torch.randn(2, 1, eager.hop * 6, generator=g, dtype=torch.float64) * 0.3
    states = eager.init_state(2), compiled.init_state(2)
    for t in range(6):  # whole frames: one shape, one compile
        pcm = wav[:, 0, t * eager.hop:(t + 1) * eager.hop]
        codes = [m.encode_step(s, pcm) for m, s in zip((eager, compiled), states)]
        assert torch.equal(codes[0], codes[1])
        audio = [m.decode_step(s, codes[0]) for m, s in zip((eager, compiled), states)]
        torch.testing.assert_close(audio[1], audio[0], atol=1e-9, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_is_streaming_output_and_aligned_matches_training_forward(arch):
    """Offline ``decode`` returns what streaming emits (``delay`` samples late for v2);
    ``aligned`` moves it back onto the input's time axis, where ``forward`` (training) is."""
    codec = small_codec(4, arch).double()
    wav = torch.randn(1, 1, codec.hop * 6, dtype=torch.float64) * 0.3
    codes = codec.encode(wav)
    decoded = codec.decode(codes)
    with torch.no_grad():
        trained = codec._decode_latents(codec.quantizer.decode(codes), aligned=True)
    n = wav.shape[-1] - codec.delay
    torch.testing.assert_close(codec.aligned(decoded)[..., : n - codec.delay] if codec.delay else decoded,
                               trained[..., : n - codec.delay] if codec.delay else trained, atol=1e-12, rtol=0)
    assert codec.aligned(decoded, length=wav.shape[-1]).shape[-1] == wav.shape[-1]


def test_stft_decoder_overlap_add_inverts_a_known_spectrum():
    """The decoder's fixed inverse DFT + Hann overlap-add is a true inverse: frames made from
    the analysis of a signal (windowed DFT at 50 % overlap) add back to that signal."""
    from maata.codec.frame import _dft_basis, periodic_hann

    n, h = 320, 160
    x = torch.randn(1, h * 20, dtype=torch.float64)
    padded = torch.nn.functional.pad(x, (h, h))
    frames = padded.unfold(-1, n, h)  # hop j covers [(j - 1) h, (j + 1) h)
    cos, sin = _dft_basis(n)
    re, im = frames @ cos, frames @ sin  # un-windowed analysis
    codec = small_codec(0).double()
    dec = codec.decoder
    synth = torch.cat([re, im], -1) @ dec.synth  # inverse DFT x Hann window
    y, _ = dec._overlap_add(synth, torch.zeros(1, h, dtype=torch.float64))
    # Hann windows at 50 % overlap sum to one: block j + 1 is exactly input block j
    # (the bases are stored in float32: 1e-6, against O(1) if the windows did not sum to one)
    torch.testing.assert_close(y[:, h: h + x.shape[-1]], x, atol=1e-6, rtol=0)


def test_silence_codes_are_the_codes_of_a_silent_stream():
    codec = small_codec(5)
    sil = codec.silence_codes()
    assert sil.shape == (codec.n_q,) and sil.dtype == torch.long
    state = codec.init_state(1)
    codes = codec.encode_step(state, torch.zeros(1, codec.hop * 30))
    assert torch.equal(codes[0, :, -1], sil)
