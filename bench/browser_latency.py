#!/usr/bin/env python
"""Mouth-to-ear latency of a browser call, measured in a real headless Chromium on loopback, for
the current media path and each latency lever, interleaved in one run.

    python bench/browser_latency.py [--seconds 20] [--rounds 2] [--quick] [--untrained]
                                    [--variants baseline,ptime10,...] [--model-variants baseline,current]
                                    [--json out/bench/browser_latency.json] [--png out/bench/browser_latency.png]

Runs the whole system in this process (``maata serve``'s stack, demo checkpoints) with the
browser front end, re-executed inside a loopback-only network namespace (``unshare -n``) so
Chromium and aiortc meet on 127.0.0.1. Chromium's fake microphone plays Telugu sentences with
pauses between them (espeak-ng). Each **variant** is a set of ``gateway.webrtc`` settings (and
page options) applied to the one running stack between calls (``VARIANTS``: the current path,
one lever each on top of it, the configured defaults, all levers together); every round calls each variant in turn, so a variant and
the baseline see the same machine load:

* **(a) echo**: the codec-only path (user codes come straight back: encode -> decode). The page
  records the level envelope of its microphone track and of the agent's track on one AudioContext
  clock (an AudioWorklet, 2.7 ms per value); cross-correlating the two over 4 s windows gives the
  **measured** mouth-to-ear delay per window (capture -> Opus -> network -> gateway -> codec ->
  Opus -> jitter buffer -> playout graph). Only windows whose correlation peak is clear count.
* **(b) model**: the full S2S model. Its answer is not an echo, so the delay cannot be read off
  the audio; the page's **estimate** is used: codec frame + the browser's Opus packet + network
  RTT + the server's per-frame time (arrival -> agent frame out, p50 of the last second) + the
  server's output queue + the browser's jitter buffer (getStats). The echo call of the same
  variant and round measures how far that estimate is off, and (b) is shown **calibrated** by
  that offset.

Chrome's concealment counters (concealedSamples, insertedSamplesForDeceleration,
removedSamplesForAcceleration) are recorded per call: a lever must not buy latency with
concealment. Prints a table, writes JSON and a PNG. The machine is shared: the JSON records the
load average; timings move with it.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from maata.served import SERVED_CODEC, SERVED_LM  # noqa: E402
from tests.support.chromium import Browser, in_netns, loopback_netns_command  # noqa: E402

SENTENCES = ["నమస్కారం, మీ పేరు ఏమిటి?", "ఈ రోజు వాతావరణం ఎలా ఉంది?", "బ్యాంక్ ఎన్ని గంటలకు తెరుస్తారు?",
             "నాకు హైదరాబాద్ కి దారి చెప్పండి.", "మీకు ఏ భోజనం ఇష్టం?"]
TARGETS_MS = {"echo": 130.0, "model": 160.0}
# the media path before these levers: soxr HQ both ways, aiortc's buffer cut to one packet,
# Opus voip, 20 ms packets, the fixed send clock (and the page's jitterBufferTarget 0)
BASELINE: dict[str, Any] = {"resample_quality": "HQ", "in_jitter_packets": 1, "opus_application": "voip",
                            "ptime_in_ms": 0, "ptime_out_ms": 20, "out_pacing": "fixed", "out_late_ms": 0.0}
# the baseline with one lever each, the configured defaults ("current"), and every lever together
# (webrtc settings, plus "page": URL options of the call page)
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": BASELINE,
    "resample_ld": {**BASELINE, "resample_quality": "LD"},
    "arrival_jb": {**BASELINE, "in_jitter_packets": 0},
    "opus_lowdelay": {**BASELINE, "opus_application": "lowdelay"},
    "ptime10": {**BASELINE, "ptime_in_ms": 10, "ptime_out_ms": 10},
    "anchored": {**BASELINE, "out_pacing": "anchored", "out_late_ms": 20.0},
    "chrome_jbt_default": {**BASELINE, "page": "&jbt=none"},
    "current": {},
    "current_ptime10": {"ptime_in_ms": 10, "ptime_out_ms": 10},
    "current_anchored": {"out_pacing": "anchored", "out_late_ms": 20.0},
    "levers": {"resample_quality": "LD", "in_jitter_packets": 0, "opus_application": "lowdelay",
               "ptime_in_ms": 10, "ptime_out_ms": 10, "out_pacing": "anchored", "out_late_ms": 20.0},
}
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


def one_call(browser: Browser, url: str, mode: str, seconds: float, page: str = "") -> dict[str, Any]:
    browser.open(url + f"?mode={mode}&aec=0&record=1&voice=female_1&emotion=NEUTRAL{page}")
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
        "out_wait_ms_p50": pct([s["out_wait_ms_p50"] for s in stats if s.get("out_wait_ms_p50") is not None], 50),
        "out_wait_ms_p99": pct([s["out_wait_ms_p99"] for s in stats if s.get("out_wait_ms_p99") is not None], 50),
        "rtt_ms_p50": pct([s["browser"]["rtt_ms"] for s in samples if s["browser"].get("rtt_ms") is not None], 50),
        "jitter_ms_p50": pct([s["browser"]["jitter_ms"] for s in samples if s["browser"].get("jitter_ms") is not None], 50),
        "frames_in": last.get("frames_in"), "stale_in": last.get("stale_in"), "frames_out": last.get("frames_out"),
        "dropped_out": last.get("dropped_out"), "turn_ms": events,
        "late_out": last.get("late_out"), "silent_out": last.get("silent_out"), "clock_moved_ms": last.get("clock_moved_ms"),
        "jitter_target_ms_p50": pct([s["browser"]["jitter_target_ms"] for s in samples
                                     if s["browser"].get("jitter_target_ms") is not None], 50),
        "ptime_in_ms": pct([s["browser"]["ptime_out_ms"] for s in samples if s["browser"].get("ptime_out_ms")], 50),
    }
    final = samples[-1]["browser"] if samples else {}
    for key in ("concealed", "decelerated", "accelerated", "concealment_events", "packets_in"):
        result[key] = final.get(key)
    if mode == "echo":
        windows = measure_delays(env)
        good = [w["lag_ms"] for w in windows if w["corr"] >= MIN_CORR]
        result.update(windows=windows, measured_windows=len(good), measured_ms_p50=pct(good, 50),
                      measured_ms_p99=pct(good, 99), measured_ms=good)
    return result


def summarise(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant and mode over all rounds: pooled measured delays (echo) or calibrated estimates
    (model), and the per-call medians of everything else."""
    out: dict[str, Any] = {"calls": len(calls)}
    measured = [v for c in calls for v in c.get("measured_ms", [])]
    calibrated = [v for c in calls for v in c.get("calibrated_ms", [])]
    out["measured_ms_p50"], out["measured_ms_p99"] = pct(measured, 50), pct(measured, 99)
    out["measured_windows"] = len(measured)
    out["calibrated_ms_p50"], out["calibrated_ms_p99"] = pct(calibrated, 50), pct(calibrated, 99)
    for key in ("estimate_ms_p50", "server_ms_p50", "server_ms_p99", "out_queue_ms_p50", "out_wait_ms_p50",
                "out_wait_ms_p99", "jitter_ms_p50",
                "jitter_target_ms_p50", "rtt_ms_p50", "ptime_in_ms", "encode_ms_p50", "generate_ms_p50",
                "step_ms_p50", "decode_ms_p50"):
        values = [c[key] for c in calls if c.get(key) is not None]
        out[key] = pct(values, 50)
    for key in ("concealed", "decelerated", "accelerated", "concealment_events", "packets_in", "late_out",
                "silent_out", "dropped_out", "stale_in"):
        out[key] = sum(c.get(key) or 0 for c in calls)
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    bins = np.arange(0, 400, 5)
    for ax, mode in zip(axes, ("echo", "model")):
        key = "measured_ms" if mode == "echo" else "calibrated_ms"
        for name in results["variants"]:
            values = [v for c in results["calls"] if c["variant"] == name and c["mode"] == mode for v in c.get(key, [])]
            if values and name in ("baseline", "current"):
                ax.hist(values, bins=bins, alpha=0.6, label=f"{name} ({'measured' if mode == 'echo' else 'calibrated estimate'})")
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

    load = results["loadavg"][0], results["loadavg_end"][0]
    table = Table(title=f"Browser mouth-to-ear, {results['rounds']} round(s) x {results['seconds']:.0f} s calls, loopback "
                        f"({results['models']}; load {load[0]:.1f} -> {load[1]:.1f})")
    table.add_column("variant")
    for col in ("path", "mouth-to-ear p50/p99", "vs baseline p50", "server p50/p99", "out wait p50/p99", "jitter buf (target)",
                "page ptime", "concealed / decel / accel", "late / silent out", "met"):
        table.add_column(col, justify="right")

    def pair(a: Any, b: Any) -> str:
        return "–" if a is None else f"{a:.0f} / {b:.0f}"

    for mode in ("echo", "model"):
        base = results["summary"].get("baseline", {}).get(mode, {})
        for name, modes in results["summary"].items():
            r = modes.get(mode)
            if r is None:
                continue
            head = r["measured_ms_p50"] if mode == "echo" else r["calibrated_ms_p50"]
            head99 = r["measured_ms_p99"] if mode == "echo" else r["calibrated_ms_p99"]
            base_head = base.get("measured_ms_p50" if mode == "echo" else "calibrated_ms_p50")
            delta = "–" if head is None or base_head is None or name == "baseline" else f"{head - base_head:+.0f}"
            met = head is not None and head99 is not None and head <= TARGETS_MS[mode] and head99 - head <= 30
            table.add_row(name, f"({'a' if mode == 'echo' else 'b'}) {mode}" + ("" if mode == "echo" else " (calibrated)"),
                          pair(head, head99), delta, pair(r["server_ms_p50"], r["server_ms_p99"]),
                          f"{r['out_wait_ms_p50']} / {r['out_wait_ms_p99']}",
                          f"{r['jitter_ms_p50']} ({r['jitter_target_ms_p50']})",
                          f"{r['ptime_in_ms']}", f"{r['concealed']} / {r['decelerated']} / {r['accelerated']}",
                          f"{r['late_out']} / {r['silent_out']}", "yes" if met else "no")
    Console().print(table)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from services.serve import BackgroundStack, load_config

    out = Path(args.json).parent
    out.mkdir(parents=True, exist_ok=True)
    wav = speech_wav(out / "browser_latency_input.wav")
    env = {"MAATA_SERVE__SESSION__SERVER__PORT": "0", "MAATA_SERVE__GATEWAY__SERVER__PORT": "0",
           "MAATA_SERVE__CODEC__SERVER__PORT": "0", "MAATA_SERVE__GENERATION__SERVER__PORT": "0",
           "MAATA_SERVE__GATEWAY__WEBRTC__PORT": "0", "MAATA_SERVE__THREADS": str(args.threads)}
    if in_netns():
        env["MAATA_SERVE__GATEWAY__WEBRTC__HOST_ADDRESSES"] = "['127.0.0.1']"
    untrained = args.untrained or not ((ROOT / SERVED_CODEC).exists() and (ROOT / SERVED_LM).exists())
    variants = args.variants.split(",")
    model_variants = [v for v in args.model_variants.split(",") if v]
    for name in variants + model_variants:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    results: dict[str, Any] = {"seconds": args.seconds, "rounds": args.rounds,
                               "models": "untrained tiny" if untrained else "demo checkpoints",
                               "loadavg": list(os.getloadavg()), "cpu": platform.processor() or platform.machine(),
                               "cpus": os.cpu_count(), "netns": in_netns(), "targets_ms": TARGETS_MS,
                               "variants": {n: VARIANTS[n] for n in dict.fromkeys(variants + model_variants)},
                               "calls": []}
    config = load_config(environ=env)
    results["codec_latency_ms"] = codec_latency_ms(config, untrained)
    stack = BackgroundStack(config, untrained=untrained)
    try:
        server = stack.stack.gateway.webrtc
        base_config = server.config
        url = stack.stack.browser_url
        with Browser(wav) as browser:
            for rnd in range(args.rounds):
                # each round starts one variant later, so no setting always runs first (a cold
                # browser) or right after the same neighbour
                shift = rnd % len(variants)
                echo_order = variants[shift:] + variants[:shift]
                shift = rnd % max(1, len(model_variants))
                model_order = model_variants[shift:] + model_variants[:shift]
                plan = [(n, "echo") for n in echo_order] + [(n, "model") for n in model_order]
                for name, mode in plan:
                    settings = {k: v for k, v in VARIANTS[name].items() if k != "page"}
                    server.config = dataclasses.replace(base_config, **settings)
                    print(f"round {rnd + 1}/{args.rounds}: {name} {mode}, {args.seconds:.0f} s (load "
                          f"{os.getloadavg()[0]:.1f}) ...", file=sys.stderr, flush=True)
                    call = one_call(browser, url, mode, args.seconds, VARIANTS[name].get("page", ""))
                    call.update(variant=name, round=rnd, loadavg=os.getloadavg()[0])
                    results["calls"].append(call)
    finally:
        stack.stop()
    calibrate(results["calls"])
    summary: dict[str, dict[str, Any]] = {}
    for name in results["variants"]:
        for mode in ("echo", "model"):
            calls = [c for c in results["calls"] if c["variant"] == name and c["mode"] == mode]
            if calls:
                summary.setdefault(name, {})[mode] = summarise(calls)
    results["summary"] = summary
    results["loadavg_end"] = list(os.getloadavg())
    return results


