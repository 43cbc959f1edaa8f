"""One real browser call against the whole system, run by tests/test_webrtc.py inside a loopback
network namespace (``tests.support.chromium.loopback_netns_command``):

    python tests/support/webrtc_scenario.py --out DIR [--untrained]

Starts ``maata serve``'s stack in this process (demo checkpoints, or tiny random models with
``--untrained``) with the browser front end pinned to 127.0.0.1, opens the call page in headless
Chromium whose microphone plays a Telugu WAV made with espeak-ng, and records what happened in
DIR/result.json (plus DIR/webrtc_call.png): server-side counters, browser getStats, data-channel
events, a mid-call voice change, the 503 of a call over the limit, hang-up freeing the slot, and
the answers to bad signalling requests. The test asserts on that file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from maata.audio import load_audio, resample  # noqa: E402
from services.serve import BackgroundStack, load_config  # noqa: E402
from tests.support.chromium import Browser, in_netns  # noqa: E402

SENTENCE = "నమస్కారం, మీ పేరు ఏమిటి? ఈ రోజు వాతావరణం ఎలా ఉంది?"


def telugu_wav(path: Path) -> Path:
    """A Telugu question at 48 kHz mono 16-bit, with 3 s of silence after it (the capture loops): time
    for the agent to answer before the question comes round again."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "te", "-w", str(raw), SENTENCE], check=True)
    x, rate = load_audio(raw)
    y = resample(x, rate, 48000)
    y = np.concatenate([y / max(1e-3, float(np.abs(y).max())) * 0.5, np.zeros(3 * 48000, np.float32)])
    sf.write(path, y, 48000, subtype="PCM_16")
    return path


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=20) as reply:
            return reply.status, json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, {"raw": text.decode(errors="replace")[:300]}


def server(untrained: bool) -> BackgroundStack:
    """The whole system, the browser front end pinned to loopback and one call per client."""
    env = {"MAATA_SERVE__SESSION__SERVER__PORT": "0", "MAATA_SERVE__GATEWAY__SERVER__PORT": "0",
           "MAATA_SERVE__CODEC__SERVER__PORT": "0", "MAATA_SERVE__GENERATION__SERVER__PORT": "0",
           "MAATA_SERVE__GATEWAY__WEBRTC__PORT": "0",
           "MAATA_SERVE__GATEWAY__WEBRTC__MAX_CALLS_PER_CLIENT": "1",
           # this scenario checks each signalling error's status from one address in a few seconds;
           # the offer rate limits have their own tests (tests/test_abuse.py)
           "MAATA_SERVE__GATEWAY__WEBRTC__OFFERS_PER_MINUTE_PER_CLIENT": "600",
           "MAATA_SERVE__THREADS": "1"}
    if in_netns():  # only loopback exists: both ends must use it
        env["MAATA_SERVE__GATEWAY__WEBRTC__HOST_ADDRESSES"] = "['127.0.0.1']"
    return BackgroundStack(load_config(environ=env), untrained=untrained)


def calls(url: str) -> dict[str, Any]:
    return http("GET", url + "api/calls")[1]


def wait_freed(url: str, timeout_s: float) -> tuple[dict[str, Any], float]:
    """Poll until no call is live (or ``timeout_s``): the last listing and the seconds it took."""
    t0 = time.monotonic()
    while (listing := calls(url))["calls"] or listing["gateway_calls"]:
        if time.monotonic() - t0 > timeout_s:
            break
        time.sleep(0.1)
    return listing, round(time.monotonic() - t0, 2)


