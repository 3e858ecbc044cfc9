"""Shard groups with real processes and a real etcd: replication, fencing of callers, failover, catch-up."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

import shoal
from shoal import _rpc
from shoal._config import SLOTS
from shoal._errors import FailedPrecondition
from shoal._etcd import find_binary
from shoal._hash import slots_of
from shoal._local import LocalCluster, Process
from shoal._meta import MetaStore
from shoal._meta_values import GroupState
from shoal._wire import decode_ids, encode_ids, encode_matrix
from shoal.shard.faults import REPLICA_DELAY_ENV
from shoal.v1 import shard_pb2, shard_pb2_grpc
from shoal.v1 import types_pb2 as pb
from tests.conftest import clustered

pytestmark = pytest.mark.slow  # every test starts and kills its own processes

_names = itertools.count()


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[LocalCluster]:
    """One shard group of a primary and two replicas, with its own etcd."""
    try:
        find_binary()
    except FailedPrecondition as exc:
        pytest.skip(f"no etcd binary can run here: {exc}")
    with LocalCluster(data=tmp_path / "c", shards=1, replicas=3) as c:
        yield c


def group_state(cluster: LocalCluster, group: str = "g0") -> GroupState:
    assert cluster.etcd is not None
    endpoint = cluster.etcd.endpoint

    async def read() -> GroupState:
        async with await MetaStore.connect(endpoint, cluster.cluster) as meta:
            return await meta.get_group(group)

    return asyncio.run(read())


def member_state(address: str) -> shard_pb2.ReplicaStateResponse:
    with _rpc.channel(address) as channel:
        return shard_pb2_grpc.ShardStub(channel).ReplicaState(shard_pb2.ReplicaStateRequest(), timeout=5)


def member_count(address: str, collection: str) -> int:
    with _rpc.channel(address) as channel:
        return int(shard_pb2_grpc.ShardStub(channel).Count(pb.CountRequest(collection=collection), timeout=5).count)


def count_or_none(address: str, collection: str) -> int | None:
    """A member's count, None while it lacks the collection."""
    try:
        return member_count(address, collection)
    except grpc.RpcError:
        return None


def by_role(cluster: LocalCluster) -> tuple[Process, list[Process]]:
    """The primary's process and the others'."""
    state = group_state(cluster)
    assert state.primary is not None
    primary = [p for p in cluster.shard_procs if p.role == state.primary][0]
    return primary, [p for p in cluster.shard_procs if p is not primary]


