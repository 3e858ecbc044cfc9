"""Prometheus metrics and `shoal status` of a real local cluster: counters move by exactly the calls made."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import shoal
from shoal._local import LocalCluster
from shoal.v1 import shard_pb2, shoal_pb2

pytestmark = pytest.mark.slow  # starts a cluster of processes

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: str) -> Samples:
    """Every sample of a process's /metrics, parsed by prometheus-client's own parser."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when there is none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("metrics"), shards=2, metrics=True) as c:
        yield c


def test_every_process_serves_metrics_and_counters_move_by_the_calls(cluster: LocalCluster) -> None:
    assert cluster.coordinator is not None
    coordinator = cluster.coordinator.metrics_address
    shards = [p.metrics_address for p in cluster.shard_procs]
    assert coordinator and all(shards)
    rng = np.random.default_rng(0)
    with shoal.Client(cluster.address) as client:
        client.create_collection("m", dim=4)
        before = scrape(coordinator)
        shard_before = [scrape(a) for a in shards]
        for i in range(3):
            ids = np.arange(i * 50, (i + 1) * 50)
            client.upsert("m", ids=ids, vectors=rng.random((50, 4)), payloads=[{"even": int(j) % 2 == 0} for j in ids])

        # Unary Search calls, each counted as one RPC (the blocking client's search rides a stream instead).
        def search(collection: str, **options: Any) -> object:
            shape, fields = client._search_shape(collection, 3, None, True, False, options.get("filter"))
            return client._send(client._search(shape, fields, rng.random(4)))

        for _ in range(5):
            search("m")
        for _ in range(2):
            search("m", filter={"even": True})
        with pytest.raises(shoal.NotFound):
            search("nope")
        after = scrape(coordinator)
        shard_after = [scrape(a) for a in shards]

    rpc = "shoal_rpc_requests_total"
    service = "shoal.v1.Shoal"
    assert delta(before, after, rpc, service=service, method="Upsert", code="OK") == 3
    assert delta(before, after, rpc, service=service, method="Search", code="OK") == 7
    assert delta(before, after, rpc, service=service, method="Search", code="NOT_FOUND") == 1
    assert delta(before, after, "shoal_rpc_duration_seconds_count", service=service, method="Search") == 8
    assert delta(before, after, "shoal_rpc_duration_seconds_count", service=service, method="Upsert") == 3
    # One query a search, one at a time: eight fan-outs of one row each (the coordinator keeps no catalogue,
    # so the unknown collection is fanned out too; the shards refuse it before their index sees it).
    assert delta(before, after, "shoal_search_batch_queries_count", stage="coordinator") == 8
    assert delta(before, after, "shoal_search_batch_queries_sum", stage="coordinator") == 8

    for b, a in zip(shard_before, shard_after, strict=True):
        # Every upsert spans both shards' slots: one shard call each, one WAL sync each at least.
        assert delta(b, a, rpc, service="shoal.v1.Shard", method="Upsert", code="OK") == 3
        assert delta(b, a, "shoal_rpc_duration_seconds_count", service="shoal.v1.Shard", method="Upsert") == 3
        assert 1 <= delta(b, a, "shoal_wal_sync_seconds_count") <= 3
        assert delta(b, a, "shoal_search_batch_queries_count", stage="shard") == 7
        assert delta(b, a, "shoal_search_batch_queries_sum", stage="shard") == 7
        assert delta(b, a, "shoal_planner_queries_total") == 2  # the filtered ones, by the plan that ran
        points = value(a, "shoal_collection_points", collection="m")
        assert 0 < points < 150
        assert value(a, "shoal_collection_index_memory_bytes", collection="m") > 0
        assert value(a, "shoal_collection_payload_index_entries", collection="m") >= points
        assert value(a, "shoal_collection_snapshot_age_seconds", collection="m") >= 0
        assert value(a, "shoal_shard_sequence") >= 4
        assert {dict(ls)["queue"] for (n, ls) in a if n == "shoal_queue_depth"} == {"committer", "index"}
    total = sum(value(a, "shoal_collection_points", collection="m") for a in shard_after)
    assert total == 150

    # Bounded labels: services, methods and codes come from fixed sets, never ids or free text.
    methods = {
        "shoal.v1.Shoal": set(shoal_pb2.DESCRIPTOR.services_by_name["Shoal"].methods_by_name),
        "shoal.v1.Shard": set(shard_pb2.DESCRIPTOR.services_by_name["Shard"].methods_by_name),
    }
    codes = {c.name for c in grpc.StatusCode}
    for samples in [after, *shard_after]:
        for name, labels in samples:
            ls = dict(labels)
            if not name.startswith("shoal_"):
                continue  # prometheus-client's own process and Python metrics
            if name.startswith("shoal_rpc_"):
                assert ls["method"] in methods[ls["service"]], ls
                if "code" in ls:
                    assert ls["code"] in codes, ls
            assert set(ls) <= {"service", "method", "code", "le", "stage", "plan", "shard", "collection", "queue"}
            if "plan" in ls:
                assert ls["plan"] in {"none", "exact", "hnsw"}


def _status(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal", "status", "--address", address, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_status_shows_a_killed_shard_as_unreachable(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "c", shards=2, metrics=True) as cluster:
        with shoal.Client(cluster.address) as client:
            client.create_collection("docs", dim=3)
            client.upsert("docs", ids=np.arange(20), vectors=np.random.default_rng(1).random((20, 3)))
        healthy = _status(cluster.address, "--check")
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        doc = json.loads(_status(cluster.address, "--json").stdout)
        assert cluster.coordinator is not None
        assert [p["metrics_address"] for p in doc["processes"]] == [
            cluster.coordinator.metrics_address,
            *(p.metrics_address for p in cluster.shard_procs),
        ]
        assert sum(c["points"] for p in doc["processes"] for c in p["collections"]) == 20
        assert all(p["sequence"] >= 2 for p in doc["processes"][1:])

        dead = cluster.shard_procs[1]
        dead.kill()
        table = _status(cluster.address)
        assert table.returncode == 0, table.stderr
        row = next(r for r in table.stdout.splitlines() if r.startswith(dead.address))
        assert "UNREACHABLE" in row, table.stdout
        alive = next(r for r in table.stdout.splitlines() if r.startswith(cluster.shard_procs[0].address))
        assert "SERVING" in alive and "docs (" in alive
        assert _status(cluster.address, "--check").returncode == 1
        doc = json.loads(_status(cluster.address, "--json").stdout)
        states = {p["address"]: p["state"] for p in doc["processes"]}
        assert states[dead.address] == "UNREACHABLE" and states[cluster.address] == "SERVING"
