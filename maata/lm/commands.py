"""``maata lm eval`` and ``maata talk``: evaluate the speech LM, talk to it through a WAV file.

    maata lm eval --checkpoint runs/lm_voice/lm.safetensors --shards data/shards/dialogue \\
                  --codec runs/codec/codec.safetensors [--split test] [--limit N] [--out out/lm_eval]
    maata talk --in question.wav --out reply.wav --voice female_1 --emotion HAPPY \\
               --lm runs/lm_voice/lm.safetensors --codec runs/codec/codec.safetensors
    maata talk ... --voice custom --reference someone.wav          # zero-shot voice

``talk`` runs the full-duplex model as a call would: the user's audio followed by
``--silence`` seconds of silence is fed frame by frame (codec ``encode_step`` → ``lm.step`` →
codec ``decode_step``); it writes the agent channel (mono, ``--out``) and both channels as a
stereo WAV (user left, agent right; ``--stereo``, default ``<out>_stereo.wav``), each as long as
the padded input. While it runs it prints the agent's inner-monologue text as it comes, piece
by piece (:class:`maata.text.tokenizer.TextStream`: the same pieces the browser page shows);
``--json FILE`` writes that text with the frame and time of every piece, when the user stopped
and the agent spoke, the voice, emotion, sampling and per-frame compute times. Only argparse is imported at load time; bad input (paths, voice, emotion,
checkpoints that do not fit) raises :class:`CommandError` (a ValueError): one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from maata.cliutil import CommandError, command_group, existing_file
from maata.served import SERVED_CODEC, SERVED_LM

log = logging.getLogger("maata.lm")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``lm`` (with ``eval``) and ``talk`` to the top-level CLI."""
    sub = command_group(subparsers, "lm", help="speech LM: evaluate checkpoints",
                        description="The full-duplex Telugu speech LM.", dest="lm_command")

    p = sub.add_parser("eval", help="cross-entropy, right answer, turn-taking, voice/emotion adherence",
                       description="Evaluate an LM on held-out dialogues: teacher-forced cross-entropy, "
                                   "right-answer accuracy, turn-taking and voice/emotion adherence. "
                                   "Writes lm_eval.json, lm_eval.md and lm_eval.png.")
    p.add_argument("--checkpoint", required=True, type=Path, help="LM export (lm.safetensors)")
    p.add_argument("--codec", required=True, type=Path, help="codec checkpoint (codec.safetensors)")
    p.add_argument("--shards", required=True, type=Path, help="folder of dialogue shards")
    p.add_argument("--split", default="test", help="split to evaluate (default: test, held-out user speakers)")
    p.add_argument("--reference-split", default="reference",
                   help="split of reference renderings: every answer in every voice (the dialogue builder's "
                        "reference/ shards), or dialogues whose agent turns serve (default: reference)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N dialogues")
    p.add_argument("--max-references", type=int, default=3, help="reference renderings per (intent, voice)")
    p.add_argument("--max-reply-seconds", type=float, default=10.0,
                   help="window after the question in which a QA reply is looked for (default 10)")
    p.add_argument("--out", type=Path, default=Path("out/lm_eval"), help="folder for JSON, markdown and PNG")
    sampling_args(p, greedy_default=True)
    p.add_argument("--detector", choices=["energy", "codes"], default="energy",
                   help="when the agent speaks: decoded frame energy, or codes unlike silence (default energy)")
    p.add_argument("--threshold-dbfs", type=float, default=-40.0, help="energy detector threshold (default -40)")
    p.add_argument("--batch", type=int, default=16, help="dialogues streamed at once (default 16)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser(
        "talk", help="talk to the speech LM through a WAV file (full duplex, frame by frame)",
        description="Feed a question (any audio file) followed by silence through codec -> LM -> codec one "
                    "40 ms frame at a time, as a call would; write the agent's channel and a stereo WAV.")
    p.add_argument("--in", dest="input", required=True, type=Path, help="the user's audio (wav, flac, mp3, ...)")
    p.add_argument("--out", required=True, type=Path, help="the agent's channel (mono WAV)")
    p.add_argument("--stereo", type=Path, default=None, help="both channels (default: <out>_stereo.wav)")
    p.add_argument("--lm", type=Path, default=Path(SERVED_LM),
                   help=f"LM export (default: the served model, {SERVED_LM})")
    p.add_argument("--codec", type=Path, default=Path(SERVED_CODEC),
                   help=f"codec checkpoint (default: the served codec, {SERVED_CODEC})")
    p.add_argument("--voice", default=None, help="named voice (e.g. female_1), or 'custom' with --reference")
    p.add_argument("--emotion", default="NEUTRAL", help="speaking style (e.g. HAPPY; default NEUTRAL)")
    p.add_argument("--reference", type=Path, default=None, help="reference clip for --voice custom (≥ 1 s)")
    p.add_argument("--silence", type=float, default=4.0, help="seconds of silence after the question (default 4)")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="the text stream's tokenizer (default: checkpoints/tokenizer.json, what `maata serve` uses)")
    p.add_argument("--json", type=Path, default=None,
                   help="write the agent's text, its timings and the chosen voice/emotion to this JSON file")
    p.add_argument("--quiet", action="store_true", help="do not print the agent's text as it comes")
    sampling_args(p, greedy_default=False)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.set_defaults(func=cmd_talk)


