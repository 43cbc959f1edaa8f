"""The parts of issue 15's fixes without a server: admission (tenant caps, capacity, the reserve,
rates), the per-tenant history budget, the agent speech detector's calibration, and the
constant-size output resampler."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from maata.resample_stream import FrameResampler
from services.gateway.admission import Admission, HistoryBudget, RateLimiter, Refused, Tenant
from services.gateway.speech import SpeechConfig


def tenant(name: str, max_calls: int = 4, per_minute: int = 600, sessions: int = 2) -> Tenant:
    return Tenant(name, max_calls, per_minute, sessions)


def reason(admission: Admission, who: Tenant) -> str:
    with pytest.raises(Refused) as err:
        admission.admit(who, "partner")
    return err.value.reason


def test_tenant_cap_capacity_and_the_reserve() -> None:
    admission = Admission(capacity=8, reserve=2)
    greedy, second, third = tenant("greedy"), tenant("second"), tenant("third")
    held = [admission.admit(greedy, "partner") for _ in range(4)]
    assert reason(admission, greedy) == "tenant_calls"
    held += [admission.admit(second, "partner") for _ in range(2)]  # free 4, then 3: above the reserve
    assert reason(admission, second) == "reserve"  # free 2 = the reserve, and second holds calls
    held.append(admission.admit(third, "partner"))  # a tenant with no call gets a reserved slot
    held.append(admission.admit(tenant("fourth"), "browser"))
    assert admission.total == 8 and reason(admission, tenant("fifth")) == "capacity"
    held[0].release()
    held[0].release()  # idempotent
    assert admission.total == 7 and admission.live["greedy"] == 3
    admission.draining = True
    assert reason(admission, tenant("sixth")) == "draining"


def test_rate_limit_burst_and_refill() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.take("k", 60) for _ in range(8)] == [True] * 6 + [False] * 2  # a burst of a tenth
    now[0] += 1.0  # 60 a minute: one more a second
    assert limiter.take("k", 60) and not limiter.take("k", 60)
    assert limiter.take("other", 60)  # buckets are per name
    admission = Admission(capacity=100, rates=limiter)
    slow = tenant("slow", max_calls=100, per_minute=10)
    admission.admit(slow, "partner")
    assert reason(admission, slow) == "rate" and admission.total == 1  # a refusal takes no place


def test_rate_limiter_memory_is_bounded() -> None:
    now = [0.0]
    limiter = RateLimiter(max_names=100, clock=lambda: now[0])
    for i in range(1000):
        now[0] += 1.0  # every earlier bucket has refilled by the time the next name arrives
        limiter.take(f"client:{i}", 60)
    assert len(limiter._buckets) <= 101


def test_history_budget_ends_the_oldest_resumable_sessions() -> None:
    ended: list[str] = []

    async def end(store_id: str) -> None:
        ended.append(store_id)

    async def main() -> None:
        budget = HistoryBudget(end)
        key = tenant("k", sessions=2)
        for i in range(4):
            await budget.left_resumable(key, f"k:c{i}")
        assert ended == ["k:c0", "k:c1"] and budget.kept(key) == ["k:c2", "k:c3"]
        budget.resumed(key, "k:c2")  # live again: no longer waiting in the budget
        await budget.left_resumable(key, "k:c4")
        assert ended == ["k:c0", "k:c1"] and budget.kept(key) == ["k:c3", "k:c4"]
        browser = tenant("anonymous", sessions=0)
        await budget.left_resumable(browser, "webrtc:x")
        assert ended[-1] == "webrtc:x" and budget.kept(browser) == []

    asyncio.run(main())


def test_agent_speech_thresholds_follow_the_decoded_silence() -> None:
    config = SpeechConfig(on_dbfs=-40, off_dbfs=-50, above_silence_db=9)
    assert SpeechConfig(on_dbfs=-40, off_dbfs=-50).calibrated(-39) == SpeechConfig(on_dbfs=-40, off_dbfs=-50)
    loud_floor = config.calibrated(-38.6)  # the demo codec's floor: above a fixed -40 dBFS
    assert (loud_floor.on_dbfs, loud_floor.off_dbfs) == (-29.6, -34.1)
    quiet_floor = config.calibrated(-90)  # a codec that decodes silence to near nothing keeps the config
    assert (quiet_floor.on_dbfs, quiet_floor.off_dbfs) == (-40, -50)
    with pytest.raises(ValueError, match="above_silence_db"):
        SpeechConfig(above_silence_db=-1)


@pytest.mark.parametrize("rate", [8000, 24000, 48000])
def test_frame_resampler_sizes_quality_and_continuity(rate: int) -> None:
    resampler = FrameResampler(16000, rate, 640)
    t = np.arange(640 * 50) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    chunks = [resampler(tone[i:i + 640]) for i in range(0, tone.size, 640)]
    assert {c.size for c in chunks} == {rate * 40 // 1000}  # one equal chunk per 40 ms frame
    y = np.concatenate(chunks)
    delay = (resampler.taps * resampler.up - 1) / 2 / (resampler.up * 16000)
    ref = 0.5 * np.sin(2 * np.pi * 1000 * (np.arange(y.size) / rate - delay))
    err = y[rate // 10:] - ref[rate // 10:]
    assert 10 * np.log10(np.mean(ref[rate // 10:] ** 2) / np.mean(err ** 2)) > 60  # no clicks at frame edges
    if rate == 8000:  # a 6 kHz tone is above the 4 kHz Nyquist: filtered out, not aliased to 2 kHz
        high = FrameResampler(16000, 8000, 640)
        x = (0.5 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
        out = np.concatenate([high(x[i:i + 640]) for i in range(0, x.size, 640)])
        assert np.sqrt(np.mean(out[800:] ** 2)) < 0.01
    with pytest.raises(ValueError, match="frames of 640"):
        resampler(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="whole number"):
        FrameResampler(16000, 44100, 100)  # 275.6 samples a frame


def test_calltoken_command_mints_a_token_the_gateway_accepts() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    from services.gateway.auth import ApiKey, Authenticator, hash_key
    from services.gateway.tokens import TokenVerifier

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "MAATA_API_KEY": "mk_partner-secret"}
    run = subprocess.run([sys.executable, "-m", "maata.cli", "calltoken", "--id", "acme", "--ttl", "60"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    verifier = TokenVerifier(Authenticator([ApiKey("acme", hash_key("mk_partner-secret"))]))
    assert verifier.verify(run.stdout.strip()).id == "acme"
    env.pop("MAATA_API_KEY")
    run = subprocess.run([sys.executable, "-m", "maata.cli", "calltoken", "--id", "acme"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode != 0 and "MAATA_API_KEY" in run.stderr
