"""The generation engine without gRPC (tiny untrained LM): one batched step per tick, slot
isolation, silence for late frames, bounded queues, idle detection, style changes, history
records and resume by prefill, the codec's silence codes, and the asyncio frame clock."""

from __future__ import annotations

import asyncio

import pytest
import torch

from maata.lm import LM, CodeError, SamplingParams, UnknownEmotionError, UnknownVoiceError
from services.common.metrics import ServiceMetrics
from services.common.phase import PhaseAligner
from services.generation.engine import (CallSpec, EngineFull, FrameClock, GenerationEngine, GenerationMetrics,
                                        HistoryError, history_from_frames)
from tests.support.clock import VirtualTime
from tests.support.models import TINY_FRAME
from tests.support.models import tiny_lm as make_lm

torch.set_num_threads(1)

K, CARD, VT = 8, 32, 40
SAMPLING = SamplingParams(temperature=1.0, top_k=10, text_temperature=1.0, text_top_k=5)


@pytest.fixture(scope="module")
def lm(tiny_lm: LM) -> LM:
    return tiny_lm


def user_frames(T: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, CARD, (T, K), generator=g).tolist()


def spec(call_id: str, seed: int = 7, **kw) -> CallSpec:
    return CallSpec(call_id, seed, kw.pop("sampling", SAMPLING), **kw)


def run_alone(lm: LM, s: CallSpec, frames: list[list[int]], max_calls: int = 1):
    engine = GenerationEngine(lm, max_calls)
    call = engine.join(s)
    outs = []
    for t, codes in enumerate(frames):
        engine.push(call, codes, t)
        (out,) = engine.tick().outputs
        outs.append(out)
    return outs, call


def same(a, b) -> bool:
    return (a.agent_codes, a.text_token, a.frame) == (b.agent_codes, b.text_token, b.frame)