def sampling_args(p: argparse.ArgumentParser, greedy_default: bool) -> None:
    """The sampling flags every generating command shares (talk, lm eval, train curve); read them
    back with :func:`sampling_from_args` and the same ``greedy_default``."""
    p.add_argument("--temperature", type=float, default=None,
                   help="audio sampling temperature (0: greedy; default " + ("0" if greedy_default else "0.8") + ")")
    p.add_argument("--top-k", type=int, default=None, help="audio top-k (0: all; default 250)")
    p.add_argument("--text-temperature", type=float, default=None, help="text sampling temperature (default 0.7)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")


def sampling_from_args(args: argparse.Namespace, greedy_default: bool):
    from maata.lm.sampling import GREEDY, SamplingError, SamplingParams

    base = GREEDY if greedy_default else SamplingParams()
    kw = {}
    if args.temperature is not None:
        kw["temperature"] = args.temperature
        if greedy_default and args.temperature > 0:  # sampling asked for: the usual top-k and text settings
            d = SamplingParams()
            kw.update(top_k=d.top_k, text_temperature=d.text_temperature, text_top_k=d.text_top_k)
    if args.top_k is not None:
        kw["top_k"] = args.top_k
    if args.text_temperature is not None:
        kw["text_temperature"] = args.text_temperature
    try:
        return SamplingParams(**{**base.__dict__, **kw})
    except SamplingError as e:
        raise CommandError(str(e)) from e


# -- shared helpers ------------------------------------------------------------------------------
def load_lm_checkpoint(path: Path, device: str = "cpu"):
    """The LM in ``path``, ready for inference; a clear error for anything else."""
    existing_file(path, "LM checkpoint")
    from maata.lm.checkpoint import load_lm

    try:
        return load_lm(path, device)
    except ValueError as e:
        raise CommandError(str(e) if str(path) in str(e) else f"{path}: {e}") from e
    except Exception as e:  # safetensors' header errors, mismatched weights
        raise CommandError(f"{path}: not a readable LM checkpoint ({type(e).__name__}: {e})") from e


def load_codec_checkpoint(path: Path, device: str = "cpu"):
    existing_file(path, "codec checkpoint")
    from maata.codec.commands import load_checkpoint

    return load_checkpoint(path).to(device)


def _compatible(lm, codec, lm_path: Path, codec_path: Path) -> None:
    from maata.lm.compat import check_compatible

    try:
        check_compatible(lm, codec)
    except ValueError as e:
        raise CommandError(f"{lm_path} does not fit {codec_path}: {e}") from e


def _threads(n: int) -> None:
    if n and n > 0:
        import torch

        torch.set_num_threads(n)


