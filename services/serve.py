"""``maata serve``: every Maata service in one process, or one of them per process.

    maata serve                              # session + codec + generation + gateway, one process
    maata serve --loopback                   # the same, the gateway calling codec/generation over gRPC
    maata serve --role codec|generation|session|gateway    # one service (a deployment's process)
    maata serve --untrained                  # tiny random models (tests, smoke runs: no speech)
    maata serve --config serve.yaml          # YAML, then MAATA_SERVE__* variables, e.g.
                                             # MAATA_SERVE__GATEWAY__SERVER__PORT=7200

One process (the default). The session service (in-memory store), the codec service, the
generation service and the partner gateway each listen on their own localhost port (gateway
7100, codec 7101, generation 7102, session 7103 by default), so other clients can use any of
them; each serves Prometheus ``/metrics`` on its own port (gateway 9100, codec 9101, generation
9102, session 9103: ``METRICS_PORTS``; ``*__SERVER__METRICS_PORT`` moves one, 0 turns it off; a
service moved off its default gRPC port takes any free metrics port unless one is set). The gateway calls the codec and generation **in process** by default: the services'
servicer code is called directly (same validation, same batching with the gRPC callers) with no
protobuf serialization and no HTTP/2 hop. That is the fastest correct path and the default
(``--inproc`` says so explicitly); ``--loopback`` sends the gateway's streams over real loopback
gRPC instead, exactly as separate processes talk (useful to check the network path in one
process). The generation service keeps call histories in the session
service's store object (no hop either way).

One role per process (``--role``): the codec and generation services load their models; the
generation service keeps histories in the session service (``session.server.port``) unless
``generation.session_store`` names another store (a redis:// URL, or ``memory`` for a private
in-process one); the gateway talks gRPC to ``gateway.codec`` / ``gateway.generation`` (default:
this config's codec and generation ports on ``host``) and reads sessions from
``gateway.session_store`` (default: the session service).

Models. The served pair of :mod:`maata.served` (``codec_checkpoint`` / ``lm_checkpoint``), and
its tokenizer for the agent's text when present. A missing checkpoint is an error that says how to train it; ``--untrained``
runs tiny random models of matching shapes instead (the audio is noise: for tests only).

API keys. The gateway accepts the hashed keys of ``gateway.auth`` (see
``services.gateway.auth``; ``maata apikey`` makes one). With no key configured, the one-process
mode makes an ephemeral development key and prints it; ``--role gateway`` refuses to start.

Shutdown. SIGTERM or SIGINT drains everything gracefully, in order: the gateway (health
NOT_SERVING, new calls refused, live calls end UNAVAILABLE "reconnect with the same call_id
(resume)" after their generation streams are flushed), the generation service (every call's
history flushed to the store), the codec service, the session service.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maata import config as cfglib
from maata.lm.compat import check_compatible
from maata.served import SERVED_CODEC, SERVED_LM, SERVED_TOKENIZER
from services.codec.service import CodecServer, CodecServiceConfig, serve_codec
from services.common.aio import drain_on_signals
from services.common.config import ServerConfig
from services.common.server import Service, channel_options
from services.gateway.auth import ApiKey, Authenticator, hash_key, new_key
from services.gateway.backends import Backends, GrpcBackends, InprocBackends
from services.gateway.config import GATEWAY_MAX_MESSAGE_BYTES, GatewayConfig
from services.gateway.server import GatewayServer, serve_gateway
from services.generation.service import GenerationServer, GenerationServiceConfig, serve_generation
from services.session.client import open_store
from services.session.service import SessionConfig, SessionServer, serve_session

log = logging.getLogger("maata.services.serve")

ENV_PREFIX = "MAATA_SERVE__"
ROLES = ("all", "codec", "generation", "session", "gateway")
# tiny random models of matching shapes for --untrained (tests and smoke runs)
UNTRAINED_CODEC: dict[str, Any] = {
    "base_channels": 4, "max_channels": 32, "latent_dim": 16,
    "transformer": {"layers": 1, "heads": 2, "window": 5, "ff_mult": 2},
    "quantizer": {"n_q": 8, "codebook_size": 64, "codebook_dim": 4},
}
UNTRAINED_LM: dict[str, Any] = {
    "codebook_size": 64,
    "temporal": {"dim": 64, "layers": 2, "heads": 4, "context": 250},
    "depth": {"dim": 32, "layers": 2, "heads": 2},
    "text": {"vocab_size": 64},
    "conditioning": {"speaker": {"dim": 16, "hidden": 32, "layers": 1, "heads": 2, "min_frames": 4, "max_frames": 16}},
}
TRAIN_CODEC_HINT = ("train one with `maata train codec --config codec_default --manifest data/manifest.jsonl "
                    "--out runs/codec_default` and copy runs/codec_default/codec.safetensors there, or set "
                    "codec_checkpoint (MAATA_SERVE__CODEC_CHECKPOINT)")
TRAIN_LM_HINT = ("train it with `maata train lm --stage pretrain|dialogue|voice ... --out runs/lm_voice` (see "
                 "training/lm_commands.py) and copy runs/lm_voice/lm.safetensors there, or set lm_checkpoint "
                 "(MAATA_SERVE__LM_CHECKPOINT)")


METRICS_PORTS = {"gateway": 9100, "codec": 9101, "generation": 9102, "session": 9103}  # Prometheus /metrics


def _port(port: int, metrics_port: int, **kw: Any) -> ServerConfig:
    return ServerConfig(port=port, metrics_port=metrics_port, **kw)


@dataclass(frozen=True)
class ServeConfig:
    """Every service's config, the models, and where each listens."""

    host: str = "127.0.0.1"  # every service's listening address (loopback: expose on purpose only)
    codec_checkpoint: str = SERVED_CODEC
    lm_checkpoint: str = SERVED_LM
    tokenizer: str = SERVED_TOKENIZER  # the agent's text pieces, when the file exists
    threads: int = 1  # torch intra-op threads of this process (0: torch's default)
    gateway: GatewayConfig = field(default_factory=lambda: GatewayConfig(
        server=_port(7100, METRICS_PORTS["gateway"], max_message_bytes=GATEWAY_MAX_MESSAGE_BYTES)))
    codec: CodecServiceConfig = field(default_factory=lambda: CodecServiceConfig(
        server=_port(7101, METRICS_PORTS["codec"])))
    generation: GenerationServiceConfig = field(default_factory=lambda: GenerationServiceConfig(
        server=_port(7102, METRICS_PORTS["generation"])))
    session: SessionConfig = field(default_factory=lambda: SessionConfig(server=_port(7103, METRICS_PORTS["session"])))

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")


