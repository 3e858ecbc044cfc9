"""Offline checks of the deployment files: Dockerfile, compose, Kubernetes manifests and the topology."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from concurrent import futures
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SLOTS = 4096
SHARDS = 3
SHARD_PORT = 7100
COORDINATOR_PORT = 7070
METRICS_PORT = 9100
SECRETS_MOUNT = "./secrets:/etc/shoal/secrets:ro"  # made by `shoal secrets --out deploy/secrets`
# The oldest Kubernetes the manifests promise to work on (native gRPC probes are GA since 1.27) and the
# newest one the validator knows.
K8S_VERSIONS = ["1.29", "latest"]


def _yaml() -> ModuleType:
    return pytest.importorskip("yaml", reason="pyyaml (installed with kubernetes-validate) is missing")


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in _yaml().safe_load_all(path.read_text()) if doc]


@cache
def _generator() -> ModuleType:
    """deploy/k8s/topology.py, imported from its file: deploy/ is not a package."""
    spec = importlib.util.spec_from_file_location("shoal_deploy_topology", K8S / "topology.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dockerfile() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), one list per build stage."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in (ROOT / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), rest.strip()))
    return stages


def _one(stage: list[tuple[str, str]], instruction: str) -> str:
    found = [rest for ins, rest in stage if ins == instruction]
    assert len(found) == 1, f"the final stage needs exactly one {instruction}, has {found}"
    return found[0]


def _healthcheck_command() -> list[str]:
    rest = _one(_dockerfile()[-1], "HEALTHCHECK")
    cmd = json.loads(rest[rest.index("CMD") + 3 :])
    assert isinstance(cmd, list) and cmd[0] == "python", "exec form, run by the image's python"
    return cmd


def test_dockerfile_image_shape() -> None:
    stages = _dockerfile()
    assert all(stage[0][1].split()[0] == "python:3.11-slim" for stage in stages)
    final = stages[-1]
    user = _one(final, "USER").split(":")[0]
    assert user not in ("", "root", "0")
    assert json.loads(_one(final, "ENTRYPOINT")) == ["shoal"]
    assert "/data" in _one(final, "VOLUME").replace('"', " ").replace("[", " ").replace("]", " ").split()
    assert set(_one(final, "EXPOSE").split()) == {str(COORDINATOR_PORT), str(SHARD_PORT)}
    _healthcheck_command()


def test_dockerfile_copies_every_package_and_the_context_allows_them() -> None:
    """`pip install .` in the image sees every package folder pyproject maps, and nothing ignores them."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_roots = {d.split("/")[0] for d in pyproject["tool"]["setuptools"]["package-dir"].values()}
    sources: set[str] = set()
    for stage in _dockerfile():
        for ins, rest in stage:
            if ins == "COPY" and not rest.startswith("--from"):
                sources.update(rest.split()[:-1])
    assert package_roots | {"pyproject.toml", "README.md"} <= sources
    allowed = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: missing from the repository"
        assert source in allowed, f"COPY {source}: excluded from the build context by .dockerignore"


def _run_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, *_healthcheck_command()[1:]]
    env = {**os.environ, "SHOAL_HEALTH_PORT": str(port)}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def test_healthcheck_command_speaks_grpc_health() -> None:
    """The image's HEALTHCHECK passes only while the server answers SERVING on SHOAL_HEALTH_PORT."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert _run_healthcheck(port).returncode == 1
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        ok = _run_healthcheck(port)
        assert ok.returncode == 0, ok.stderr
    finally:
        server.stop(None).wait()
    assert _run_healthcheck(port).returncode != 0, "nothing listens on the port any more"


# --- compose ---------------------------------------------------------------------------------------------


def _interpolate(value: Any) -> Any:
    """Compose's ${VAR:-default}, taking the defaults, so checks do not depend on the caller's environment."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value) if isinstance(value, str) else value


def _compose() -> dict[str, Any]:
    return _yaml().safe_load((DEPLOY / "compose.yaml").read_text())


def _listen_port(command: list[str]) -> int:
    return int(command[command.index("--listen") + 1].rpartition(":")[2])


