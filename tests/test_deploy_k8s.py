"""The kustomize manifests (k8s/): both overlays rendered by a real `kubectl kustomize`, every object
validated against the Kubernetes schemas of a pinned version (kubernetes-validate, unknown fields
rejected), and Maata's own requirements checked on what was rendered (tests/k8s_checks.py)."""

from __future__ import annotations

import copy

import pytest

from k8s_checks import ROOT, by_kind, check_maata_workloads, keys_from_secret, load_docs, run, tool, validate

OVERLAYS = {
    "dev-cpu": {"gpu": False, "webrtc": "hostport", "namespace": "maata-dev"},
    "prod-gpu": {"gpu": True, "webrtc": "turn", "namespace": "maata"},
}


def render(overlay: str) -> list[dict]:
    done = run([tool("kubectl"), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)])
    assert done.returncode == 0, done.stderr
    return load_docs(done.stdout)


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def test_overlay_validates(overlay: tuple[str, list[dict]]) -> None:
    name, docs = overlay
    validate(docs)
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert namespaces == {OVERLAYS[name]["namespace"]}


def test_overlay_runs_maata(overlay: tuple[str, list[dict]]) -> None:
    name, docs = overlay
    check_maata_workloads(docs, **OVERLAYS[name])


def test_overlay_api_keys(overlay: tuple[str, list[dict]]) -> None:
    """dev-cpu accepts the documented development key; prod-gpu ships none (the gateway refuses to start)."""
    name, docs = overlay
    auth = keys_from_secret(docs)
    if name == "dev-cpu":
        assert auth.authenticate([("x-api-key", "mk_compose_dev_only")]).id == "dev"
    else:
        assert auth.empty


def test_validation_is_real() -> None:
    """A misspelt field and a wrong type are rejected: the check above can fail."""
    import kubernetes_validate

    docs = render("dev-cpu")
    deployment = copy.deepcopy(by_kind(docs, "Deployment")["gateway"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"grpc": {"port": 7100}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.35.0", strict=True)
    deployment = copy.deepcopy(by_kind(docs, "Deployment")["gateway"])
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.35.0", strict=True)
