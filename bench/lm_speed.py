#!/usr/bin/env python
"""Speech-LM serving speed on CPU: per-frame step latency, calls in real time, KV-cache memory.

    python bench/lm_speed.py [--checkpoint lm.safetensors | --preset tiny] [--codec C | --codec-preset default]
                             [--batches 1 4 16 64] [--threads 2] [--json out.json] [--quick] [--no-compile]

Measures, with every slot of the state active and the serving sampling defaults
(temperature 0.8, top-k 250; text 0.7 / 25), after a warm-up:

* ``lm.step`` latency per 40 ms frame at each batch (p50 / p99 / mean ms) and whether p99 fits in
  one frame, for each variant: **fp32 eager (the baseline row)**, bf16 weights and KV cache,
  INT8 dynamic quantisation of the Linear layers (``torch.ao.quantization.quantize_dynamic``)
  and ``torch.compile`` of the temporal and depth steps (inductor). A variant that cannot run
  here is listed as skipped with the reason;
* the most calls one process sustains in real time: the largest batch whose p99 step time is
  under one frame (refined by bisection between the measured batches, except with --quick);
* KV-cache and whole streaming-state memory per call (this model, and the ``base`` preset from
  its config);
* the same latency with the codec in the loop — encode the user's frame, step, decode the
  agent's frame — using the default codec preset (or ``--codec``), fp32 eager.

Prints a rich table and writes JSON. The machine is shared: the JSON records the load average,
and timings move with it.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchlib import tensor_bytes, write_json

FRAME_MS = 40.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="LM export (lm.safetensors)")
    src.add_argument("--preset", default="tiny", help="untrained LM of this preset (default: tiny)")
    csrc = p.add_mutually_exclusive_group()
    csrc.add_argument("--codec", type=Path, help="codec checkpoint for the codec-in-the-loop rows")
    csrc.add_argument("--codec-preset", default="default", help="untrained codec preset (default: default)")
    p.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1 4 16 64; --quick 1 4)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--frames", type=int, help="timed steps per measurement (default 100; --quick 8)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 10; --quick 2)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--quick", action="store_true", help="few steps, batches 1 and 4, no compile, no bisection")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--no-codec", action="store_true", help="skip the codec-in-the-loop rows")
    return p.parse_args(argv)


# -- models --------------------------------------------------------------------------------------
def load_lm_for_bench(args: argparse.Namespace):
    from maata.lm.checkpoint import load_lm
    from maata.lm.model import LM, load_preset

    if args.checkpoint:
        return load_lm(args.checkpoint)
    torch.manual_seed(0)
    return LM(load_preset(args.preset, env_prefix=None)).eval()


def load_codec_for_bench(args: argparse.Namespace):
    from maata.checkpoint import fold_weight_norm, load_codec
    from maata.codec.model import Codec, load_preset

    if args.codec:
        return load_codec(args.codec)
    torch.manual_seed(0)
    return fold_weight_norm(Codec(load_preset(args.codec_preset, env_prefix=None))).eval()




def kv_bytes_per_call(cfg, dtype_bytes: int = 4) -> int:
    """KV cache of one call from an LMConfig: layers x (K and V) x context x dim."""
    return cfg.temporal.layers * 2 * cfg.temporal.context * cfg.temporal.dim * dtype_bytes


def variants(lm, compile_ok: bool, compile_note: str) -> list[tuple[str, Any, str]]:
    """(name, model or None when skipped, note)."""
    out: list[tuple[str, Any, str]] = [("fp32 eager (baseline)", lm, "float32 weights and KV cache")]
    out.append(("bf16", copy.deepcopy(lm).to(torch.bfloat16),
                "bf16 weights and KV cache; on CPUs without AVX512-BF16/AMX bf16 matmuls are emulated"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(lm), {nn.Linear}, dtype=torch.qint8)
        out.append(("int8 dynamic", q, f"quantize_dynamic on Linear ({torch.backends.quantized.engine})"))
    except Exception as e:  # no quantized engine on this build
        out.append(("int8 dynamic", None, f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}"))
    if compile_ok:
        try:
            c = copy.deepcopy(lm)
            c.temporal.step = torch.compile(c.temporal.step, dynamic=False)
            # the depth step specialises on its step index (9 graphs per batch size): left eager
            out.append(("torch.compile", c, "inductor on the temporal step (one graph: the ring-cache writes are "
                                            "scatters, no data-dependent shapes; the depth steps stay eager)"))
        except Exception as e:
            out.append(("torch.compile", None, f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}"))
    else:
        out.append(("torch.compile", None, f"skipped: {compile_note}"))
    return out


# -- timing --------------------------------------------------------------------------------------
def _stats(times: list[float]) -> dict[str, Any]:
    ms = np.asarray(times) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "max_ms": float(ms.max()), "frames": int(ms.size),
            "realtime": bool(np.percentile(ms, 99) <= FRAME_MS)}


@torch.no_grad()
def step_latency(lm, batch: int, frames: int, warmup: int, sampling, codec=None, seed: int = 0) -> dict[str, Any]:
    """Per-frame time of ``lm.step`` (and codec encode/decode of the frame when ``codec`` is given)."""
    g = torch.Generator().manual_seed(seed)
    state = lm.init_state(batch)
    lm.reset(state, torch.ones(batch, dtype=torch.bool), seed=seed)
    active = torch.ones(batch, dtype=torch.bool)
    n = warmup + frames
    user = torch.randint(0, lm.card, (n, batch, lm.n_q), generator=g)
    voice = [i % len(lm.voices) for i in range(batch)]
    emotion = [i % len(lm.emotions) for i in range(batch)]
    if codec is not None:
        enc, dec = codec.init_state(batch), codec.init_state(batch)
        pcm = 0.05 * torch.randn(n, batch, codec.hop, generator=g)
    times = []
    first_compile = None
    for i in range(n):
        t = time.perf_counter()
        if codec is not None:
            u = codec.encode_step(enc, pcm[i])[:, :, 0]
        else:
            u = user[i]
        out = lm.step(state, u, active, voice=voice, emotion=emotion, sampling=sampling)
        if codec is not None and bool(out.ready.all()):
            codec.decode_step(dec, out.agent_codes[:, :, None])
        dt = time.perf_counter() - t
        if i == 0:
            first_compile = dt
        if i >= warmup:
            times.append(dt)
    res = _stats(times)
    print(f"  batch {batch:>3}{' + codec' if codec is not None else ''}: p50 {res['p50_ms']:.1f} ms, "
          f"p99 {res['p99_ms']:.1f} ms", file=sys.stderr, flush=True)
    res["first_step_s"] = first_compile
    res["calls_per_core_estimate"] = float(batch * FRAME_MS / res["mean_ms"])
    return res


def max_realtime_calls(lm, measured: dict[int, dict[str, Any]], frames: int, warmup: int, sampling,
                       bisect: bool) -> dict[str, Any]:
    """Largest batch with p99 ≤ one frame: the best measured, refined by bisection up to the first failing one."""
    ok = [b for b, r in measured.items() if r["realtime"]]
    bad = [b for b, r in measured.items() if not r["realtime"]]
    lo = max(ok) if ok else 0
    hi = min([b for b in bad if b > lo], default=None)
    probes = {}
    while bisect and hi is not None and hi - lo > max(1, lo // 8):
        mid = (lo + hi) // 2
        r = step_latency(lm, mid, frames, warmup, sampling)
        probes[mid] = {"p99_ms": r["p99_ms"], "realtime": r["realtime"]}
        lo, hi = (mid, hi) if r["realtime"] else (lo, mid)
    return {"calls": lo, "upper_bound_failing": hi, "probes": probes,
            "rule": f"largest batch whose p99 lm.step time ≤ {FRAME_MS:g} ms" + (" (bisection)" if bisect else "")}


# -- run -----------------------------------------------------------------------------------------
def _checkpoint(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Write what is measured so far (a long run that is stopped keeps its finished rows)."""
    write_json(args.json, result, announce=False)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from maata.lm.model import load_preset
    from maata.lm.sampling import SamplingParams

    torch.set_num_threads(args.threads)
    lm = load_lm_for_bench(args)
    batches = args.batches or ([1, 4] if args.quick else [1, 4, 16, 64])
    frames = args.frames or (8 if args.quick else 100)
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 10)
    sampling = SamplingParams()
    compile_note = "--quick" if args.quick else "--no-compile" if args.no_compile else ""
    result: dict[str, Any] = {
        "lm": {"name": lm.cfg.name, "params": sum(p.numel() for p in lm.parameters()), "n_q": lm.n_q,
               "codebook_size": lm.card, "temporal": {"dim": lm.cfg.temporal.dim, "layers": lm.cfg.temporal.layers,
                                                      "context": lm.cfg.temporal.context},
               "depth": {"dim": lm.cfg.depth.dim, "layers": lm.cfg.depth.layers}, "text": lm.text_enabled},
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "load_avg_1m": os.getloadavg()[0],
                    "torch": torch.__version__, "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "frame_ms": FRAME_MS, "frames_timed": frames, "warmup": warmup, "batches": batches,
        "sampling": {"temperature": sampling.temperature, "top_k": sampling.top_k,
                     "text_temperature": sampling.text_temperature, "text_top_k": sampling.text_top_k},
        "variants": {},
    }
    state = lm.init_state(max(batches))
    b = max(batches)
    base_cfg = load_preset("base", env_prefix=None)
    result["memory"] = {
        "weights_mb": sum(tensor_bytes(t) for t in list(lm.parameters()) + list(lm.buffers())) / 2 ** 20,
        "kv_cache_bytes_per_call": tensor_bytes(state.keys + state.values) / b,
        "state_bytes_per_call": tensor_bytes(state) / b,
        "kv_cache_bytes_per_call_bf16": tensor_bytes(state.keys + state.values) / b / 2,
        "base_preset_kv_cache_mb_per_call": kv_bytes_per_call(base_cfg) / 2 ** 20,
        "base_preset_kv_cache_mb_per_call_bf16": kv_bytes_per_call(base_cfg, 2) / 2 ** 20,
    }
    result["codec_in_loop"] = {"status": "pending"}
    # the baseline first, then the codec in the loop, then the other variants (torch.compile, the
    # slowest and most fragile, last); the JSON is rewritten after each so a stopped run keeps its rows
    todo = variants(lm, compile_ok=not compile_note, compile_note=compile_note)
    for k, (name, model, note) in enumerate(todo):
        entry: dict[str, Any] = {"note": note}
        print(f"{name}: {note}", file=sys.stderr, flush=True)
        if model is None:
            entry["status"] = "skipped"
        else:
            try:
                entry["batch"] = {str(bb): step_latency(model, bb, frames, warmup, sampling) for bb in batches}
                entry["status"] = "ok"
            except Exception as e:  # an op the variant does not support on this machine
                entry = {"status": "skipped", "note": f"{note}; failed: {type(e).__name__}: "
                                                      f"{str(e).splitlines()[0][:160]}"}
        result["variants"][name] = entry
        if k == 0:
            entry["max_realtime_calls"] = max_realtime_calls(lm, {int(bb): r for bb, r in entry["batch"].items()},
                                                             frames, warmup, sampling, bisect=not args.quick)
            _checkpoint(args, result)
            result["codec_in_loop"] = codec_in_loop(args, lm, batches, frames, warmup, sampling)
        elif entry["status"] == "ok":
            base = result["variants"][todo[0][0]]
            entry["max_realtime_calls"] = max_realtime_calls(
                None, {int(bb): r for bb, r in entry["batch"].items()}, frames, warmup, sampling, bisect=False)
            entry["speedup_vs_baseline"] = {bb: base["batch"][bb]["mean_ms"] / r["mean_ms"]
                                            for bb, r in entry["batch"].items()}
        _checkpoint(args, result)
    compiled_lm = next((model for name, model, _ in todo if name == "torch.compile"), None)
    if compiled_lm is not None and result["variants"]["torch.compile"]["status"] == "ok" \
            and result["codec_in_loop"].get("status") == "ok":
        result["codec_in_loop_compiled"] = codec_in_loop(args, compiled_lm, batches, frames, warmup, sampling,
                                                         compiled=True, eager=result["codec_in_loop"])
    else:
        result["codec_in_loop_compiled"] = {"status": "skipped",
                                            "note": "needs the torch.compile variant and the codec-in-the-loop rows"}
    _checkpoint(args, result)
    return result