def _health_port(command: list[str]) -> int:
    """The port that answers grpc.health.v1 in plaintext: --probe-listen's, else --listen's (no TLS there)."""
    if "--probe-listen" in command:
        return int(command[command.index("--probe-listen") + 1].rpartition(":")[2])
    assert "--tls-cert" not in command, "a TLS server needs --probe-listen for plaintext health probes"
    return _listen_port(command)


def _check_secure(command: list[str], mounts: list[str]) -> None:
    """TLS and authentication on, and every file they name mounted from the secrets (no --insecure)."""
    assert "--insecure" not in command
    assert "--tls-cert" in command and "--tls-key" in command
    auth = ("--auth", "--meta-auth", "--cluster-secret-file", "--tls-client-ca")
    assert any(a in command for a in auth), "every server checks who calls"
    for option in ("--tls-cert", "--tls-key", "--tls-client-ca", "--auth", "--cluster-secret-file", "--shard-tls-ca"):
        if option in command:
            path = command[command.index(option) + 1]
            assert any(path.startswith(m.rstrip("/") + "/") for m in mounts), f"{option} {path} is not mounted"


def test_compose_matches_the_compose_spec_schema() -> None:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is missing")
    import importlib.resources

    import jsonschema

    schema = json.loads(
        importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    jsonschema.validators.validator_for(schema)(schema).validate(_compose())


def test_compose_runs_a_coordinator_and_three_shards() -> None:
    compose = _compose()
    services = compose["services"]
    shards = [f"shard-{i}" for i in range(SHARDS)]
    assert set(services) == {"coordinator", *shards, "prometheus", "grafana"}  # monitoring: test_deploy_monitoring
    volumes = set()
    for name in [*shards, "coordinator"]:
        svc = services[name]
        assert svc["build"]["context"] == ".." and (DEPLOY / svc["build"]["context"] / "Dockerfile").exists()
        assert float(_interpolate(svc["cpus"])) > 0
        assert int(svc["environment"]["SHOAL_HEALTH_PORT"]) == _health_port(svc["command"]), (
            "the image's HEALTHCHECK must probe the port the process answers health on"
        )
        _check_secure(svc["command"], [m.split(":")[1] for m in svc["volumes"]])
        assert svc.get("healthcheck", {}).get("disable") is not True
        assert svc.get("healthcheck", {}).get("test") is None, "keep the image's gRPC health check"
    for name in shards:
        svc = services[name]
        assert svc["command"][0] == "shard"
        assert svc["command"][svc["command"].index("--data") + 1] == "/data"
        [mount] = [m for m in svc["volumes"] if ":/data" in m]  # besides it: the secrets, read-only
        volume, _, target = mount.partition(":")
        assert target == "/data" and volume in compose["volumes"], "each shard's data is on a named volume"
        assert set(svc["volumes"]) - {mount} == {SECRETS_MOUNT}
        volumes.add(volume)
    assert len(volumes) == SHARDS, "no two shards share a volume"
    coordinator = services["coordinator"]
    assert coordinator["depends_on"] == {s: {"condition": "service_healthy"} for s in shards}
    assert coordinator["command"][0] == "coordinator"
    topology_path = coordinator["command"][coordinator["command"].index("--topology") + 1]
    [mount] = [m for m in coordinator["volumes"] if m != SECRETS_MOUNT]
    assert SECRETS_MOUNT in coordinator["volumes"]
    source, target, mode = mount.split(":")
    assert (source, target, mode) == ("./compose-topology.json", topology_path, "ro")


def test_compose_topology_names_the_shard_services() -> None:
    gen = _generator()
    text = (DEPLOY / "compose-topology.json").read_text()
    addresses = [f"shard-{i}:{SHARD_PORT}" for i in range(SHARDS)]
    assert text == gen.to_json(gen.topology(addresses)), "regenerate it with deploy/k8s/topology.py --json"
    services = _compose()["services"]
    for shard in json.loads(text)["shards"]:
        host, _, port = shard["address"].rpartition(":")
        assert int(port) == _listen_port(services[host]["command"])


# --- kubernetes ------------------------------------------------------------------------------------------


def _kustomization() -> dict[str, Any]:
    return _yaml().safe_load((K8S / "kustomization.yaml").read_text())


def _manifests() -> list[dict[str, Any]]:
    return [doc for name in _kustomization()["resources"] for doc in _load_all(K8S / name)]


def _get(kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in _manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_kustomization_lists_every_manifest() -> None:
    listed = _kustomization()["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    namespace = _kustomization()["namespace"]
    assert _get("Namespace", namespace)["metadata"]["name"] == namespace


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is not installed")
    if version == "latest":
        version = kv.latest_version()
    for doc in _manifests():
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            where = f"{doc['kind']}/{doc['metadata']['name']}"
            pytest.fail(f"{where} on Kubernetes {version}: {path}: {e.message}")


def _check_pod(template: dict[str, Any], port: int) -> dict[str, Any]:
    """Checks every Shoal pod must pass; returns its one container."""
    spec = template["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = spec["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert [p["containerPort"] for p in container["ports"]] == [port, METRICS_PORT]
    assert container["args"][container["args"].index("--listen") + 1] == f"0.0.0.0:{port}"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": _health_port(container["args"])}, (
            f"{probe} must be a native gRPC health probe"
        )
    # TLS and auth on, the certificates and keys from Kubernetes Secrets.
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in secrets]
    _check_secure(container["args"], mounts)
    assert "shoal-tls" in secrets.values()
    res = container["resources"]
    assert res["requests"] == res["limits"], "requests equal limits: a Guaranteed pod"
    assert str(res["limits"]["cpu"]).isdigit() and int(res["limits"]["cpu"]) >= 1, "whole cores"
    assert "memory" in res["limits"]
    assert (
        template["metadata"]["labels"].items()
        >= spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"][
            "labelSelector"
        ]["matchLabels"].items()
    )
    return container


def _pdb_for(labels: dict[str, str]) -> dict[str, Any]:
    [pdb] = [
        d
        for d in _manifests()
        if d["kind"] == "PodDisruptionBudget" and labels.items() >= d["spec"]["selector"]["matchLabels"].items()
    ]
    return pdb


def test_shards_are_a_statefulset_with_volumes_and_a_headless_service() -> None:
    sts = _get("StatefulSet", "shoal-shard")
    spec = sts["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] == SHARDS
    assert labels.items() >= spec["selector"]["matchLabels"].items()
    container = _check_pod(spec["template"], SHARD_PORT)
    assert container["args"][:1] == ["shard"]
    assert container["args"][container["args"].index("--data") + 1] == "/data"
    [claim] = spec["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    svc = _get("Service", spec["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    assert labels.items() >= svc["spec"]["selector"].items()
    assert [p["port"] for p in svc["spec"]["ports"]] == [SHARD_PORT]
    pdb = _pdb_for(labels)["spec"]
    assert pdb.get("maxUnavailable") == 0 or pdb.get("minAvailable") == SHARDS


def test_coordinators_are_a_deployment_behind_a_service_with_the_topology() -> None:
    dep = _get("Deployment", "shoal-coordinator")
    spec = dep["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] == 2
    assert labels.items() >= spec["selector"]["matchLabels"].items()
    container = _check_pod(spec["template"], COORDINATOR_PORT)
    assert container["args"][:1] == ["coordinator"]
    topology = Path(container["args"][container["args"].index("--topology") + 1])
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == str(topology.parent)]
    [volume] = [v for v in spec["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert topology.name in _get("ConfigMap", volume["configMap"]["name"])["data"]
    [svc] = [d for d in _manifests() if d["kind"] == "Service" and d["spec"].get("type") == "ClusterIP"]
    assert labels.items() >= svc["spec"]["selector"].items()
    assert [p["port"] for p in svc["spec"]["ports"]] == [COORDINATOR_PORT]
    assert _pdb_for(labels)["spec"]["minAvailable"] >= 1


# --- topology --------------------------------------------------------------------------------------------


def _expected_addresses() -> list[str]:
    sts = _get("StatefulSet", "shoal-shard")
    namespace = _kustomization()["namespace"]
    name, service = sts["metadata"]["name"], sts["spec"]["serviceName"]
    return [f"{name}-{i}.{service}.{namespace}.svc.cluster.local:{SHARD_PORT}" for i in range(sts["spec"]["replicas"])]


def _configmap_json() -> str:
    return _get("ConfigMap", "shoal-topology")["data"]["topology.json"]


def test_configmap_is_what_the_generator_writes() -> None:
    gen = _generator()
    assert [gen.statefulset_address(i, "shoal") for i in range(SHARDS)] == _expected_addresses()
    topo = gen.topology(_expected_addresses())
    assert _configmap_json() == gen.to_json(topo)
    assert (K8S / "topology-configmap.yaml").read_text() == gen.configmap(topo, "shoal"), (
        "regenerate: python deploy/k8s/topology.py --shards 3 --namespace shoal > deploy/k8s/topology-configmap.yaml"
    )


def test_configmap_topology_covers_every_slot_once() -> None:
    doc = json.loads(_configmap_json())
    assert doc["version"] == 1
    assert [s["address"] for s in doc["shards"]] == _expected_addresses()
    ranges = [tuple(s["slots"]) for s in doc["shards"]]
    assert ranges == [(i * SLOTS // SHARDS, (i + 1) * SLOTS // SHARDS) for i in range(SHARDS)]
    assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False)), "contiguous"


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, SLOTS])
def test_generator_splits_slots_evenly(n: int) -> None:
    shards = _generator().topology([f"s{i}:1" for i in range(n)])["shards"]
    owned = np.zeros(SLOTS, dtype=int)
    for s in shards:
        start, end = s["slots"]
        assert start < end
        owned[start:end] += 1
    assert (owned == 1).all()
    sizes = [end - start for start, end in (s["slots"] for s in shards)]
    assert max(sizes) - min(sizes) <= 1


def test_coordinator_loader_reads_the_configmap(tmp_path: Path) -> None:
    """The coordinator's loader (Topology.from_file) reads the ConfigMap and routes slots to its shards."""
    from shoal.coordinator.topology import Topology

    path = tmp_path / "topology.json"
    path.write_text(_configmap_json())
    topo = Topology.from_file(path)
    expected = _expected_addresses()
    assert list(topo.addresses) == expected
    assert topo.to_dict() == json.loads(_configmap_json())
    assert topo.to_dict() == Topology.even(expected).to_dict()
    probes = np.array([0, 1364, 1365, 2729, 2730, SLOTS - 1])
    assert [expected[i] for i in topo.shard_of_slots(probes)] == [expected[i] for i in (0, 0, 1, 1, 2, 2)]


def test_replicated_compose_validates_and_runs_groups_over_a_three_member_etcd() -> None:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is missing")
    import importlib.resources

    import jsonschema

    from shoal._etcd import BAD_VERSIONS

    compose = _yaml().safe_load((DEPLOY / "compose-replicated.yaml").read_text())
    schema = json.loads(
        importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    jsonschema.validators.validator_for(schema)(schema).validate(compose)
    services = compose["services"]
    etcds = [s for s in services if s.startswith("etcd-")]
    assert len(etcds) == 3
    for name in etcds:
        tag = services[name]["image"].rpartition(":v")[2]
        version = tuple(int(p) for p in tag.split("."))
        assert version >= (3, 5, 3) and version not in BAD_VERSIONS
    shards = {n: s for n, s in services.items() if s.get("command", [""])[0] == "shard"}
    groups: dict[str, list[str]] = {}
    for name, svc in shards.items():
        cmd = svc["command"]
        assert cmd[cmd.index("--advertise") + 1] == f"{name}:7100" and cmd[cmd.index("--member") + 1] == name
        groups.setdefault(cmd[cmd.index("--group") + 1], []).append(name)
        assert svc["volumes"] == [f"{name}-data:/data", SECRETS_MOUNT]
    assert sorted(groups) == ["g0", "g1"] and all(len(m) == 2 for m in groups.values())
    init = services["init"]["command"]
    assert init[:1] == ["init"] and int(init[init.index("--groups") + 1]) == len(groups)
    assert "--meta" in services["coordinator"]["command"]
    for name in [*shards, "coordinator"]:
        svc = services[name]
        _check_secure(svc["command"], [m.split(":")[1] for m in svc["volumes"]])
        assert int(svc.get("environment", {}).get("SHOAL_HEALTH_PORT", 0) or _health_port(svc["command"])) == (
            _health_port(svc["command"])
        )
        if name != "coordinator":  # members reach each other over TLS
            assert "--shard-tls-ca" in svc["command"]
    assert "--meta-auth" in services["coordinator"]["command"]  # the keys in etcd


def test_the_cert_manager_example_issues_the_secret_the_pods_mount() -> None:
    docs = _load_all(K8S / "cert-manager" / "certificate.yaml")
    [cert] = [d for d in docs if d["kind"] == "Certificate" and d["spec"]["secretName"] == "shoal-tls"]
    assert {"server auth", "client auth"} <= set(cert["spec"]["usages"])
    names = cert["spec"]["dnsNames"]
    for address in _expected_addresses():  # every shard address the coordinators dial
        host = address.rpartition(":")[0]
        assert any(host == n or (n.startswith("*.") and host.partition(".")[2] == n[2:]) for n in names), host
    issuers = {d["metadata"]["name"] for d in docs if d["kind"] == "Issuer"}
    assert cert["spec"]["issuerRef"]["name"] in issuers


# --- kubernetes with replicas --------------------------------------------------------------------------

K8S_REPLICATED = DEPLOY / "k8s-replicated"


def _replicated() -> list[dict[str, Any]]:
    kustomization = _yaml().safe_load((K8S_REPLICATED / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in _load_all(K8S_REPLICATED / name)]


def _replicated_get(kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in _replicated() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_replicated_kustomization_lists_every_manifest() -> None:
    kustomization = _yaml().safe_load((K8S_REPLICATED / "kustomization.yaml").read_text())
    on_disk = sorted(p.name for p in K8S_REPLICATED.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == on_disk
    assert _replicated_get("Namespace", kustomization["namespace"])


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_replicated_manifests_validate_against_kubernetes_schemas(version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is not installed")
    if version == "latest":
        version = kv.latest_version()
    for doc in _replicated():
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on Kubernetes {version}: {path}: {e.message}")


def _required_anti_affinity(template: dict[str, Any]) -> dict[str, str]:
    [term] = template["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    selector: dict[str, str] = term["labelSelector"]["matchLabels"]
    assert template["metadata"]["labels"].items() >= selector.items()
    return selector


def test_etcd_is_a_three_member_statefulset_of_a_safe_version_one_per_node() -> None:
    from shoal._etcd import BAD_VERSIONS

    sts = _replicated_get("StatefulSet", "shoal-etcd")
    spec = sts["spec"]
    assert spec["replicas"] == 3
    [container] = spec["template"]["spec"]["containers"]
    version = tuple(int(p) for p in container["image"].rpartition(":v")[2].split("."))
    assert version >= (3, 5, 3) and version not in BAD_VERSIONS
    assert _required_anti_affinity(spec["template"])["app.kubernetes.io/component"] == "etcd"
    env = {e["name"]: e.get("value") for e in container["env"]}
    members = dict(m.split("=", 1) for m in env["ETCD_INITIAL_CLUSTER"].split(","))
    peers = spec["serviceName"]
    assert members == {f"shoal-etcd-{i}": f"http://shoal-etcd-{i}.{peers}:2380" for i in range(3)}
    assert env["ETCD_NAME"] == "$(POD_NAME)" and env["ETCD_INITIAL_CLUSTER_STATE"] == "new"
    assert _replicated_get("Service", peers)["spec"]["clusterIP"] == "None"
    assert [p["port"] for p in _replicated_get("Service", "shoal-etcd")["spec"]["ports"]] == [2379]
    [claim] = spec["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": env["ETCD_DATA_DIR"]} in container["volumeMounts"]


def test_shard_groups_have_copies_on_different_nodes_and_join_their_group() -> None:
    groups = {
        d["metadata"]["labels"]["shoal.io/group"]: d
        for d in _replicated()
        if d["kind"] == "StatefulSet" and d["metadata"]["labels"].get("app.kubernetes.io/component") == "shard"
    }
    assert sorted(groups) == ["g0", "g1"]
    init = _replicated_get("Job", "shoal-init")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert init[:1] == ["init"] and int(_arg(init, "--groups")) == len(groups)
    assert _arg(init, "--meta") == "shoal-etcd:2379"
    for group, sts in groups.items():
        spec = sts["spec"]
        assert spec["replicas"] >= 2
        labels = spec["template"]["metadata"]["labels"]
        assert labels["shoal.io/group"] == group and labels.items() >= spec["selector"]["matchLabels"].items()
        assert spec["selector"]["matchLabels"]["shoal.io/group"] == group  # one group per StatefulSet
        assert _required_anti_affinity(spec["template"])["shoal.io/group"] == group
        container = _check_pod(spec["template"], SHARD_PORT)
        args = container["args"]
        assert args[:1] == ["shard"] and _arg(args, "--data") == "/data"
        assert _arg(args, "--group") == group and _arg(args, "--meta") == "shoal-etcd:2379"
        assert _arg(args, "--member") == "$(POD_NAME)"
        namespace = _yaml().safe_load((K8S_REPLICATED / "kustomization.yaml").read_text())["namespace"]
        service = spec["serviceName"]
        assert _arg(args, "--advertise") == f"$(POD_NAME).{service}.{namespace}.svc.cluster.local:{SHARD_PORT}"
        assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
        assert _replicated_get("Service", spec["serviceName"])["spec"]["clusterIP"] == "None"
        [pdb] = [
            d
            for d in _replicated()
            if d["kind"] == "PodDisruptionBudget" and labels.items() >= d["spec"]["selector"]["matchLabels"].items()
        ]
        assert 1 <= pdb["spec"]["maxUnavailable"] < spec["replicas"]  # a drain keeps a copy serving


def test_replicated_coordinators_follow_etcd() -> None:
    dep = _replicated_get("Deployment", "shoal-coordinator")
    container = _check_pod(dep["spec"]["template"], COORDINATOR_PORT)
    assert _arg(container["args"], "--meta") == "shoal-etcd:2379" and "--topology" not in container["args"]
    svc = _replicated_get("Service", "shoal")
    assert dep["spec"]["template"]["metadata"]["labels"].items() >= svc["spec"]["selector"].items()


def _allowed_components(rule: dict[str, Any]) -> set[str]:
    """The components (pods of this app) an ingress rule lets in; every peer must be such a pod selector."""
    components = set()
    for peer in rule["from"]:
        labels = peer["podSelector"]["matchLabels"]
        assert set(peer) == {"podSelector"} and labels["app.kubernetes.io/name"] == "shoal"
        components.add(labels["app.kubernetes.io/component"])
    return components


def _selected(policy: dict[str, Any], template: dict[str, Any]) -> bool:
    return template["metadata"]["labels"].items() >= policy["spec"]["podSelector"]["matchLabels"].items()


def test_replicated_network_policies_admit_only_the_cluster_to_shards_and_etcd() -> None:
    policies = {d["metadata"]["name"]: d for d in _replicated() if d["kind"] == "NetworkPolicy"}
    workloads = [d for d in _replicated() if d["kind"] in ("StatefulSet", "Deployment", "Job")]
    component = {id(w): w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] for w in workloads}
    shard, etcd = policies["shoal-shard"], policies["shoal-etcd"]
    # Every shard group's pods and every etcd member are covered, and nothing else is.
    for policy, kind in ((shard, "shard"), (etcd, "etcd")):
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert {component[id(w)] for w in workloads if _selected(policy, w["spec"]["template"])} == {kind}
    assert sum(_selected(shard, w["spec"]["template"]) for w in workloads) == 2  # g0 and g1
    # Shards: the gRPC port from coordinators and peer shards only; the metrics port from anywhere.
    grpc_rule, metrics_rule = shard["spec"]["ingress"]
    assert grpc_rule["ports"] == [{"port": SHARD_PORT, "protocol": "TCP"}]
    assert _allowed_components(grpc_rule) == {"coordinator", "shard"}
    assert metrics_rule == {"ports": [{"port": 9100, "protocol": "TCP"}]}
    # etcd: clients from shards, coordinators and the init Job; peers from etcd members.
    client_rule, peer_rule = etcd["spec"]["ingress"]
    assert client_rule["ports"] == [{"port": 2379, "protocol": "TCP"}]
    assert _allowed_components(client_rule) == {"shard", "coordinator", "init"}
    assert peer_rule["ports"] == [{"port": 2380, "protocol": "TCP"}]
    assert _allowed_components(peer_rule) == {"etcd"}
    # Each component the rules name is a workload of these manifests (a renamed label would lock it out).
    assert {"shard", "coordinator", "init", "etcd"} <= set(component.values())
