"""``maata data ...``: build speech corpora.

* ``maata data synth --out DIR --sentences N --workers K``: the synthetic multi-speaker
  Telugu corpus (espeak-ng variants + festival NSK) with phoneme alignments.
* ``maata data import --format FMT --src DIR --out DIR``: a public dataset (OpenSLR 66,
  Kathbath, Common Voice, IndicTTS, RESPIN) converted into the same manifest format.

Only argparse is imported here; the work happens in :mod:`maata.data.synth` and
:mod:`maata.data.loaders`, imported by the handlers.
"""

from __future__ import annotations

import argparse

_FORMATS = ("openslr66", "kathbath", "commonvoice", "indictts", "respin")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group and its subcommands."""
    group = subparsers.add_parser("data", help="build speech corpora (synthetic, imported)",
                                  description="Build speech corpora as WAVs + manifest.jsonl.")
    group.set_defaults(_parser=group)
    sub = group.add_subparsers(dest="data_command", metavar="<subcommand>")

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
