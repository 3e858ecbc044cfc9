"""Joining a running cluster (`shoal shard --join`) and what `shoal status` shows of its groups, with real etcd."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import shoal
from shoal._errors import FailedPrecondition
from shoal._etcd import find_binary
from shoal._local import LocalCluster
from shoal._meta import MetaStore
from shoal._meta_values import GroupState
from tests.conftest import clustered

pytestmark = pytest.mark.slow  # every test starts and kills its own processes


@pytest.fixture
def two_groups(tmp_path: Path) -> Iterator[LocalCluster]:
    """Two shard groups of one member each, with their own etcd."""
    try:
        find_binary()
    except FailedPrecondition as exc:
        pytest.skip(f"no etcd binary can run here: {exc}")
    with LocalCluster(data=tmp_path / "c", shards=2) as c:
        yield c


def groups_of(cluster: LocalCluster) -> dict[str, GroupState]:
    assert cluster.etcd is not None
    endpoint = cluster.etcd.endpoint

    async def read() -> dict[str, GroupState]:
        async with await MetaStore.connect(endpoint, cluster.cluster) as meta:
            return await meta.get_groups()

    return asyncio.run(read())


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def shoal_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True, timeout=60)


def test_a_joined_shard_is_a_new_empty_group_and_keeps_its_name(two_groups: LocalCluster) -> None:
    joined = two_groups.join("shard-new")
    wait_for(lambda: groups_of(two_groups).get("g2", GroupState("g2")).primary == "shard-new")
    assert (two_groups.data / "shard-new" / "group").read_text().strip() == "g2"
    data = str(two_groups.data)
    status = shoal_cli("status", "--json", "--address", two_groups.address, "--data", data)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert [(g["group"], g["slot_count"]) for g in doc["groups"]] == [("g0", 2048), ("g1", 2048), ("g2", 0)]
    assert doc["groups"][2]["slots"] == [] and doc["groups"][2]["members"][0]["role"] == "primary"
    assert doc["moves"] == [] and all(g["moves"] == [] for g in doc["groups"]) and doc["mover"] is None
    assert two_groups.etcd is not None
    assert doc["etcd"] == [f"http://{two_groups.etcd.endpoint}"]
    table = shoal_cli("status", "--address", two_groups.address, "--data", data)
    assert table.returncode == 0, table.stderr
    assert f"etcd http://{two_groups.etcd.endpoint}: topology version 1" in table.stdout
    row = next(line for line in table.stdout.splitlines() if line.startswith("g2 "))
    assert "0 (none)" in row and "shard-new" in row
    # A restart rejoins the group its data folder names; no other group is registered.
    joined.stop()
    two_groups.restart(joined)
    wait_for(lambda: groups_of(two_groups)["g2"].primary == "shard-new")
    assert sorted(groups_of(two_groups)) == ["g0", "g1", "g2"]
    # The new group owns no slot: a search of the cluster still answers from g0 and g1 alone.
    with shoal.Client(two_groups.address) as client:
        client.create_collection("j", dim=4)
        client.upsert("j", ids=np.arange(100), vectors=clustered(100, 4))
        assert client.count("j") == 100


def test_join_with_a_group_name_adds_a_replica_of_that_group(two_groups: LocalCluster) -> None:
    with shoal.Client(two_groups.address) as client:
        client.create_collection("r", dim=4)
        client.upsert("r", ids=np.arange(200), vectors=clustered(200, 4))
    two_groups.join("shard-0-extra", group="g0")
    wait_for(lambda: "shard-0-extra" in groups_of(two_groups)["g0"].in_sync, timeout=60)
    assert sorted(groups_of(two_groups)) == ["g0", "g1"]
    status = shoal_cli("status", "--json", "--address", two_groups.address, "--data", str(two_groups.data))
    (g0,) = [g for g in json.loads(status.stdout)["groups"] if g["group"] == "g0"]
    rows = {m["member"]: m for m in g0["members"]}
    assert rows["shard-0-extra"]["role"] == "replica" and rows["shard-0-extra"]["state"] == "in-sync"
    done = shoal_cli("check", "--data", str(two_groups.data))
    assert done.returncode == 0, done.stdout + done.stderr


def test_join_needs_the_cluster_metadata(tmp_path: Path) -> None:
    done = shoal_cli("shard", "--data", str(tmp_path / "s"), "--listen", "127.0.0.1:0", "--join")
    assert done.returncode != 0 and "--join needs --meta" in done.stderr
