#!/usr/bin/env python
"""Codec speed on CPU: real-time factors, per-frame streaming latency, memory, and baselines.

    python bench/codec_speed.py [--checkpoint C | --preset default] [--baseline seanet] [--json out.json] [--quick]

``--baseline`` (a preset name or a checkpoint) measures a second codec in the same run and
prints the two side by side (e.g. codec v2 against v1: ``--preset default --baseline seanet``).

Measures, on one synthetic speech-like signal:

* encode+decode real-time factor (RTF = compute seconds / audio seconds; lower is better)
  offline and streaming in 1 s chunks, with 1 and 2 torch threads;
* streaming latency of one frame (encode_step + decode_step of a frame, after warm-up) at
  batch 1 and 16 with one thread, as a serving worker runs: p50 / p99 / mean;
* memory: weights, streaming state bytes per call, and the peak RSS growth of an offline
  run and of batch-16 streaming (Linux: VmHWM is reset through /proc/self/clear_refs; torch's
  allocations are invisible to tracemalloc);
* algorithmic latency (one frame, no look-ahead);
* baselines in the same run: Opus 6 kbps encode+decode through PyAV/libopus, and the codec
  under torch.compile, offline and streaming (``Codec.compile_streaming``; skipped with a note
  where it fails, or with --quick / --no-compile).

Prints a rich table and writes JSON. On a shared machine the timings move with the load;
the JSON records the load average at the start.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maata.codec.commands import codec_summary
from maata.codec.evaluate import torch_threads
from maata.codec.model import Codec
from maata.codec.opus import opus_decode, opus_encode, opus_roundtrip

from benchlib import tensor_bytes, write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="codec checkpoint (.safetensors)")
    src.add_argument("--preset", default="default", help="untrained codec of this preset (default: default)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--quick", action="store_true", help="short audio, few repeats, no torch.compile (for tests)")
    p.add_argument("--seconds", type=float, help="audio length for the RTF runs (default 10; --quick 2)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--baseline", help="a second codec (preset name or .safetensors) measured in the same run")
    return p.parse_args(argv)


def load_codec_for_bench(args: argparse.Namespace) -> Codec:
    """The checkpoint's codec, or an untrained one of ``--preset`` (speed does not depend on training)."""
    from maata.checkpoint import fold_weight_norm, load_codec
    from maata.codec.model import Codec, load_preset

    if args.checkpoint:
        return load_codec(args.checkpoint)
    return fold_weight_norm(Codec(load_preset(args.preset))).eval()


