"""The Kubernetes manifests: every one validates against the Kubernetes schema (strict), the dev
overlay renders with `kubectl kustomize`, and the Deployment keeps what operations rely on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest minor still maintained upstream when written
# Strategic-merge patches are partial objects: they are validated as part of the render.
MANIFESTS = sorted(
    p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml" and p.parent.name != "patches"
)


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kubectl() -> str:
    found = shutil.which("kubectl")
    assert found, "kubectl is missing: `make sysdeps` installs it (Debian: kubernetes-client)"
    return found


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / "dev")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return documents(result.stdout)


def gateway_settings() -> dict[str, str]:
    """The ConfigMap's data, as kustomization.yaml's configMapGenerator makes it."""
    lines = (K8S / "base" / "gateway.env").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key: value for key, value in pairs}


def by_kind(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    return doc


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_validates_strictly(path: Path) -> None:
    docs = documents(path.read_text())
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_dev_overlay_renders_and_validates(rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kinds = {doc["kind"] for doc in rendered}
    assert kinds >= {
        "Namespace", "ConfigMap", "Secret", "Deployment", "StatefulSet", "Service", "Job",
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Ingress",
    }  # fmt: skip
    assert {d["metadata"].get("namespace") for d in rendered if d["kind"] != "Namespace"} == {
        "meeting-gateway-dev"
    }
    gateway = by_kind(rendered, "Deployment", "meeting-gateway")
    (secret_ref,) = [
        e["secretRef"]["name"]
        for e in gateway["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        if "secretRef" in e
    ]
    assert secret_ref == by_kind(rendered, "Secret", "meeting-gateway-secrets")["metadata"]["name"]
    assert {"redis", "postgres"} <= {
        d["metadata"]["name"] for d in rendered if d["kind"] == "Service"
    }
    # No certificate in a development cluster: plain HTTP, no redirect a WebSocket won't follow.
    ingress = by_kind(rendered, "Ingress", "meeting-gateway")
    assert "tls" not in ingress["spec"]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-redirect"] == "false"


def test_the_deployment_keeps_what_operations_rely_on() -> None:
    base = K8S / "base"
    (deployment,) = documents((base / "deployment.yaml").read_text())
    config = {"data": gateway_settings()}
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    # The HPA owns the count: a `replicas` here would be applied over its scale-out.
    assert "replicas" not in spec
    (hpa,) = documents((base / "hpa.yaml").read_text())
    assert hpa["spec"]["minReplicas"] >= 2
    # A Secret without them stops the pod rather than starting it on SQLite or without Redis.
    required = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    for name in ("DATABASE_URL", "REDIS_URL"):
        assert required[name]["key"] == name and not required[name].get("optional"), name
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz/live"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["lifecycle"]["preStop"]
    drain_s = float(config["data"]["DRAIN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > drain_s + 5  # + the preStop pause
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] > 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/var/lib/meeting-gateway"]]
    # Any replica may run or resume a recording job: they all mount one shared volume there.
    recordings = volumes[mounts[config["data"]["RECORDINGS_DIR"]]]
    claim = recordings["persistentVolumeClaim"]["claimName"]
    (pvc,) = documents((base / "recordings-pvc.yaml").read_text())
    assert pvc["metadata"]["name"] == claim and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for resource in ("cpu", "memory"):
        assert container["resources"]["requests"][resource]
    assert container["resources"]["limits"]["memory"]
    # Applied together with the db-upgrade Job, a pod waits for the schema, not crash-loops.
    (wait,) = pod["initContainers"]
    assert wait["args"][:2] == ["db", "wait"] and wait["image"] == container["image"]
    assert wait["securityContext"]["readOnlyRootFilesystem"] is True
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert annotations["prometheus.io/port"] == str(ports["metrics"])


def test_metrics_are_served_on_their_own_port_that_only_prometheus_reaches() -> None:
    """/metrics is unauthenticated and names every tenant: the gateway serves it on METRICS_PORT
    only, which neither the Service nor the Ingress carries and the NetworkPolicy admits from
    the monitoring namespace only."""
    base = K8S / "base"
    (deployment,) = documents((base / "deployment.yaml").read_text())
    config = {"data": gateway_settings()}
    (service,) = documents((base / "service.yaml").read_text())
    (policy,) = documents((base / "networkpolicy.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(config["data"]["METRICS_PORT"]) == ports["metrics"] != ports["http"]
    assert config["data"]["METRICS_HOST"] == "0.0.0.0"  # scraped on the pod's address
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    rules = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(rules) == {"http", "metrics"}
    assert rules["metrics"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert all("monitoring" not in str(peer) for peer in rules["http"])


def test_the_secret_template_holds_placeholders_only() -> None:
    text = (K8S / "base" / "secret.template.yaml").read_text()
    assert " ".join(("PRIVATE", "KEY")) not in text  # spelled apart: key scanners read tests too
    for secret in documents(text):
        for value in secret["stringData"].values():
            assert any(marker in value for marker in ("PASSWORD", "REPLACE_WITH")), value


def test_the_ingress_lets_recordings_through_unbuffered() -> None:
    """ingress-nginx refuses bodies over 1 MB unless told otherwise (and buffers them to disk):
    an upload of up to RECORDING_MAX_BYTES must reach the gateway, which enforces the limit."""
    (ingress,) = documents((K8S / "base" / "ingress.yaml").read_text())
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"  # no limit here
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"


def test_the_ingress_keeps_tokens_out_of_its_logs_and_off_cleartext() -> None:
    """WebSocket tokens ride in the query string: ingress-nginx's access log would keep them."""
    (ingress,) = documents((K8S / "base" / "ingress.yaml").read_text())
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/enable-access-log"] == "false"
    assert annotations["nginx.ingress.kubernetes.io/ssl-redirect"] == "true"
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    assert hosts <= {host for tls in ingress["spec"]["tls"] for host in tls["hosts"]}


# What kustomize v2.0.3 (kubectl 1.20, Debian 12's kubernetes-client, which `make sysdeps`
# installs when kubectl is missing) reads; later fields make it fail, as `patches: - path:` did.
KUSTOMIZE_V2_FIELDS = {
    "apiVersion", "kind", "namespace", "bases", "resources", "patchesStrategicMerge",
    "configMapGenerator", "secretGenerator", "images",
}  # fmt: skip


@pytest.mark.parametrize(
    "path", sorted(K8S.rglob("kustomization.yaml")), ids=lambda p: str(p.relative_to(K8S))
)
def test_kustomizations_use_what_the_oldest_supported_kustomize_reads(path: Path) -> None:
    (kustomization,) = documents(path.read_text())
    assert set(kustomization) <= KUSTOMIZE_V2_FIELDS, set(kustomization) - KUSTOMIZE_V2_FIELDS
    for resource in kustomization.get("resources", []):  # directories go in `bases`
        assert (path.parent / resource).is_file(), resource
    for patch in kustomization.get("patchesStrategicMerge", []):
        assert isinstance(patch, str), patch
    for generator in kustomization.get("configMapGenerator", []):
        assert set(generator) <= {"name", "env", "files", "literals", "behavior"}, generator
