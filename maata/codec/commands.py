"""``maata codec ...``: evaluate the codec, encode/decode files, inspect checkpoints and presets.

    maata codec eval    --checkpoint C --manifest M [--split test] [--limit N] [--out DIR]
    maata codec encode  --checkpoint C --in x.wav --out codes.npy [--n-q K] [--adaptive]
    maata codec decode  --checkpoint C --in codes.npy --out y.wav
    maata codec probe   --checkpoint C --manifest M [--features vector|onehot] [--limit N]
    maata codec info    --checkpoint C [--json]
    maata codec presets

Only argparse is imported at load time (``maata --help`` stays fast); handlers import the
rest. Bad input raises :class:`CommandError` (a ValueError): the CLI prints one line and
exits 2. Codes files hold int16 ``[n_q, frames]`` (``-1`` = a level dropped by adaptive
bitrate); decode also takes ``[1, n_q, frames]``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maata.cliutil import CommandError, command_group, existing_file
from maata.served import SERVED_CODEC

if TYPE_CHECKING:  # heavy: imported by the handlers that need them
    import numpy as np
    import torch

    from maata.codec.model import Codec

log = logging.getLogger("maata.codec")


DEMO_TEXT = "నమస్కారం! నేను మాట. మీకు ఈ రోజు ఎలా సహాయం చేయగలను?"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``codec`` and its subcommands to the top-level CLI."""
    sub = command_group(subparsers, "codec", help="neural codec: evaluate, encode/decode files, inspect checkpoints",
                        description="The streaming Telugu neural codec.", dest="codec_command")

    p = sub.add_parser("eval", help="PESQ/STOI/SI-SDR/mel/DNSMOS of the codec vs Opus on held-out files")
    _checkpoint_arg(p)
    p.add_argument("--manifest", required=True, type=Path, help="manifest.jsonl (path, speaker, split, ...)")
    p.add_argument("--split", default="test", help="manifest split to evaluate (default: test)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N files")
    p.add_argument("--out", type=Path, default=Path("out/codec_eval"), help="folder for JSON, markdown and PNG")
    p.add_argument("--opus-kbps", type=float, nargs="+", default=[6.0, 8.0], help="Opus baselines (default: 6 8)")
    p.add_argument("--opus-vbr", choices=["off", "constrained", "on"], default="constrained",
                   help="Opus rate control (default: constrained VBR, as VoIP stacks run it)")
    p.add_argument("--per-speaker", action="store_true", help="also report means per speaker")
    p.add_argument("--no-dnsmos", action="store_true", help="skip DNSMOS (the slowest metric)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as a served stream)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("probe", help="phoneme linear probe on codebook 1 (train split -> test split accuracy)")
    _checkpoint_arg(p)
    p.add_argument("--manifest", required=True, type=Path, help="manifest.jsonl with phoneme alignments")
    p.add_argument("--vocab", type=Path, help="phoneme_vocab.json (default: beside the manifest, else built)")
    p.add_argument("--features", choices=["vector", "onehot"], default="vector",
                   help="codebook-1 code vector (default) or one-hot of the code index")
    p.add_argument("--limit", type=int, default=None, help="use only the first N files of each split")
    p.add_argument("--steps", type=int, default=300, help="optimisation steps (default 300)")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("encode", help="audio file -> codes.npy (any rate/channels, converted with a note)")
    _checkpoint_arg(p)
    p.add_argument("--in", dest="input", required=True, type=Path, help="audio file (wav, flac, mp3, m4a, ...)")
    p.add_argument("--out", required=True, type=Path, help="codes file (.npy, int16 [n_q, frames])")
    p.add_argument("--n-q", type=int, default=None, help="codebooks to keep (default: all)")
    p.add_argument("--adaptive", action="store_true", help="drop upper codebooks in silent frames")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="codes.npy -> 16-bit WAV at the codec's sample rate")
    _checkpoint_arg(p)
    p.add_argument("--in", dest="input", required=True, type=Path, help="codes file from `maata codec encode`")
    p.add_argument("--out", required=True, type=Path, help="output WAV")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("info", help="a checkpoint's preset, frame rate, bitrate, latency and size")
    _checkpoint_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("presets", help="list the codec presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("demo", help="speak Telugu with espeak-ng, stream it through the codec 40 ms at a time, "
                                    "write the WAVs and print the scores against Opus")
    p.add_argument("--checkpoint", type=Path, default=Path(SERVED_CODEC),
                   help=f"codec checkpoint (default: the served codec, {SERVED_CODEC})")
    p.add_argument("--text", default=DEMO_TEXT, help="Telugu text to speak")
    p.add_argument("--voice", default="te+f4", help="espeak-ng voice (default te+f4, a voice held out of training)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for the WAVs")
    p.set_defaults(func=cmd_demo)


def _checkpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path, help="codec checkpoint (.safetensors)")


