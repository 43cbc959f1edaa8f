"""Checks shared by the kustomize and Helm tests: render with the real tools, validate every object
against the Kubernetes JSON schemas of a pinned version, and check what Maata's workloads need
(probes, drain, resources, headless backends, config that loads, GPU placement, WebRTC UDP)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".tools" / "bin"
K8S_VERSION = "1.35.0"  # the schemas manifests are validated against (kubectl/helm from tools/ are v1.35 clients)
# custom resources whose schemas kubernetes-validate does not ship: checked structurally here
CRD_KINDS = {"ServiceMonitor"}


def tool(name: str) -> str:
    """A real binary: .tools/bin (tools/get_k8s_tools.sh, run by `make test`) or PATH."""
    # imported here: `python tests/k8s_checks.py FILE` runs without the repo root on sys.path
    from tests.support.programs import find_program

    found = find_program(name, TOOLS)
    if found is None:
        pytest.skip(f"no {name} binary: run `make k8s-tools` (tools/get_k8s_tools.sh); `make test` does")
    return found


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


def helm_env(tmp: Path) -> dict[str, str]:
    """helm with its cache/config/data homes in a temp dir (offline, nothing of the user's touched)."""
    env = dict(os.environ)
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(tmp / var.lower())
    return env


def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def validate(docs: list[dict]) -> None:
    """Every object valid against the pinned Kubernetes version's schemas, unknown fields rejected."""
    import kubernetes_validate

    assert docs, "nothing rendered"
    for doc in docs:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("kind") in CRD_KINDS:
            check_service_monitor(doc)
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{where} is not valid Kubernetes {K8S_VERSION}: {err.message} at {list(err.path)}")


def check_service_monitor(doc: dict) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    spec = doc["spec"]
    assert spec["selector"]["matchLabels"], "a ServiceMonitor selects Services by label"
    for endpoint in spec["endpoints"]:
        assert endpoint["port"] == "metrics" and endpoint.get("path", "/metrics") == "/metrics"


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _env(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of an env value from earlier variables."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def serve_config_of(docs: list[dict], container: dict, namespace: str = "maata") -> Any:
    """The ServeConfig a Maata container would load: the mounted serve.yaml ConfigMap, then its MAATA_* env."""
    from services.serve import load_config

    configmaps = [d for d in docs if d["kind"] == "ConfigMap" and "serve.yaml" in d.get("data", {})]
    assert len(configmaps) == 1, "one ConfigMap holds serve.yaml"
    args = container["args"]
    assert args[args.index("--config") + 1] == "/etc/maata/serve.yaml"
    fields = {"POD_NAMESPACE": namespace, "NODE_IP": "10.0.0.7"}
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = _expand(e["value"], {**fields, **env})
        elif e["name"].startswith("MAATA_") and "secretKeyRef" in e["valueFrom"]:
            env[e["name"]] = ""  # a secret's value: its shape is checked where it is made
        else:
            env[e["name"]] = fields.get(e["name"], "")
    maata_env = {k: v for k, v in env.items() if k.startswith("MAATA_SERVE__") and v != ""}
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(configmaps[0]["data"]["serve.yaml"])
    try:
        return load_config(f.name, environ=maata_env), env
    finally:
        os.unlink(f.name)


def check_maata_workloads(docs: list[dict], *, gpu: bool, webrtc: str, namespace: str, prefix: str = "",
                          external_secrets: tuple[str, ...] = (), service_monitor: bool = True) -> None:
    """What every deployment of Maata needs, in whichever way it was rendered (kustomize, or Helm with
    ``prefix`` = the release's name prefix on every object; ``external_secrets``: Secrets the operator
    creates, referenced but not rendered)."""
    from maata.cli import build_parser

    parser = build_parser()
    deployments = {k.removeprefix(prefix): v for k, v in by_kind(docs, "Deployment").items()}
    services = {k.removeprefix(prefix): v for k, v in by_kind(docs, "Service").items()}
    for role in ("gateway", "codec", "generation"):
        assert role in deployments, f"no {role} Deployment"
    # Redis: a StatefulSet with a volume claim and the append-only file on
    redis = by_kind(docs, "StatefulSet")[prefix + "redis"]
    assert redis["spec"]["volumeClaimTemplates"], "Redis persists to a volume"
    redis_args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert redis_args[redis_args.index("--appendonly") + 1] == "yes"

    for role in ("gateway", "codec", "generation"):
        pod = deployments[role]["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == role)
        port = {"gateway": 7100, "codec": 7101, "generation": 7102}[role]
        # requests and limits on every container (init containers too)
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["resources"]["requests"] and c["resources"]["limits"], f"{role}/{c['name']}: requests and limits"
        # native gRPC probes on the service port; a startup probe that allows for model load
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, f"{role}: {probe} is a gRPC probe on {port}"
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, f"{role}: startup allows >= 2 min"
        # graceful drain: preStop pause + the service's drain notice + grace fit in the termination period
        config, env = serve_config_of(docs, container, namespace)
        server = getattr(config, role).server
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        needed = pre_stop + server.drain_notice_seconds + server.grace_seconds
        assert pod["terminationGracePeriodSeconds"] >= needed, f"{role}: termination period < {needed} s"
        assert server.port == port and config.host == "0.0.0.0"
        assert env["MAATA_PROBE_ADDR"] == f"127.0.0.1:{port}"
        # the command is a real `maata` command
        args = parser.parse_args(container["args"])
        assert args.command == "serve" and args.role == role
        assert any(p["containerPort"] == 9090 for p in container["ports"]), f"{role}: /metrics port"

    # the gateway reaches codec and generation through headless Services, with dns:/// targets
    gateway = next(c for c in deployments["gateway"]["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway")
    config, env = serve_config_of(docs, gateway, namespace)
    for backend, port in (("codec", 7101), ("generation", 7102)):
        assert services[backend]["spec"]["clusterIP"] == "None", f"{backend}: headless Service"
        target = getattr(config.gateway, backend)
        assert target == f"dns:///{prefix}{backend}.{namespace}.svc.cluster.local:{port}", target
    assert config.gateway.lb_policy == "round_robin", "the gateway spreads calls, not connections"
    for backend in ("codec", "generation"):  # connections age out, so gateways re-resolve and find new pods
        assert getattr(config, backend).server.max_connection_age_s > 0
    assert config.gateway.session_store.startswith(f"redis://{prefix}redis:")
    assert config.gateway.auth.keys_file
    assert config.generation.session_store.startswith(f"redis://{prefix}redis:")

    # API keys come from a Secret mounted at keys_file
    gw_pod = deployments["gateway"]["spec"]["template"]["spec"]
    secret_vol = next(v for v in gw_pod["volumes"] if "secret" in v)
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == secret_vol["name"])
    assert config.gateway.auth.keys_file.startswith(mount["mountPath"])
    secrets = by_kind(docs, "Secret")
    assert secret_vol["secret"]["secretName"] in {*secrets, *external_secrets}

    # only the gateway is reachable from outside: default deny + sources restricted for everyone else
    policies = list(by_kind(docs, "NetworkPolicy").values())
    assert any(set(p["spec"]["podSelector"].get("matchLabels", {})) <= {"app.kubernetes.io/instance"}
               and "ingress" not in p["spec"] for p in policies), "a default-deny policy over every pod"
    for p in policies:
        selected = p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
        for rule in p["spec"].get("ingress", []):
            if "from" not in rule:
                assert selected == "gateway", f"NetworkPolicy {p['metadata']['name']} opens {selected} to everyone"

    # autoscaling on live calls per pod, a metric our /metrics endpoint serves
    from services.common.metrics import ServiceMetrics

    served = {m.name for m in ServiceMetrics("x").registry.collect()}
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    for hpa in hpas.values():
        assert hpa["apiVersion"] == "autoscaling/v2"
        metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
        assert metric in served, f"HPA scales on {metric}, which Maata does not export"
    assert by_kind(docs, "PodDisruptionBudget"), "PodDisruptionBudgets"
    assert bool(by_kind(docs, "ServiceMonitor")) == service_monitor

    gen_pod = deployments["generation"]["spec"]["template"]["spec"]
    gpu_limits = [c for c in gen_pod["containers"] if "nvidia.com/gpu" in c["resources"].get("limits", {})]
    if gpu:
        assert gpu_limits, "a generation container holds nvidia.com/gpu"
        assert gen_pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in gen_pod["tolerations"])
        export = gen_pod["initContainers"][0]
        assert parser.parse_args(export["args"]).kind == "gpu"
        triton = next(c for c in gen_pod["containers"] if c["name"] == "triton")
        serve = parser.parse_args(triton["args"])
        generation = parser.parse_args(next(c for c in gen_pod["containers"] if c["name"] == "generation")["args"])
        assert generation.model_backend == "triton"
        assert generation.triton_url == f"127.0.0.1:{serve.grpc_port}", "generation calls its Triton sidecar"
        assert serve.repo == parser.parse_args(export["args"]).out
        shared = {m["name"] for m in export["volumeMounts"]} & {m["name"] for m in triton["volumeMounts"]}
        assert shared, "the exported model repository is mounted into Triton"
    else:
        assert not gpu_limits

    if webrtc == "hostport":
        ports = [p for p in gateway["ports"] if p.get("protocol") == "UDP"]
        assert ports and all(p["hostPort"] == p["containerPort"] for p in ports)
        sysctl = next(s for s in gw_pod["securityContext"]["sysctls"] if s["name"] == "net.ipv4.ip_local_port_range")
        low, high = map(int, sysctl["value"].split())
        assert sorted(p["containerPort"] for p in ports) == list(range(low, high + 1)), "published = ephemeral range"
        assert config.gateway.webrtc.host_addresses == ["10.0.0.7"], "ICE host candidate = the node's address"
        public = next(p for p in policies if p["spec"]["podSelector"].get("matchLabels", {}).get(
            "app.kubernetes.io/name") == "gateway")["spec"]["ingress"][0]["ports"]
        assert {"protocol": "UDP", "port": low, "endPort": high} in public
    elif webrtc == "turn":
        ice = next(e for e in gateway["env"] if e["name"] == "MAATA_SERVE__GATEWAY__WEBRTC__ICE_SERVERS")
        assert "secretKeyRef" in ice["valueFrom"]
        if "turn" in deployments:  # the kustomize overlay runs the relay too (the chart expects one)
            assert deployments["turn"]["spec"]["template"]["spec"]["hostNetwork"] is True
        assert not any(p.get("protocol") == "UDP" for p in gateway["ports"]), "the gateway needs no public UDP"
    else:
        raise AssertionError(webrtc)


def keys_from_secret(docs: list[dict]) -> Any:
    """The Authenticator the gateway would build from the rendered API-key Secret."""
    import base64
    import tempfile

    from services.gateway.auth import AuthConfig, Authenticator

    secret = next(iter(d for d in docs if d["kind"] == "Secret" and "keys.yaml" in {**d.get("data", {}),
                                                                                      **d.get("stringData", {})}))
    raw = secret.get("stringData", {}).get("keys.yaml")
    if raw is None:
        raw = base64.b64decode(secret["data"]["keys.yaml"]).decode()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(raw)
    try:
        return Authenticator.from_config(AuthConfig(keys_file=f.name))
    finally:
        os.unlink(f.name)


__all__ = ["K8S_VERSION", "ROOT", "by_kind", "check_maata_workloads", "helm_env", "keys_from_secret", "load_docs",
           "run", "tool", "validate"]

if __name__ == "__main__":  # pragma: no cover - a manual check: python tests/k8s_checks.py FILE.yaml
    validate(load_docs(Path(sys.argv[1]).read_text()))
