"""``maata probe``: the checks that containers, Kubernetes and ``helm test`` run against a deployment.

    maata probe health [--addr HOST:PORT] [--service NAME] [--timeout S]
    maata probe call [--addr HOST:PORT] [--api-key KEY] [--seconds S] [--timeout S]

``health`` asks a service's ``grpc.health.v1.Health/Check`` (every Maata service serves it) and
exits 0 only on SERVING: a Docker HEALTHCHECK needs no extra binary in the image (there is no
grpc_health_probe to download), and Kubernetes uses its native gRPC probes against the same
service. ``--addr`` defaults to ``$MAATA_PROBE_ADDR``, else the gateway's 127.0.0.1:7100, so one
image serves every role and the role's container sets the variable.

``call`` makes one short partner-API call (``maata.v1.Conversation/Converse``) with a generated
tone, sent as fast as the server takes it, and exits 0 when the call ends OK with agent audio:
the end-to-end check of ``helm test`` (gateway -> codec -> generation -> codec -> gateway, the
API key and the session store included).

Exit codes: 0 healthy, 1 unhealthy (with one line on stderr saying what was seen), 2 bad usage.
Only argparse is imported at load time (see maata/cli.py).
"""

from __future__ import annotations

import argparse
import os
import sys

from maata.cliutil import command_group

DEFAULT_ADDR = "127.0.0.1:7100"


def register(subparsers: argparse._SubParsersAction) -> None:
    checks = command_group(subparsers, "probe",
                           help="health and smoke checks of a running deployment (containers, helm test)",
                           description="Check a running Maata service: gRPC health, or one short partner call.",
                           dest="check", metavar="<check>")

    p = checks.add_parser("health", help="gRPC health of one service: exit 0 when SERVING",
                          description="grpc.health.v1 Check against --addr; exit 0 on SERVING, 1 otherwise.")
    p.add_argument("--addr", default=None, help=f"host:port (default: $MAATA_PROBE_ADDR or {DEFAULT_ADDR})")
    p.add_argument("--service", default="", help="a service name, e.g. maata.v1.Codec (default: the server)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds before the check fails (default 3)")
    p.set_defaults(func=cmd_health, _parser=p)

    p = checks.add_parser("call", help="one short partner-API call: exit 0 when it ends OK with agent audio",
                          description="Converse with a generated tone through the gateway (fast, lossless) and "
                                      "check that it ends OK with agent audio frames.")
    p.add_argument("--addr", default=None, help=f"the gateway (default: $MAATA_PROBE_ADDR or {DEFAULT_ADDR})")
    p.add_argument("--api-key", default=None, help="API key (default: $MAATA_API_KEY)")
    p.add_argument("--seconds", type=float, default=1.0, help="length of the tone sent (default 1 s)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole call (default 60)")
    p.set_defaults(func=cmd_call, _parser=p)


def _addr(args: argparse.Namespace) -> str:
    return args.addr or os.environ.get("MAATA_PROBE_ADDR") or DEFAULT_ADDR


async def check_health(addr: str, service: str = "", timeout_s: float = 3.0) -> str:
    """The serving status name that ``addr`` reports for ``service`` ("" = the whole server)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(addr) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                                timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def cmd_health(args: argparse.Namespace) -> int:
    import asyncio

    import grpc

    addr = _addr(args)
    try:
        status = asyncio.run(check_health(addr, args.service, args.timeout))
    except grpc.RpcError as err:
        print(f"maata probe health: {addr}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"maata probe health: {addr}{' ' + args.service if args.service else ''}: {status}", file=sys.stderr)
        return 1
    return 0


async def probe_call(addr: str, api_key: str, seconds: float = 1.0, timeout_s: float = 60.0) -> tuple[str, int, str]:
    """One short call with a 220 Hz tone at 16 kHz: (final status name, agent frames, details)."""
    import asyncio

    import numpy as np

    from services.client import converse

    rate = 16000
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    tone = 0.2 * np.sin(2 * np.pi * 220.0 * t).astype(np.float32)
    result = await asyncio.wait_for(converse(addr, api_key, tone, rate, fast=True, retries=2), timeout_s)
    return result.code.name, len(result.frames), result.details


def cmd_call(args: argparse.Namespace) -> int:
    import asyncio

    import grpc

    if args.seconds <= 0 or args.seconds > 30:
        raise ValueError(f"--seconds must be in (0, 30], got {args.seconds}")
    key = args.api_key or os.environ.get("MAATA_API_KEY", "")
    if not key:
        raise ValueError("no API key: pass --api-key or set MAATA_API_KEY")
    addr = _addr(args)
    try:
        code, frames, details = asyncio.run(probe_call(addr, key, args.seconds, args.timeout))
    except (grpc.RpcError, TimeoutError) as err:
        what = f"{err.code().name}: {err.details()}" if isinstance(err, grpc.RpcError) else f"no answer in {args.timeout:g} s"
        print(f"maata probe call: {addr}: {what}", file=sys.stderr)
        return 1
    if code != "OK" or frames == 0:
        print(f"maata probe call: {addr}: ended {code} with {frames} agent frames{': ' + details if details else ''}",
              file=sys.stderr)
        return 1
    print(f"maata probe call: {addr}: OK, {frames} agent frames for {args.seconds:g} s of audio")
    return 0
