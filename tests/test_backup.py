"""`shoal backup` of a running cluster and `shoal restore` from it: the same keys, points and exact results."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import shoal
from shoal import _rpc
from shoal._config import SLOTS
from shoal._hash import slots_of
from shoal._local import LocalCluster
from shoal.v1 import shard_pb2, shard_pb2_grpc
from tests.conftest import clustered

pytestmark = pytest.mark.slow  # starts and restores its own clusters

DIM = 24


def _shoal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True, timeout=300)


def _state(client: shoal.Client, queries: np.ndarray) -> dict[str, object]:
    """Every point (id, vector bytes, payload) of both collections and exact top-10s of the queries."""
    state: dict[str, object] = {}
    for name, ids in (("u", np.arange(4000)), ("s", [f"doc-{i}" for i in range(1000)])):
        points = client.get(name, ids=ids, with_vectors=True)
        state[name] = sorted((p.id, p.vector.tobytes(), json.dumps(p.payload)) for p in points)  # type: ignore[union-attr]
        found = client.search(name, queries, k=10, ef=4096)  # ef covers each shard: exact
        state[f"{name} search"] = (found.ids.tolist(), found.distances.round(5).tolist())
    return state


def _consistent(cluster: LocalCluster) -> None:
    for proc in cluster.shard_procs:
        with _rpc.channel(proc.address) as channel:
            stub = shard_pb2_grpc.ShardStub(channel)
            for name in ("u", "s", "w"):
                assert stub.Verify(shard_pb2.VerifyRequest(collection=name), timeout=60).consistent


def test_backup_of_a_running_cluster_restores_the_same_points_and_results(tmp_path: Path) -> None:
    x = clustered(4000, DIM, seed=30)
    queries = clustered(40, DIM, seed=31)
    with (
        LocalCluster(data=tmp_path / "data", shards=2, backup_root=tmp_path) as cluster,
        shoal.Client(cluster.address) as client,
    ):
        client.create_collection("u", dim=DIM)
        client.create_collection("s", dim=DIM, metric="l2", id_type="string")
        client.upsert("u", ids=np.arange(3000), vectors=x[:3000], payloads=[{"i": i} for i in range(3000)])
        client.upsert("s", ids=[f"doc-{i}" for i in range(1000)], vectors=x[:1000])
        client.delete("u", ids=np.arange(0, 3000, 5))
        client.delete("s", ids=[f"doc-{i}" for i in range(0, 1000, 9)])
        before = _state(client, queries)

        # A writer keeps going during the backup: its writes may or may not be in the copy.
        client.create_collection("w", dim=DIM)
        stop = threading.Event()

        def write() -> None:
            with shoal.Client(cluster.address) as writer:
                for i in range(0, 4000, 10):
                    if stop.is_set():
                        return
                    writer.upsert("w", ids=np.arange(i, i + 10), vectors=x[i : i + 10])

        writer = threading.Thread(target=write)
        writer.start()
        try:
            result = _shoal("backup", "--address", cluster.address, "--out", str(tmp_path / "backup"))
        finally:
            stop.set()
            writer.join()
        assert result.returncode == 0, result.stderr
        assert "backup of 2 shards" in result.stdout
        # After the backup: none of this may show up in the restored cluster.
        client.delete("u", ids=np.arange(1, 3000, 5))
        client.upsert("s", ids=["late"], vectors=x[:1])
        client.upsert("u", ids=np.arange(3000, 4000), vectors=x[3000:])
    manifest = json.loads((tmp_path / "backup" / "backup.json").read_text())
    assert [s["folder"] for s in manifest["shards"]] == ["shard-0", "shard-1"]

    refused = _shoal("restore", str(tmp_path / "backup"), "--data", str(tmp_path / "data"))
    assert refused.returncode == 1 and "not empty" in refused.stderr
    restored = _shoal("restore", str(tmp_path / "backup"), "--data", str(tmp_path / "restored"))
    assert restored.returncode == 0, restored.stderr
    with LocalCluster(data=tmp_path / "restored", shards=2) as cluster, shoal.Client(cluster.address) as client:
        _consistent(cluster)
        assert _state(client, queries) == before
        # The writer's points in the copy: on each shard, its part of every batch up to some batch (each
        # shard is copied at its own instant), with the right vectors.
        written = client.get("w", ids=np.arange(4000), with_vectors=True)
        assert all(p.vector.tobytes() == x[p.id].tobytes() for p in written)  # type: ignore[union-attr]
        owner = slots_of(np.arange(4000, dtype=np.uint64)) * 2 // SLOTS
        for shard in (0, 1):
            present = {int(p.id) for p in written if owner[int(p.id)] == shard}  # type: ignore[call-overload]
            batches = max(present) // 10 + 1 if present else 0
            assert present == {i for i in range(batches * 10) if owner[i] == shard}


def test_restore_checks_its_input(tmp_path: Path) -> None:
    (tmp_path / "backup").mkdir()
    result = _shoal("restore", str(tmp_path / "backup"), "--data", str(tmp_path / "data"))
    assert result.returncode == 1 and "not a finished backup" in result.stderr
    (tmp_path / "backup" / "backup.json").write_text(
        json.dumps(
            {
                "format": 1,
                "shards": [
                    {"address": "a:1", "slots": [[0, 100]], "folder": "shard-0", "collections": {}},
                    {"address": "b:1", "slots": [[100, 4096]], "folder": "shard-1", "collections": {}},
                ],
            }
        )
    )
    result = _shoal("restore", str(tmp_path / "backup"), "--data", str(tmp_path / "data"))
    assert result.returncode == 1 and "even split" in result.stderr
    result = _shoal("restore", str(tmp_path / "backup"), "--data", str(tmp_path / "data"), "--shard", "2")
    assert result.returncode == 1 and "shards 0 to 1" in result.stderr


def test_backup_of_nothing_is_a_clear_error(tmp_path: Path) -> None:
    result = _shoal("backup", "--address", "127.0.0.1:1", "--out", str(tmp_path / "b"))
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr


def test_backup_is_a_client_command(tmp_path: Path) -> None:
    # The backup client sits in the SDK: taking a backup loads no server code, restoring loads the shard's.
    code = (
        "import sys; from shoal import cli; cli.main(sys.argv[1:]); "
        "print(sorted(m for m in sys.modules if m.startswith(('shoal.shard', 'shoal.coordinator', 'shoal._server'))))"
    )
    backup = ["backup", "--address", "127.0.0.1:1", "--out", str(tmp_path / "b")]
    out = subprocess.run([sys.executable, "-c", code, *backup], capture_output=True, text=True, timeout=120)
    assert "UNAVAILABLE" in out.stderr and out.stdout.strip() == "[]"
    restore = ["restore", str(tmp_path / "none"), "--data", str(tmp_path / "data")]
    (tmp_path / "none").mkdir()
    out = subprocess.run([sys.executable, "-c", code, *restore], capture_output=True, text=True, timeout=120)
    assert "not a finished backup" in out.stderr and "shoal.shard.backup" in out.stdout