def speech_like(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """A deterministic voiced signal: a gliding 100-220 Hz harmonic tone with syllable-rate
    amplitude modulation, pauses, and a little noise (about -20 dBFS)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 160 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 16))
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) * (np.sin(2 * np.pi * 0.25 * t) > -0.6)
    x = 0.1 * voiced * envelope + 0.003 * rng.standard_normal(t.size)
    return x.astype(np.float32)


# -- timing --------------------------------------------------------------------------------------
def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def rtf_entry(seconds_compute: float, seconds_audio: float) -> dict[str, float]:
    rtf = seconds_compute / seconds_audio
    return {"rtf": rtf, "x_realtime": 1.0 / rtf if rtf > 0 else math.inf}


def offline_roundtrip(codec: Codec, wav: torch.Tensor) -> torch.Tensor:
    return codec.decode(codec.encode(wav))


def streaming_roundtrip(codec: Codec, wav: torch.Tensor, chunk: int) -> None:
    """Feed ``wav`` [B, T] through encode_step/decode_step in chunks of ``chunk`` samples."""
    state = codec.init_state(wav.shape[0])
    for i in range(0, wav.shape[1], chunk):
        codec.decode_step(state, codec.encode_step(state, wav[:, i: i + chunk]))


def frame_latency(codec: Codec, batch: int, frames: int, warmup: int, seed: int = 0) -> dict[str, float]:
    """Per-frame encode_step + decode_step times (ms) for ``batch`` streams of one frame each."""
    gen = torch.Generator().manual_seed(seed)
    state = codec.init_state(batch)
    pcm = 0.1 * torch.randn(batch, (warmup + frames) * codec.hop, generator=gen)
    times = []
    for i in range(warmup + frames):
        x = pcm[:, i * codec.hop: (i + 1) * codec.hop]
        t = time.perf_counter()
        codec.decode_step(state, codec.encode_step(state, x))
        if i >= warmup:
            times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1000
    frame_ms = 1000.0 * codec.hop / codec.cfg.sample_rate  # audio per step (not the latency)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "max_ms": float(ms.max()), "frames": frames,
            "rtf": float(ms.mean() / frame_ms), "streams_per_core": float(batch * frame_ms / ms.mean())}


# -- memory --------------------------------------------------------------------------------------


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc keeps them), so RSS growth counts new memory."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def peak_rss_growth_mb(fn: Callable[[], Any]) -> tuple[float | None, str]:
    """Peak resident memory above the starting RSS while ``fn()`` runs (MB), and the method used."""
    import resource

    _release_free_heap()
    rss = _proc_status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        fn()
        hwm = _proc_status_kb("VmHWM")
        if rss is not None and hwm is not None:
            return (hwm - rss) / 1024, "VmHWM after clear_refs"
    except OSError:
        pass
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) / 1024, "ru_maxrss growth (0 when below an earlier peak)"


def memory(codec: Codec, wav: torch.Tensor, batch: int) -> dict[str, Any]:
    weights = sum(tensor_bytes(t) for t in list(codec.parameters()) + list(codec.buffers()))
    state1 = codec.init_state(1)
    stateb = codec.init_state(batch)
    streaming_mb, method = peak_rss_growth_mb(
        lambda: streaming_roundtrip(codec, wav[None].expand(batch, -1)[:, : 50 * codec.hop].contiguous(), codec.hop))
    offline_mb, _ = peak_rss_growth_mb(lambda: offline_roundtrip(codec, wav[None, None]))
    return {"weights_mb": weights / 2 ** 20,
            "state_bytes_per_call": {"batch_1": tensor_bytes(state1), f"batch_{batch}": tensor_bytes(stateb) / batch},
            "peak_rss_growth_mb": {"offline": offline_mb, f"streaming_batch_{batch}": streaming_mb},
            "method": f"{method}, after malloc_trim"}


# -- baselines -----------------------------------------------------------------------------------
def opus_baseline(x: np.ndarray, sr: int, kbps: float, repeats: int) -> dict[str, float]:
    seconds = x.size / sr
    packets, head = opus_encode(x, sr, kbps, vbr="constrained")
    return {"kbps_target": kbps,
            "kbps_measured": opus_roundtrip(x, sr, kbps, vbr="constrained").kbps,
            **rtf_entry(median_time(lambda: opus_roundtrip(x, sr, kbps, vbr="constrained"), repeats), seconds),
            "encode_rtf": median_time(lambda: opus_encode(x, sr, kbps, vbr="constrained"), repeats) / seconds,
            "decode_rtf": median_time(lambda: opus_decode(packets, head), repeats) / seconds,
            "note": "PyAV/libopus, constrained VBR, voip, 20 ms; the round trip includes 48->16 kHz resampling"}


def compiled_baseline(codec: Codec, wav: torch.Tensor, repeats: int, eager_rtf: float) -> dict[str, Any]:
    """Offline RTF with encoder/decoder/transformers under torch.compile (inductor), one thread."""
    try:
        compiled = copy.deepcopy(codec)
        for name in ("encoder", "enc_transformer", "dec_transformer", "decoder"):
            setattr(compiled, name, torch.compile(getattr(compiled, name), dynamic=False))
        t = time.perf_counter()
        y = offline_roundtrip(compiled, wav)
        compile_s = time.perf_counter() - t
        err = float((y - offline_roundtrip(codec, wav)).abs().max())
        seconds = wav.shape[-1] / codec.cfg.sample_rate
        rtf = median_time(lambda: offline_roundtrip(compiled, wav), repeats, warmup=0) / seconds
    except Exception as e:  # no compiler, unsupported op, ...: a baseline we do not have here
        return {"status": "failed", "note": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    return {"status": "ok", "compile_s": compile_s, "rtf": rtf, "x_realtime": 1 / rtf,
            "speedup_vs_eager": eager_rtf / rtf, "max_abs_diff": err,
            "note": "offline encode+decode, 1 thread, inductor"}


def compiled_streaming(codec: Codec, batches: tuple[int, ...], frames: int, warmup: int,
                       eager: dict[str, Any]) -> dict[str, Any]:
    """Per-frame streaming latency with ``Codec.compile_streaming`` (inductor), one thread."""
    out: dict[str, Any] = {"note": "encode_step + decode_step cores under torch.compile (dynamic=False): "
                                   "one compile per batch size, timed as compile_s"}
    try:
        compiled = copy.deepcopy(codec).compile_streaming()
        for b in batches:
            t = time.perf_counter()
            frame_latency(compiled, b, 1, 0)  # the compile
            compile_s = time.perf_counter() - t
            e = frame_latency(compiled, b, frames, warmup)
            out[f"batch_{b}"] = {"threads": 1, "compile_s": compile_s, **e,
                                 "speedup_vs_eager": eager[f"batch_{b}"]["p50_ms"] / e["p50_ms"]}
    except Exception as e:  # no compiler, unsupported op, ...: a variant we do not have here
        return {"status": "failed", "note": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    return {"status": "ok", **out}


# -- run -----------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    codec = load_codec_for_bench(args)
    sr = codec.cfg.sample_rate
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    repeats = 1 if args.quick else 3
    x = speech_like(seconds, sr)
    wav = torch.from_numpy(x)
    batch = 16
    frames, warmup = (20, 5) if args.quick else (200, 20)

    result: dict[str, Any] = {
        "codec": codec_summary(codec),
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "torch": torch.__version__,
                    "python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "audio_seconds": seconds,
        "algorithmic_latency_ms": codec.cfg.latency_ms,
        "offline": {}, "streaming_1s": {},
    }
    for threads in (1, 2):
        with torch_threads(threads):
            result["offline"][f"threads_{threads}"] = rtf_entry(
                median_time(lambda: offline_roundtrip(codec, wav[None, None]), repeats), seconds)
            result["streaming_1s"][f"threads_{threads}"] = rtf_entry(
                median_time(lambda: streaming_roundtrip(codec, wav[None], sr), repeats), seconds)
    with torch_threads(1):
        result["frame_latency"] = {f"batch_{b}": {"threads": 1, **frame_latency(codec, b, frames, warmup)}
                                   for b in (1, batch)}
        result["memory"] = memory(codec, wav, batch)
        result["opus_6kbps"] = opus_baseline(x, sr, 6.0, max(repeats, 3))
        if args.quick or args.no_compile:
            skipped = {"status": "skipped", "note": "--quick" if args.quick else "--no-compile"}
            result["torch_compile"] = result["frame_latency_compiled"] = skipped
        else:
            result["torch_compile"] = compiled_baseline(codec, wav[None, None], repeats,
                                                        result["offline"]["threads_1"]["rtf"])
            result["frame_latency_compiled"] = compiled_streaming(codec, (1, batch), frames, warmup,
                                                                  result["frame_latency"])
    return result


def print_table(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    c = r["codec"]
    mach = r["machine"]
    table = Table(title=f"Codec speed: {c['preset']} ({c['params'] / 1e6:.2f} M params, {c['bitrate_kbps']:g} kbps, "
                        f"{c['frame_rate_hz']:g} Hz) on {mach['cpus']} CPUs, load {mach['load_avg_1m']:.1f}")
    table.add_column("Measure")
    table.add_column("1 thread", justify="right")
    table.add_column("2 threads", justify="right")

    def rtf(e: dict) -> str:
        return f"{e['rtf']:.4f} ({e['x_realtime']:.0f}x)"

    table.add_row("Offline encode+decode RTF", rtf(r["offline"]["threads_1"]), rtf(r["offline"]["threads_2"]))
    table.add_row("Streaming 1 s chunks RTF", rtf(r["streaming_1s"]["threads_1"]), rtf(r["streaming_1s"]["threads_2"]))
    for key, e in r["frame_latency"].items():
        table.add_row(f"Frame latency {key.replace('_', ' ')} p50 / p99",
                      f"{e['p50_ms']:.2f} / {e['p99_ms']:.2f} ms", "")
        table.add_row(f"  streams per core ({key.replace('_', ' ')})", f"{e['streams_per_core']:.0f}", "")
    fc = r["frame_latency_compiled"]
    for key, e in fc.items() if fc["status"] == "ok" else ():
        if key.startswith("batch_"):
            table.add_row(f"Frame latency {key.replace('_', ' ')}, torch.compile p50 / p99",
                          f"{e['p50_ms']:.2f} / {e['p99_ms']:.2f} ms",
                          f"{e['speedup_vs_eager']:.2f}x eager; compile {e['compile_s']:.0f} s")
            table.add_row(f"  streams per core ({key.replace('_', ' ')}, compiled)", f"{e['streams_per_core']:.0f}", "")
    if fc["status"] != "ok":
        table.add_row("Frame latency, torch.compile", fc["status"], fc["note"][:40])
    m = r["memory"]
    table.add_row("Weights", f"{m['weights_mb']:.1f} MB", "")
    for key, v in m["state_bytes_per_call"].items():
        table.add_row(f"State per call ({key.replace('_', ' ')})", f"{v / 1024:.1f} KB", "")
    for key, v in m["peak_rss_growth_mb"].items():
        table.add_row(f"Peak RSS growth, {key.replace('_', ' ')}", "–" if v is None else f"{v:.1f} MB", "")
    table.add_row("Algorithmic latency", f"{r['algorithmic_latency_ms']:g} ms", "")
    o = r["opus_6kbps"]
    table.add_row("Baseline: Opus 6 kbps enc+dec RTF", rtf(o), "")
    tc = r["torch_compile"]
    if tc["status"] == "ok":
        table.add_row("Baseline: torch.compile offline RTF",
                      f"{tc['rtf']:.4f} ({tc['speedup_vs_eager']:.2f}x eager)", f"compile {tc['compile_s']:.0f} s")
    else:
        table.add_row("Baseline: torch.compile", tc["status"], tc["note"][:40])
    Console(width=max(Console().width, 120)).print(table)


def baseline_args(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the baseline codec as the one to measure."""
    other = copy.copy(args)
    is_file = args.baseline.endswith(".safetensors") or Path(args.baseline).exists()
    other.checkpoint, other.preset = (Path(args.baseline), None) if is_file else (None, args.baseline)
    return other


def side_by_side(results: dict[str, dict[str, Any]]) -> None:
    """One row per headline measure, one column per codec."""
    from rich.console import Console
    from rich.table import Table

    def frame(r, key, compiled=False):
        src = r["frame_latency_compiled"] if compiled else r["frame_latency"]
        if compiled and src.get("status") != "ok":
            return "–"
        e = src[key]
        return f"{e['p50_ms']:.2f} / {e['p99_ms']:.2f} ms ({e['streams_per_core']:.0f}/core)"

    rows = [
        ("params / weights", lambda r: f"{r['codec']['params'] / 1e6:.2f} M / {r['memory']['weights_mb']:.1f} MB"),
        ("algorithmic latency", lambda r: f"{r['algorithmic_latency_ms']:g} ms"),
        ("offline enc+dec, 1 thread", lambda r: f"{r['offline']['threads_1']['x_realtime']:.0f}x real time"),
        ("40 ms step, batch 1, eager p50 / p99", lambda r: frame(r, "batch_1")),
        ("40 ms step, batch 16, eager p50 / p99", lambda r: frame(r, "batch_16")),
        ("40 ms step, batch 1, compiled", lambda r: frame(r, "batch_1", True)),
        ("40 ms step, batch 16, compiled", lambda r: frame(r, "batch_16", True)),
    ]
    table = Table(title="Codec speed side by side (1 thread for the frame steps)")
    table.add_column("Measure")
    for name in results:
        table.add_column(name, justify="right")
    for label, fn in rows:
        table.add_row(label, *(fn(r) for r in results.values()))
    Console(width=max(Console().width, 120)).print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print_table(result)
    if args.baseline:
        base = run(baseline_args(args))
        print_table(base)
        result = {"codec": result, "baseline": base}
        side_by_side({f"{result['codec']['codec']['preset']}": result["codec"],
                      f"baseline {base['codec']['preset']}": base})
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