# -- shared helpers ------------------------------------------------------------------------------
def load_checkpoint(path: Path) -> Codec:
    """The codec in ``path``, ready for inference; a clear error for anything else."""
    existing_file(path, "checkpoint")  # before the heavy imports: a typo fails fast
    from maata.checkpoint import load_codec

    try:
        return load_codec(path)
    except ValueError as e:
        raise CommandError(f"{path}: {e}") from e
    except Exception as e:  # safetensors' header errors, mismatched weights
        raise CommandError(f"{path}: not a readable codec checkpoint ({type(e).__name__}: {e})") from e


def _channels(path: Path) -> int:
    """Channel count of an audio file (libsndfile, else PyAV); 1 when it cannot tell."""
    import soundfile as sf

    try:
        return int(sf.info(str(path)).channels)
    except Exception:  # not a libsndfile format: ask FFmpeg
        import av

        try:
            with av.open(str(path)) as c:
                stream = next((s for s in c.streams if s.type == "audio"), None)
                return int(stream.channels) if stream is not None else 1
        except Exception:
            return 1  # load_audio below reports the real problem


def read_input_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 PCM at ``sample_rate`` from any audio file, noting each conversion made."""
    from maata.audio import load_audio, prepare_input

    existing_file(path, "input audio")
    channels = _channels(path)
    try:
        x, sr = load_audio(path)  # averaged to mono, native rate
        if channels > 1:
            log.info("%s: %d channels; averaging to mono", path, channels)
        if x.size and sr != sample_rate:
            log.info("%s: %d Hz; resampling to %d Hz", path, sr, sample_rate)
        return prepare_input(x, sr, sample_rate)
    except ValueError as e:
        raise CommandError(f"{path}: {e}") from e


def read_codes(path: Path, codec: Codec) -> torch.Tensor:
    """Codes [1, k, frames] (int64) from a .npy file, validated against ``codec``."""
    import numpy as np
    import torch

    existing_file(path, "codes file")
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise CommandError(f"{path}: not a .npy codes file (write one with `maata codec encode`)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise CommandError(f"{path}: unreadable .npy codes file ({e})") from e
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.integer):
        raise CommandError(f"{path}: codes must be integers, got {getattr(arr, 'dtype', type(arr).__name__)}")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise CommandError(f"{path}: codes must be shaped [n_q, frames] (or [1, n_q, frames]), got {list(arr.shape)}")
    if arr.shape[1] == 0:
        raise CommandError(f"{path}: codes have no frames")
    try:
        return codec.check_codes(torch.from_numpy(arr.astype(np.int64))[None])
    except ValueError as e:
        raise CommandError(f"{path}: {e}") from e


def codec_summary(codec: Codec, path: Path | None = None) -> dict[str, Any]:
    """What a person wants to know about a codec: rates, latency, size."""
    cfg = codec.cfg
    summary = {
        "preset": cfg.name, "sample_rate": cfg.sample_rate, "hop": cfg.hop, "frame_rate_hz": cfg.frame_rate,
        "n_q": cfg.quantizer.n_q, "codebook_size": cfg.quantizer.codebook_size,
        "bitrate_kbps": cfg.bitrate / 1000, "latency_ms": cfg.latency_ms,
        "params": sum(p.numel() for p in codec.parameters()),
        "transformer_window_s": cfg.transformer.window / cfg.frame_rate if cfg.transformer.layers else 0.0,
        "adaptive": {"silence_dbfs": cfg.silence_dbfs, "silence_n_q": cfg.silence_n_q},
    }
    if path is not None:
        summary["file_mb"] = round(path.stat().st_size / 2 ** 20, 2)
    return summary


# -- handlers ------------------------------------------------------------------------------------
def cmd_encode(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    codec = load_checkpoint(args.checkpoint)
    n_q = args.n_q or codec.n_q
    if not 1 <= n_q <= codec.n_q:
        raise CommandError(f"--n-q must be in 1..{codec.n_q}, got {n_q}")
    x = read_input_audio(args.input, codec.cfg.sample_rate)
    codes = codec.encode(torch.from_numpy(x)[None, None], n_q=n_q, adaptive=args.adaptive)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, codes[0].numpy().astype(np.int16))
    seconds = x.size / codec.cfg.sample_rate
    print(f"{args.out}: codes {list(codes.shape[1:])} for {seconds:.2f} s, "
          f"{codec.bits(codes) / seconds / 1000:.2f} kbps")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from maata.audio import write_wav

    codec = load_checkpoint(args.checkpoint)
    codes = read_codes(args.input, codec)
    wav = codec.decode(codes)[0, 0].numpy()
    write_wav(args.out, wav, codec.cfg.sample_rate)
    print(f"{args.out}: {wav.size / codec.cfg.sample_rate:.2f} s at {codec.cfg.sample_rate} Hz "
          f"from codes {list(codes.shape[1:])}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    codec = load_checkpoint(args.checkpoint)
    summary = codec_summary(codec, args.checkpoint)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    s = summary
    print(f"checkpoint   {args.checkpoint} ({s['file_mb']} MB)\n"
          f"preset       {s['preset']}\n"
          f"sample rate  {s['sample_rate']} Hz, hop {s['hop']} samples, {s['frame_rate_hz']:g} frames/s\n"
          f"codes        {s['n_q']} codebooks x {s['codebook_size']} -> {s['bitrate_kbps']:g} kbps\n"
          f"latency      {s['latency_ms']:g} ms algorithmic (one frame, no look-ahead, + overlap-add)\n"
          f"parameters   {s['params'] / 1e6:.2f} M\n"
          f"context      {s['transformer_window_s']:g} s of transformer attention\n"
          f"adaptive     frames below {s['adaptive']['silence_dbfs']:g} dBFS keep "
          f"{s['adaptive']['silence_n_q']} codebooks")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from maata.codec.model import Codec, load_preset, preset_names

    print(f"{'preset':<12} {'hop':>5} {'frames/s':>9} {'codes':>9} {'kbps':>6} {'latency':>8} {'params':>8}")
    for name in preset_names():
        cfg = load_preset(name, env_prefix=None)
        params = sum(p.numel() for p in Codec(cfg).parameters())
        print(f"{name:<12} {cfg.hop:>5} {cfg.frame_rate:>9g} {cfg.quantizer.n_q:>3} x {cfg.quantizer.codebook_size:<4}"
              f" {cfg.bitrate / 1000:>6g} {cfg.latency_ms:>6g}ms {params / 1e6:>7.2f}M")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from maata.codec.evaluate import evaluate, markdown_table

    if args.limit is not None and args.limit < 1:
        raise CommandError(f"--limit must be at least 1, got {args.limit}")
    codec = load_checkpoint(args.checkpoint)
    existing_file(args.manifest, "manifest")
    report = evaluate(codec, args.manifest, args.split, args.limit, tuple(args.opus_kbps), out_dir=args.out,
                      per_speaker=args.per_speaker, opus_vbr=args.opus_vbr, with_dnsmos=not args.no_dnsmos,
                      threads=args.threads, progress=True)
    print(markdown_table(report))
    print("wrote " + ", ".join(report["outputs"].values()))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from maata.codec.evaluate import phoneme_probe
    from maata.data.phonemes import PhonemeVocab

    codec = load_checkpoint(args.checkpoint)
    existing_file(args.manifest, "manifest")
    vocab = PhonemeVocab.load(args.vocab) if args.vocab else None
    result = phoneme_probe(codec, args.manifest, vocab, features=args.features, limit=args.limit, steps=args.steps)
    print(f"phoneme probe ({result['features']} features, {result['n_classes']} classes): "
          f"test accuracy {result['test_accuracy']:.3f} (majority class {result['majority_accuracy']:.3f}, "
          f"train {result['train_accuracy']:.3f}) on {result['test_frames']} test / "
          f"{result['train_frames']} train frames")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The codec end to end on one sentence: synthesise, stream 40 ms frames, decode, score."""
    import time

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from maata.audio import normalize_rms, resample, write_wav
    from maata.codec.evaluate import inference, run_maata, score
    from maata.codec.opus import opus_roundtrip
    from maata.data.synth import SynthError, espeak_engine

    codec = load_checkpoint(args.checkpoint)
    sr = codec.cfg.sample_rate
    engine = espeak_engine()
    try:
        speech = engine.speak(args.text, args.voice)
    except SynthError as e:
        raise CommandError(f"cannot speak the demo text: {e}") from e
    x = normalize_rms(resample(speech.audio, engine.sample_rate, sr), -16.0)
    with inference(codec, 1):
        t0 = time.perf_counter()
        run = run_maata(codec, x)
        took = time.perf_counter() - t0
    seconds = x.size / sr
    opus = opus_roundtrip(x, sr, 6.0, vbr="constrained")
    outputs = {"source": (x, None), "maata": (run.full, codec.bits(run.codes) / seconds / 1000),
               "maata_adaptive": (run.adaptive, codec.bits(run.adaptive_codes) / seconds / 1000),
               "opus_6": (opus.audio, opus.kbps)}
    table = Table(title=f"{seconds:.2f} s of Telugu ({args.voice}) through the {codec.cfg.name} codec")
    for col in ("system", "kbps", "PESQ-WB", "STOI", "SI-SDR dB", "mel dist"):
        table.add_column(col)
    for name, (audio, kbps) in outputs.items():
        write_wav(args.out / f"{name}.wav", audio, sr)
        if kbps is None:
            continue
        m = score(x, audio, kbps, name, with_dnsmos=False)
        fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
        table.add_row(name, f"{kbps:.2f}", fmt(m["pesq_wb"], ".2f"), fmt(m["stoi"], ".3f"), fmt(m["si_sdr"], ".1f"),
                      fmt(m["mel_distance"], ".2f"))
    console = Console()
    console.print(f"text: {args.text}")
    console.print(table)
    console.print(f"wrote {', '.join(f'{n}.wav' for n in outputs)} to {args.out}/")
    frames = run.codes.shape[-1]
    console.print(f"streamed {frames} frames of {1000 * codec.hop / codec.cfg.sample_rate:.0f} ms through encode + decode (1 thread; "
                  f"the full and adaptive decodes as a batch of 2): {1000 * took / frames:.2f} ms per frame")
    return 0
