"""``maata serve`` and ``maata client``: the one-process mode as a real subprocess (health SERVING,
a Telugu WAV through ``maata client``, a graceful SIGTERM drain mid-call), the per-role mode
(each service its own stack, talking gRPC), the loopback variant, config layering, and the
error that says how to get the checkpoints."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maata.audio import load_audio, resample
from services.client import converse
from services.gateway.auth import hash_key
from services.serve import ServeConfig, load_config, load_lm_model, start
from services.session.redis_server import free_port
from tests.support.speech import espeak_wav

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
KEY = "mk_serve-test-key"
KEYS_ENV = f"[{{id: serve-test, sha256: {hash_key(KEY)}, max_calls: 4}}]"


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`espeak-ng -v te -w q.wav "మీ పేరు ఏమిటి?"` (22,050 Hz: the client resamples it)."""
    return espeak_wav(tmp_path_factory.mktemp("wav"))


def serve_env(ports: dict[str, int]) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MAATA_SERVE__GATEWAY__AUTH__KEYS": KEYS_ENV,
           "MAATA_SERVE__GATEWAY__SERVER__PORT": str(ports["gateway"]),
           "MAATA_SERVE__CODEC__SERVER__PORT": str(ports["codec"]),
           "MAATA_SERVE__GENERATION__SERVER__PORT": str(ports["generation"]),
           "MAATA_SERVE__SESSION__SERVER__PORT": str(ports["session"]),
           "MAATA_SERVE__GATEWAY__WEBRTC__PORT": str(ports.get("webrtc", 0))}
    env.pop("MAATA_API_KEY", None)
    return env


def maata(*args: str) -> list[str]:
    return [sys.executable, "-m", "maata.cli", *args]