def scenario(out: Path, untrained: bool) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    wav = telugu_wav(out / "question.wav")
    result: dict[str, Any] = {"steps": []}
    stack = server(untrained)
    url = stack.stack.browser_url
    result["url"] = url
    try:
        with Browser(wav) as browser:
            browser.open(url + "?mode=model&aec=0&voice=female_1&emotion=NEUTRAL")
            result["page_title"] = browser.driver.title
            browser.js("maata.call()")
            browser.wait("return maata.state === 'connected'", 30)
            result["steps"].append("connected")
            # audio both ways for a few seconds
            browser.wait("return maata.stats.frames_in > 150 && maata.browser.packets_in > 100", 40)
            time.sleep(1.0)
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{stack.stack.gateway.metrics_port}/metrics",
                                             timeout=20).read().decode()
            result["live_gauge"] = [line for line in metrics.splitlines()
                                    if line.startswith('maata_live_calls{rpc="browser",service="gateway"}')]
            levels = []
            for _ in range(60):  # the page's meter of the agent's track, up to 6 s (the agent pauses between
                levels.append(browser.js("return maata.levels.agent"))  # turns, and codec v2's pauses are
                if levels[-1] > 0:  # digital silence)
                    break
                time.sleep(0.1)
            result["levels_max"] = max(levels)
            time.sleep(1.2)  # the page polls getStats every second
            result["browser"] = browser.js("return maata.browser")
            result["live_calls"] = calls(url)  # after the agent has had its turn (voiced frames counted)
            result["stats_event"] = browser.js("return maata.stats")
            # a second call from the same client is over the limit: 503 with a message
            result["over_limit"] = http("POST", url + "api/offer",
                                        json.dumps({"type": "offer", "sdp": "v=0\r\n"}).encode())
            # change the voice mid-call
            browser.js("maata.setStyle('male_1', 'HAPPY')")
            browser.wait("return maata.events.some(e => e.type === 'style' && e.voice === 'male_1')", 10)
            time.sleep(0.5)
            result["after_style"] = calls(url)
            browser.screenshot(out / "webrtc_call.png")
            time.sleep(1.5)
            result["events"] = browser.js("return maata.events.map(e => e.type)")
            result["text"] = browser.js("return maata.text")
            result["m2e_estimate_ms"] = browser.js("return maata.m2e_ms")
            # hang up: the slot is freed
            browser.js("maata.hangup()")
            result["after_hangup"], result["hangup_s"] = wait_freed(url, 15)
            result["page_state_after_hangup"] = browser.js("return maata.state")
            result["console"] = browser.console()[-20:]
            # a second call, then the page goes away without hanging up (tab closed / navigated)
            browser.js("maata.call()")
            browser.wait("return maata.state === 'connected'", 30)
            browser.wait("return maata.stats.frames_in > 25", 20)
            result["second_call"] = calls(url)
            browser.driver.get("about:blank")
            result["after_tab_close"], result["tab_close_s"] = wait_freed(url, 40)
        # bad signalling requests (the slot is free again, so these reach the SDP check)
        result["bad_sdp"] = http("POST", url + "api/offer", json.dumps({"type": "offer", "sdp": "not an sdp"}).encode())
        result["bad_json"] = http("POST", url + "api/offer", b"{nope")
        result["bad_type"] = http("POST", url + "api/offer", json.dumps({"type": "answer", "sdp": "v=0"}).encode())
        result["bad_voice"] = http("POST", url + "api/offer", json.dumps({"type": "offer", "sdp": "v=0\r\n",
                                                                          "voice": "robot"}).encode())
        result["too_big"] = http("POST", url + "api/offer", json.dumps({"type": "offer", "sdp": "x" * 200_000}).encode())
        result["config"] = http("GET", url + "api/config")
        result["calls_at_end"] = calls(url)
    except BaseException as err:
        result["error"] = f"{type(err).__name__}: {err}"
        result["traceback"] = traceback.format_exc()
    finally:
        stack.stop()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--untrained", action="store_true")
    args = p.parse_args()
    result = scenario(args.out, args.untrained)
    (args.out / "result.json").write_text(json.dumps(result, ensure_ascii=False, indent=1, default=str))
    print(json.dumps({k: v for k, v in result.items() if k in ("error", "steps", "hangup_s")}, default=str))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
