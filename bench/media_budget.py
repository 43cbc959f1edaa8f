#!/usr/bin/env python
"""The server's share of a browser call's mouth-to-ear delay, per media-path setting, measured on
the real components in virtual time (independent of the machine's load):

    python bench/media_budget.py [--seconds 30] [--json out/bench/media_budget.json]

* **in**: the browser's Opus packets (10 or 20 ms) arrive on an exact clock; each goes through the
  receive jitter buffer (aiortc's with prefetch 1, or ``ArrivalJitterBuffer``), the 48 -> 16 kHz
  resampler (soxr HQ or ``FirResampleStream``) and the pipeline's 40 ms framing. Per codec frame:
  **frame complete - last sample captured** (plus the resampler's filter delay), i.e. what the
  server adds on top of the codec frame itself and the packet the browser fills.
* **out**: agent frames arrive every 40 ms with the server's frame-time jitter (``--jitter``
  quantiles: the echo path's and the model's, from ``bench/browser_latency.py`` on an idle
  machine); each goes through the 16 -> 48 kHz resampler and ``AgentTrack`` (fixed or anchored
  clock, 10 or 20 ms packets) driven by an event loop whose clock only moves when everything
  waits. Per sample: **packet sent - sample available** (the agent frame's arrival plus its
  place in the frame), and how irregular the sending is (what the browser's jitter buffer sees).

Opus's own look-ahead (6.5 ms voip, 2.5 ms lowdelay: libopus' pre-skip) is fixed per setting and
listed as such; what Chrome does inside (capture, jitter buffer, playout) is not modelled here
(``bench/browser_latency.py`` measures the whole path).
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import soxr  # noqa: E402
from aiortc.jitterbuffer import JitterBuffer  # noqa: E402
from aiortc.rtp import RtpPacket  # noqa: E402

from maata.resample_stream import FirResampleStream  # noqa: E402
from services.gateway.media import ArrivalJitterBuffer  # noqa: E402
from services.gateway.webrtc import AgentTrack  # noqa: E402
from tests.support.virtual_time import virtual_time_loop  # noqa: E402

RATE, CODEC_RATE, HOP = 48000, 16000, 640
# the server's per-frame time (arrival -> agent frame out) on an idle machine, ms p50 / p99
# (README, bench/browser_latency.py): the agent frames' arrival jitter
JITTER = {"echo": (10.0, 16.0), "model": (38.0, 60.0)}


def resampler(kind: str, rate_in: int, rate_out: int) -> Any:
    if kind == "LD":
        return FirResampleStream(rate_in, rate_out)
    return soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32", quality=kind)


def filter_delay_s(kind: str, rate_in: int, rate_out: int) -> float:
    """The resampler's own signal delay (soxr compensates its filter by holding output back, which
    the timing already shows; the FIR stream emits at once, delayed by half its filter)."""
    return FirResampleStream(rate_in, rate_out).delay if kind == "LD" else 0.0


def input_side(ptime_ms: int, jitter_buffer: str, quality: str, seconds: float) -> dict[str, float]:
    """ms the server adds from a codec frame's last captured sample to the frame being complete."""
    n = RATE * ptime_ms // 1000
    jb = ArrivalJitterBuffer() if jitter_buffer == "arrival" else JitterBuffer(capacity=16, prefetch=1)
    rs = resampler(quality, RATE, CODEC_RATE)
    buffered, framed, waits = 0, 0, []
    for k in range(int(seconds * 1000 / ptime_ms)):
        arrival = (k + 1) * ptime_ms / 1000  # the packet leaves when its last sample is captured
        packet = RtpPacket(payload_type=111, sequence_number=k % 65536, timestamp=k * n)
        packet._data = b"\x00"  # type: ignore[attr-defined]
        _, frame = jb.add(packet)
        if frame is None:
            continue
        buffered += rs.resample_chunk(np.zeros(n, np.float32)).size
        while buffered - framed * HOP >= HOP:
            framed += 1
            last_captured = framed * HOP / CODEC_RATE  # the frame's last sample (at 16 kHz)
            waits.append((arrival - last_captured + filter_delay_s(quality, RATE, CODEC_RATE)) * 1e3)
    w = np.asarray(waits[5:])
    return {"mean": round(float(w.mean()), 1), "p50": round(float(np.percentile(w, 50)), 1),
            "p99": round(float(np.percentile(w, 99)), 1)}