def wait_serving(port: int, process: subprocess.Popen, timeout: float = 90.0) -> None:
    async def check() -> bool:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            except grpc.aio.AioRpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

    deadline = time.monotonic() + timeout
    while not asyncio.run(check()):
        if process.poll() is not None:
            raise AssertionError(f"maata serve exited with {process.returncode}: {process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError("maata serve did not become SERVING")
        time.sleep(0.2)


def test_one_process_serve_with_client_and_sigterm_drain(wav: Path, tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("gateway", "codec", "generation", "session")}
    env = serve_env(ports)
    server = subprocess.Popen(maata("serve", "--untrained"), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_serving(ports["gateway"], server)
        address = f"127.0.0.1:{ports['gateway']}"
        out = tmp_path / "reply.wav"
        client = subprocess.run(maata("client", "--in", str(wav), "--out", str(out), "--addr", address,
                                      "--api-key", KEY, "--voice", "female_1"),
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stdout + client.stderr
        # a client that bursts ahead of real time (a loaded machine) may lose queued frames: the
        # server then says so in the reason instead of a plain hang-up
        assert "started   call_id=" in client.stdout
        assert ("ended     reason='hangup'" in client.stdout
                or "ended     reason='hangup_dropped_frames'" in client.stdout), client.stdout
        assert "resampled to 16000 Hz" in client.stderr
        reply, rate = sf.read(out)
        audio, file_rate = load_audio(wav)
        frames = -(-len(resample(audio, file_rate, 16000)) // 640)
        assert rate == 16000 and len(reply) % 640 == 0
        assert abs(len(reply) // 640 - frames) <= 0.25 * frames  # live: late frames add silence steps, bursts drop

        bad = subprocess.run(maata("client", "--in", str(wav), "--out", str(out), "--addr", address,
                                   "--api-key", "mk_wrong"), cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=60)
        assert bad.returncode == 1 and "UNAUTHENTICATED" in bad.stdout and "invalid API key" in bad.stdout

        # SIGTERM mid-call: the call ends UNAVAILABLE (resumable), the server drains and exits 0
        long_wav = tmp_path / "long.wav"
        sf.write(long_wav, np.tile(audio, 6), file_rate)
        talking = subprocess.Popen(maata("client", "--in", str(long_wav), "--out", str(tmp_path / "long_reply.wav"),
                                         "--addr", address, "--api-key", KEY, "--retries", "0"),
                                   cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert talking.stdout is not None
        first = talking.stdout.readline()
        assert first.startswith("started"), first + talking.stderr.read()
        time.sleep(1.0)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        stdout, _ = talking.communicate(timeout=30)
        assert talking.returncode == 1
        assert "resumable=True" in stdout and "UNAVAILABLE" in stdout and "the gateway is draining" in stdout
        assert "maata serve: drained" in server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_each_role_as_its_own_service_and_the_loopback_mode(wav: Path) -> None:
    """session, codec, generation and gateway each started as its own role (as four processes
    would), wired by addresses; then the one-process stack with the gateway on loopback gRPC."""
    audio, rate = load_audio(wav)
    audio = resample(audio, rate, 16000)

    async def main() -> None:
        env = {"MAATA_SERVE__GATEWAY__AUTH__KEYS": KEYS_ENV, "MAATA_SERVE__GATEWAY__SERVER__PORT": "0",
               "MAATA_SERVE__CODEC__SERVER__PORT": "0", "MAATA_SERVE__GENERATION__SERVER__PORT": "0",
               "MAATA_SERVE__SESSION__SERVER__PORT": "0"}
        config = load_config(environ=env)
        session = await start(config, "session")
        codec = await start(config, "codec", untrained=True)
        stacks = [session, codec]
        try:
            session_address = f"127.0.0.1:{session.ports['session']}"
            generation = await start(load_config(environ={**env, "MAATA_SERVE__SESSION__SERVER__PORT": str(session.ports["session"])}),
                                     "generation", untrained=True)
            stacks.append(generation)
            wired = load_config(environ={
                **env, "MAATA_SERVE__GATEWAY__CODEC": f"127.0.0.1:{codec.ports['codec']}",
                "MAATA_SERVE__GATEWAY__GENERATION": f"127.0.0.1:{generation.ports['generation']}",
                "MAATA_SERVE__GATEWAY__SESSION_STORE": session_address})
            gateway = await start(wired, "gateway")
            stacks.append(gateway)
            assert gateway.path == "gRPC" and not gateway.dev_key
            result = await converse(f"127.0.0.1:{gateway.ports['gateway']}", KEY, audio, 16000, fast=True,
                                    call_id="roles")
            assert result.code == grpc.StatusCode.OK, result.details
            assert len(result.seqs) >= -(-len(audio) // 640)
            stored = await session.session.store.get("serve-test:roles")  # the generation stored it there
            assert stored.state == "ended" and stored.frames == len(result.seqs)
            with pytest.raises(ValueError, match="no API keys configured"):
                await start(load_config(environ={k: v for k, v in env.items() if "AUTH" not in k}), "gateway")
        finally:
            for stack in reversed(stacks):
                await stack.drain()

        loopback = await start(config, "all", inproc=False, untrained=True)
        try:
            assert loopback.path == "loopback gRPC"
            result = await converse(f"127.0.0.1:{loopback.ports['gateway']}", KEY, audio[:16000], 16000, fast=True)
            assert result.code == grpc.StatusCode.OK and len(result.seqs) >= 25
        finally:
            await loopback.drain()

    asyncio.run(main())


def test_config_layers_and_the_missing_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("gateway: {max_calls: 3}\ncodec: {max_streams: 5}\n")
    config = load_config(path, environ={"MAATA_SERVE__CODEC__SERVER__PORT": "9101", "MAATA_SERVE__HOST": "0.0.0.0"})
    # a file that sets one field of a service keeps its other defaults (ports included)
    assert (config.gateway.max_calls, config.gateway.server.port, config.codec.max_streams) == (3, 7100, 5)
    assert (config.codec.server.port, config.generation.server.port, config.host) == (9101, 7102, "0.0.0.0")

    async def main() -> None:
        config = load_config(environ={"MAATA_SERVE__SESSION__SERVER__PORT": "0",
                                      "MAATA_SERVE__CODEC_CHECKPOINT": str(tmp_path / "none.safetensors")})
        with pytest.raises(FileNotFoundError, match="no codec checkpoint at .*none.safetensors: train one with "
                                                    "`maata train codec"):
            await start(config)

    asyncio.run(main())
    with pytest.raises(FileNotFoundError, match=r"no LM checkpoint at checkpoints/lm_demo.safetensors.*--untrained"):
        os.chdir(tmp_path)
        try:
            load_lm_model(load_config(environ={}), untrained=False)
        finally:
            os.chdir(ROOT)


def test_every_deployment_serves_the_same_matched_pair():
    """maata.served names the served codec and LM once; the Kubernetes config names the same
    files, they are committed, and they fit together (the LM was trained on this codec's codes
    when its config records one)."""
    import yaml

    from maata.checkpoint import load_codec
    from maata.lm.checkpoint import read_lm_config
    from maata.lm.compat import check_compatible
    from maata.served import SERVED_CODEC, SERVED_LM, SERVED_TOKENIZER

    root = Path(__file__).resolve().parents[1]
    k8s = yaml.safe_load((root / "k8s/base/config/serve.yaml").read_text())
    assert (k8s["codec_checkpoint"], k8s["lm_checkpoint"]) == (SERVED_CODEC, SERVED_LM)
    assert (ServeConfig().codec_checkpoint, ServeConfig().lm_checkpoint) == (SERVED_CODEC, SERVED_LM)
    for path in (SERVED_CODEC, SERVED_LM, SERVED_TOKENIZER):
        assert (root / path).is_file(), path
    lm_cfg, codec = read_lm_config(root / SERVED_LM), load_codec(root / SERVED_CODEC)
    check_compatible(lm_cfg, codec)
    assert lm_cfg.codec == codec.code_space()  # the LM records the very codec it is served with
