"""``maata data ...``: build speech corpora.

* ``maata data synth --out DIR --sentences N --workers K``: the synthetic multi-speaker
  Telugu corpus (espeak-ng variants + festival NSK) with phoneme alignments.
* ``maata data import --format FMT --src DIR --out DIR``: a public dataset (OpenSLR 66,
  Kathbath, Common Voice, IndicTTS, RESPIN) converted into the same manifest format.
* ``maata data piper --out DIR --sentences N``: natural-sounding English from the bundled
  Piper (VITS) voice, in several speaking styles, for codec training.
* ``maata data merge --out M.jsonl A.jsonl B.jsonl ...``: several manifests as one.

Only argparse is imported here; the work happens in :mod:`maata.data.synth`,
:mod:`maata.data.loaders`, :mod:`maata.data.piper` and :mod:`maata.data.manifest`, imported
by the handlers.
"""

from __future__ import annotations

import argparse

from maata.cliutil import command_group

_FORMATS = ("openslr66", "kathbath", "commonvoice", "indictts", "respin")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group and its subcommands."""
    sub = command_group(subparsers, "data", help="build speech corpora (synthetic, imported)",
                        description="Build speech corpora as WAVs + manifest.jsonl.", dest="data_command")

    synth = sub.add_parser(
        "synth", help="synthesise a multi-speaker Telugu corpus with phoneme alignments",
        description="Generate Telugu sentences and speak them with espeak-ng voice variants "
                    "and festival's Telugu voice; writes 16 kHz WAVs, manifest.jsonl "
                    "(speaker-disjoint splits) and phoneme_vocab.json.")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--sentences", type=int, default=2400, help="number of clips (default 2400)")
    synth.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--festival-fraction", type=float, default=0.1,
                       help="share of clips spoken by festival (default 0.1)")
    synth.add_argument("--variants", default="",
                       help="comma-separated espeak-ng variants to use (default: all installed)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing manifest")
    synth.set_defaults(func=_synth)

    imp = sub.add_parser(
        "import", help="import a public Telugu dataset into a manifest",
        description="Convert a downloaded dataset to 16 kHz WAVs + manifest.jsonl with "
                    "speaker-disjoint splits.")
    imp.add_argument("--format", required=True, choices=_FORMATS, help="dataset layout")
    imp.add_argument("--src", required=True, help="the dataset's folder")
    imp.add_argument("--out", required=True, help="output folder")
    imp.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    imp.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    imp.add_argument("--max-seconds", type=float, default=30.0,
                     help="skip clips longer than this (default 30)")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing manifest")
    imp.set_defaults(func=_import)

    piper = sub.add_parser(
        "piper", help="synthesise natural-sounding English with the bundled Piper voice",
        description="Generate varied English sentences and speak them with the Piper (VITS) "
                    "voice en_US-joe-medium in nine styles (speed x expressiveness); writes "
                    "16 kHz WAVs and manifest.jsonl. One real speaker, so a few sentences are "
                    "held out as 'valid' (not speaker-disjoint); no test split. Rerunning with "
                    "the same seed resumes (WAVs already written are kept), also with a "
                    "smaller --sentences to finish a run that was stopped early.")
    piper.add_argument("--out", required=True, help="output folder")
    piper.add_argument("--sentences", type=int, default=3000, help="number of clips (default 3000)")
    piper.add_argument("--workers", type=int, default=1,
                       help="processes, one ONNX thread each (default 1)")
    piper.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    piper.add_argument("--valid-fraction", type=float, default=0.05,
                       help="share of sentences held out as valid (default 0.05)")
    piper.add_argument("--overwrite", action="store_true",
                       help="plan afresh and synthesise every clip again")
    piper.set_defaults(func=_piper)

    merge = sub.add_parser(
        "merge", help="join several manifests into one",
        description="Write one manifest listing the rows of all inputs, with paths rewritten "
                    "relative to the output's folder (or absolute), splits kept, and the "
                    "phoneme vocabulary rebuilt beside it. Speaker names must be unique "
                    "across inputs.")
    merge.add_argument("--out", required=True, help="the merged manifest (.jsonl)")
    merge.add_argument("inputs", nargs="+", help="manifests to merge")
    merge.add_argument("--absolute", action="store_true",
                       help="write absolute audio paths (default: relative to --out's folder)")
    merge.add_argument("--no-check-audio", action="store_true",
                       help="do not check that every audio file exists")
    merge.set_defaults(func=_merge)


def _workers(n: int) -> int:
    from maata.data.synth import default_workers

    return n if n > 0 else default_workers()


def _print_stats(stats: dict) -> None:
    for name, s in stats.items():
        print(f"  {name:>5}: {s.clips:6d} clips  {s.hours:7.2f} h  {s.speakers:4d} speakers  "
              f"{s.aligned:6d} aligned")


def _synth(args: argparse.Namespace) -> int:
    from maata.data.synth import synthesize_corpus

    variants = [v.strip() for v in args.variants.split(",") if v.strip()] or None
    report = synthesize_corpus(args.out, args.sentences, workers=_workers(args.workers),
                               seed=args.seed, festival_fraction=args.festival_fraction,
                               variants=variants, overwrite=args.overwrite)
    print(f"wrote {report.manifest} in {report.seconds:.1f} s "
          f"({len(report.failures)} clips failed)")
    print(f"phoneme vocab: {report.vocab} ({report.vocab_size} classes)")
    _print_stats(report.stats)
    return 0


def _import(args: argparse.Namespace) -> int:
    from maata.data.loaders import import_dataset

    report = import_dataset(args.format, args.src, args.out, workers=_workers(args.workers),
                            seed=args.seed, max_seconds=args.max_seconds,
                            overwrite=args.overwrite)
    print(f"wrote {report.manifest} ({len(report.skipped)} lines skipped)")
    _print_stats(report.stats)
    return 0


def _piper(args: argparse.Namespace) -> int:
    from maata.data.piper import synthesize_piper_corpus

    report = synthesize_piper_corpus(args.out, args.sentences, workers=args.workers,
                                     seed=args.seed, valid_fraction=args.valid_fraction,
                                     overwrite=args.overwrite)
    print(f"wrote {report.manifest} in {report.seconds:.1f} s: {report.made} clips made, "
          f"{report.kept} kept from an earlier run, {len(report.failures)} failed")
    if report.made:
        print(f"synthesis speed: {report.made_audio_seconds / 3600:.2f} h of audio in "
              f"{report.synth_seconds:.0f} s = {report.realtime_factor:.1f}x real time "
              f"({args.workers} worker(s))")
        if report.cpu_realtime_factor:
            print(f"per CPU-second: {report.cpu_realtime_factor:.1f}x real time "
                  f"({report.synth_cpu_seconds:.0f} CPU-s; one core's speed, whatever else ran)")
    _print_stats(report.stats)
    return 0


def _merge(args: argparse.Namespace) -> int:
    from maata.data.manifest import merge_manifests

    report = merge_manifests(args.out, args.inputs, absolute=args.absolute,
                             check_audio=not args.no_check_audio)
    for src, n in report.rows_per_input.items():
        print(f"  {n:6d} rows from {src}")
    print(f"wrote {report.manifest}" + (f" and {report.vocab}" if report.vocab else ""))
    _print_stats(report.stats)
    return 0
