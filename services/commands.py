"""``maata serve``, ``maata client``, ``maata apikey`` and ``maata calltoken``: run the services,
call them, make keys and browser call tokens.

    maata serve [--config serve.yaml] [--role all|codec|generation|session|gateway]
                [--loopback | --inproc] [--untrained] [--host H] [--port P]
    maata client --in q.wav --out reply.wav [--voice V] [--emotion E] [--addr HOST:PORT]
                 [--api-key KEY] [--rate R] [--out-rate R] [--fast] [--text] [--call-id ID] [--json]
    maata apikey [--id NAME] [--max-calls N]
    maata calltoken --id NAME [--ttl SECONDS]     # the API key from MAATA_API_KEY

Only argparse is imported at load time (see maata/cli.py); handlers import the rest.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="run the services: all in one process (default) or one --role per process",
        description="Run Maata's gRPC services. One process by default (session, codec, generation and the "
                    "partner gateway on localhost ports; the gateway calls the engines in process). Config: "
                    "--config YAML, then MAATA_SERVE__* variables (e.g. MAATA_SERVE__GATEWAY__SERVER__PORT=7200). "
                    "SIGTERM drains everything gracefully.")
    p.add_argument("--config", type=Path, help="serve YAML (see services/serve.py ServeConfig)")
    p.add_argument("--role", default="all", choices=["all", "codec", "generation", "session", "gateway"],
                   help="which service(s) this process runs (default: all)")
    path = p.add_mutually_exclusive_group()
    path.add_argument("--inproc", dest="inproc", action="store_true", default=True,
                      help="one process: the gateway calls the codec and generation engines directly (default)")
    path.add_argument("--loopback", dest="inproc", action="store_false",
                      help="one process: the gateway talks to codec and generation over loopback gRPC")
    p.add_argument("--untrained", action="store_true", help="tiny random models instead of checkpoints (tests)")
    p.add_argument("--host", help="listen address of every service (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="the gateway's port (default 7100)")
    p.add_argument("--model-backend", choices=["torch", "triton"],
                   help="where the codec and the S2S step run: torch in this process (default) or a running tritonserver "
                        "serving `maata triton export`'s repository (see `maata triton serve`)")
    p.add_argument("--triton-url", help="Triton's gRPC address for --model-backend triton (default 127.0.0.1:8001)")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser(
        "client", help="call the partner API with a WAV file and write the agent's reply",
        description="Stream a WAV through the partner API (real time, or --fast), write the agent's audio, print "
                    "events. Reconnects with the same call_id (resume) when a server restarts mid-call.")
    p.add_argument("--in", dest="input", required=True, type=Path, help="audio file (wav, flac, mp3, ...)")
    p.add_argument("--out", required=True, type=Path, help="the agent's audio (16-bit WAV)")
    p.add_argument("--addr", default="127.0.0.1:7100", help="the gateway (default 127.0.0.1:7100)")
    p.add_argument("--api-key", default=None, help="API key (default: $MAATA_API_KEY)")
    p.add_argument("--voice", default="", help="agent voice (male_1, male_2, female_1, female_2)")
    p.add_argument("--emotion", default="", help="agent emotion (NEUTRAL, HAPPY, ...)")
    p.add_argument("--rate", type=int, default=0,
                   help="send at this rate (8000/16000/24000/48000; default: the file's if supported, else 16000)")
    p.add_argument("--out-rate", type=int, default=0, help="the reply's rate (default: the sending rate)")
    p.add_argument("--fast", action="store_true", help="send as fast as the server takes it (lossless flow control)")
    p.add_argument("--text", action="store_true", help="ask for the agent's inner-monologue text")
    p.add_argument("--call-id", default="", help="name the call (reuse one to resume it)")
    p.add_argument("--retries", type=int, default=5, help="reconnects (resume) on UNAVAILABLE (default 5)")
    p.add_argument("--json", action="store_true", help="print events and the summary as JSON lines")
    p.set_defaults(func=cmd_client)

    p = subparsers.add_parser("apikey", help="make a partner API key and the config entry holding its hash",
                              description="Prints a new random API key (give it to the partner, store it nowhere "
                                          "else) and the gateway.auth.keys entry with its SHA-256.")
    p.add_argument("--id", default="partner", help="the key's id in logs and quotas (default: partner)")
    p.add_argument("--max-calls", type=int, default=4, help="concurrent calls the key may hold (default 4)")
    p.set_defaults(func=cmd_apikey)

    p = subparsers.add_parser("calltoken", help="mint a short-lived browser call token charged to an API key",
                              description="Prints a signed, single-use call token (services.gateway.tokens) for "
                                          "the key --id whose secret is in MAATA_API_KEY: a partner's page sends it "
                                          "as \"token\" with its offer (or the call page as ?token=...).")
    p.add_argument("--id", required=True, help="the API key's id (as in gateway.auth.keys)")
    p.add_argument("--ttl", type=float, default=120.0, help="seconds the token is valid (default 120; the gateway "
                                                           "refuses tokens minted for longer than 600)")
    p.set_defaults(func=cmd_calltoken)


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from services.common.logs import configure_logging
    from services.serve import load_config, serve_forever

    overrides: dict = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["gateway"] = {"server": {"port": args.port}}
    backend = {k: v for k, v in (("kind", args.model_backend), ("triton_url", args.triton_url)) if v}
    if backend:  # the codec and the S2S step both on Triton (or both in process)
        overrides["generation"] = {"model_backend": backend}
        overrides["codec"] = {"model_backend": backend}
    config = load_config(args.config, **overrides)
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):  # the CLI's plain handler: the services log JSON lines instead
        root.removeHandler(handler)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    asyncio.run(serve_forever(config, args.role, inproc=args.inproc, untrained=args.untrained))
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from maata.audio import load_audio, resample, write_wav
    from services.client import SUPPORTED_RATES, converse, describe

    key = args.api_key or os.environ.get("MAATA_API_KEY", "")
    if not key:
        raise ValueError("no API key: pass --api-key or set MAATA_API_KEY")
    audio, file_rate = load_audio(args.input)
    rate = args.rate or (file_rate if file_rate in SUPPORTED_RATES else 16000)
    if rate not in SUPPORTED_RATES:
        raise ValueError(f"--rate {rate} is not one the API takes: {SUPPORTED_RATES}")
    if args.out_rate and args.out_rate not in SUPPORTED_RATES:
        raise ValueError(f"--out-rate {args.out_rate} is not one the API takes: {SUPPORTED_RATES}")
    if file_rate != rate:
        print(f"note: {args.input} is {file_rate} Hz; resampled to {rate} Hz", file=sys.stderr)
        audio = resample(audio, file_rate, rate)

    def on_event(event) -> None:
        if args.json:
            kind = event.WhichOneof("event")
            if kind != "audio":
                from google.protobuf.json_format import MessageToDict

                print(json.dumps({"event": kind, **MessageToDict(getattr(event, kind))}), flush=True)
        elif (line := describe(event)) is not None:
            print(line, flush=True)

    result = asyncio.run(converse(args.addr, key, audio, rate, out_rate=args.out_rate, voice=args.voice,
                                  emotion=args.emotion, call_id=args.call_id, fast=args.fast, text=args.text,
                                  retries=args.retries, on_event=on_event))
    reply = result.audio
    write_wav(args.out, reply, result.out_rate)
    summary = {"call_id": result.call_id, "status": result.code.name, "details": result.details,
               "input_s": round(len(audio) / rate, 3), "reply_s": round(len(reply) / result.out_rate, 3),
               "frames": len(result.frames), "resumes": result.resumes, "out": str(args.out)}
    if args.json:
        print(json.dumps({"event": "summary", **summary}), flush=True)
    else:
        print(f"{summary['status']}: {summary['input_s']} s in, {summary['reply_s']} s reply ({summary['frames']} "
              f"frames, {result.resumes} resumes) -> {args.out}" + (f" ({result.details})" if result.details else ""))
    return 0 if result.code.name == "OK" else 1


def cmd_calltoken(args: argparse.Namespace) -> int:
    from services.gateway.tokens import mint_call_token

    key = os.environ.get("MAATA_API_KEY", "")
    if not key:
        raise ValueError("no API key: set MAATA_API_KEY to the key the token is charged to")
    print(mint_call_token(key, args.id, args.ttl))
    return 0


def cmd_apikey(args: argparse.Namespace) -> int:
    from services.gateway.auth import ApiKey, hash_key, new_key

    key = new_key()
    entry = ApiKey(id=args.id, sha256=hash_key(key), max_calls=args.max_calls)
    print(f"API key (give it to the partner; it is not stored anywhere): {key}")
    print("add to gateway.auth.keys (or the keys_file):")
    print(f"  - {{id: {entry.id}, sha256: {entry.sha256}, max_calls: {entry.max_calls}, "
          f"calls_per_minute: {entry.calls_per_minute}, max_sessions: {entry.max_sessions}}}")
    return 0
