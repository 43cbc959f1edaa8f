"""``maata data dialogues`` and ``maata data speech-shards``: code shards for the S2S model.

* ``maata data dialogues --out DIR --codec CKPT [--workers K] [--repeats N]``: two-channel
  synthetic dialogues from the conversation scripts, encoded with the codec into
  ``DIR/{train,valid,test}/shard-*.safetensors`` plus ``DIR/reference/`` (every intent's
  answer in every voice), ``DIR/tokenizer.json`` and ``DIR/stats.json``.
* ``maata data speech-shards --manifest M --codec CKPT --out DIR``: single-stream
  pre-training shards (``codes``, ``phonemes``) from a speech manifest.

Both join the ``data`` command group of :mod:`maata.data.commands` (created here if that
module is not registered). Only argparse is imported at load time; the work happens in
:mod:`maata.data.dialogue`.
"""

from __future__ import annotations

import argparse


def _data_group(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-command action of ``maata data``, adding the group if nobody has yet."""
    group = subparsers.choices.get("data")
    if group is None:
        group = subparsers.add_parser("data", help="build speech corpora and code shards",
                                      description="Build speech corpora and code shards.")
        group.set_defaults(_parser=group)
    for action in group._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return group.add_subparsers(dest="data_command", metavar="<subcommand>")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data dialogues`` and ``data speech-shards``."""
    sub = _data_group(subparsers)

    dlg = sub.add_parser(
        "dialogues", help="render two-channel Telugu dialogues and encode them into shards",
        description="Make user/agent dialogues from the conversation scripts (espeak-ng user "
                    "speakers, the four agent voices with emotional prosody, backchannels, "
                    "overlaps, interruptions), align the agent's words to frames, encode both "
                    "channels with the codec and write speaker-disjoint train/valid/test "
                    "shards, reference answers, tokenizer.json and stats.json.")
    dlg.add_argument("--out", required=True, help="output folder")
    dlg.add_argument("--codec", required=True, help="codec checkpoint (.safetensors)")
    dlg.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    dlg.add_argument("--repeats", type=int, default=4,
                     help="renderings (user speaker, speed, pitch, channel) per question phrasing and per "
                          "exchange (default 4; every intent has 12 phrasings)")
    dlg.add_argument("--seed", type=int, default=0,
                     help="random seed; use the corpus's seed to share its speaker split (default 0)")
    dlg.add_argument("--scripts", default=None,
                     help="conversation YAML (default: the packaged conversations.yaml)")
    dlg.add_argument("--max-intents", type=int, default=None, help="use only the first N intents")
    dlg.add_argument("--max-exchanges", type=int, default=None, help="use only the first N exchanges")
    dlg.add_argument("--gap-ms", default="60,1000",
                     help="agent response gap after the user stops: clip range MIN,MAX ms (default 60,1000)")
    dlg.add_argument("--gap-median-ms", type=float, default=200.0,
                     help="median of the log-normal response gap (default 200, as in natural conversation)")
    dlg.add_argument("--early-start-prob", type=float, default=0.05,
                     help="share of answers starting 30-150 ms before the user has finished (default 0.05)")
    dlg.add_argument("--emotion-mix", type=float, default=0.5,
                     help="share of answers spoken in another emotion than the intent's (default 0.5)")
    dlg.add_argument("--noise-prob", type=float, default=0.35,
                     help="share of dialogues with background noise on the user's channel (default 0.35)")
    dlg.add_argument("--telephone-prob", type=float, default=0.2,
                     help="share of dialogues with a telephone-band user channel (default 0.2)")
    dlg.add_argument("--reverb-prob", type=float, default=0.2,
                     help="share of dialogues with a reverberant room on the user's side (default 0.2)")
    dlg.add_argument("--interrupt-prob", type=float, default=0.15,
                     help="share of dialogues where the user interrupts the agent (default 0.15)")
    dlg.add_argument("--backchannel-prob", type=float, default=0.6,
                     help="share of long user turns with an agent backchannel (default 0.6)")
    dlg.add_argument("--overlap-prob", type=float, default=0.15,
                     help="share of user turns starting before the agent finishes (default 0.15)")
    dlg.add_argument("--reference-emotion-intents", type=int, default=4,
                     help="intents rendered in every other emotion too, per voice, for the evaluation's "
                          "emotion probe (default 4)")
    dlg.add_argument("--splits", default=None,
                     help="write only these splits, comma-separated (train,valid,test,reference), rendered as in "
                          "the full build: e.g. the test split in another codec's codes (default: all)")
    dlg.add_argument("--shard-size", type=int, default=200, help="dialogues per shard (default 200)")
    dlg.add_argument("--tokenizer", default=None,
                     help="use this tokenizer.json instead of training one")
    dlg.add_argument("--tokenizer-sentences", type=int, default=20000,
                     help="generated sentences added to the scripts for tokenizer training (default 20000)")
    dlg.add_argument("--vocab-size", type=int, default=2000, help="tokenizer vocabulary (default 2000)")
    dlg.add_argument("--keep-audio", action="store_true",
                     help="also write DIR/audio/<split>/<id>.wav (left user, right agent)")
    dlg.add_argument("--overwrite", action="store_true",
                     help="replace an existing dataset in --out (the same command without it resumes: "
                          "shards already written are kept)")
    dlg.set_defaults(func=_dialogues)

    sp = sub.add_parser(
        "speech-shards", help="encode a speech manifest into single-stream code shards",
        description="Encode every clip of a manifest with the codec into "
                    "OUT/<split>/shard-*.safetensors (codes, and phonemes where aligned).")
    sp.add_argument("--manifest", required=True, help="manifest.jsonl")
    sp.add_argument("--codec", required=True, help="codec checkpoint (.safetensors)")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    sp.add_argument("--shard-size", type=int, default=1000, help="clips per shard (default 1000)")
    sp.add_argument("--overwrite", action="store_true", help="replace existing shards in --out")
    sp.set_defaults(func=_speech_shards)


def _workers(n: int) -> int:
    from maata.data.synth import default_workers

    return n if n > 0 else default_workers()


def _range_ms(text: str, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) / 1000 for x in text.split(","))
    except ValueError:
        raise ValueError(f"{name} must be MIN,MAX in milliseconds, got {text!r}") from None
    return lo, hi


