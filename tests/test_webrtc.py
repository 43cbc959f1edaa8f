"""The browser front end in a real headless Chromium, and its parts without one.

The Chromium tests share one run of tests/support/webrtc_scenario.py (the whole system in one process
with the demo checkpoints, inside a loopback-only network namespace; a Telugu WAV as the fake
microphone): audio reaches the model, agent audio reaches the browser, the data channel carries
text and latency events, a mid-call voice change, the 503 of a call over the limit, hang-up and
a closed tab freeing the slot, the 400/413 answers to bad signalling, and a screenshot.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

import services  # noqa: F401  (generates maata.v1)
from tests.support.chromium import loopback_netns_command
from services.gateway.config import IceServer, WebRTCConfig
from services.gateway.webrtc import TRIM_WINDOW_S, AgentTrack, host_candidates, to_mono_float

PACKET = 960  # 20 ms at 48 kHz
TRIM_WINDOW = round(TRIM_WINDOW_S / 0.02)

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "webrtc_call.png"


def _run_scenario(out: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(ROOT / "tests" / "support" / "webrtc_scenario.py"), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if shutil.which("unshare") and shutil.which("ip"):
        run = subprocess.run(loopback_netns_command(argv), capture_output=True, text=True, timeout=420, env=env)
        if "unshare failed" not in run.stderr and "Operation not permitted" not in run.stderr:
            return run
    # no network namespaces here: both ends use the machine's own interfaces
    return subprocess.run(argv, capture_output=True, text=True, timeout=420, env=env)


@pytest.fixture(scope="module")
def call(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    for tool in ("chromium", "chromedriver", "espeak-ng"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: `make test` installs it (apt-get install chromium chromium-driver espeak-ng)")
    out = tmp_path_factory.mktemp("webrtc")
    run = _run_scenario(out)
    result_file = out / "result.json"
    assert result_file.exists(), f"the scenario wrote no result:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    result = json.loads(result_file.read_text())
    assert "error" not in result, f"{result['error']}\n{result.get('traceback', '')}\n{run.stderr[-4000:]}"
    result["_out"] = str(out)
    return result


def test_audio_reaches_the_model(call: dict[str, Any]) -> None:
    (live,) = call["live_calls"]["calls"]
    assert live["state"] == "connected" and live["mode"] == "model"
    assert live["frames_in"] > 150  # 20 ms frames from the browser
    assert live["voiced_in"] > 50  # the Telugu question, not silence
    assert live["model_frames_in"] > 60  # 40 ms frames into codec -> generation
    assert live["model_voiced_in"] > 25


def test_agent_audio_reaches_the_browser(call: dict[str, Any]) -> None:
    browser = call["browser"]
    assert browser["packets_in"] > 100 and browser["lost_in"] == 0
    assert browser["level_in"] > 0  # getStats' inbound audio level
    assert call["levels_max"] > 0  # the page's own meter of the agent's track
    (live,) = call["live_calls"]["calls"]
    assert live["frames_out"] > 60 and live["voiced_out"] > 0


def test_data_channel_carries_text_and_latency(call: dict[str, Any]) -> None:
    events = call["events"]
    assert events[0] == "ready" and "stats" in events and "text" in events
    assert call["text"].strip()  # the agent's inner-monologue text arrived
    stats = call["stats_event"]
    assert stats["server_ms_p50"] > 0 and stats["server_ms_p99"] >= stats["server_ms_p50"]
    assert call["m2e_estimate_ms"] > stats["server_ms_p50"]


def test_voice_change_mid_call(call: dict[str, Any]) -> None:
    (live,) = call["after_style"]["calls"]
    assert (live["voice"], live["emotion"]) == ("male_1", "HAPPY")
    assert "style" in call["events"]


def test_call_over_the_limit_is_503(call: dict[str, Any]) -> None:
    status, body = call["over_limit"]
    assert status == 503 and "limit" in body["error"]


def test_hangup_and_closed_tab_free_the_slot(call: dict[str, Any]) -> None:
    assert call["after_hangup"] == {"calls": [], "gateway_calls": 0}
    assert call["page_state_after_hangup"] == "ended"
    assert len(call["second_call"]["calls"]) == 1
    assert call["after_tab_close"] == {"calls": [], "gateway_calls": 0}
    assert call["calls_at_end"] == {"calls": [], "gateway_calls": 0}


def test_bad_signalling(call: dict[str, Any]) -> None:
    assert call["bad_sdp"][0] == 400 and "SDP" in call["bad_sdp"][1]["error"]
    assert call["bad_json"][0] == 400 and "JSON" in call["bad_json"][1]["error"]
    assert call["bad_type"][0] == 400
    assert call["bad_voice"][0] == 400 and "robot" in call["bad_voice"][1]["error"]
    assert call["too_big"][0] == 413
    status, config = call["config"]
    assert status == 200 and len(config["voices"]) == 4 and len(config["emotions"]) == 9


def test_screenshot_during_the_call(call: dict[str, Any]) -> None:
    shot = Path(call["_out"]) / "webrtc_call.png"
    assert shot.exists() and shot.stat().st_size > 10_000
    if os.environ.get("MAATA_UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, SCREENSHOT)


# -- the parts, without a browser ---------------------------------------------------------------------
def test_agent_track_paces_20ms_and_trims_backlog() -> None:
    async def run() -> tuple[list[float], int, int]:
        track = AgentTrack(max_frames=6)
        track.put(np.full(PACKET * 5, 1000, np.int16))  # a start-up backlog of 5 frames
        times, loop = [], asyncio.get_running_loop()
        for _ in range(TRIM_WINDOW):
            frame = await track.recv()
            times.append(loop.time())
            if len(times) % 2 == 0:  # steady state: one 40 ms agent frame (two packets) every 40 ms
                track.put(np.full(PACKET * 2, 1000, np.int16))
        assert frame.sample_rate == 48000 and frame.samples == PACKET and frame.time_base == Fraction(1, 48000)
        return times, track.dropped, len(track._queue)

    times, dropped, depth = asyncio.run(run())
    gaps = np.diff(times)
    assert abs(float(np.mean(gaps)) - 0.02) < 0.004  # a fixed 20 ms clock
    assert dropped >= 3 and depth <= 3  # the standing backlog was trimmed to the jitter margin


def test_agent_track_drops_oldest_beyond_capacity() -> None:
    track = AgentTrack(max_frames=3)
    track.put(np.arange(PACKET * 5, dtype=np.int16) % 100)
    assert track.dropped == 2 and len(track._queue) == 3
    assert track._queue[0][0] == (2 * PACKET) % 100  # the newest audio is kept
    track.put(np.zeros(PACKET // 2, np.int16))  # a partial frame waits for the rest
    assert len(track._queue) == 3


@pytest.mark.parametrize("layout,fmt", [("stereo", "s16"), ("stereo", "s16p"), ("mono", "s16")])
def test_incoming_frames_to_mono(layout: str, fmt: str) -> None:
    left = (np.sin(np.arange(960) / 10) * 8000).astype(np.int16)
    right = (left // 2).astype(np.int16)
    if layout == "mono":
        data = left.reshape(1, -1)
    elif fmt == "s16":
        data = np.stack([left, right], axis=1).reshape(1, -1)  # packed: L R L R ...
    else:
        data = np.stack([left, right])
    frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
    frame.sample_rate = 48000
    x = to_mono_float(frame)
    expect = left / 32768.0 if layout == "mono" else (left.astype(np.float32) + right) / 2 / 32768.0
    assert x.shape == (960,) and np.allclose(x, expect, atol=1e-6)


def test_host_candidates_are_pinned_and_restored() -> None:
    import aioice.ice

    original = aioice.ice.get_host_addresses
    with host_candidates(["127.0.0.1", "::1"]):
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1", "::1"]
    assert aioice.ice.get_host_addresses is original


def test_webrtc_config_validation() -> None:
    with pytest.raises(ValueError, match="stun"):
        IceServer(urls=["http://example.org"])
    with pytest.raises(ValueError, match="out_queue_ms"):
        WebRTCConfig(out_queue_ms=10)
    assert WebRTCConfig(ice_servers=[IceServer(urls=["turn:turn.example.org:3478"], username="u", credential="p")])
