"""The Helm chart (helm/maata) with a real helm binary (tools/get_k8s_tools.sh): `helm lint --strict`
and `helm template` for each profile, every rendered object validated against the pinned
Kubernetes version's schemas and checked for what Maata needs (tests/k8s_checks.py), the
values schema rejecting bad values with messages that name them, NOTES.txt and the test hook."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from k8s_checks import ROOT, by_kind, check_maata_workloads, helm_env, keys_from_secret, load_docs, run, tool, validate

CHART = ROOT / "helm" / "maata"
PROFILES = {
    "values-cpu-dev.yaml": {"gpu": False, "webrtc": "hostport", "service_monitor": False},
    "values-gpu-prod.yaml": {"gpu": True, "webrtc": "turn", "external_secrets": ("maata-api-keys",)},
}
RELEASE, NAMESPACE = "maata", "voice"


def helm(tmp_path: Path, *args: str) -> tuple[int, str]:
    done = run([tool("helm"), *args], env=helm_env(tmp_path))
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_lint_strict(profile: str | None, tmp_path: Path) -> None:
    extra = ["-f", str(CHART / profile)] if profile else []
    code, out = helm(tmp_path, "lint", "--strict", str(CHART), *extra)
    assert code == 0, out


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_template_validates_and_runs_maata(profile: str, tmp_path: Path) -> None:
    code, out = helm(tmp_path, "template", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(CHART / profile))
    assert code == 0, out
    docs = load_docs(out)
    validate(docs)
    check_maata_workloads(docs, namespace=NAMESPACE, prefix="maata-", **PROFILES[profile])
    # the test hook: gRPC health and one partner call against this release's gateway, with a key it can read
    hook = next(d for d in docs if d["kind"] == "Pod" and d["metadata"]["annotations"].get("helm.sh/hook") == "test")
    script = hook["spec"]["containers"][0]["args"][0]
    gateway = f"maata-gateway.{NAMESPACE}.svc.cluster.local:7100"
    assert f"maata probe health --addr {gateway}" in script and f"maata probe call --addr {gateway}" in script
    key_ref = hook["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]
    if profile == "values-cpu-dev.yaml":
        auth = keys_from_secret(docs)
        test_key = by_kind(docs, "Secret")[key_ref["name"]]["stringData"]["api-key"]
        assert auth.authenticate([("x-api-key", test_key)]).id == "dev", "the test hook's key is an accepted key"
        assert "HorizontalPodAutoscaler" not in {d["kind"] for d in docs}
    else:
        assert key_ref["name"] == "maata-test-key"
        assert {h["metadata"]["name"] for h in by_kind(docs, "HorizontalPodAutoscaler").values()} == {
            "maata-gateway", "maata-generation"}


def test_the_hook_commands_parse() -> None:
    """`helm test` runs `maata probe health|call`: real commands of this CLI."""
    from maata.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["probe", "health", "--addr", "h:7100", "--timeout", "10"]).check == "health"
    assert parser.parse_args(["probe", "call", "--addr", "h:7100", "--seconds", "1", "--timeout", "60"]).check == "call"


def test_bad_values_rejected_by_the_schema(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "apiKeys": [{"id": "partner", "sha256": "mk_plaintext_key_pasted_here"}],
        "webrtc": {"mode": "udp"},
        "gateway": {"replicas": 0},
        "generation": {"gpu": {"enabled": "yes"}},
    }))
    for command in (["lint", "--strict", str(CHART)], ["template", RELEASE, str(CHART)]):
        code, out = helm(tmp_path, *command, "-f", str(bad))
        assert code != 0, out
        assert "/apiKeys/0/sha256" in out and "does not match pattern" in out
        assert "/webrtc/mode" in out and "/gateway/replicas" in out and "/generation/gpu/enabled" in out


def test_turn_needs_its_secret_and_port_ranges_must_be_ordered(tmp_path: Path) -> None:
    code, out = helm(tmp_path, "template", RELEASE, str(CHART), "--set", "webrtc.mode=turn")
    assert code != 0 and "turnSecret" in out
    code, out = helm(tmp_path, "template", RELEASE, str(CHART), "--set", "webrtc.mode=hostPort",
                     "--set", "webrtc.portRange.start=40010", "--set", "webrtc.portRange.end=40000")
    assert code != 0 and "must not be below start" in out


def test_notes_tell_how_to_reach_it(tmp_path: Path) -> None:
    # `helm install --dry-run=client` renders NOTES.txt offline (no cluster)
    code, out = helm(tmp_path, "install", RELEASE, str(CHART), "-n", NAMESPACE, "-f",
                     str(CHART / "values-cpu-dev.yaml"), "--dry-run=client")
    assert code == 0, out
    notes = out[out.index("NOTES:"):]
    assert "port-forward svc/maata-gateway 7100 7180" in notes
    assert "maata client --addr $ADDR" in notes and "helm test maata -n voice" in notes
    assert "open http://127.0.0.1:7180/" in notes
    code, out = helm(tmp_path, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client")
    assert code == 0, out
    assert "no API keys are configured" in out[out.index("NOTES:"):]
