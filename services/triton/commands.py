"""``maata triton export`` and ``maata triton serve``: a Triton model repository and a server for it.

    maata triton export --out models/triton [--codec CKPT] [--lm CKPT] [--slots 16] [--instances 1]
                        [--kind cpu|gpu] [--dtype float32|bfloat16] [--cuda-graphs] [--threads N]
    maata triton serve --repo models/triton [--grpc-port 8001] [--http-port 8000] [--metrics-port 8002]

Only argparse is imported at load time (see maata/cli.py); handlers import the rest.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from maata.cliutil import command_group
from maata.served import SERVED_CODEC, SERVED_LM


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = command_group(subparsers, "triton",
                        help="serve the models on NVIDIA Triton: export a repository, run a server",
                        description="Maata's codec and S2S step as stateful Triton models "
                                    "(sequence batching, one slot per call).",
                        dest="triton_command", metavar="<command>")

    p = sub.add_parser("export", help="write a Triton model repository for a codec / LM checkpoint pair",
                       description="Writes codec_encoder, codec_decoder and s2s_step (config.pbtxt, model.py, "
                                   "weights, warmup) into --out; deterministic; configs validated against "
                                   "tritonclient's ModelConfig schema.")
    p.add_argument("--out", required=True, type=Path, help="the repository folder (model folders are replaced)")
    p.add_argument("--codec", default=SERVED_CODEC, type=Path, help=f"codec checkpoint (default {SERVED_CODEC})")
    p.add_argument("--lm", default=SERVED_LM, type=Path, help=f"LM checkpoint (default {SERVED_LM})")
    p.add_argument("--slots", type=int, default=16, help="calls one model instance holds (max_batch_size)")
    p.add_argument("--instances", type=int, default=1, help="instances per model (instance_group count)")
    p.add_argument("--kind", choices=["cpu", "gpu"], default="cpu", help="KIND_CPU (default) or KIND_GPU")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="the S2S step's dtype")
    p.add_argument("--cuda-graphs", action="store_true", help="GPU only: capture the streaming steps")
    p.add_argument("--threads", type=int, default=0, help="torch threads per instance (0: torch's default)")
    p.add_argument("--idle-s", type=float, default=15.0, help="max_sequence_idle (> the 10 s call idle timeout)")
    p.add_argument("--batch-delay-us", type=int, default=0,
                   help="sequence batcher: wait this long for more calls' requests (default 0: run what is ready)")
    p.add_argument("--min-slot-utilization", type=float, default=0.0,
                   help="sequence batcher: run before the delay once this share of the slots is ready (default 0)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="run tritonserver (from the nvidia-pytriton wheel) on a repository",
                       description="Starts the tritonserver that the nvidia-pytriton wheel bundles, with its python "
                                   "backend and this environment's packages; runs until SIGTERM/SIGINT. Then: "
                                   "`maata serve --model-backend triton --triton-url 127.0.0.1:GRPC_PORT`.")
    p.add_argument("--repo", required=True, type=Path, help="a repository from `maata triton export`")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics (beside the services' own)")
    p.add_argument("--log", type=Path, help="server log file (default: in a temporary folder)")
    p.set_defaults(func=cmd_serve)


def cmd_export(args: argparse.Namespace) -> int:
    from services.triton.export import ExportConfig, export_repository

    cfg = ExportConfig(slots=args.slots, instances=args.instances, kind=args.kind, dtype=args.dtype,
                       cuda_graphs=args.cuda_graphs, threads=args.threads, idle_s=args.idle_s,
                       batch_delay_us=args.batch_delay_us, min_slot_utilization=args.min_slot_utilization)
    for path in export_repository(args.out, args.codec, args.lm, cfg):
        print(path)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from services.triton.export import validate_repository
    from services.triton.launcher import TritonServer

    validate_repository(args.repo)
    server = TritonServer(args.repo, grpc_port=args.grpc_port, http_port=args.http_port,
                          metrics_port=args.metrics_port, host=args.host, log_path=args.log)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with server:
        print(f"tritonserver ready: gRPC {server.grpc_url}, metrics {server.metrics_url}, log {server.log_path}",
              flush=True)
        while not stop.wait(1.0):
            if server.proc is None or server.proc.poll() is not None:
                print(f"tritonserver exited; log:\n{server.log_tail()}", flush=True)
                return 1
    return 0