def output_side(ptime_ms: int, pacing: str, late_ms: float, quality: str, jitter: tuple[float, float],
                seconds: float, seed: int = 0) -> dict[str, float]:
    """Per agent sample: ms from its frame's arrival (plus its place in the frame) to its packet
    being sent; and the sending's irregularity (|send time - its tick on a regular grid|)."""
    loop = virtual_time_loop()
    rng = np.random.default_rng(seed)
    p50, p99 = jitter
    sigma = max(1e-3, np.log(p99 / p50) / 2.326)  # a log-normal frame time with these quantiles
    frames = int(seconds / 0.04)
    phase = rng.uniform(0, 0.04)
    arrivals = np.maximum.accumulate(0.5 + phase + np.arange(frames) * 0.04
                                     + rng.lognormal(np.log(p50 / 1e3), sigma, frames))
    rs = resampler(quality, CODEC_RATE, RATE)
    delay = filter_delay_s(quality, CODEC_RATE, RATE)
    track = AgentTrack(max_frames=120 // ptime_ms * 10, ptime_ms=ptime_ms, pacing=pacing, late_ms=late_ms)
    track.clock = loop.time
    # each sample's content index -> when it became available (frame arrival + place in the frame)
    fed: list[tuple[int, float]] = []  # (first content index of the chunk, arrival)
    sends: list[tuple[float, int, bool]] = []  # (time, content start index or -1 for silence)

    async def feed() -> None:
        for n, t in enumerate(arrivals):
            await asyncio.sleep(max(0.0, t - loop.time()))
            pcm = rs.resample_chunk(np.full(HOP, 0.1, np.float32))
            fed.append((n, loop.time()))
            track.put((pcm * 32767).astype(np.int16) if pcm.size else np.zeros(0, np.int16))

    async def send() -> None:
        content = 0
        while loop.time() < arrivals[-1] + 0.2:
            before = (track.dropped, track.silent)
            frame = await track.recv()
            dropped = track.dropped - before[0]
            content += dropped * track.samples
            silent = track.silent > before[1]
            sends.append((loop.time(), -1 if silent else content, silent))
            if not silent:
                content += track.samples

    async def both() -> None:
        feeder = asyncio.ensure_future(feed())
        await send()
        feeder.cancel()

    loop.run_until_complete(both())
    loop.close()
    extra = []
    for t, start, silent in sends:
        if silent or start < 0:
            continue
        # content index (48 kHz, after the resampler) -> agent frame and place in it
        signal_index = start / RATE - delay
        frame = int(signal_index // 0.04)
        if frame < 5 or frame >= len(arrivals):
            continue
        available = arrivals[frame] + (signal_index - frame * 0.04)
        extra.append((t - available) * 1e3)
    times = np.asarray([t for t, _, _ in sends[50:]])
    grid = times[0] + np.arange(times.size) * ptime_ms / 1e3
    drift = times - grid
    irregular = np.abs(np.diff(times) * 1e3 - ptime_ms)
    e = np.asarray(extra)
    return {"mean": round(float(e.mean()), 1), "p50": round(float(np.percentile(e, 50)), 1),
            "p99": round(float(np.percentile(e, 99)), 1),
            "send_interval_dev_ms_p99": round(float(np.percentile(irregular, 99)), 1),
            "send_drift_ms": round(float(drift.max() - drift.min()), 1),
            "silent_packets": int(track.silent), "dropped_packets": int(track.dropped), "late_packets": int(track.late)}


def opus_lookahead_ms(application: str) -> float:
    """libopus' pre-skip for this application: the encoder's look-ahead."""
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate, codec.format, codec.layout, codec.sample_rate = 96000, "s16", "mono", RATE
    codec.time_base = fractions.Fraction(1, RATE)
    codec.options = {"application": application, "frame_duration": "20"}
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = RATE, 0, fractions.Fraction(1, RATE)
    (packet,) = codec.encode(frame)
    return -float(packet.pts) / RATE * 1e3


IN_VARIANTS = {"baseline (20 ms, prefetch 1, soxr HQ)": (20, "prefetch1", "HQ"),
               "resample LD": (20, "prefetch1", "LD"),
               "ptime 10": (10, "prefetch1", "HQ"),
               "arrival jitter buffer": (20, "arrival", "HQ"),
               "resample LD + arrival (the defaults)": (20, "arrival", "LD"),
               "all three": (10, "arrival", "LD")}
OUT_VARIANTS = {"baseline (20 ms, fixed, soxr HQ)": (20, "fixed", 0.0, "HQ"),
                "resample LD (the defaults)": (20, "fixed", 0.0, "LD"),
                "ptime 10": (10, "fixed", 0.0, "HQ"),
                "anchored, late 20 ms": (20, "anchored", 20.0, "HQ"),
                "resample LD + ptime 10": (10, "fixed", 0.0, "LD"),
                "resample LD + ptime 10 + anchored, late 0": (10, "anchored", 0.0, "LD"),
                "all three": (10, "anchored", 20.0, "LD")}


def main() -> int:
    p = argparse.ArgumentParser(description="The server's share of browser mouth-to-ear, per media setting (virtual time).")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--seeds", type=int, default=5, help="random agent-frame phases/jitter per output variant")
    p.add_argument("--json", default="out/bench/media_budget.json")
    args = p.parse_args()
    from rich.console import Console
    from rich.table import Table

    results: dict[str, Any] = {"seconds": args.seconds, "jitter_ms": JITTER, "in": {}, "out": {},
                               "opus_lookahead_ms": {a: opus_lookahead_ms(a) for a in ("voip", "lowdelay")}}
    table = Table(title="in: the server's wait from a codec frame's last captured sample to the frame complete (ms)")
    for col in ("setting", "mean", "p50", "p99"):
        table.add_column(col, justify="right")
    for name, v in IN_VARIANTS.items():
        r = input_side(*v, args.seconds)
        results["in"][name] = r
        table.add_row(name, *(str(r[k]) for k in ("mean", "p50", "p99")))
    Console().print(table)
    for path, jitter in JITTER.items():
        table = Table(title=f"out ({path} path, agent frame time {jitter[0]:g} / {jitter[1]:g} ms p50 / p99): "
                            f"sample available -> its packet sent (ms), {args.seeds} phases")
        for col in ("setting", "mean", "p50", "p99", "send interval dev p99", "silent / dropped / late pkts"):
            table.add_column(col, justify="right")
        for name, v in OUT_VARIANTS.items():
            runs = [output_side(*v, jitter, args.seconds, seed) for seed in range(args.seeds)]
            r = {k: round(float(np.mean([x[k] for x in runs])), 1) for k in runs[0]}
            results["out"].setdefault(path, {})[name] = {"mean_over_seeds": r, "seeds": runs}
            table.add_row(name, str(r["mean"]), str(r["p50"]), str(r["p99"]), str(r["send_interval_dev_ms_p99"]),
                          f"{r['silent_packets']:g} / {r['dropped_packets']:g} / {r['late_packets']:g}")
        Console().print(table)
    print("Opus look-ahead (ms):", results["opus_lookahead_ms"])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