def codec_in_loop(args: argparse.Namespace, lm, batches: list[int], frames: int, warmup: int,
                  sampling, compiled: bool = False, eager: dict[str, Any] | None = None) -> dict[str, Any]:
    """Codec + LM per frame; ``compiled``: the compiled LM variant with ``Codec.compile_streaming``
    (each batch size compiles first, in an untimed warm-up), compared with the ``eager`` rows."""
    if args.no_codec:
        return {"status": "skipped", "note": "--no-codec"}
    codec = load_codec_for_bench(args)
    q = codec.cfg.quantizer
    if (q.n_q, q.codebook_size) != (lm.n_q, lm.card):
        return {"status": "skipped", "note": f"codec codes {q.n_q}x{q.codebook_size} do not fit the LM's "
                                            f"{lm.n_q}x{lm.card}"}
    if compiled:
        codec.compile_streaming()
    print(f"codec in the loop ({codec.cfg.name}{', torch.compile' if compiled else ''})", file=sys.stderr, flush=True)
    rows = {}
    for bb in batches:
        if compiled:  # compile this batch size's graphs before timing (the LM's decode waits for the delay)
            step_latency(lm, bb, 2, warmup + lm.max_delay + 2, sampling, codec=codec)
        rows[str(bb)] = step_latency(lm, bb, frames, warmup, sampling, codec=codec)
    out = {"status": "ok", "codec": codec.cfg.name, "batch": rows,
           "max_realtime_calls": max_realtime_calls(None, {int(k): v for k, v in rows.items()}, frames, warmup,
                                                    sampling, bisect=False),
           "note": "encode_step(user frame) + lm.step + decode_step(agent frame), "
                   + ("torch.compile: the LM's temporal step and the codec's streaming cores" if compiled
                      else "fp32 eager")}
    if eager is not None:
        out["speedup_vs_eager"] = {bb: eager["batch"][bb]["mean_ms"] / r["mean_ms"] for bb, r in rows.items()}
    return out