GRPC_PORTS = {"gateway": 7100, "codec": 7101, "generation": 7102, "session": 7103}


def metrics_follow_ports(config: ServeConfig) -> ServeConfig:
    """The fixed default metrics ports go with the fixed default service ports: a service moved
    to another gRPC port (or to any free one, port 0: tests, benches, several stacks on one
    machine) whose metrics port is still the default puts ``/metrics`` on any free port instead
    (the default would collide); a metrics port set to anything else is kept."""
    changes = {}
    for name, default in METRICS_PORTS.items():
        service = getattr(config, name)
        if service.server.port != GRPC_PORTS[name] and service.server.metrics_port == default:
            changes[name] = dataclasses.replace(service, server=dataclasses.replace(service.server, metrics_port=-1))
    return dataclasses.replace(config, **changes) if changes else config


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                **overrides: Any) -> ServeConfig:
    """The defaults, then YAML ``path``, ``overrides``, then ``MAATA_SERVE__*`` variables (a file
    that sets one field of a service keeps the other defaults, ports included)."""
    data = cfglib.to_dict(ServeConfig())
    if path is not None:
        data = cfglib.deep_merge(data, cfglib.read_yaml(path))
    if overrides:
        data = cfglib.deep_merge(data, overrides)
    data = cfglib.deep_merge(data, cfglib.env_overrides(ENV_PREFIX, environ))
    return cfglib.from_dict(ServeConfig, data)


# -- models -----------------------------------------------------------------------------------------
def load_codec_model(config: ServeConfig, untrained: bool) -> Any:
    from services.codec.service import load_model

    if untrained:
        return load_model(dataclasses.replace(config.codec, checkpoint="", preset_overrides=UNTRAINED_CODEC))
    path = config.codec.checkpoint or config.codec_checkpoint
    if not Path(path).exists():
        raise FileNotFoundError(f"no codec checkpoint at {path}: {TRAIN_CODEC_HINT}; or run `maata serve "
                                "--untrained` for tiny random models (tests only)")
    return load_model(dataclasses.replace(config.codec, checkpoint=path))


