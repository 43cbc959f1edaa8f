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

from tests.support.chromium import loopback_netns_command
from tests.support.virtual_time import virtual_time_loop
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
    # getStats' inbound audio energy over the call (its instantaneous audioLevel is 0 whenever the
    # agent pauses: codec v2 decodes silence to digital silence)
    assert browser["energy_in"] > 0 and browser["level_in"] >= 0
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


def test_browser_sends_the_packet_length_the_answer_asks_for(call: dict[str, Any]) -> None:
    """Chrome follows the answer's a=ptime (default config): the server receives frames of that
    length and the page's own packet rate agrees; the agent's packets come at ptime_out_ms."""
    config = WebRTCConfig()
    asked = config.ptime_in_ms or 20  # no ptime in the answer: Chrome's default, 20 ms
    assert call["stats_event"]["in_frame_ms"] == asked
    assert abs(call["browser"]["ptime_out_ms"] - asked) < 3
    assert abs(call["browser"]["ptime_in_ms"] - config.ptime_out_ms) < 3


def test_voice_change_mid_call(call: dict[str, Any]) -> None:
    (live,) = call["after_style"]["calls"]
    assert (live["voice"], live["emotion"]) == ("male_1", "HAPPY")
    assert "style" in call["events"]


def test_browser_calls_are_in_the_live_call_gauge(call: dict[str, Any]) -> None:
    assert call["live_gauge"] == ['maata_live_calls{rpc="browser",service="gateway"} 1.0']
    (live,) = call["live_calls"]["calls"]
    assert live["admitted"] and live["tenant"] == "anonymous"


def test_call_over_the_limit_is_503(call: dict[str, Any]) -> None:
    status, body = call["over_limit"]
    assert status == 503 and "limit" in body["error"]


def test_hangup_and_closed_tab_free_the_slot(call: dict[str, Any]) -> None:
    assert call["after_hangup"] == {"calls": [], "gateway_calls": 0, "pending": 0}
    assert call["page_state_after_hangup"] == "ended"
    assert len(call["second_call"]["calls"]) == 1
    assert call["after_tab_close"] == {"calls": [], "gateway_calls": 0, "pending": 0}
    assert call["calls_at_end"] == {"calls": [], "gateway_calls": 0, "pending": 0}


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
        track.clock = asyncio.get_running_loop().time
        track.put(np.full(PACKET * 5, 1000, np.int16))  # a start-up backlog of 5 frames
        times, loop = [], asyncio.get_running_loop()
        for _ in range(TRIM_WINDOW):
            frame = await track.recv()
            times.append(loop.time())
            if len(times) % 2 == 0:  # steady state: one 40 ms agent frame (two packets) every 40 ms
                track.put(np.full(PACKET * 2, 1000, np.int16))
        assert frame.sample_rate == 48000 and frame.samples == PACKET and frame.time_base == Fraction(1, 48000)
        return times, track.dropped, len(track._queue)

    loop = virtual_time_loop()  # exact timing whatever the machine's load
    times, dropped, depth = loop.run_until_complete(run())
    loop.close()
    gaps = np.diff(times)
    assert np.allclose(gaps, 0.02)  # a fixed 20 ms clock
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


# -- the media path's latency settings ---------------------------------------------------------------
CHROME_OFFER_AUDIO = ("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
                      "m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\n"
                      "a=fmtp:111 minptime=20;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n"
                      "a=ptime:20\r\n"
                      "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n")


def test_set_ptime_asks_for_10ms_packets_in_the_audio_section_only() -> None:
    from services.gateway.media import set_ptime

    sdp = set_ptime(CHROME_OFFER_AUDIO, 10)
    audio, data = sdp.split("m=application")
    assert "a=ptime:10\r\n" in audio and "a=ptime:20" not in sdp
    assert "a=fmtp:111 minptime=10;useinbandfec=1\r\n" in audio  # Opus asks for 10 ms at least
    assert "a=fmtp:63 111/111\r\n" in audio  # RED's parameters are not Opus's
    assert "ptime" not in data
    with pytest.raises(ValueError, match="ptime"):
        set_ptime(CHROME_OFFER_AUDIO, 15)
    bare = CHROME_OFFER_AUDIO.replace("a=fmtp:111 minptime=20;useinbandfec=1\r\n", "")  # as aiortc answers
    assert "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10\r\n" in set_ptime(bare, 10)


