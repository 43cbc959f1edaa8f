"""``maata train submit`` and ``maata train pipeline``: training stages as Kubeflow PyTorchJobs
(training/kubeflow.py). Imports only argparse at load time (see maata/cli.py).

    maata train submit --stage pretrain --workers 3 --nproc-per-node 8 --dry-run   # print the job
    maata train submit --stage codec                                                # create it on the cluster
    maata train pipeline [--stages codec,pretrain,dialogue,voice] [--dry-run]       # each stage after the last
"""

from __future__ import annotations

import argparse
import sys

# flag -> KubeflowConfig field
_FLAGS = ("namespace", "image", "workers", "nproc_per_node", "gpus_per_node", "cpu", "memory", "data_pvc",
          "checkpoints_pvc", "threads", "max_restarts", "min_nodes")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``submit`` and ``pipeline`` to the ``train`` group (created by training.commands)."""
    train = subparsers.choices["train"]
    models = next(a for a in train._actions if isinstance(a, argparse._SubParsersAction))
    p = models.add_parser(
        "submit", help="run one training stage as a Kubeflow PyTorchJob (--dry-run: print it)",
        description="Build the stage's PyTorchJob (Master + Workers, torchrun with nprocPerNode processes per "
                    "pod, elastic policy, data and checkpoint PVCs, GPUs) and create it on the cluster of the "
                    "kubeconfig; every pod resumes from the stage's last checkpoint. Config: --config YAML, then "
                    "MAATA_KUBEFLOW__* variables, then the flags.")
    p.add_argument("--stage", required=True, choices=["codec", "pretrain", "dialogue", "voice"])
    _common(p)
    p.set_defaults(func=cmd_submit, _parser=p)
    p = models.add_parser(
        "pipeline", help="run the training stages in order as PyTorchJobs, each from the previous one's output",
        description="Submit codec, pretrain, dialogue and voice (or --stages) one after the other, waiting for "
                    "each to succeed; dialogue starts from pretrain's model and voice from dialogue's.")
    p.add_argument("--stages", default="codec,pretrain,dialogue,voice",
                   help="comma-separated stages in order (default: all four)")
    p.add_argument("--timeout-hours", type=float, default=168.0, help="how long to wait for each stage")
    _common(p)
    p.set_defaults(func=cmd_pipeline, _parser=p)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="KubeflowConfig YAML (training/kubeflow.py)")
    p.add_argument("--dry-run", action="store_true", help="print the PyTorchJob YAML instead of submitting")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: ~/.kube/config or in-cluster)")
    p.add_argument("--namespace")
    p.add_argument("--image", help="the training image (docker/Dockerfile.gpu)")
    p.add_argument("--workers", type=int, help="Worker pods besides the Master (default 1)")
    p.add_argument("--nproc-per-node", type=int, help="processes (GPUs) per pod (default 1)")
    p.add_argument("--gpus-per-node", type=int, help="nvidia.com/gpu per pod; 0 trains on CPU (default 1)")
    p.add_argument("--cpu", help="CPU request/limit per pod (default 8)")
    p.add_argument("--memory", help="memory request/limit per pod (default 32Gi)")
    p.add_argument("--data-pvc", help="PVC with the corpus and code shards (default maata-data)")
    p.add_argument("--checkpoints-pvc", help="PVC for run folders (default maata-checkpoints)")
    p.add_argument("--threads", type=int, help="torch threads per process")
    p.add_argument("--max-restarts", type=int, help="torchrun's in-place restarts (default 0: failed pods are restarted by the operator)")
    p.add_argument("--min-nodes", type=int, help="elastic: the fewest pods training may go on with")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="passed to the trainer as --set PATH=VALUE (repeatable)")


def _config(args: argparse.Namespace):
    from training.kubeflow import load_config

    overrides = {name: getattr(args, name) for name in _FLAGS if getattr(args, name, None) is not None}
    if args.set:
        overrides["sets"] = list(args.set)
    return load_config(args.config, **overrides)


def cmd_submit(args: argparse.Namespace) -> int:
    from training.kubeflow import build_job, describe, submit, to_yaml

    job = build_job(args.stage, _config(args))
    if args.dry_run:
        print(to_yaml(job), end="")
        return 0
    submit(job, kubeconfig=args.kubeconfig)
    print(f"submitted {describe(job)}")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from training.kubeflow import STAGES, build_job, describe, submit, to_yaml

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise ValueError(f"--stages takes a comma-separated list of {STAGES}, got {args.stages!r}")
    if stages != sorted(stages, key=STAGES.index):
        raise ValueError(f"--stages must keep the order {', '.join(STAGES)} (each starts from the previous one)")
    cfg = _config(args)
    jobs = [build_job(stage, cfg) for stage in stages]
    if args.dry_run:
        print("---\n".join(to_yaml(job) for job in jobs), end="")
        return 0
    for job in jobs:
        print(f"submitting {describe(job)}", file=sys.stderr, flush=True)
        submit(job, wait=True, timeout_s=int(args.timeout_hours * 3600), kubeconfig=args.kubeconfig)
        print(f"{job.metadata.name}: succeeded", file=sys.stderr, flush=True)
    return 0