# -- talk ----------------------------------------------------------------------------------------
def converse(lm, codec, user_pcm, *, voice=None, emotion=None, speaker=None, sampling=None, seed: int = 0,
             on_text=None):
    """Run one call over ``user_pcm`` (float32 mono at the codec's rate, already padded with the
    silence wanted after it): per 40 ms frame, encode the user's frame, step the LM, decode the
    agent's frame. Returns (agent PCM, user PCM), both ``frames * hop`` long, and per-frame
    compute times (s). ``on_text(frame, token)`` is called at every step with the text token
    of the frame begun there (-1 when the model has no text stream).

    The agent's frame t comes out ``acoustic_delay`` steps after the user's frame t went in; the
    last frames are flushed with silence so both channels cover the same frames.
    """
    import time

    import numpy as np
    import torch

    hop = codec.hop
    frames = -(-len(user_pcm) // hop)
    x = np.zeros(frames * hop, np.float32)
    x[: len(user_pcm)] = user_pcm
    wav = torch.from_numpy(x)[None]
    enc, dec = codec.init_state(1), codec.init_state(1)
    state = lm.init_state(1)
    lm.reset(state, torch.ones(1, dtype=torch.bool), seed=seed)
    active = torch.ones(1, dtype=torch.bool)
    silence = torch.zeros(1, hop)
    agent, times = [], []
    with torch.no_grad():
        for t in range(frames + lm.max_delay):
            t0 = time.perf_counter()
            frame = wav[:, t * hop:(t + 1) * hop] if t < frames else silence
            codes = codec.encode_step(enc, frame)  # [1, K, 1]
            out = lm.step(state, codes[:, :, 0], active, voice=voice, emotion=emotion, speaker=speaker,
                          sampling=sampling)
            if on_text is not None and t < frames:
                on_text(t, int(out.text_token[0]))
            if bool(out.ready[0]) and int(out.frame[0]) < frames:
                agent.append(codec.decode_step(dec, out.agent_codes[:, :, None])[0])
            times.append(time.perf_counter() - t0)
    y = torch.cat(agent).numpy() if agent else np.zeros(0, np.float32)
    return y.astype(np.float32), x, times


def cmd_talk(args: argparse.Namespace) -> int:
    existing_file(args.input, "input audio")
    if args.silence < 0:
        raise CommandError(f"--silence must be ≥ 0 seconds, got {args.silence}")
    if args.reference is not None:
        existing_file(args.reference, "reference clip")
    existing_file(args.lm, "LM checkpoint (--lm)")
    existing_file(args.codec, "codec checkpoint (--codec)")
    _threads(args.threads)
    lm = load_lm_checkpoint(args.lm)
    voice = args.voice if args.voice is not None else lm.voices[0]
    from maata.lm.model import CUSTOM_VOICE_NAME

    known_voices = list(lm.voices) + [CUSTOM_VOICE_NAME]
    if voice not in known_voices:
        raise CommandError(f"unknown voice {voice!r}; known: {', '.join(known_voices)}")
    if args.emotion not in lm.emotions:
        raise CommandError(f"unknown emotion {args.emotion!r}; known: {', '.join(lm.emotions)}")
    if voice == CUSTOM_VOICE_NAME and args.reference is None:
        raise CommandError("--voice custom needs --reference CLIP (a recording of the voice, ≥ 1 s)")
    if voice != CUSTOM_VOICE_NAME and args.reference is not None:
        raise CommandError("--reference is only used with --voice custom")
    sampling = sampling_from_args(args, greedy_default=False)
    codec = load_codec_checkpoint(args.codec)
    _compatible(lm, codec, args.lm, args.codec)

    import numpy as np
    import torch

    from maata.audio import write_wav
    from maata.codec.commands import read_input_audio

    sr = codec.cfg.sample_rate
    x = read_input_audio(args.input, sr)
    if x.size == 0:
        raise CommandError(f"{args.input}: the audio is empty")
    speaker = None
    if voice == CUSTOM_VOICE_NAME:
        ref = read_input_audio(args.reference, sr)
        if ref.size == 0:
            raise CommandError(f"{args.reference}: the reference clip is empty")
        codes = codec.encode(torch.from_numpy(ref)[None, None])[0]
        try:
            speaker = lm.speaker_embedding(codes)
        except ValueError as e:
            raise CommandError(f"{args.reference}: {e}") from e
    tokenizer = _talk_tokenizer(args.tokenizer, lm)
    pcm = np.concatenate([x, np.zeros(int(round(args.silence * sr)), np.float32)])
    frame_ms = 1000.0 * codec.hop / sr
    monologue = _Monologue(tokenizer, frame_ms, echo=not args.quiet)
    agent, user, times = converse(lm, codec, pcm, voice=voice, emotion=args.emotion, speaker=speaker,
                                  sampling=sampling, seed=args.seed, on_text=monologue.push)
    monologue.close()
    stereo = args.stereo or args.out.with_name(f"{args.out.stem}_stereo.wav")
    write_wav(args.out, agent, sr)
    write_wav(stereo, np.stack([user, agent], axis=1), sr)
    ms = 1000.0 * np.asarray(times)
    print(f"{args.out}: agent channel, {agent.size / sr:.2f} s ({voice}, {args.emotion})\n"
          f"{stereo}: user left, agent right\n"
          f"per frame (encode + LM step + decode): p50 {np.percentile(ms, 50):.1f} ms, "
          f"p99 {np.percentile(ms, 99):.1f} ms for {frame_ms:.0f} ms frames "
          f"({'real time' if np.percentile(ms, 99) < frame_ms else 'slower than real time'} on this machine)")
    if args.json is not None:
        user_on = _speaking(x, codec.hop)
        agent_on = _speaking(agent, codec.hop)
        user_end = int(np.flatnonzero(user_on)[-1]) + 1 if user_on.any() else 0
        after = np.flatnonzero(agent_on[user_end:])
        first = np.flatnonzero(agent_on)
        report = {
            "input": str(args.input), "out": str(args.out), "stereo": str(stereo),
            "lm": str(args.lm), "codec": str(args.codec),
            "tokenizer": str(monologue.tokenizer_path(args.tokenizer)) if tokenizer is not None else None,
            "voice": voice, "emotion": args.emotion, "reference": str(args.reference) if args.reference else None,
            "seed": args.seed, "sampling": sampling.__dict__,
            "frame_ms": frame_ms, "frames": len(times) - lm.max_delay, "acoustic_delay_frames": lm.max_delay,
            "user_seconds": round(x.size / sr, 3), "silence_seconds": args.silence,
            "agent_seconds": round(agent.size / sr, 3),
            "text": monologue.text, "pieces": monologue.pieces,
            "user_stops_ms": round(user_end * frame_ms, 1),
            "agent_first_speech_ms": round(float(first[0]) * frame_ms, 1) if first.size else None,
            "agent_starts_after_user_ms": (round(float(after[0]) * frame_ms, 1) if after.size else None),
            "agent_speech_ms": round(float(agent_on.sum()) * frame_ms, 1),
            "per_frame_ms": {"p50": round(float(np.percentile(ms, 50)), 2),
                             "p99": round(float(np.percentile(ms, 99)), 2),
                             "max": round(float(ms.max()), 2)},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        print(f"{args.json}: text, timings, voice and emotion")
    return 0


DEFAULT_TOKENIZER = Path("checkpoints/tokenizer.json")


def _talk_tokenizer(path: Path | None, lm):
    """The tokenizer of the LM's text stream: ``path``, or the committed one when it fits.
    ``None`` (a note on stderr) when the model has no text stream or the default is missing or
    does not fit; a given path that is missing or does not fit is an error."""
    import sys

    if not getattr(lm, "text_enabled", True):
        return None
    from maata.text.tokenizer import Tokenizer, TokenizerError

    explicit = path is not None
    path = path if explicit else DEFAULT_TOKENIZER
    if not path.is_file():
        if explicit:
            raise CommandError(f"tokenizer (--tokenizer) not found: {path}")
        print(f"note: {path} not found: the agent's text is shown as token ids (pass --tokenizer)", file=sys.stderr)
        return None
    try:
        tok = Tokenizer.load(path)
    except (TokenizerError, ValueError, OSError) as e:
        raise CommandError(f"{path}: not a readable tokenizer ({e})") from e
    if tok.vocab_size != lm.text_vocab:
        msg = (f"{path} has {tok.vocab_size} tokens but the LM's text stream has {lm.text_vocab}: "
               f"not the tokenizer it was trained with")
        if explicit:
            raise CommandError(msg)
        print(f"note: {msg}; the agent's text is shown as token ids", file=sys.stderr)
        return None
    return tok


class _Monologue:
    """Collects (and echoes to stdout as it comes) the agent's inner-monologue text."""

    def __init__(self, tokenizer, frame_ms: float, echo: bool):
        from maata.text.tokenizer import EPAD_ID, TextStream

        self.stream = TextStream(tokenizer) if tokenizer is not None else None
        self.frame_ms, self.echo, self.epad = frame_ms, echo, EPAD_ID
        self.pieces: list[dict] = []
        self.text = ""
        self._started = False

    @staticmethod
    def tokenizer_path(path: Path | None) -> Path:
        return path if path is not None else DEFAULT_TOKENIZER

    def push(self, frame: int, token: int) -> None:
        if token < 0 or token == self.epad:
            return
        piece = self.stream.push(token) if self.stream is not None else f"<{token}>"
        if not piece:
            return
        self.pieces.append({"frame": frame, "ms": round(frame * self.frame_ms, 1), "token": token, "text": piece})
        self.text += piece
        if self.echo:
            if not self._started:
                piece = "agent: " + piece.lstrip()
                self._started = True
            print(piece, end="", flush=True)

    def close(self) -> None:
        if self.stream is not None:
            rest = self.stream.flush()
            if rest:
                self.text += rest
                if self.echo:
                    print(rest, end="")
        if self.echo:
            print("" if self._started else "agent: (no text)")
        self.text = self.text.strip()


def _speaking(pcm, hop: int, threshold_dbfs: float = -40.0):
    """Per codec frame: louder than ``threshold_dbfs`` (RMS)."""
    import numpy as np

    n = len(pcm) // hop
    if n == 0:
        return np.zeros(0, bool)
    frames = np.asarray(pcm[: n * hop], np.float64).reshape(n, hop)
    rms = np.sqrt(np.mean(frames ** 2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10)) > threshold_dbfs


# -- eval ----------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise CommandError(f"--limit must be at least 1, got {args.limit}")
    if args.max_references < 1:
        raise CommandError(f"--max-references must be at least 1, got {args.max_references}")
    if args.max_reply_seconds <= 0:
        raise CommandError(f"--max-reply-seconds must be positive, got {args.max_reply_seconds}")
    if args.batch < 1:
        raise CommandError(f"--batch must be at least 1, got {args.batch}")
    if not args.shards.exists():
        raise CommandError(f"shards not found: {args.shards}")
    _threads(args.threads)
    lm = load_lm_checkpoint(args.checkpoint, args.device)
    codec = load_codec_checkpoint(args.codec, args.device)
    _compatible(lm, codec, args.checkpoint, args.codec)
    from maata.lm.evaluate import EvalConfig, evaluate
    from maata.lm.report import markdown_table

    cfg = EvalConfig(split=args.split, reference_split=args.reference_split, max_dialogues=args.limit,
                     max_references=args.max_references, sampling=sampling_from_args(args, greedy_default=True),
                     seed=args.seed, batch=args.batch, detector=args.detector, threshold_dbfs=args.threshold_dbfs,
                     max_reply_s=args.max_reply_seconds)
    report = evaluate(lm, codec, args.shards, cfg, out_dir=args.out, progress=True)
    print(markdown_table(report))
    print("wrote " + ", ".join(report["outputs"].values()))
    return 0