def codec_latency_ms(config: Any, untrained: bool) -> float | None:
    """The served codec's algorithmic latency (``CodecConfig.latency_ms``: one frame, plus any
    overlap a codec version adds), read from its checkpoint's config: the budget's fixed term."""
    if untrained:
        return None
    from maata import config as cfglib
    from maata.checkpoint import read_metadata
    from maata.codec.model import CodecConfig

    meta = read_metadata(ROOT / config.codec_checkpoint)
    return float(cfglib.from_dict(CodecConfig, json.loads(meta["config"])).latency_ms)


def calibrate(calls: list[dict[str, Any]]) -> None:
    """Each model call's estimates shifted by the offset (measured - estimate) of the echo call of
    the same variant and round (the same media path, minutes apart on the same machine)."""
    for call in calls:
        if call["mode"] != "model":
            continue
        echo = next((c for c in calls if c["mode"] == "echo" and c["variant"] == call["variant"]
                     and c["round"] == call["round"] and c.get("measured_ms_p50") is not None), None)
        if echo is None or echo["estimate_ms_p50"] is None:
            continue
        offset = echo["measured_ms_p50"] - echo["estimate_ms_p50"]
        call["estimate_offset_ms"] = round(offset, 1)
        call["calibrated_ms"] = [e + offset for e in call["estimates_ms"]]


def main() -> int:
    p = argparse.ArgumentParser(description="Browser mouth-to-ear latency (echo and full model) in headless Chromium, "
                                            "per media-path variant.")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each call (default 20)")
    p.add_argument("--rounds", type=int, default=2, help="rounds over the variants (interleaved; default 2)")
    p.add_argument("--quick", action="store_true", help="one round of 12 s calls, baseline and current only")
    p.add_argument("--variants", default=",".join(VARIANTS), help="echo calls: variants to measure (default all)")
    p.add_argument("--model-variants", default="baseline,current", help="model calls: variants (default baseline,current)")
    p.add_argument("--untrained", action="store_true", help="tiny random models instead of the demo checkpoints")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server (default 1)")
    p.add_argument("--json", default="out/bench/browser_latency.json")
    p.add_argument("--png", default="out/bench/browser_latency.png")
    p.add_argument("--no-netns", action="store_true", help="do not re-run inside a loopback network namespace")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.variants = 12.0, 1, "baseline,current"
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
