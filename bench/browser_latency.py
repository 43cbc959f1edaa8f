#!/usr/bin/env python
"""Mouth-to-ear latency of a browser call, measured in a real headless Chromium on loopback.

    python bench/browser_latency.py [--seconds 60] [--quick] [--untrained] [--no-baseline]
                                    [--json out/bench/browser_latency.json] [--png docs/browser_latency.png]

Runs the whole system in this process (``maata serve``'s stack, demo checkpoints) with the
browser front end, re-executed inside a loopback-only network namespace (``unshare -n``) so
Chromium and aiortc meet on 127.0.0.1. Chromium's fake microphone plays Telugu sentences with
pauses between them (espeak-ng). Two calls of ``--seconds`` each, then the same two against the
**baseline**: the stack with the generation frame clock's phase alignment off (its ticks keep
the chance phase they started with; ``--no-baseline`` skips it):

* **(a) echo**: the codec-only path (user codes come straight back: encode -> decode). The page
  records the level envelope of its microphone track and of the agent's track on one AudioContext
  clock (an AudioWorklet, 2.7 ms per value); cross-correlating the two over 4 s windows gives the
  **measured** mouth-to-ear delay per window (capture -> Opus -> network -> gateway -> codec ->
  Opus -> jitter buffer -> playout graph). Only windows whose correlation peak is clear count.
* **(b) model**: the full S2S model. Its answer is not an echo, so the delay cannot be read off
  the audio; the page's **estimate** is used: codec frame (40 ms) + the browser's Opus packet
  (20 ms) + network RTT + the server's per-frame time (arrival -> agent frame out, p50 of the
  last second) + the server's output queue + the browser's jitter buffer (getStats). Run (a)
  reports the same estimate beside its measurement, which shows how far the estimate is off, and
  (b) is also shown **calibrated** by that offset.

Prints a table, writes JSON and a PNG (latency histograms). The machine is shared: the JSON
records the load average; timings move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import soundfile as sf  # noqa: E402

from maata.audio import load_audio, resample  # noqa: E402
from tests.support.chromium import Browser, in_netns, loopback_netns_command  # noqa: E402

SENTENCES = ["నమస్కారం, మీ పేరు ఏమిటి?", "ఈ రోజు వాతావరణం ఎలా ఉంది?", "బ్యాంక్ ఎన్ని గంటలకు తెరుస్తారు?",
             "నాకు హైదరాబాద్ కి దారి చెప్పండి.", "మీకు ఏ భోజనం ఇష్టం?"]
TARGETS_MS = {"echo": 100.0, "model": 200.0}
WINDOW_S, HOP_S, MAX_LAG_S, MIN_CORR = 4.0, 2.0, 0.8, 0.6


def speech_wav(path: Path) -> Path:
    """Telugu sentences with 0.4-0.9 s pauses at 48 kHz (sharp onsets to correlate on)."""
    rng = np.random.default_rng(0)
    parts = []
    for i, text in enumerate(SENTENCES):
        raw = path.with_name(f"s{i}.wav")
        subprocess.run(["espeak-ng", "-v", "te", "-s", "150", "-w", str(raw), text], check=True)
        x, rate = load_audio(raw)
        x = resample(x, rate, 48000)
        parts += [x / max(1e-3, float(np.abs(x).max())) * 0.5, np.zeros(int(48000 * rng.uniform(0.4, 0.9)), np.float32)]
    sf.write(path, np.concatenate(parts), 48000, subtype="PCM_16")
    return path


def measure_delays(env: dict[str, Any]) -> list[dict[str, float]]:
    """Per window: the lag (ms) maximising the correlation of the log envelopes, and its peak."""
    rate = float(env["rate"])
    you = np.asarray(env["you"], np.float64)
    agent = np.asarray(env["agent"], np.float64)
    n = min(you.size, agent.size)
    if not rate or n < rate * (WINDOW_S + MAX_LAG_S):
        return []
    log_you = 20 * np.log10(np.maximum(you[:n], 1e-3))  # floor -60 dBFS
    log_agent = 20 * np.log10(np.maximum(agent[:n], 1e-3))
    w, hop, max_lag = int(WINDOW_S * rate), int(HOP_S * rate), int(MAX_LAG_S * rate)
    out = []
    for start in range(int(2 * rate), n - w - max_lag, hop):  # skip the first 2 s (connection start)
        a = log_you[start:start + w]
        if a.std() < 3.0:  # no speech onsets in this window
            continue
        a = (a - a.mean()) / a.std()
        best, lag_best = -1.0, 0
        for lag in range(0, max_lag):
            b = log_agent[start + lag:start + lag + w]
            sd = b.std()
            if sd < 1e-6:
                continue
            c = float(np.dot(a, (b - b.mean()) / sd) / w)
            if c > best:
                best, lag_best = c, lag
        out.append({"t_s": start / rate, "lag_ms": lag_best / rate * 1e3, "corr": best})
    return out


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def one_call(browser: Browser, url: str, mode: str, seconds: float) -> dict[str, Any]:
    browser.open(url + f"?mode={mode}&aec=0&record=1&voice=female_1&emotion=NEUTRAL")
    browser.js("maata.call()")
    browser.wait("return maata.state === 'connected'", 30)
    browser.wait("return maata.stats.server_ms_p50 != null", 20)
    samples = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        time.sleep(1.0)
        samples.append(browser.js("return {m2e: maata.m2e_ms, stats: maata.stats, browser: maata.browser}"))
    events = browser.js("return maata.events.filter(e => e.type === 'turn').map(e => e.ms)")
    env = browser.js("return maata.envelope")
    browser.js("maata.hangup()")
    time.sleep(1.0)
    estimates = [s["m2e"] for s in samples if s["m2e"] is not None]
    stats = [s["stats"] for s in samples if s["stats"]]
    last = stats[-1] if stats else {}
    result: dict[str, Any] = {
        "mode": mode, "seconds": seconds,
        "estimate_ms_p50": pct(estimates, 50), "estimate_ms_p99": pct(estimates, 99), "estimates_ms": estimates,
        "server_ms_p50": pct([s["server_ms_p50"] for s in stats if s.get("server_ms_p50") is not None], 50),
        "server_ms_p99": pct([s["server_ms_p99"] for s in stats if s.get("server_ms_p99") is not None], 50),
        "encode_ms_p50": pct([s["encode_ms_p50"] for s in stats if s.get("encode_ms_p50") is not None], 50),
        "generate_ms_p50": pct([s["generate_ms_p50"] for s in stats if s.get("generate_ms_p50") is not None], 50),
        "step_ms_p50": pct([s["step_ms_p50"] for s in stats if s.get("step_ms_p50") is not None], 50),
        "backlog_dropped": last.get("backlog_dropped"),
        "decode_ms_p50": pct([s["decode_ms_p50"] for s in stats if s.get("decode_ms_p50") is not None], 50),
        "out_queue_ms_p50": pct([s["out_queue_ms"] for s in stats], 50),
        "rtt_ms_p50": pct([s["browser"]["rtt_ms"] for s in samples if s["browser"].get("rtt_ms") is not None], 50),
        "jitter_ms_p50": pct([s["browser"]["jitter_ms"] for s in samples if s["browser"].get("jitter_ms") is not None], 50),
        "frames_in": last.get("frames_in"), "stale_in": last.get("stale_in"), "frames_out": last.get("frames_out"),
        "dropped_out": last.get("dropped_out"), "turn_ms": events,
    }
    if mode == "echo":
        windows = measure_delays(env)
        good = [w["lag_ms"] for w in windows if w["corr"] >= MIN_CORR]
        result.update(windows=windows, measured_windows=len(good), measured_ms_p50=pct(good, 50),
                      measured_ms_p99=pct(good, 99), measured_ms=good)
    return result


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))

    def shown(run: dict[str, Any], mode: str) -> tuple[list[float], str]:
        """The echo call's measured delays; the model call's estimates, calibrated when possible."""
        r = run["calls"][mode]
        if r.get("measured_ms"):
            return r["measured_ms"], "measured"
        offset = run.get("estimate_offset_ms")
        if offset is None:
            return r["estimates_ms"], "estimate"
        return [e + offset for e in r["estimates_ms"]], f"calibrated estimate ({offset:+.0f} ms)"

    for ax, mode in zip(axes, ("echo", "model")):
        if mode not in results["calls"]:
            continue
        bins = np.arange(0, 500, 10)
        values, what = shown(results, mode)
        ax.hist(values, bins=bins, alpha=0.7, label=f"envelope xcorr: {what}" if what == "measured" else what)
        if mode == "echo":
            ax.hist(results["calls"][mode]["estimates_ms"], bins=bins, alpha=0.5, label="estimate (getStats + server)")
        if mode in results.get("baseline", {}).get("calls", {}):
            values, what = shown(results["baseline"], mode)
            ax.hist(values, bins=bins, histtype="step", color="black", lw=1.2, label=f"baseline, fixed phase: {what}")
        ax.axvline(TARGETS_MS[mode], color="red", ls="--", label=f"target {TARGETS_MS[mode]:.0f} ms")
        ax.set_title(f"({'a' if mode == 'echo' else 'b'}) {mode}: mouth-to-ear")
        ax.set_xlabel("ms")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    calls = results["calls"]
    table = Table(title=f"Browser mouth-to-ear, {results['seconds']:.0f} s per call, loopback "
                        f"({results['models']}; load {results['loadavg'][0]:.1f})")
    table.add_column("path")
    for col in ("measured p50/p99", "estimate p50/p99", "calibrated p50/p99", "server p50/p99", "enc/gen(step)/dec p50",
                "out queue", "RTT", "jitter buf", "target", "met"):
        table.add_column(col, justify="right")

    def pair(a: Any, b: Any) -> str:
        return "–" if a is None else f"{a:.0f} / {b:.0f}"

    rows = [(mode, "", r) for mode, r in calls.items()]
    rows += [(mode, ", fixed phase (baseline)", r) for mode, r in results.get("baseline", {}).get("calls", {}).items()]
    for mode, label, r in rows:
        headline = r.get("measured_ms_p50") if mode == "echo" else r.get("calibrated_ms_p50")
        headline99 = r.get("measured_ms_p99") if mode == "echo" else r.get("calibrated_ms_p99")
        met = headline is not None and headline99 is not None and headline <= TARGETS_MS[mode]
        table.add_row(f"({'a' if mode == 'echo' else 'b'}) {mode}{label}", pair(r.get("measured_ms_p50"), r.get("measured_ms_p99")),
                      pair(r["estimate_ms_p50"], r["estimate_ms_p99"]),
                      pair(r.get("calibrated_ms_p50"), r.get("calibrated_ms_p99")),
                      pair(r["server_ms_p50"], r["server_ms_p99"]),
                      f"{r['encode_ms_p50']}/{r['generate_ms_p50']}({r['step_ms_p50']})/{r['decode_ms_p50']}",
                      f"{r['out_queue_ms_p50']}", f"{r['rtt_ms_p50']}", f"{r['jitter_ms_p50']}",
                      f"≤ {TARGETS_MS[mode]:.0f}", "yes" if met else "no")
    Console().print(table)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from services.serve import load_config

    out = Path(args.json).parent
    out.mkdir(parents=True, exist_ok=True)
    wav = speech_wav(out / "browser_latency_input.wav")
    env = {"MAATA_SERVE__SESSION__SERVER__PORT": "0", "MAATA_SERVE__GATEWAY__SERVER__PORT": "0",
           "MAATA_SERVE__CODEC__SERVER__PORT": "0", "MAATA_SERVE__GENERATION__SERVER__PORT": "0",
           "MAATA_SERVE__GATEWAY__WEBRTC__PORT": "0", "MAATA_SERVE__THREADS": str(args.threads)}
    if in_netns():
        env["MAATA_SERVE__GATEWAY__WEBRTC__HOST_ADDRESSES"] = "['127.0.0.1']"
    untrained = args.untrained or not (ROOT / "checkpoints" / "lm_demo.safetensors").exists()
    results: dict[str, Any] = {"seconds": args.seconds, "models": "untrained tiny" if untrained else "demo checkpoints",
                               "loadavg": list(os.getloadavg()), "cpu": platform.processor() or platform.machine(),
                               "cpus": os.cpu_count(), "netns": in_netns(), "targets_ms": TARGETS_MS}
    results.update(calls_on_a_stack(load_config(environ=env), untrained, wav, args.seconds))
    if args.baseline:
        fixed = {**env, "MAATA_SERVE__GENERATION__ALIGN_PHASE": "false"}
        print("baseline: the generation clock's phase alignment off", file=sys.stderr, flush=True)
        results["baseline"] = calls_on_a_stack(load_config(environ=fixed), untrained, wav, args.seconds)
    results["loadavg_end"] = list(os.getloadavg())
    return results


def calls_on_a_stack(config: Any, untrained: bool, wav: Path, seconds: float) -> dict[str, Any]:
    """The echo and the model call against one stack built from ``config``; the model call's
    estimate calibrated by the echo call's measured offset."""
    from services.serve import BackgroundStack

    stack = BackgroundStack(config, untrained=untrained)
    calls: dict[str, Any] = {}
    result: dict[str, Any] = {"calls": calls}
    try:
        url = stack.stack.browser_url
        with Browser(wav) as browser:
            for mode in ("echo", "model"):
                print(f"{mode} call, {seconds:.0f} s ...", file=sys.stderr, flush=True)
                calls[mode] = one_call(browser, url, mode, seconds)
    finally:
        stack.stop()
    echo = calls["echo"]
    if echo.get("measured_ms_p50") is not None and echo["estimate_ms_p50"] is not None:
        offset = echo["measured_ms_p50"] - echo["estimate_ms_p50"]
        result["estimate_offset_ms"] = round(offset, 1)
        for r in calls.values():
            if r["estimate_ms_p50"] is not None:
                r["calibrated_ms_p50"] = round(r["estimate_ms_p50"] + offset, 1)
                r["calibrated_ms_p99"] = round(r["estimate_ms_p99"] + offset, 1)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description="Browser mouth-to-ear latency (echo and full model) in headless Chromium.")
    p.add_argument("--seconds", type=float, default=60.0, help="length of each call (default 60)")
    p.add_argument("--quick", action="store_true", help="15 s calls")
    p.add_argument("--untrained", action="store_true", help="tiny random models instead of the demo checkpoints")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server (default 1)")
    p.add_argument("--json", default="out/bench/browser_latency.json")
    p.add_argument("--png", default="out/bench/browser_latency.png")
    p.add_argument("--no-netns", action="store_true", help="do not re-run inside a loopback network namespace")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip the baseline calls (generation phase alignment off)")
    args = p.parse_args()
    if args.quick:
        args.seconds = 15.0
    if not in_netns() and not args.no_netns:
        argv = [sys.executable, *sys.argv]
        return subprocess.run(loopback_netns_command(argv), env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode
    results = run(args)
    Path(args.json).write_text(json.dumps(results, indent=1, ensure_ascii=False))
    plot(results, Path(args.png))
    print_table(results)
    print(f"wrote {args.json} and {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
