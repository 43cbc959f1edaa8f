"""``maata train ...`` commands. Imports only argparse at load time (see maata/cli.py).

    maata train codec --config codec_default --manifest data/manifest.jsonl --out runs/codec
    maata train codec --resume --out runs/codec                 # continue where it stopped
    maata train codec --config codec_v2 --init-from checkpoints/codec_v2.safetensors --out runs/codec_v2b
                                                                # warm restart (trainer state gone)
    maata train codec --preset seed-40hz --steps 50000 --set optim.lr_g=1e-4 --set weights.mel=30
    torchrun --nproc_per_node 8 -m maata.cli train codec ...     # DDP, one process per GPU
"""

from __future__ import annotations

import argparse

from maata.cliutil import command_group

# command-line flag -> dotted path in TrainConfig
_FLAG_PATHS = {
    "steps": "steps",
    "batch_size": "batch_size",
    "manifest": "data.manifest",
    "preset": "codec.preset",
    "segment_seconds": "data.segment_seconds",
    "adv_start_step": "adv_start_step",
    "num_workers": "data.num_workers",
    "threads": "threads",
    "device": "device",
    "seed": "seed",
    "init_from": "init_from",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    models = command_group(subparsers, "train", help="train Maata's models",
                           description="Train Maata's models. `maata train <model> --help` for options.",
                           dest="model", metavar="<model>")
    _register_codec(models)


def _register_codec(models: argparse._SubParsersAction) -> None:
    p = models.add_parser(
        "codec", help="train the streaming codec (reconstruction, RVQ, semantic head, GAN)",
        description="Train a codec preset. Single process by default; under torchrun every process trains a "
                    "shard with DDP (gloo on CPU, NCCL on GPU). Options below override the YAML config; "
                    "MAATA_TRAIN__<PATH> environment variables override both (e.g. MAATA_TRAIN__STEPS=50000).")
    p.add_argument("--config", default="codec_default",
                   help="training YAML: a path or a name in training/configs (default: codec_default)")
    p.add_argument("--out", default="runs/codec", help="run folder: checkpoints, TensorBoard, codec.safetensors")
    p.add_argument("--manifest", help="manifest.jsonl of the training corpus (data.manifest)")
    p.add_argument("--preset", help="codec preset: default, seed-200hz, seed-40hz, mimi-like (codec.preset)")
    p.add_argument("--segment-seconds", type=float, help="training segment length (data.segment_seconds)")
    p.add_argument("--adv-start-step", type=int, help="step at which the discriminators join")
    p.add_argument("--init-from", help="warm restart: start from this exported codec's weights with a fresh optimiser "
                                       "(init_from)")
    run_args(p, batch_unit="segments", set_example="--set optim.lr_g=1e-4 --set codec.overrides.semantic.enabled=false")
    p.set_defaults(func=_train_codec, _parser=p)


def run_args(p: argparse.ArgumentParser, batch_unit: str, set_example: str) -> None:
    """The flags every training command shares: resuming, the schedule's length and batch, where
    and how it runs, and ``--set`` for any config field (read back with :func:`config_overrides`)."""
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --out (starts fresh if there is none)")
    p.add_argument("--steps", type=int, help="total optimisation steps")
    p.add_argument("--batch-size", type=int, help=f"{batch_unit} per process per step")
    p.add_argument("--num-workers", type=int, help="data-loading worker processes per training process")
    p.add_argument("--threads", type=int, help="torch threads per process (0: torch's default)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train (default auto)")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help=f"override any config field, VALUE parsed as YAML: {set_example} (repeatable)")


def parse_value(raw: str):
    """A YAML scalar/list, with numbers such as ``5e-4`` that YAML 1.1 leaves as strings."""
    import yaml

    value = yaml.safe_load(raw) if raw else ""
    if isinstance(value, str):
        for number in (int, float):
            try:
                return number(value)
            except ValueError:
                pass
    return value


def config_overrides(args: argparse.Namespace, flag_paths: dict[str, str]) -> dict:
    """Nested config overrides from the flags (``flag_paths``: argparse dest -> config path) and
    ``--set PATH=VALUE`` pairs (``--set`` wins); every training command parses them this way."""
    pairs = [(path, getattr(args, flag)) for flag, path in flag_paths.items() if getattr(args, flag, None) is not None]
    for item in args.set:
        path, sep, raw = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--set expects PATH=VALUE, got {item!r}")
        pairs.append((path.strip(), parse_value(raw)))
    out: dict = {}
    for path, value in pairs:
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {path}: {part} is a value, not a section")
        node[leaf] = value
    return out


def overrides_from_args(args: argparse.Namespace) -> dict:
    """``maata train codec``'s config overrides (``config_overrides`` with its flags)."""
    return config_overrides(args, _FLAG_PATHS)


def _train_codec(args: argparse.Namespace) -> int:
    from training.codec_trainer import load_config, train

    cfg = load_config(args.config, overrides_from_args(args))
    metrics = train(cfg, args.out, resume=args.resume)
    if metrics:
        print(" ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    return 0