def print_table(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    m = r["lm"]
    table = Table(title=f"LM step speed: {m['name']} ({m['params'] / 1e6:.1f} M params) on "
                        f"{r['machine']['cpus']} CPUs, "
                        f"{r['machine']['threads']} threads, load {r['machine']['load_avg_1m']:.1f}; "
                        f"frame {r['frame_ms']:g} ms")
    table.add_column("Variant")
    table.add_column("Batch", justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p99 ms", justify="right")
    table.add_column("Real time", justify="center")
    table.add_column("Calls/core est.", justify="right")
    table.add_column("vs baseline", justify="right")
    rows = list(r["variants"].items())
    if r["codec_in_loop"].get("status") == "ok":
        rows.append(("codec + LM (fp32)", r["codec_in_loop"]))
    if r.get("codec_in_loop_compiled", {}).get("status") == "ok":
        rows.append(("codec + LM (torch.compile)", r["codec_in_loop_compiled"]))
    for name, e in rows:
        if e.get("status") != "ok":
            table.add_row(name, "–", "–", "–", "–", "–", e.get("note", "")[:40])
            continue
        for b, s in e["batch"].items():
            sp = e.get("speedup_vs_baseline", e.get("speedup_vs_eager", {})).get(b)
            table.add_row(name, b, f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}", "yes" if s["realtime"] else "no",
                          f"{s['calls_per_core_estimate']:.1f}", "baseline" if name.startswith("fp32") else
                          ("" if sp is None else f"{sp:.2f}x"))
        if "max_realtime_calls" in e:
            table.add_row("  max real-time calls", "", "", "", "", str(e["max_realtime_calls"]["calls"]), "")
    mem = r["memory"]
    table.add_row("KV cache per call", "", "", "", "", f"{mem['kv_cache_bytes_per_call'] / 2 ** 20:.2f} MB",
                  f"base: {mem['base_preset_kv_cache_mb_per_call']:.0f} MB")
    table.add_row("State per call", "", "", "", "", f"{mem['state_bytes_per_call'] / 2 ** 20:.2f} MB", "")
    console = Console()
    Console(width=max(console.width, 132)).print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print_table(result)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
