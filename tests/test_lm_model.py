"""The S2S LM: streaming == teacher forcing, slot isolation, delays, prefill, seeds, bad input."""

from __future__ import annotations

import pytest
import torch

from maata.lm import (GREEDY, LM, CodeError, LMConfigError, LMInputError, NoFreeSlotError, ReferenceClipError,
                      SamplingParams, SlotError, UnknownEmotionError, UnknownVoiceError, delay_codes, load_preset,
                      preset_names, undelay_codes)
from maata.lm.sampling import SamplingBatch, SamplingError, counter_uniform, sample
from tests.support.models import tiny_lm

torch.set_num_threads(1)

K, CARD, VT, S = 8, 32, 40, 16  # codebooks, codebook size, text vocab, speaker dim (shrunk for speed)


def make_lm(delay: int = 1, text: bool = True, context: int = 8, seed: int = 0) -> LM:
    return tiny_lm(context, seed, delay=delay, text=text)


def history(B: int, T: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    user = torch.randint(0, CARD, (B, K, T), generator=g)
    agent = torch.randint(0, CARD, (B, K, T), generator=g)
    text = torch.randint(0, VT, (B, T), generator=g)
    voice = torch.randint(0, 4, (B, T), generator=g)
    emotion = torch.randint(0, 9, (B, T), generator=g)
    return user, agent, text, voice, emotion


ALL = lambda b: torch.ones(b, dtype=torch.bool)  # noqa: E731


def run(lm: LM, state, user, steps: int, active=None, sampling=None, voice=None, emotion=None, start: int = 0):
    """Step ``steps`` frames; returns the list of StepOutputs."""
    B = state.batch
    outs = []
    for s in range(start, start + steps):
        outs.append(lm.step(state, user[:, :, s], ALL(B) if active is None else active, sampling=sampling,
                            voice=None if voice is None else voice[:, s],
                            emotion=None if emotion is None else emotion[:, s], return_logits=True))
    return outs


# -- streaming == teacher forcing ----------------------------------------------------------------------
@pytest.mark.parametrize("delay", [0, 1])
def test_streaming_equals_forward_past_the_context(delay):
    """Step-by-step with forced tokens gives forward()'s logits, also after the ring KV cache
    wraps (T = 2.5 × context), with voice/emotion changing mid-call and a zero-shot voice."""
    lm = make_lm(delay=delay, context=8)
    B, T = 3, 20
    user, agent, text, voice, emotion = history(B, T)
    user[0, 3:, 5] = -1  # absent levels (the codec's DROPPED) are valid user input
    voice[2] = -1  # item 2 speaks with a zero-shot voice
    ref = torch.randint(0, CARD, (1, K, 10))
    speaker = lm.speaker_embedding(ref).expand(B, -1)
    with torch.no_grad():
        out = lm(user, agent, text, voice, emotion, speaker=speaker)
    steps = lm.delay(agent)
    state = lm.init_state(B)
    lm.reset(state, ALL(B), seed=7)
    worst = 0.0
    for s in range(T):
        o = lm.step(state, user[:, :, s], ALL(B), voice=voice[:, s], emotion=emotion[:, s], speaker=speaker,
                    force_agent_codes=steps[:, :, s], force_text=text[:, s], return_logits=True)
        worst = max(worst, (o.text_logits - out.text_logits[:, s]).abs().max().item())
        for k in range(K):
            f = s - lm.delays[k]
            if f >= 0:
                worst = max(worst, (o.audio_logits[:, k] - out.audio_logits[:, k, f]).abs().max().item())
        assert torch.equal(o.step_codes, steps[:, :, s])
        assert torch.equal(o.text_token, text[:, s])
        assert o.ready.tolist() == [s >= delay] * B
        if s >= delay:
            assert torch.equal(o.frame, torch.full((B,), s - delay))
            assert torch.equal(o.agent_codes, agent[:, :, s - delay])
        else:
            assert (o.agent_codes == -1).all()
    assert worst < 1e-4
    assert out.audio_mask[:, 0].all() and out.audio_mask[:, 1:, : T - delay].all()
    assert not out.audio_mask[:, 1:, T - delay:].any()


def test_streaming_equals_forward_without_text():
    lm = make_lm(delay=1, text=False, context=6)
    B, T = 2, 10
    user, agent, _, voice, emotion = history(B, T)
    with torch.no_grad():
        out = lm(user, agent, None, voice, emotion)
    assert out.text_logits is None
    steps = lm.delay(agent)
    state = lm.init_state(B)
    lm.reset(state, ALL(B), seed=0)
    for s in range(T):
        o = lm.step(state, user[:, :, s], ALL(B), voice=voice[:, s], emotion=emotion[:, s],
                    force_agent_codes=steps[:, :, s], return_logits=True)
        assert (o.text_token == -1).all() and o.text_logits is None
        for k in range(K):
            if s - lm.delays[k] >= 0:
                torch.testing.assert_close(o.audio_logits[:, k], out.audio_logits[:, k, s - lm.delays[k]],
                                           atol=1e-4, rtol=0)


def test_delay_helpers_round_trip():
    codes = torch.arange(2 * K * 5).view(2, K, 5)
    delays = (0,) + (2,) * (K - 1)
    d = delay_codes(codes, delays, fill=-7)
    assert torch.equal(d[:, 0], codes[:, 0])
    assert (d[:, 1:, :2] == -7).all() and torch.equal(d[:, 1:, 2:], codes[:, 1:, :3])
    u = undelay_codes(d, delays, fill=-9)
    assert torch.equal(u[:, :, :3], codes[:, :, :3])
    assert torch.equal(u[:, 0], codes[:, 0]) and (u[:, 1:, 3:] == -9).all()
    logits = torch.randn(2, K, 5, 3)  # time on dim 2, vocab after it
    assert torch.equal(undelay_codes(delay_codes(logits, delays, 0.0, time_dim=2), delays, 0.0, time_dim=2)[:, :, :3],
                       logits[:, :, :3])


# -- batching: isolation, join/leave, inactive slots ---------------------------------------------------
def _same(a, b, rows):
    for x, y in zip(a, b):
        assert torch.equal(x.step_codes[rows], y.step_codes[rows])
        assert torch.equal(x.text_token[rows], y.text_token[rows])
        assert torch.equal(x.agent_codes[rows], y.agent_codes[rows])
        torch.testing.assert_close(x.audio_logits[rows], y.audio_logits[rows], atol=1e-5, rtol=0)


def test_slot_isolation():
    """Changing everything about slot 1 (codes, voice, emotion, sampling, seed) leaves slots 0 and 2 as they were."""
    lm = make_lm()
    B, T = 3, 10
    user, _, _, voice, emotion = history(B, T)
    params = [SamplingParams(), SamplingParams(temperature=1.0, top_k=5), GREEDY]

    state = lm.init_state(B)
    lm.reset(state, ALL(B), seed=torch.tensor([1, 2, 3]))
    a = run(lm, state, user, T, sampling=params, voice=voice, emotion=emotion)

    user2, voice2, emotion2 = user.clone(), voice.clone(), emotion.clone()
    user2[1] = torch.randint(0, CARD, (K, T))
    voice2[1], emotion2[1] = 3 - voice2[1], (emotion2[1] + 4) % 9
    params2 = [params[0], SamplingParams(temperature=2.0, top_k=0, text_temperature=2.0), params[2]]
    state = lm.init_state(B)
    lm.reset(state, ALL(B), seed=torch.tensor([1, 99, 3]))
    b = run(lm, state, user2, T, sampling=params2, voice=voice2, emotion=emotion2)
    _same(a, b, torch.tensor([0, 2]))
    assert any(not torch.equal(x.step_codes[1], y.step_codes[1]) for x, y in zip(a, b))


def test_inactive_slot_keeps_its_state_and_does_not_disturb_others():
    lm = make_lm()
    B, T = 3, 8
    user, *_ = history(B, T)
    state = lm.init_state(B)
    lm.reset(state, ALL(B), seed=5)
    run(lm, state, user, 3)
    snapshot = [t.clone() for t in state.slot_tensors()]
    active = torch.tensor([True, False, True])
    garbage = user.clone()
    garbage[1] = 10**6  # an inactive slot's inputs are never looked at
    outs = run(lm, state, garbage, 4, active=active, start=3)
    for before, after in zip(snapshot, state.slot_tensors()):
        assert torch.equal(before[1], after[1])
    assert all(not o.ready[1] and o.step_codes[1].eq(-1).all() for o in outs)

    ref = lm.init_state(B)
    lm.reset(ref, ALL(B), seed=5)
    run(lm, ref, user, 3)
    ref_outs = run(lm, ref, user, 4, start=3)
    _same(outs, ref_outs, torch.tensor([0, 2]))


def test_join_and_leave_mid_stream():
    """Slot 1's call ends at step 4 and a new one joins: slots 0 and 2 are unaffected, and the
    new call behaves exactly like a call started in a fresh state."""
    lm = make_lm(context=6)
    B, T, J = 3, 12, 4
    user, *_ = history(B, T)
    state = lm.init_state(B)
    lm.reset(state, ALL(B), seed=11)
    first = run(lm, state, user, J)
    lm.reset(state, torch.tensor([False, True, False]), seed=77)
    second = run(lm, state, user, T - J, start=J)

    ref = lm.init_state(B)
    lm.reset(ref, ALL(B), seed=11)
    ref_outs = run(lm, ref, user, T)
    _same(first + second, ref_outs, torch.tensor([0, 2]))

    fresh = lm.init_state(B)
    lm.reset(fresh, ALL(B), seed=77)
    fresh_outs = run(lm, fresh, user[:, :, J:], T - J)
    _same(second, fresh_outs, torch.tensor([1]))
    assert second[0].ready[1] == (lm.max_delay == 0)  # the joined call starts over at frame 0


def test_seed_determinism_regardless_of_batch():
    lm = make_lm()
    T = 8
    user, *_ = history(4, T)
    p = SamplingParams(temperature=1.0, top_k=20, text_temperature=1.0, text_top_k=0)

    alone = lm.init_state(1)
    lm.reset(alone, ALL(1), seed=1234)
    a = run(lm, alone, user[2:3], T, sampling=p)

    crowd = lm.init_state(4)
    lm.reset(crowd, ALL(4), seed=torch.tensor([5, 6, 1234, 8]))
    params = [SamplingParams(temperature=0.5), GREEDY, p, SamplingParams(top_k=3)]
    b = run(lm, crowd, user, T, sampling=params)
    for x, y in zip(a, b):
        assert torch.equal(x.step_codes[0], y.step_codes[2])
        assert torch.equal(x.text_token[0], y.text_token[2])

    other = lm.init_state(1)
    lm.reset(other, ALL(1), seed=4321)
    c = run(lm, other, user[2:3], T, sampling=p)
    assert any(not torch.equal(x.step_codes, y.step_codes) for x, y in zip(a, c))


@pytest.mark.parametrize("delay", [0, 1])
def test_prefill_then_step_equals_stepping_through(delay):
    """A call rebuilt from its stored history (frame layout, as the service keeps it) continues
    exactly like the original, past the context too."""
    lm = make_lm(delay=delay, context=6)
    T, extra = 11, 5
    user, _, _, voice, emotion = history(1, T + extra)
    p = SamplingParams(temperature=1.0, top_k=10, text_temperature=1.0, text_top_k=5)
    state = lm.init_state(2)
    lm.reset(state, torch.tensor([True, False]), seed=99)
    active = torch.tensor([True, False])
    u2 = user.expand(2, -1, -1)
    v2, e2 = voice.expand(2, -1), emotion.expand(2, -1)
    past = run(lm, state, u2, T, active=active, sampling=p, voice=v2, emotion=e2)
    cont = run(lm, state, u2, extra, active=active, sampling=p, voice=v2, emotion=e2, start=T)

    agent_frames = lm.undelay(torch.stack([o.step_codes[0] for o in past], dim=1), fill=-1)
    text = torch.stack([o.text_token[0] for o in past])
    other = lm.init_state(3)
    lm.prefill(other, 2, user[0, :, :T], agent_frames, text, voice=voice[0, :T], emotion=emotion[0, :T], seed=99)
    assert bool(other.in_use[2]) and int(other.pos[2]) == T
    u3, v3, e3 = user.expand(3, -1, -1), voice.expand(3, -1), emotion.expand(3, -1)
    again = run(lm, other, u3, extra, active=torch.tensor([False, False, True]), sampling=p, voice=v3,
                emotion=e3, start=T)
    for x, y in zip(cont, again):
        assert torch.equal(x.step_codes[0], y.step_codes[2])
        assert torch.equal(x.text_token[0], y.text_token[2])
        assert torch.equal(x.agent_codes[0], y.agent_codes[2]) and torch.equal(x.frame[0], y.frame[2])
        torch.testing.assert_close(x.audio_logits[0], y.audio_logits[2], atol=1e-4, rtol=0)


def test_acquire_release_and_no_free_slot():
    lm = make_lm()
    state = lm.init_state(2)
    assert lm.acquire_slot(state, seed=1) == 0 and lm.acquire_slot(state) == 1
    with pytest.raises(NoFreeSlotError):
        lm.acquire_slot(state)
    lm.release_slot(state, 0)
    assert lm.acquire_slot(state) == 0


# -- training ------------------------------------------------------------------------------------------
def test_loss_weights_and_gradients():
    lm = make_lm().train()
    user, agent, text, voice, emotion = history(2, 6)
    text[0, :3] = lm.cfg.text.epad_id
    out = lm(user, agent, text, voice, emotion)
    loss = lm.loss(out, agent, text, frame_mask=torch.tensor([[True] * 6, [True] * 4 + [False] * 2]))
    assert loss.per_codebook.shape == (K,) and torch.isfinite(loss.total)
    w = lm.cfg.loss.first_codebook_weight
    expect = (w * loss.per_codebook[0] + loss.per_codebook[1:].sum()) / (w + K - 1)
    torch.testing.assert_close(loss.audio, expect)
    loss.total.backward()
    for name in ("agent_emb", "user_emb", "text_emb", "voice_emb", "emotion_emb", "temporal", "depth"):
        grads = [p.grad for p in getattr(lm, name).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name


# -- sampling ------------------------------------------------------------------------------------------
def test_sampling_rules():
    logits = torch.randn(5, 50)
    u = counter_uniform(torch.arange(5), torch.zeros(5, dtype=torch.long), 3)
    assert ((u >= 0) & (u < 1)).all()
    assert torch.equal(u, counter_uniform(torch.arange(5), torch.zeros(5, dtype=torch.long), [3])[:, 0])
    zero = torch.zeros(5)
    assert torch.equal(sample(logits, zero, torch.zeros(5, dtype=torch.long), u), logits.argmax(-1))
    one = torch.ones(5, dtype=torch.long)
    assert torch.equal(sample(logits, torch.ones(5), one, u), logits.argmax(-1))  # top-1 = greedy
    top3 = logits.topk(3, dim=-1).indices
    for c in range(200):
        uu = counter_uniform(torch.arange(5), torch.full((5,), c), 0)
        d = sample(logits, torch.full((5,), 2.0), torch.full((5,), 3), uu)
        assert (top3 == d[:, None]).any(-1).all()
    # the draws follow the distribution: a 2-token distribution, 4000 draws
    two = torch.tensor([[0.0, 1.0986123]]).expand(4000, -1)  # p = [0.25, 0.75]
    uu = counter_uniform(torch.zeros(4000, dtype=torch.long), torch.arange(4000), 1)
    frac = sample(two, torch.ones(4000), torch.zeros(4000, dtype=torch.long), uu).float().mean().item()
    assert abs(frac - 0.75) < 0.03
    with pytest.raises(SamplingError):
        SamplingParams(temperature=-1.0)
    with pytest.raises(SamplingError):
        SamplingBatch.from_params([GREEDY], 2)


# -- configs and bad input -----------------------------------------------------------------------------
def test_presets_and_config_validation(monkeypatch):
    assert {"tiny", "base"} <= set(preset_names())
    base = load_preset("base", env_prefix=None)
    assert base.temporal.dim == 1024 and base.text.vocab_size == 8000 and base.delays == (0,) + (1,) * 7
    monkeypatch.setenv("MAATA_LM__TEMPORAL__LAYERS", "3")
    monkeypatch.setenv("MAATA_LM__ACOUSTIC_DELAY", "0")
    cfg = load_preset("tiny")
    assert cfg.temporal.layers == 3 and cfg.acoustic_delay == 0 and cfg.delays == (0,) * 8
    with pytest.raises(LMConfigError):
        load_preset("nope")
    with pytest.raises(LMConfigError):
        load_preset("tiny", env_prefix=None, temporal={"dim": 250, "heads": 4})
    with pytest.raises(LMConfigError):
        load_preset("tiny", env_prefix=None, conditioning={"voices": ["a", "custom"]})
    from maata.text.tokenizer import EPAD_ID
    assert load_preset("tiny", env_prefix=None).text.epad_id == EPAD_ID


def test_bad_inputs_raise_clear_errors():
    lm = make_lm()
    B, T = 2, 5
    user, agent, text, voice, emotion = history(B, T)
    assert issubclass(CodeError, ValueError) and issubclass(SlotError, ValueError)
    with pytest.raises(CodeError, match="shaped"):
        lm(user[:, :4], agent, text)
    bad = agent.clone()
    bad[0, 0, 0] = CARD
    with pytest.raises(CodeError, match="must be in"):
        lm(user, bad, text)
    with pytest.raises(CodeError, match="integer"):
        lm(user.float(), agent, text)
    with pytest.raises(CodeError, match="text"):
        lm(user, agent, None)
    with pytest.raises(UnknownVoiceError, match="unknown voice 'robot'"):
        lm(user, agent, text, voice=["robot", "male_1"])
    with pytest.raises(UnknownEmotionError, match="ANGRY"):
        lm(user, agent, text, emotion="ANGRY")
    with pytest.raises(UnknownVoiceError, match="speaker embedding"):
        lm(user, agent, text, voice="custom")

    state = lm.init_state(B)
    lm.reset(state, ALL(B), seed=0)
    with pytest.raises(SlotError, match="max_batch"):
        lm.step(state, torch.zeros(B + 1, K, dtype=torch.long), ALL(B + 1))
    with pytest.raises(CodeError, match="shaped"):
        lm.step(state, torch.zeros(B, K - 1, dtype=torch.long), ALL(B))
    with pytest.raises(CodeError, match="must be in"):
        lm.step(state, torch.full((B, K), -2), ALL(B))
    with pytest.raises(SlotError, match="active_mask"):
        lm.step(state, torch.zeros(B, K, dtype=torch.long), torch.ones(B))
    with pytest.raises(UnknownVoiceError):
        lm.step(state, torch.zeros(B, K, dtype=torch.long), ALL(B), voice=["male_1", "male_9"])
    with pytest.raises(UnknownEmotionError):
        lm.step(state, torch.zeros(B, K, dtype=torch.long), ALL(B), emotion=torch.tensor([0, 9]))
    with pytest.raises(LMInputError, match="NaN"):
        lm.step(state, torch.zeros(B, K, dtype=torch.long), ALL(B), voice="custom",
                speaker=torch.full((B, S), float("nan")))
    with pytest.raises(SlotError):
        lm.prefill(state, 5, user[0], agent[0], text[0])
    assert int(state.pos.sum()) == 0  # nothing was stepped by the refused calls
    garbage = torch.full((B, K), 10**6)
    garbage[0] = 0
    o = lm.step(state, garbage, torch.tensor([True, False]), force_agent_codes=garbage, force_text=garbage[:, 0],
                speaker=torch.full((B, S), float("nan")))  # an inactive row may hold anything
    assert o.ready.tolist() == [False, False] and state.pos.tolist() == [1, 0]

    with pytest.raises(ReferenceClipError, match="empty"):
        lm.speaker_embedding(torch.zeros(K, 0, dtype=torch.long))
    with pytest.raises(ReferenceClipError, match="too short"):
        lm.speaker_embedding(torch.zeros(K, 3, dtype=torch.long))
    with pytest.raises(ReferenceClipError, match="NaN"):
        lm.speaker_embedding(torch.full((K, 30), float("nan")))
    with pytest.raises(ReferenceClipError, match="shaped"):
        lm.speaker_embedding(torch.zeros(K - 1, 30, dtype=torch.long))
    with pytest.raises(CodeError, match="must be in"):
        lm.speaker_embedding(torch.full((K, 30), CARD))
    v = lm.speaker_embedding(torch.randint(0, CARD, (2, K, 40)), lengths=[40, 20])  # cropped to max_frames
    assert v.shape == (2, S) and torch.isfinite(v).all()