def test_one_batched_step_per_tick_for_three_calls(lm: LM, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = GenerationEngine(lm, 4)
    batches = []
    real_step = lm.step

    def spy(state, user, active, **kw):
        batches.append(int(active.sum()))
        return real_step(state, user, active, **kw)

    monkeypatch.setattr(lm, "step", spy)
    calls = [engine.join(spec(f"c{i}", seed=i)) for i in range(3)]
    frames = {c.call_id: user_frames(10, seed=i) for i, c in enumerate(calls)}
    for t in range(10):
        for c in calls:
            engine.push(c, frames[c.call_id][t], seq=100 + t)
        tick = engine.tick()
        assert tick.batch == 3 and len(tick.outputs) == 3
        assert [o.seq for o in tick.outputs] == [100 + t] * 3 and not any(o.filled for o in tick.outputs)
    assert batches == [3] * 10  # ten ticks, ten model steps, three frames each
    assert (engine.steps, engine.frames_stepped, engine.missed) == (10, 30, 0)
    assert [c.frames for c in calls] == [10, 10, 10] and all(len(c.history) == 10 for c in calls)


def test_slot_isolation_and_prefix_batch(lm: LM, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call's output with a fixed seed is the same alone or in a crowd, in any slot; the step
    covers the state's rows up to the highest live slot, not max_calls."""
    frames = user_frames(12)
    alone, _ = run_alone(lm, spec("x"), frames)

    engine = GenerationEngine(lm, 8)
    rows = []
    real_step = lm.step
    monkeypatch.setattr(lm, "step", lambda state, user, active, **kw: rows.append(user.shape[0])
                        or real_step(state, user, active, **kw))
    others = [engine.join(spec(f"o{i}", seed=100 + i, sampling=SamplingParams(temperature=0.5), voice="female_2",
                                emotion="HAPPY")) for i in range(3)]
    x = None
    crowd = []
    for t in range(12):
        if t == 2:
            engine.leave(others[1])  # slot 1 frees up: x takes it
            x = engine.join(spec("x"))
            assert x.slot == 1
        for i, o in enumerate(others):
            if o.call_id in engine.calls:
                engine.push(o, user_frames(1, seed=t * 10 + i)[0])
        if x is not None:
            engine.push(x, frames[t - 2], t - 2)
        tick = engine.tick()
        crowd += [o for o in tick.outputs if o.call is x]
    assert all(same(a, b) for a, b in zip(alone, crowd, strict=False)) and len(crowd) == 10
    assert rows[:2] == [3, 3] and rows[2:] == [3] * 10  # slots 0..2 live: 3 rows, not 8
    engine.leave(others[2])
    engine.push(x, frames[0])
    engine.tick()
    assert rows[-1] == 2  # highest live slot is 1


def test_admission_and_release(lm: LM) -> None:
    engine = GenerationEngine(lm, 2)
    a, _ = engine.join(spec("a")), engine.join(spec("b"))
    with pytest.raises(EngineFull, match="all 2 generation slots"):
        engine.join(spec("c"))
    with pytest.raises(ValueError, match="already"):
        engine.leave(a) or engine.join(spec("b"))
    assert engine.join(spec("c")).slot == a.slot and engine.free_slots == 0


def test_lagging_call_is_filled_with_silence(lm: LM) -> None:
    silence = [3, 1, 4, 1, 5, 9, 2, 6]
    metrics = GenerationMetrics(ServiceMetrics("generation"))
    engine = GenerationEngine(lm, 2, silence_codes=silence, metrics=metrics)
    a, b = engine.join(spec("a")), engine.join(spec("b"))
    frames = user_frames(4)
    filled = []
    for t in range(4):
        engine.push(a, frames[t], t)
        if t != 2:  # b's frame 2 is late
            engine.push(b, frames[t], t)
        tick = engine.tick()
        assert tick.batch == 2  # the lagging call is still stepped with the others
        filled.append([o.filled for o in tick.outputs])
        if t == 3:
            engine.push(b, frames[2], 2)  # arrives late: waits for the next tick
    assert filled == [[False, False], [False, False], [False, True], [False, False]]
    assert (b.missed, engine.missed, a.missed) == (1, 1, 0)
    assert list(b.history[2].user.codes) == silence and list(b.history[3].user.codes) == frames[3]
    assert b.queue[0][:2] == (2, frames[2])
    sample = metrics.base.registry.get_sample_value("maata_missed_frame_deadlines_total",
                                                    {"service": "generation", "stage": "user_frame"})
    assert sample == 1.0
    waited = metrics.base.registry.get_sample_value("maata_stage_latency_seconds_count",
                                                    {"service": "generation", "stage": "frame_wait"})
    assert waited == 7  # every consumed user frame's queue wait is observed (a: 4, b: 3)
    # a call is not stepped before its first frame (the agent starts with the user)
    c = engine.join(spec("c")) if engine.free_slots else None
    assert c is None and engine.tick().batch == 2


def test_queue_bound_drops_the_oldest(lm: LM) -> None:
    engine = GenerationEngine(lm, 1, max_queued_frames=3)
    call = engine.join(spec("a"))
    frames = user_frames(5)
    kept = [engine.push(call, codes, seq) for seq, codes in enumerate(frames)]
    assert kept == [True, True, True, False, False]
    assert [seq for seq, _, _ in call.queue] == [2, 3, 4] and call.dropped == engine.dropped == 2
    assert [engine.tick().outputs[0].seq for _ in range(3)] == [2, 3, 4]


def test_idle_calls_expire(lm: LM) -> None:
    now = [100.0]
    engine = GenerationEngine(lm, 3, clock=lambda: now[0])
    a, b, c = engine.join(spec("a")), engine.join(spec("b")), engine.join(spec("c"))
    now[0] = 101.0
    engine.push(a, user_frames(1)[0])
    engine.set_style(b, emotion="HAPPY")  # any message counts
    now[0] = 102.5
    assert engine.expire(2.0) == [c]
    engine.hang_up(c)  # a call that hung up is finishing, not idle
    assert engine.expire(2.0) == []
    now[0] = 104.0
    assert set(engine.expire(2.0)) == {a, b}


def test_style_change_applies_from_the_next_step(lm: LM) -> None:
    frames = user_frames(6)
    engine = GenerationEngine(lm, 1)
    call = engine.join(spec("a", voice="male_2"))
    outs = []
    for t, codes in enumerate(frames):
        engine.push(call, codes, t)
        if t == 3:
            engine.set_style(call, emotion="LAUGH")
            engine.set_style(call, voice="female_1")  # both apply at step 3
        outs.append(engine.tick().outputs[0])
    state = lm.init_state(1)
    lm.reset(state, torch.tensor([True]), seed=7)
    for t, codes in enumerate(frames):
        voice, emotion = ("male_2", "NEUTRAL") if t < 3 else ("female_1", "LAUGH")
        ref = lm.step(state, torch.tensor([codes]), torch.tensor([True]), voice=voice, emotion=emotion,
                      sampling=SAMPLING)
        assert outs[t].text_token == int(ref.text_token[0])
        assert outs[t].agent_codes == (ref.agent_codes[0].tolist() if bool(ref.ready[0]) else None)
    styles = [(f.style.voice, f.style.emotion) if f.HasField("style") else None for f in call.history]
    assert styles == [None, None, None, ("female_1", "LAUGH"), None, None]
    engine.set_style(call, voice="female_1")  # no change: nothing recorded
    engine.push(call, frames[0])
    engine.tick()
    assert not call.history[-1].HasField("style")


def test_bad_input_is_refused_before_the_engine(lm: LM) -> None:
    engine = GenerationEngine(lm, 1)
    call = engine.join(spec("a"))
    with pytest.raises(CodeError, match=r"must be shaped \[n_q\] = \[8\]"):
        engine.push(call, [0] * 7)
    with pytest.raises(CodeError, match=r"values must be in \[-1, 31\]"):
        engine.push(call, [0] * 7 + [32])
    with pytest.raises(UnknownVoiceError, match="unknown voice 'robot'"):
        engine.set_style(call, voice="robot")
    with pytest.raises(UnknownVoiceError):
        engine.set_style(call, voice="custom")  # zero-shot voices need a speaker embedding
    with pytest.raises(UnknownEmotionError):
        engine.set_style(call, emotion="ANGRY")
    assert not call.queue and call.pending_style is None and not call.started
    with pytest.raises(ValueError, match="silence_codes"):
        GenerationEngine(lm, 1, silence_codes=[0] * 7)


@pytest.mark.parametrize("cut", [0, 1, 5, 13])
def test_resume_from_history_equals_the_uninterrupted_call(cut: int) -> None:
    """A call rebuilt from its history records (past the attention context of 8 frames, with a
    style change and silence-filled steps) continues exactly like the uninterrupted call."""
    lm = make_lm()
    frames = user_frames(20)
    s = spec("a", voice="female_2", emotion="EMPATHY")
    engine = GenerationEngine(lm, 2, silence_codes=[0] * K)
    call = engine.join(s)
    ref = []
    for t, codes in enumerate(frames):
        if t != 4:  # step 4 is filled with silence
            engine.push(call, codes, t)
        if t == 6:
            engine.set_style(call, voice="male_1")
        ref.append(engine.tick().outputs[0])
    assert ref[4].filled and len(call.history) == 20

    history = history_from_frames(lm, call.history[:cut], "female_2", "EMPATHY")
    assert history.frames == cut and history.final_style == (("male_1", "EMPATHY") if cut > 6 else
                                                            ("female_2", "EMPATHY"))
    other = GenerationEngine(lm, 3)
    other.join(spec("b", seed=1))
    resumed = other.join(CallSpec("a", 7, SAMPLING, *history.final_style), history)
    assert resumed.resumed and resumed.frames == resumed.stored == cut
    outs = []
    for t in range(cut, 20):
        other.push(resumed, call.history[t].user.codes, t)
        if t == 6:
            other.set_style(resumed, voice="male_1")
        outs.append(other.tick().outputs[0])
    assert outs[0].resumed and not any(o.resumed for o in outs[1:])
    assert all(same(a, b) for a, b in zip(ref[cut:], outs, strict=True))
    assert [list(f.agent.codes) for f in resumed.history] == [list(f.agent.codes) for f in call.history[cut:]]


def test_history_errors(lm: LM) -> None:
    engine = GenerationEngine(lm, 1)
    call = engine.join(spec("a"))
    for codes in user_frames(3):
        engine.push(call, codes)
        engine.tick()
    frames = list(call.history)
    bad = type(frames[0])()
    bad.CopyFrom(frames[1])
    bad.agent.codes[0] = -1
    with pytest.raises(HistoryError, match="missing"):
        history_from_frames(lm, [frames[0], bad, frames[2]], "male_1", "NEUTRAL")
    bad.CopyFrom(frames[1])
    del bad.user.codes[3]
    with pytest.raises(HistoryError, match="stored frame 1"):
        history_from_frames(lm, [frames[0], bad], "male_1", "NEUTRAL")
    with pytest.raises(HistoryError, match="index 2, expected 1"):
        history_from_frames(lm, [frames[0], frames[2]], "male_1", "NEUTRAL")
    with pytest.raises(HistoryError, match="style"):
        history_from_frames(lm, frames, "robot", "NEUTRAL")


def test_silence_codes_from_the_codec() -> None:
    from maata.codec import Codec
    from maata.codec import load_preset as codec_preset

    lm = make_lm()
    torch.manual_seed(0)
    codec = Codec(codec_preset("default", env_prefix=None, frame=TINY_FRAME,
        base_channels=4, max_channels=32, latent_dim=16,
                               transformer={"layers": 1, "heads": 2, "window": 5, "ff_mult": 2},
                               quantizer={"n_q": K, "codebook_size": CARD, "codebook_dim": 4})).eval()
    codes = codec.silence_codes().tolist()
    zeros = torch.zeros(1, 1, 25 * codec.hop)
    assert codes == codec.encode(zeros)[0, :, -1].tolist()
    engine = GenerationEngine(lm, 1, codec=codec)
    assert engine.silence == codes
    assert GenerationEngine(lm, 1).silence == [-1] * K  # no codec, no codes: every level absent


def test_frame_clock_ticks_every_frame_on_its_own(lm: LM) -> None:
    """On a virtual time: a tick every ``frame_s`` exactly, every frame stepped once after the
    wait it had, and a call that went quiet expired at the first tick past the idle timeout."""
    frame_s, idle_s = 0.02, 0.15

    async def main() -> tuple[list[tuple[float, int, list[str]]], GenerationEngine, FrameClock, dict]:
        vt = VirtualTime()
        engine = GenerationEngine(lm, 2, clock=vt)
        a, b = engine.join(spec("a")), engine.join(spec("b"))
        seen: list[tuple[float, int, list[str]]] = []

        def on_tick(tick, expired) -> None:
            seen.append((vt(), tick.batch, [c.call_id for c in expired]))
            for call in expired:  # the listener ends expired calls (the service hangs them up)
                engine.leave(call)

        clock = FrameClock(engine, frame_s, idle_timeout_s=idle_s, on_tick=on_tick, sleep=vt.sleep)
        for t, codes in enumerate(user_frames(10)):  # each frame 5 ms before the tick that takes it
            vt.at(frame_s * t + 0.015, lambda c=codes, t=t: engine.push(a, c, t))
            if t < 3:
                vt.at(frame_s * t + 0.015, lambda c=codes, t=t: engine.push(b, c, t))
        done = asyncio.Event()
        vt.at(0.39, done.set)  # between two ticks
        clock.start()
        await done.wait()
        await clock.stop()
        return seen, engine, clock, {"a": a.frames, "b": b.frames}

    seen, engine, clock, frames = asyncio.run(main())
    times = [t for t, _, _ in seen]
    assert times == pytest.approx([frame_s * i for i in range(20)]) and clock.ticks == 20 and clock.late == 0
    # a call steps from its first frame until it leaves, silence filling where it sent nothing:
    # a at the ticks .02-.36 (10 frames + 8 filled), b at .02-.22 (3 + 8)
    assert frames == {"a": 18, "b": 11} and engine.frames_stepped == 29 and engine.missed == 16
    # b's last frame came at 0.055: idle for more than 0.15 s at the tick of 0.22; a's at 0.195 -> 0.36
    expired = {call: t for t, _, ids in seen for call in ids}
    assert expired == pytest.approx({"b": 0.22, "a": 0.36}) and not engine.calls
    assert max(batch for _, batch, _ in seen) == 2


def test_frame_clock_catches_up_after_a_late_tick_and_restarts_after_a_stall(lm: LM) -> None:
    """A step that overran its frame: the next ticks run back to back until the schedule is back
    on its phase (callers send at exactly the frame rate); a stall of more than ``max_behind``
    frames restarts the schedule from now instead of replaying every missed tick."""
    frame_s = 0.02

    async def main() -> tuple[list[float], FrameClock]:
        vt = VirtualTime()
        engine = GenerationEngine(lm, 1, clock=vt)
        times: list[float] = []

        def on_tick(tick, expired) -> None:
            times.append(round(vt(), 6))
            if len(times) == 3:
                vt.advance(0.05)  # this tick's step took 2.5 frames
            elif len(times) == 10:
                vt.advance(0.5)   # a 25-frame stall

        clock = FrameClock(engine, frame_s, on_tick=on_tick, sleep=vt.sleep)
        done = asyncio.Event()
        vt.at(0.85, done.set)
        clock.start()
        await done.wait()
        await clock.stop()
        return times, clock

    times, clock = asyncio.run(main())
    # ticks at 0, .02, .04 (ends at .09); .06 and .08 are due: at once; back on the phase at .10
    assert times[:9] == pytest.approx([0.0, 0.02, 0.04, 0.09, 0.09, 0.10, 0.12, 0.14, 0.16])
    # the 10th tick (0.18) ends at 0.68: 24 frames behind -> one tick now, then every frame from now
    assert times[9:13] == pytest.approx([0.18, 0.68, 0.70, 0.72])
    assert clock.late == 3  # the tick after the overrun, the catch-up tick due at .08, the stall


def test_phase_aligner_moves_the_tick_to_the_latest_arrival() -> None:
    aligner = PhaseAligner(0.04, margin_s=0.005, hysteresis_s=0.005, window=5, heal_ticks=3)
    # a window of waits: the shortest (the caller whose frame came last) decides; None is no data
    assert [aligner.observe(w) for w in (0.018, 0.015, None, 0.030, 0.016)] == [0.0] * 5
    assert aligner.observe(0.019) == pytest.approx(0.010)  # 15 ms shortest wait -> 5 ms
    # aligned: waits within margin + hysteresis leave the schedule alone
    assert [aligner.observe(0.008) for _ in range(5)] == [0.0] * 5
    # a late frame made every frame wait a whole period: three such ticks in a row heal it at once,
    # with a wider margin (the arrivals jitter more than 5 ms allowed)
    assert [aligner.observe(w) for w in (0.039, 0.009, 0.039, 0.038)] == [0.0] * 4
    assert aligner.observe(0.039) == pytest.approx(0.038 - 0.007)
    assert aligner.shifts == 2 and aligner.shifted_s == pytest.approx(0.010 + 0.031)
    assert aligner.margin_now_s == pytest.approx(0.007)
    for _ in range(8 * 5):  # quiet windows: the margin relaxes back to its floor, never below
        aligner.observe(0.008)
    assert aligner.margin_now_s == pytest.approx(0.005) and aligner.shifts == 2
    for _ in range(10):  # misses again and again: the margin stops at a quarter period
        for w in (0.039, 0.039, 0.039):
            aligner.observe(w)
    assert aligner.margin_now_s == pytest.approx(0.010)
    with pytest.raises(ValueError):
        PhaseAligner(0.04, margin_s=-1)


@pytest.mark.parametrize("align", [False, True])
def test_frame_clock_aligns_its_phase_to_the_caller(lm: LM, align: bool) -> None:
    """On a virtual time: a caller whose frames arrive 5 ms after the ticks waits 35 ms per frame
    at a fixed phase; the aligned clock moves its ticks to 5 ms (the margin) after the arrivals,
    in one shift, without the caller missing a tick."""
    period, frames = 0.04, 50

    async def main() -> tuple[list[float], GenerationEngine, PhaseAligner | None]:
        vt = VirtualTime()
        engine = GenerationEngine(lm, 1, clock=vt)
        call = engine.join(spec("a"))
        waits: list[float] = []

        def on_tick(tick, expired) -> None:
            if tick.min_wait_s is not None:
                waits.append(tick.min_wait_s)

        aligner = PhaseAligner(period, margin_s=0.005, window=5) if align else None
        clock = FrameClock(engine, period, on_tick=on_tick, aligner=aligner, sleep=vt.sleep)
        for t, codes in enumerate(user_frames(frames)):  # the ticks are at 0, 40, 80 ms ...
            vt.at(0.005 + period * t, lambda c=codes, t=t: engine.push(call, c, t))
        done = asyncio.Event()
        vt.at(period * frames + 0.001, done.set)  # after the tick that takes the last frame
        clock.start()
        await done.wait()
        await clock.stop()
        return waits, engine, aligner

    waits, engine, aligner = asyncio.run(main())
    assert len(waits) == frames and engine.frames_stepped == frames and engine.missed == 0
    if align:
        assert aligner is not None and aligner.shifts == 1 and aligner.shifted_s == pytest.approx(0.030)
        assert waits[:3] == pytest.approx([0.035] * 3)  # three backlogged ticks heal the phase at once
        assert waits[3:] == pytest.approx([0.005] * (frames - 3))
    else:
        assert waits == pytest.approx([0.035] * frames)