def load_lm_model(config: ServeConfig, untrained: bool) -> Any:
    from services.generation.service import load_model

    if untrained:
        return load_model(dataclasses.replace(config.generation, checkpoint="", preset="tiny",
                                              preset_overrides=UNTRAINED_LM))
    path = config.generation.checkpoint or config.lm_checkpoint
    if not Path(path).exists():
        raise FileNotFoundError(f"no LM checkpoint at {path}: {TRAIN_LM_HINT}; or run `maata serve --untrained` "
                                "for tiny random models (tests only)")
    return load_model(dataclasses.replace(config.generation, checkpoint=path))


def load_tokenizer(config: ServeConfig) -> Any:
    path = config.generation.tokenizer or config.tokenizer
    if not path or not Path(path).exists():
        return None
    from maata.text.tokenizer import Tokenizer

    return Tokenizer.load(path)


# -- the stack --------------------------------------------------------------------------------------
@dataclass
class Stack:
    """The services this process runs, composed from their handles; ``drain`` stops them
    gracefully in order: gateway, generation, codec, session (callers before what they call)."""

    role: str
    gateway: GatewayServer | None = None
    generation: GenerationServer | None = None
    codec: CodecServer | None = None
    session: SessionServer | None = None
    dev_key: str = ""  # the ephemeral key of a one-process run without configured keys
    path: str = ""  # "in process" or "loopback gRPC" (the gateway's way to the engines)
    _stopping: asyncio.Future[None] | None = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def services(self) -> list[Service]:
        """The running services, in drain order."""
        return [s for s in (self.gateway, self.generation, self.codec, self.session) if s is not None]

    @property
    def ports(self) -> dict[str, int]:
        out = {service.name: service.port for service in self.services}
        if self.gateway is not None and self.gateway.webrtc is not None:
            out["webrtc"] = self.gateway.webrtc.port
        return out

    @property
    def browser_url(self) -> str:
        """The call page, when the browser front end runs."""
        return self.gateway.webrtc.url if self.gateway is not None and self.gateway.webrtc is not None else ""

    async def drain(self) -> None:
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._drain())
        await asyncio.shield(self._stopping)

    async def _drain(self) -> None:
        try:
            for service in self.services:
                await service.drain()
        finally:
            self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()


