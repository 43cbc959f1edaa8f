"""``maata train lm ...``: the speech LM's three training stages, and ``maata train curve``: its
learning curve over their checkpoints. Imports only argparse at load time.

    maata train lm --stage pretrain --shards data/shards/pretrain --out runs/lm_pretrain
    maata train lm --stage dialogue --init-from runs/lm_pretrain --shards data/shards/dialogue --out runs/lm_dialogue
    maata train lm --stage voice    --init-from runs/lm_dialogue --shards data/shards/dialogue --out runs/lm_voice
    maata train lm --stage dialogue --resume --out runs/lm_dialogue ...    # continue where it stopped
    torchrun --nproc_per_node 8 -m maata.cli train lm --stage pretrain ...   # DDP, one process per GPU

Each stage reads ``training/configs/lm_<stage>.yaml`` unless ``--config`` names another; flags and
``--set PATH=VALUE`` override the YAML. Hooking into the CLI: ``training/commands.py`` already
creates the ``train`` group, so either call :func:`add_lm_parser` on its model subparsers, or
list this module *after* ``training.commands`` in ``maata.cli.COMMAND_MODULES`` — its
:func:`register` then finds the existing ``train`` group and adds ``lm`` to it (and creates the
group itself when there is none).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from maata.lm.commands import sampling_args, sampling_from_args
from training.commands import run_args

STAGES = ("pretrain", "dialogue", "voice")

# command-line flag -> dotted path in LMTrainConfig
_FLAG_PATHS = {
    "stage": "stage",
    "init_from": "init_from",
    "shards": "data.shards",
    "steps": "steps",
    "batch_size": "batch_size",
    "crop_frames": "data.crop_frames",
    "preset": "model.preset",
    "num_workers": "data.num_workers",
    "threads": "threads",
    "device": "device",
    "seed": "seed",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train lm`` to the top-level CLI (inside an existing ``train`` group when there is one)."""
    train = subparsers.choices.get("train")
    if train is None:
        train = subparsers.add_parser("train", help="train Maata's models",
                                      description="Train Maata's models. `maata train <model> --help` for options.")
        train.set_defaults(_parser=train)
        models = train.add_subparsers(dest="model", metavar="<model>")
    else:
        models = next((a for a in train._actions if isinstance(a, argparse._SubParsersAction)), None)
        if models is None:
            models = train.add_subparsers(dest="model", metavar="<model>")
    if "lm" not in models.choices:
        add_lm_parser(models)
    if "curve" not in models.choices:
        add_curve_parser(models)