def test_packet_encoder_sends_10ms_opus_with_the_frames_timestamps() -> None:
    from services.gateway.media import PacketOpusEncoder

    encoder = PacketOpusEncoder(ptime_ms=10, application="lowdelay")
    decoder = av.CodecContext.create("libopus", "r")
    t = np.arange(480 * 6) / 48000
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    timestamps, decoded = [], []
    for k in range(6):
        frame = av.AudioFrame.from_ndarray(pcm[k * 480:(k + 1) * 480].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, 1000 + k * 480, Fraction(1, 48000)
        payloads, ts = encoder.encode(frame)
        assert len(payloads) == 1  # one packet per 10 ms frame, nothing held back
        timestamps.append(ts)
        for out in decoder.decode(av.Packet(payloads[0])):
            decoded.append(out.samples)
    assert timestamps == [1000 + k * 480 for k in range(6)]  # the RTP clock follows the track's pts
    assert decoded == [480] * 6  # each packet is exactly 10 ms of audio
    with pytest.raises(ValueError, match="480 samples"):
        frame = av.AudioFrame.from_ndarray(pcm[:960].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        encoder.encode(frame)


def test_arrival_jitter_buffer_hands_each_packet_on_at_once() -> None:
    from aiortc.rtp import RtpPacket

    from services.gateway.media import ArrivalJitterBuffer

    def packet(seq: int) -> RtpPacket:
        p = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=seq * 480)
        p._data = bytes([seq % 256])  # type: ignore[attr-defined]
        return p

    jb = ArrivalJitterBuffer()
    got = [jb.add(packet(s))[1] for s in (65533, 65534, 65535, 0, 1)]  # across the wrap
    assert [f.data[0] for f in got] == [65533 % 256, 65534 % 256, 255, 0, 1]  # no packet waits for the next
    frame = jb.add(packet(3))[1]  # 2 is missing: 3 goes on at once, 2 counts as skipped
    assert frame is not None and frame.timestamp == 3 * 480 and jb.skipped == 1
    assert jb.add(packet(2))[1] is None and jb.late == 1  # too late to play in order


def test_anchored_track_starts_with_the_agent_audio_and_waits_for_a_late_frame() -> None:
    async def run() -> dict[str, Any]:
        track = AgentTrack(max_frames=12, ptime_ms=10, pacing="anchored", late_ms=20.0)
        loop = asyncio.get_running_loop()
        track.clock = loop.time
        first = asyncio.ensure_future(track.recv())
        await asyncio.sleep(0.05)
        assert not first.done()  # no agent audio yet: nothing is sent
        t_put = loop.time()
        track.put(np.full(480 * 4, 1000, np.int16))  # one 40 ms agent frame = four 10 ms packets
        frame = await first
        waited_first = loop.time() - t_put
        for _ in range(3):
            await track.recv()
        late = asyncio.ensure_future(track.recv())  # the next frame is 15 ms late
        await asyncio.sleep(0.025)
        t_late = loop.time()
        track.put(np.full(480 * 4, 2000, np.int16))
        frame_late = await late
        waited_late = loop.time() - t_late
        track.stop()
        return {"first": frame, "waited_first": waited_first, "late": frame_late, "waited_late": waited_late,
                "counters": (track.late, track.silent, track.dropped)}

    loop = virtual_time_loop()
    r = loop.run_until_complete(run())
    loop.close()
    assert r["first"].samples == 480 and r["first"].pts == 0 and r["waited_first"] < 0.001
    # the late frame goes out the moment it exists, with the RTP time it would have had: no silence
    assert r["waited_late"] < 0.001 and r["late"].pts == 4 * 480
    assert r["late"].to_ndarray().max() == 2000
    assert r["counters"] == (1, 0, 0)


def test_fixed_track_sends_silence_when_the_frame_is_late() -> None:
    async def run() -> tuple[int, int]:
        track = AgentTrack(max_frames=12, ptime_ms=10)
        track.clock = asyncio.get_running_loop().time
        track.put(np.full(480, 1000, np.int16))
        await track.recv()
        frame = await track.recv()  # nothing queued at this tick: silence at once
        track.stop()
        return int(np.abs(frame.to_ndarray()).max()), track.silent

    loop = virtual_time_loop()
    assert loop.run_until_complete(run()) == (0, 1)
    loop.close()


def test_low_delay_resampler_streams_what_it_gets() -> None:
    """Every 10 or 20 ms packet at 48 kHz gives its 16 kHz samples at once (soxr HQ holds some
    back until later packets), equal to the one-shot polyphase filter, with speech intact."""
    import scipy.signal

    from maata.resample_stream import FirResampleStream

    rng = np.random.default_rng(0)
    chunks = [480, 960, 7, 953, 480] * 20
    x = rng.standard_normal(sum(chunks)).astype(np.float32)
    down = FirResampleStream(48000, 16000)
    out, i = [], 0
    for n in chunks:
        y = down.resample_chunk(x[i:i + n])
        assert y.size == -(-(i + n) // 3) - -(-i // 3)  # every output whose input has arrived
        out.append(y)
        i += n
    y = np.concatenate(out)
    assert [o.size for o in out[:2]] == [160, 320]  # nothing held back
    ref = scipy.signal.upfirdn(down.filter, x[:i].astype(np.float64), 1, 3)[:y.size]
    assert np.abs(y - ref).max() < 1e-5
    up = FirResampleStream(16000, 48000)
    tone = np.sin(2 * np.pi * 1000 * np.arange(1600) / 16000).astype(np.float32)
    z = np.concatenate([up.resample_chunk(tone[k:k + 160]) for k in range(0, 1600, 160)])
    assert z.size == 4800
    lag = round(up.delay * 48000)
    expect = np.sin(2 * np.pi * 1000 * (np.arange(4800) - lag) / 48000)
    assert np.abs(z[400:] - expect[400:]).max() < 0.01  # a 1 kHz tone passes unchanged, delayed 1.25 ms
    assert up.delay * 1e3 < 1.5
    with pytest.raises(ValueError, match="rational"):
        FirResampleStream(44100, 48001)


def test_media_settings_validation() -> None:
    with pytest.raises(ValueError, match="ptime"):
        WebRTCConfig(ptime_out_ms=30)
    with pytest.raises(ValueError, match="ptime"):
        WebRTCConfig(ptime_in_ms=5)
    with pytest.raises(ValueError, match="out_pacing"):
        WebRTCConfig(out_pacing="burst")
    with pytest.raises(ValueError, match="resample_quality"):
        WebRTCConfig(resample_quality="best")
    with pytest.raises(ValueError, match="opus_application"):
        WebRTCConfig(opus_application="music")
    assert WebRTCConfig(in_jitter_packets=0, browser_jitter_target_ms=None).in_jitter_packets == 0


def test_low_delay_settings_cut_the_servers_input_and_output_waits() -> None:
    """bench/media_budget.py on the real components in virtual time (no wall clock, so no load
    effect): the defaults (low-delay resampler, arrival jitter buffer) against the old path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("media_budget", ROOT / "bench" / "media_budget.py")
    budget = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(budget)  # type: ignore[union-attr]
    old_in = budget.input_side(20, "prefetch1", "HQ", 4.0)
    new_in = budget.input_side(20, "arrival", "LD", 4.0)
    assert old_in["mean"] > 40 and new_in["p99"] < 3  # soxr's blocks + one held packet -> the FIR's 1.25 ms
    old_out = budget.output_side(20, "fixed", 0.0, "HQ", budget.JITTER["echo"], 4.0)
    new_out = budget.output_side(20, "fixed", 0.0, "LD", budget.JITTER["echo"], 4.0)
    assert new_out["mean"] < old_out["mean"] - 25
    assert new_out["send_interval_dev_ms_p99"] == 0.0  # the packets still leave on a regular clock


def test_ptime_10_answer_and_10ms_agent_packets_with_an_aiortc_client() -> None:
    """``ptime_in_ms: 10`` / ``ptime_out_ms: 10`` end to end without a browser: the whole stack
    (tiny untrained models, echo mode) answers a Python aiortc client's offer with a=ptime:10 and
    minptime=10, and the agent's audio arrives as 10 ms Opus packets (480 samples at 48 kHz)."""
    import urllib.request

    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack

    from services.serve import load_config, start

    class Tone(AudioStreamTrack):
        """A 20 ms 440 Hz tone stream as the client's microphone (aiortc paces it in real time)."""

        async def recv(self) -> av.AudioFrame:
            frame = await super().recv()
            t = (frame.pts + np.arange(frame.samples)) / frame.sample_rate
            frame.planes[0].update((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).tobytes())
            return frame

    env = {f"MAATA_SERVE__{k}": v for k, v in {
        "SESSION__SERVER__PORT": "0", "GATEWAY__SERVER__PORT": "0", "CODEC__SERVER__PORT": "0",
        "GENERATION__SERVER__PORT": "0", "GATEWAY__WEBRTC__PORT": "0", "THREADS": "1",
        "GATEWAY__WEBRTC__PTIME_IN_MS": "10", "GATEWAY__WEBRTC__PTIME_OUT_MS": "10"}.items()}

    async def run() -> tuple[str, list[int]]:
        stack = await start(load_config(environ=env), untrained=True)
        client = RTCPeerConnection()
        try:
            client.addTrack(Tone())
            client.createDataChannel("events")
            await client.setLocalDescription(await client.createOffer())
            body = json.dumps({"type": "offer", "sdp": client.localDescription.sdp, "mode": "echo"}).encode()
            request = urllib.request.Request(stack.browser_url + "api/offer", data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            loop = asyncio.get_running_loop()
            answer = json.loads(await loop.run_in_executor(None, lambda: urllib.request.urlopen(request, timeout=30).read()))
            received: asyncio.Future[Any] = loop.create_future()
            client.on("track", lambda track: received.done() or received.set_result(track))
            await client.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            track = await asyncio.wait_for(received, 20)
            sizes = [(await asyncio.wait_for(track.recv(), 20)).samples for _ in range(30)]
            return answer["sdp"], sizes
        finally:
            await client.close()
            await stack.drain()

    sdp, sizes = asyncio.run(run())
    audio = sdp.split("m=audio", 1)[1].split("\nm=", 1)[0]
    assert "a=ptime:10" in audio and "minptime=10" in audio
    assert sizes and set(sizes) == {480}  # every agent packet is 10 ms