async def start(config: ServeConfig, role: str = "all", *, inproc: bool = True, untrained: bool = False) -> Stack:
    """Start ``role``'s services (see the module docstring); returns once they all serve."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    config = metrics_follow_ports(config)
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    host = config.host
    stack = Stack(role)
    try:
        if role in ("all", "session"):
            stack.session = await serve_session(config.session, host=host)
        codec_model = lm = None
        if role in ("all", "codec", "generation"):
            codec_model = load_codec_model(config, untrained)
        if role in ("all", "generation"):
            lm = load_lm_model(config, untrained)
            try:
                check_compatible(lm, codec_model)
            except ValueError as err:
                raise ValueError(f"{err}: serve a matching pair of checkpoints") from None
        if role in ("all", "codec"):
            stack.codec = await serve_codec(config.codec, host=host, codec=codec_model)
        if role in ("all", "generation"):
            store = stack.session.store if stack.session is not None else None
            generation_config = config.generation
            if store is None:
                where = generation_config.session_store or f"{host}:{config.session.server.port}"
                generation_config = dataclasses.replace(generation_config,
                                                        session_store="" if where == "memory" else where)
            stack.generation = await serve_generation(generation_config, store=store, host=host, lm=lm,
                                                      codec=codec_model, tokenizer=load_tokenizer(config))
        if role in ("all", "gateway"):
            stack.gateway, stack.dev_key, stack.path = await _start_gateway(config, stack, inproc)
    except BaseException:
        await stack.drain()
        raise
    return stack


async def _start_gateway(config: ServeConfig, stack: Stack, inproc: bool) -> tuple[GatewayServer, str, str]:
    gw = config.gateway
    if stack.generation is not None and gw.max_calls > stack.generation.servicer.engine.max_calls:
        # the gateway admits no more calls than the generation has slots (its reserve then means something)
        slots = stack.generation.servicer.engine.max_calls
        gw = dataclasses.replace(gw, max_calls=slots, reserve_calls=min(gw.reserve_calls, slots - 1))
    auth = Authenticator.from_config(gw.auth)
    dev_key = ""
    if auth.empty:
        if stack.role != "all":
            raise ValueError("no API keys configured for the gateway: add hashed keys to gateway.auth.keys or "
                             "gateway.auth.keys_file (`maata apikey --id NAME` makes one)")
        dev_key = new_key()
        auth.add(ApiKey(id="dev", sha256=hash_key(dev_key), max_calls=gw.max_calls - gw.reserve_calls or 1))
    host = config.host
    options = channel_options(gw.server)
    if stack.role == "all" and inproc:
        assert stack.codec is not None and stack.generation is not None
        backends: Backends = InprocBackends(stack.codec.servicer, stack.generation.servicer)
        path = "in process"
    else:
        codec = gw.codec or f"{host}:{stack.codec.port if stack.codec else config.codec.server.port}"
        generation = gw.generation or f"{host}:{stack.generation.port if stack.generation else config.generation.server.port}"
        backends = GrpcBackends(codec, generation, options, lb_policy=gw.lb_policy)
        path = "loopback gRPC" if stack.role == "all" else "gRPC"
    if stack.session is not None:
        store, owns_store = stack.session.store, False
    else:
        where = gw.session_store or f"{host}:{config.session.server.port}"
        store, owns_store = open_store(where, timeout_s=gw.store_timeout_s, options=options), True
    try:
        server = await serve_gateway(gw, backends, store=store, host=host, auth=auth, owns_store=owns_store)
    except BaseException:
        await backends.close()
        if owns_store:
            await store.close()
        raise
    return server, dev_key, path


class BackgroundStack:
    """A stack on its own event loop in a daemon thread, for drivers that block (a browser under
    selenium, a benchmark): ``BackgroundStack(config, untrained=...)`` returns once every service
    serves; ``stop()`` drains it."""

    def __init__(self, config: ServeConfig, role: str = "all", *, inproc: bool = True, untrained: bool = False,
                 timeout_s: float = 300.0) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self.stack: Stack | None = None
        self._error: BaseException | None = None
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.stack = self.loop.run_until_complete(start(config, role, inproc=inproc, untrained=untrained))
            except BaseException as err:  # handed to the constructing thread
                self._error = err
            ready.set()
            if self._error is None:
                self.loop.run_forever()
            self.loop.close()

        self.thread = threading.Thread(target=run, name="maata-stack", daemon=True)
        self.thread.start()
        if not ready.wait(timeout_s):
            raise TimeoutError(f"the stack did not start within {timeout_s:g} s")
        if self._error is not None:
            raise self._error

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.stack is not None and self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.stack.drain(), self.loop).result(timeout_s)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def serve_forever(config: ServeConfig, role: str = "all", *, inproc: bool = True, untrained: bool = False,
                        out: Any = sys.stderr) -> None:
    """Start, print where everything listens, drain on SIGTERM/SIGINT: a process's main coroutine."""
    stack = await start(config, role, inproc=inproc, untrained=untrained)
    with drain_on_signals(stack.drain):
        ports = ", ".join(f"{name} {config.host}:{port}" for name, port in stack.ports.items())
        print(f"maata serve ({role}{', ' + stack.path if stack.path else ''}"
              f"{', untrained models' if untrained else ''}): {ports}", file=out, flush=True)
        metrics = ", ".join(f"{service.name} {service.grpc.config.metrics_host}:{service.metrics_port}" for service in stack.services
                            if service.metrics_port)
        if metrics:
            print(f"Prometheus /metrics: {metrics}", file=out, flush=True)
        if stack.browser_url:
            print(f"talk to Maata from a browser: open {stack.browser_url} and press Call", file=out, flush=True)
        if stack.dev_key:
            dev = stack.gateway.gateway.auth.by_id("dev") if stack.gateway is not None else None
            quota = f" (at most {dev.max_calls} live calls, {dev.calls_per_minute} a minute)" if dev else ""
            print(f"no API keys configured: this run accepts the development key {stack.dev_key}{quota} "
                  "(configure gateway.auth for anything else)", file=out, flush=True)
        await stack.wait()
    print("maata serve: drained", file=out, flush=True)


__all__ = ["BackgroundStack", "ROLES", "ServeConfig", "Stack", "UNTRAINED_CODEC", "UNTRAINED_LM", "load_config",
           "serve_forever", "start"]