def add_curve_parser(train_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``maata train curve``: the LM's learning curve over the checkpoints of its stages."""
    p = train_subparsers.add_parser(
        "curve", help="the LM's learning curve: right answer against steps, over its checkpoints",
        description="Evaluate every checkpoint of one or more LM runs (stages in order) on the same held-out "
                    "dialogues (maata lm eval's measures) and plot the right answer (spoken and inner-monologue "
                    "text, seen and held-out phrasings), text accuracy and codebook-1 cross-entropy against the "
                    "cumulative step. Writes curve.json and curve.png; points already in curve.json are reused.")
    p.add_argument("--run", action="append", required=True, type=Path,
                   help="run folder (repeat, in stage order: pretrain, dialogue, voice)")
    p.add_argument("--codec", required=True, type=Path, help="codec checkpoint the shards were made with")
    p.add_argument("--shards", required=True, type=Path, help="folder of dialogue shards")
    p.add_argument("--split", default="test", help="split to evaluate (default: test, held-out user speakers)")
    p.add_argument("--limit", type=int, default=40, help="dialogues evaluated per checkpoint (default 40)")
    p.add_argument("--every", type=int, default=1, help="evaluate every N-th checkpoint (the last always)")
    p.add_argument("--start-step", type=int, default=0,
                   help="continue the curve in --out: the first --run starts at this cumulative step (the "
                        "training of the export it was initialised from), and the rows already there up to "
                        "it stay, even when their run folders are gone (default 0: a new curve)")
    sampling_args(p, greedy_default=False)  # replies sampled as a served call samples them
    p.add_argument("--batch", type=int, default=16, help="dialogues streamed at once (default 16)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=Path("out/lm_curve"), help="folder for curve.json and curve.png")
    p.set_defaults(func=_curve, _parser=p)
    return p


def _curve(args: argparse.Namespace) -> int:
    if args.start_step < 0:
        raise ValueError(f"--start-step must be ≥ 0, got {args.start_step}")
    if args.limit < 1 or args.every < 1 or args.batch < 1:
        raise ValueError(f"--limit, --every and --batch must be at least 1, got {args.limit}, {args.every}, "
                         f"{args.batch}")
    if not args.shards.exists():
        raise FileNotFoundError(f"shards not found: {args.shards}")
    if not args.codec.is_file():
        raise FileNotFoundError(f"codec checkpoint not found: {args.codec}")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    from maata.checkpoint import load_codec
    from maata.lm.evaluate import EvalConfig
    from training.lm_curve import learning_curve

    sampling = sampling_from_args(args, greedy_default=False)
    cfg = EvalConfig(split=args.split, max_dialogues=args.limit, batch=args.batch, sampling=sampling, seed=args.seed)
    rows = learning_curve(args.run, load_codec(args.codec), args.shards, cfg, args.out, every=args.every,
                          start_step=args.start_step)
    print(f"{'stage':>14} {'step':>6} {'right (spoken)':>15} {'right (text)':>13} {'text acc':>9} {'CE cb1':>7}")
    def f(v):
        return "–" if v is None else f"{v:.3f}"

    for r in rows:
        print(f"{r['stage']:>14} {r['step']:>6} {f(r['right_answer']):>15} {f(r['right_answer_text']):>13} "
              f"{f(r['text_acc_words']):>9} {f(r['ce_codebook1']):>7}")
    print(f"wrote {args.out / 'curve.json'}, {args.out / 'curve.png'}")
    return 0


def add_lm_parser(train_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``lm`` model to the ``train`` group's subparsers (``maata train lm ...``)."""
    p = train_subparsers.add_parser(
        "lm", help="train the speech LM: pretrain, dialogue, voice stages",
        description="Train one stage of the full-duplex speech LM on code shards. Single process by default; "
                    "under torchrun every process trains a shard of the data with DDP (gloo on CPU, NCCL on GPU). "
                    "Each stage exports <out>/lm.safetensors, the next stage's --init-from.")
    p.add_argument("--stage", required=True, choices=STAGES,
                   help="pretrain: single-stream speech codes; dialogue: full-duplex two-stream dialogues; "
                        "voice: voice/emotion conditioning and the zero-shot speaker encoder")
    p.add_argument("--config", help="training YAML: a path or a name in training/configs (default: lm_<stage>)")
    p.add_argument("--shards", help="folder of code shards (<split>/*.safetensors or meta split) (data.shards)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, TensorBoard, lm.safetensors")
    p.add_argument("--init-from", help="the previous stage's lm.safetensors or its run folder")
    p.add_argument("--preset", help="LM preset for a fresh model: tiny, base (model.preset)")
    p.add_argument("--crop-frames", type=int, help="training crop length in frames (data.crop_frames)")
    run_args(p, batch_unit="crops", set_example="--set optim.lr=1e-4 --set voice.custom_fraction=0.5")
    p.set_defaults(func=_train_lm, _parser=p)
    return p


def _train_lm(args: argparse.Namespace) -> int:
    from training.lm_trainer import load_config, train

    cfg = load_config(args.config or f"lm_{args.stage}", overrides_from_args(args))
    metrics = train(cfg, args.out, resume=args.resume)
    if metrics:
        print(" ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    return 0


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Nested config overrides from the flags and ``--set PATH=VALUE`` pairs (``--set`` wins);
    values parse as in ``maata train codec``."""
    from training.commands import config_overrides

    return config_overrides(args, _FLAG_PATHS)


def main(argv: list[str] | None = None) -> int:
    """``python -m training.lm_commands --stage ... --out ...``: the command without the maata CLI."""
    import logging
    import sys

    parser = argparse.ArgumentParser(prog="python -m training.lm_commands")
    sub = parser.add_subparsers(dest="model")
    add_lm_parser(sub)
    args = parser.parse_args(["lm", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"maata: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