def wait_for(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_writes_reach_every_member_and_replicas_refuse_callers(replicated: LocalCluster) -> None:
    name = f"r{next(_names)}"
    with shoal.Client(replicated.address) as client:
        client.create_collection(name, dim=8)
        x = clustered(500, 8)
        for start in range(0, 500, 100):
            client.upsert(name, ids=np.arange(start, start + 100), vectors=x[start : start + 100])
        client.delete(name, ids=[0, 1, 2])
        assert client.count(name) == 497
    primary, replicas = by_role(replicated)
    seqs = {member_state(p.address).seq for p in replicated.shard_procs}
    assert len(seqs) == 1, seqs  # every acknowledged write is on every in-sync member
    for proc in replicated.shard_procs:
        assert member_count(proc.address, name) == 497
    assert sorted(group_state(replicated).in_sync) == sorted(p.role for p in replicated.shard_procs)
    assert member_state(primary.address).role == "primary"
    request = pb.UpsertRequest(collection=name, ids=encode_ids(np.arange(1)), vectors=encode_matrix(x[:1]))
    with _rpc.channel(replicas[0].address) as channel, pytest.raises(grpc.RpcError) as info:
        shard_pb2_grpc.ShardStub(channel).Upsert(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not the primary of group g0" in str(info.value.details())


def test_killed_replica_costs_no_search_and_catches_up(replicated: LocalCluster) -> None:
    name = f"r{next(_names)}"
    x = clustered(2000, 16)
    failures: list[BaseException] = []
    stop = threading.Event()
    with shoal.Client(replicated.address) as client:
        client.create_collection(name, dim=16)
        client.upsert(name, ids=np.arange(1000), vectors=x[:1000])

        def search_load() -> None:
            with shoal.Client(replicated.address) as c:
                while not stop.is_set():
                    try:
                        res = c.search(name, x[:4], k=5)
                        assert res.ids.shape == (4, 5)
                    except BaseException as exc:
                        failures.append(exc)

        threads = [threading.Thread(target=search_load) for _ in range(3)]
        for t in threads:
            t.start()
        _, replicas = by_role(replicated)
        victim = replicas[0]
        time.sleep(0.5)
        victim.kill()
        client.upsert(name, ids=np.arange(1000, 2000), vectors=x[1000:])  # waits out the dead replica
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
        assert failures == []
        assert victim.role not in group_state(replicated).in_sync
        replicated.restart(victim)
        replicated.wait_groups(3)
        assert member_count(victim.address, name) == 2000
        assert member_state(victim.address).seq == member_state(by_role(replicated)[0].address).seq


def test_killed_primary_loses_no_acknowledged_write(replicated: LocalCluster) -> None:
    name = f"r{next(_names)}"
    x = clustered(4000, 8)
    acked: list[int] = []
    stop = threading.Event()
    search_failures: list[BaseException] = []
    with shoal.Client(replicated.address) as client:
        client.create_collection(name, dim=8)

        def write_load() -> None:
            with shoal.Client(replicated.address) as c:
                for i in range(0, 4000, 20):
                    if stop.is_set():
                        return
                    ids = np.arange(i, i + 20)
                    try:
                        c.upsert(name, ids=ids, vectors=x[i : i + 20])
                    except shoal.ShoalError:
                        continue
                    acked.extend(ids.tolist())

        def search_load() -> None:
            with shoal.Client(replicated.address) as c:
                while not stop.is_set():
                    try:
                        c.search(name, x[:2], k=3)
                    except BaseException as exc:
                        search_failures.append(exc)

        writer = threading.Thread(target=write_load)
        searcher = threading.Thread(target=search_load)
        writer.start()
        searcher.start()
        wait_for(lambda: len(acked) >= 400)
        primary, _ = by_role(replicated)
        primary.kill()
        killed_at, before = time.monotonic(), len(acked)
        wait_for(lambda: len(acked) > before + 100)
        resumed = time.monotonic() - killed_at
        stop.set()
        writer.join()
        searcher.join()
        assert search_failures == []
        assert resumed < 15, resumed
        new_primary, _ = by_role(replicated)
        assert new_primary is not primary
        found = client.get(name, ids=acked, with_vectors=False, with_payload=False)
        assert len(found) == len(acked)  # no acknowledged write is lost
        replicated.restart(primary)
        replicated.wait_groups(3)
        counts = {member_count(p.address, name) for p in replicated.shard_procs}
        assert len(counts) == 1, counts


def test_create_and_drop_while_a_member_is_down_converge(replicated: LocalCluster) -> None:
    name, other = f"r{next(_names)}", f"r{next(_names)}"
    with shoal.Client(replicated.address) as client:
        client.create_collection(other, dim=4)
        _, replicas = by_role(replicated)
        victim = replicas[0]
        victim.kill()
        client.create_collection(name, dim=4)
        client.upsert(name, ids=np.arange(10), vectors=clustered(10, 4))
        client.drop_collection(other)
        assert name in client.list_collections() and other not in client.list_collections()
        replicated.restart(victim)
        replicated.wait_groups(3)
        with _rpc.channel(victim.address) as channel:
            names = shard_pb2_grpc.ShardStub(channel).ListCollections(pb.ListCollectionsRequest(), timeout=5).names
        assert name in names and other not in names
        assert member_count(victim.address, name) == 10


def shoal_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True, timeout=60)


def test_status_lists_groups_and_check_compares_replicas(replicated: LocalCluster) -> None:
    name = f"r{next(_names)}"
    with shoal.Client(replicated.address) as client:
        client.create_collection(name, dim=4)
        client.upsert(name, ids=np.arange(300), vectors=clustered(300, 4), payloads=[{"i": i} for i in range(300)])
    data = str(replicated.data)
    done = shoal_cli("check", "--data", data)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"g0 {name}: 3 members identical (300 points)" in done.stdout
    _, replicas = by_role(replicated)
    victim = replicas[0]
    victim.kill()
    status = shoal_cli("status", "--json", "--address", replicated.address, "--data", data)
    assert status.returncode == 0, status.stderr
    (group,) = json.loads(status.stdout)["groups"]
    assert group["slots"] == [[0, 4096]]
    rows = {m["member"]: m for m in group["members"]}
    assert rows[victim.role]["state"] == "down"
    assert rows[victim.role]["lag"] == -1  # unknown while down
    assert [m["lag"] for m in rows.values() if m["state"] == "in-sync"] == [0, 0]  # the primary and one replica
    assert sorted(m["role"] for m in rows.values()) == ["primary", "replica", "replica"]
    table = shoal_cli("status", "--address", replicated.address, "--data", data)
    assert table.returncode == 0 and victim.role in table.stdout and "down" in table.stdout
    header = next(line for line in table.stdout.splitlines() if line.startswith("group "))
    assert header.split()[-2:] == ["seq", "lag"]
    # A member that missed writes while down catches up on return, and check finds the copies identical.
    replicated.restart(victim)
    replicated.wait_groups(3)
    replica = next(p for p in replicas if p is not victim)
    replica.kill()
    with shoal.Client(replicated.address) as client:
        client.upsert(name, ids=[5000], vectors=clustered(1, 4))
    replicated.restart(replica)
    replicated.wait_groups(3)
    done = shoal_cli("check", "--data", data)
    assert done.returncode == 0 and "(301 points)" in done.stdout, done.stdout


def test_a_member_with_writes_the_primary_lacks_is_copied_anew(replicated: LocalCluster) -> None:
    from shoal.shard.core import Shard

    name = f"r{next(_names)}"
    with shoal.Client(replicated.address) as client:
        client.create_collection(name, dim=4)
        client.upsert(name, ids=np.arange(50), vectors=clustered(50, 4))
    primary, replicas = by_role(replicated)
    victim = replicas[0]
    victim.stop()
    with Shard(replicated.data / victim.role) as shard:  # a write no primary ever made
        shard.upsert(name, np.arange(1000, 1001, dtype=np.uint64), clustered(1, 4))
    victim.start(60)
    # It is not counted as a copy with that write: it takes the primary's data instead, then the op log.
    wait_for(lambda: "caught up by snapshot" in victim.log_path.read_text(), 60)
    assert "with writes the primary at" in victim.log_path.read_text()
    wait_for(lambda: victim.role in group_state(replicated).in_sync, 60)
    assert member_count(victim.address, name) == 50  # the write no one acknowledged is gone ...
    assert member_count(primary.address, name) == 50  # ... and never reached anyone else
    done = shoal_cli("check", "--data", str(replicated.data))
    assert done.returncode == 0 and f"g0 {name}: 3 members identical (50 points)" in done.stdout, done.stdout


def test_read_your_writes_token_through_a_lagging_replica(replicated: LocalCluster) -> None:
    name = f"r{next(_names)}"
    x = clustered(300, 8)
    _, replicas = by_role(replicated)
    laggard = replicas[0]
    laggard.env[REPLICA_DELAY_ENV] = "4"  # applies each of its primary's writes 4 s late (ack timeout: 2 s)
    laggard.kill()
    replicated.restart(laggard)
    replicated.wait_groups(3)
    with shoal.Client(replicated.address) as client:
        client.create_collection(name, dim=8)  # reaches the laggard 4 s late too: the call waits for it
        client.upsert(name, ids=np.arange(300), vectors=x)
        wait_for(lambda: count_or_none(laggard.address, name) == 300)
        replicated.wait_groups(3)
        before = dict(client.token)
        assert set(before) == {"g0"} and before["g0"] > 0
        fresh = np.full((1, 8), 50.0, dtype=np.float32)  # far from every other point
        client.upsert(name, ids=[1000], vectors=fresh)
        token = dict(client.token)
        assert token["g0"] > before["g0"]  # the write's sequence in its group
        # The laggard has not applied the write yet: without the token it answers without it ...
        search = pb.SearchRequest(collection=name, queries=encode_matrix(fresh), k=1)
        with _rpc.channel(laggard.address) as channel:
            stub = shard_pb2_grpc.ShardStub(channel)
            assert int(decode_ids(stub.Search(search, timeout=5).ids)[0]) != 1000
            # ... with it, it waits a little and then refuses, so the coordinator asks another member.
            search.token.update(token)
            with pytest.raises(grpc.RpcError) as info:
                stub.Search(search, timeout=5)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "behind the consistency token" in str(info.value.details())
            search.request_id = 7  # a search stream answers it the same way, and the stream stays up
            [answer] = list(stub.SearchStream(iter([search]), timeout=5))
            assert answer.request_id == 7 and answer.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
            assert "behind the consistency token" in answer.error.message
        for _ in range(20):  # every read through the coordinator with the token sees the write
            assert client.search(name, fresh, k=1).ids[0][0] == 1000
            assert client.count(name) == 301
            assert [p.id for p in client.get(name, ids=[1000])] == [1000]
        wait_for(lambda: count_or_none(laggard.address, name) == 301)
        with _rpc.channel(laggard.address) as channel:  # caught up: it answers under the token
            assert int(decode_ids(shard_pb2_grpc.ShardStub(channel).Search(search, timeout=5).ids)[0]) == 1000


def test_a_shard_refuses_writes_for_slots_its_group_does_not_own(tmp_path: Path) -> None:
    with LocalCluster(data=tmp_path / "c", shards=2) as cluster, shoal.Client(cluster.address) as client:
        client.create_collection("owned", dim=4)
        ids = np.arange(200, dtype=np.uint64)
        slots = slots_of(ids)
        mine, foreign = ids[slots < SLOTS // 2][:1], ids[slots >= SLOTS // 2][:1]  # g0 owns the lower half
        x = np.ones((1, 4), np.float32)
        with _rpc.channel(cluster.members(0)[0].address) as channel:
            stub = shard_pb2_grpc.ShardStub(channel)
            upsert = pb.UpsertRequest(collection="owned", ids=encode_ids(foreign), vectors=encode_matrix(x))
            with pytest.raises(grpc.RpcError) as info:
                stub.Upsert(upsert, timeout=10)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "is not owned by this shard group" in str(info.value.details())
            stub.Upsert(
                pb.UpsertRequest(collection="owned", ids=encode_ids(mine), vectors=encode_matrix(x)), timeout=10
            )
        assert client.count("owned") == 1  # the refused write left nothing behind: no phantom point
        assert [p.id for p in client.get("owned", ids=np.concatenate([mine, foreign]))] == [int(mine[0])]