def _dialogues(args: argparse.Namespace) -> int:
    from maata.data.conversations import load_conversations
    from maata.data.dialogue import TimingConfig, UserChannelConfig, build_dialogues

    timing = TimingConfig(response_gap=_range_ms(args.gap_ms, "--gap-ms"),
                          response_gap_median=args.gap_median_ms / 1000, early_start_prob=args.early_start_prob,
                          interrupt_prob=args.interrupt_prob, backchannel_prob=args.backchannel_prob,
                          overlap_prob=args.overlap_prob)
    channel = UserChannelConfig(p_noise=args.noise_prob, p_telephone=args.telephone_prob,
                                p_reverb=args.reverb_prob)
    report = build_dialogues(
        args.out, args.codec, conversations=load_conversations(args.scripts), repeats=args.repeats,
        workers=_workers(args.workers), seed=args.seed, timing=timing, keep_audio=args.keep_audio,
        shard_size=args.shard_size, tokenizer=args.tokenizer,
        tokenizer_sentences=args.tokenizer_sentences, vocab_size=args.vocab_size,
        max_intents=args.max_intents, max_exchanges=args.max_exchanges, overwrite=args.overwrite,
        channel=channel, emotion_mix=args.emotion_mix, reference_emotion_intents=args.reference_emotion_intents,
        splits=None if args.splits is None else [x.strip() for x in args.splits.split(",") if x.strip()])
    s = report.stats
    d = s["per_record"]["dialogue"]
    resumed = f", {s['resumed_shards']} shards kept from an earlier run" if s["resumed_shards"] else ""
    print(f"wrote {s['dialogues']} dialogues ({s['hours']:.2f} h) to {report.out} in "
          f"{report.seconds:.1f} s ({len(report.failures)} failed{resumed})")
    print(f"  per dialogue in a worker: render {d['render_s']:.3f} s ({d['render_cpu_s']:.3f} s CPU), "
          f"encode {d['encode_s']:.3f} s ({d['encode_cpu_s']:.3f} s CPU)")
    made = s["made"]["dialogues"]
    if made:
        cpu = d["render_cpu_s"] + d["encode_cpu_s"]
        secs = sum(sp["hours"] for n, sp in s["splits"].items() if n != "reference") * 3600 / max(1, s["dialogues"])
        print(f"  throughput: {secs / max(cpu, 1e-9):.0f}x real time per CPU core "
              f"({secs:.1f} s of dialogue per {cpu:.2f} CPU s)")
    for name, sp in s["splits"].items():
        gap = sp.get("response_gap_ms") or {}
        extra = (f"  {sp['user_speakers']:4d} user speakers  {sp['interruptions']:4d} interruptions  "
                 f"{sp['backchannels']:4d} backchannels  {sp['heldout_phrasing']:5d} held-out phrasings  "
                 f"gap median {gap.get('median', float('nan')):.0f} ms" if "user_speakers" in sp else "")
        print(f"  {name:>9}: {sp['records']:6d} records  {sp['hours']:7.2f} h  {sp['shards']:3d} shards{extra}")
    return 0


def _speech_shards(args: argparse.Namespace) -> int:
    from maata.data.dialogue import build_speech_shards

    report = build_speech_shards(args.manifest, args.codec, args.out, workers=_workers(args.workers),
                                 shard_size=args.shard_size, overwrite=args.overwrite)
    print(f"wrote {len(report.shards)} shards to {report.out} in {report.seconds:.1f} s "
          f"({len(report.failures)} batches failed; phonemes: {report.stats['phonemes']})")
    for name, sp in report.stats["splits"].items():
        print(f"  {name:>5}: {sp['clips']:6d} clips  {sp['hours']:7.2f} h  {sp['speakers']:4d} speakers")
    return 0
