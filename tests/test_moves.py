"""Slot moves with real processes and a real etcd: a move under load, refused foreign writes, interrupted moves."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
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
from shoal._local import LocalCluster
from shoal._meta import MetaStore
from shoal._meta_values import SlotRange, Topology, owner_of
from shoal._wire import encode_ids, encode_matrix
from shoal.coordinator.groups import RETRY_BUDGET
from shoal.coordinator.mover import MoveProgress, move, resume
from shoal.v1 import shard_pb2, shard_pb2_grpc, shoal_pb2_grpc
from shoal.v1 import types_pb2 as pb
from tests.conftest import brute_force, clustered

pytestmark = pytest.mark.slow  # every test starts and kills its own processes

DIM = 8
HALF = SLOTS // 2
MOVED = (0, 512)  # the slots moved from g0 to g2


def meta_call(cluster: LocalCluster, body):  # type: ignore[no-untyped-def]
    """Run `body(meta)` against the cluster's etcd in a fresh event loop."""
    assert cluster.etcd is not None
    endpoint = cluster.etcd.endpoint

    async def main():  # type: ignore[no-untyped-def]
        async with await MetaStore.connect(endpoint, cluster.cluster) as meta:
            return await body(meta)

    return asyncio.run(main())


def coordinator_version(cluster: LocalCluster) -> int:
    with _rpc.channel(cluster.address) as channel:
        return int(shoal_pb2_grpc.ShoalStub(channel).GetTopology(pb.GetTopologyRequest(), timeout=5).version)


def settle(cluster: LocalCluster, version: int) -> None:
    """Wait until every shard and the coordinator route by topology `version` or a newer one."""
    for proc in cluster.shard_procs:
        with _rpc.channel(proc.address) as channel:
            shard_pb2_grpc.ShardStub(channel).AwaitTopology(shard_pb2.AwaitTopologyRequest(version=version), timeout=30)
    deadline = time.monotonic() + 30
    while coordinator_version(cluster) < version:
        assert time.monotonic() < deadline, "the coordinator did not see the new topology"
        time.sleep(0.05)


@contextlib.contextmanager
def halves(tmp_path: Path, replicas: int) -> Iterator[LocalCluster]:
    """Three shard groups of `replicas` members; g0 and g1 own half of the slots each, g2 none (as if joined)."""
    try:
        find_binary()
    except FailedPrecondition as exc:
        pytest.skip(f"no etcd binary can run here: {exc}")
    with LocalCluster(data=tmp_path / "c", shards=3, replicas=replicas) as c:

        async def split(meta: MetaStore) -> Topology:
            t = await meta.get_topology()
            return await meta.replace_topology((SlotRange(0, HALF, "g0"), SlotRange(HALF, SLOTS, "g1")), t.version)

        settle(c, meta_call(c, split).version)
        yield c


@pytest.fixture
def three(tmp_path: Path) -> Iterator[LocalCluster]:
    """Three one-member shard groups (see `halves`)."""
    with halves(tmp_path, 1) as c:
        yield c


def address_of(cluster: LocalCluster, group: str) -> str:
    return cluster.shard_procs[int(group[1:])].address


class Load:
    """Upserts, deletes and searches from threads, every failure kept; the acknowledged state as a model."""

    def __init__(self, client: shoal.Client, name: str, x: np.ndarray, fixed: int) -> None:
        self.client, self.name, self.x = client, name, x
        self.fixed = fixed  # ids below it are never written again: each must always be found by its vector
        self.model: dict[int, np.ndarray] = {i: x[i] for i in range(len(x))}
        self.failures: list[BaseException] = []
        self.misses: list[str] = []
        self.calls = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=t, daemon=True) for t in (self._writes, self._searches)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _writes(self) -> None:
        rng = np.random.default_rng(1)
        next_id = len(self.x)
        while not self._stop.is_set():
            ids = np.concatenate([np.arange(next_id, next_id + 20), rng.integers(self.fixed, len(self.x), 20)])
            ids = np.unique(ids).astype(np.uint64)
            vectors = rng.standard_normal((len(ids), DIM)).astype(np.float32)
            gone = np.unique(rng.integers(self.fixed, next_id, 5)).astype(np.uint64)
            try:
                self.client.upsert(self.name, ids=ids, vectors=vectors, timeout=30)
                with self._lock:
                    self.model.update(zip(ids.tolist(), vectors, strict=True))
                self.client.delete(self.name, ids=gone, timeout=30)
                with self._lock:
                    for i in gone.tolist():
                        self.model.pop(i, None)
                self.calls += 2
            except shoal.ShoalError as exc:
                self.failures.append(exc)
            next_id += 20

    def _searches(self) -> None:
        rng = np.random.default_rng(2)
        while not self._stop.is_set():
            picked = rng.integers(0, self.fixed, 16)
            try:
                found = self.client.search(self.name, self.x[picked], k=3, ef=512, timeout=30)
                self.calls += 1
            except shoal.ShoalError as exc:
                self.failures.append(exc)
                continue
            for row, want in zip(found.ids, picked.tolist(), strict=True):
                if int(row[0]) != want or len(set(row.tolist())) != len(row):
                    self.misses.append(f"query of point {want} found {row.tolist()}")


def check_exact(client: shoal.Client, name: str, model: dict[int, np.ndarray]) -> None:
    """The cluster holds exactly the model's points, and exact search equals numpy's brute force."""
    ids = np.array(sorted(model), dtype=np.uint64)
    x = np.stack([model[i] for i in ids.tolist()])
    assert client.count(name) == len(ids)
    got = client.get(name, ids=ids, with_vectors=True)
    assert [int(p.id) for p in got] == ids.tolist()
    assert np.array_equal(np.stack([p.vector for p in got]), x)  # each point's last acknowledged vector
    q = clustered(20, DIM, seed=9)
    found = client.search(name, q, k=10, ef=4096)
    want, _ = brute_force(x, q, 10, "l2")
    assert (found.ids == ids[want]).mean() > 0.99  # ties in distance may swap neighbours


def foreign_upsert(address: str, name: str, slot_range: tuple[int, int]) -> grpc.RpcError:
    """A direct upsert to a shard of an id whose slot is in `slot_range`; the error it gets."""
    candidates = np.arange(100000, 101000, dtype=np.uint64)
    slots = slots_of(candidates)
    one = candidates[(slots >= slot_range[0]) & (slots < slot_range[1])][:1]
    request = pb.UpsertRequest(collection=name, ids=encode_ids(one), vectors=encode_matrix(np.ones((1, DIM), "f4")))
    with _rpc.channel(address) as channel, pytest.raises(grpc.RpcError) as info:
        shard_pb2_grpc.ShardStub(channel).Upsert(request, timeout=10)
    return info.value


def test_a_move_under_load_fails_no_call_and_loses_nothing(three: LocalCluster) -> None:
    name = "moving"
    x = clustered(3000, DIM)
    seen: list[MoveProgress] = []
    with shoal.Client(three.address) as client:
        client.create_collection(name, dim=DIM, metric="l2")
        for start in range(0, len(x), 500):
            client.upsert(name, ids=np.arange(start, start + 500), vectors=x[start : start + 500])
        with Load(client, name, x, fixed=1000) as load:
            time.sleep(1.0)
            meta_call(three, lambda meta: move(meta, *MOVED, "g2", rate=2000, progress=seen.append))
            # g2 owns MOVED now; while the next range moves to it, it answers for MOVED beside hidden copies.
            meta_call(three, lambda meta: move(meta, HALF, HALF + 512, "g2", rate=2000))
            time.sleep(1.0)
        assert load.failures == [] and load.misses == []
        assert load.calls > 20
        topology = meta_call(three, lambda meta: meta.get_topology())
        assert topology.moves == () and owner_of(topology.ranges, *MOVED) == "g2"
        assert owner_of(topology.ranges, HALF, HALF + 512) == "g2"
        assert [p.phase for p in seen][-1] == "done" and "frozen" in {p.phase for p in seen}
        assert seen[-1].points > 0
        check_exact(client, name, load.model)
        # Every point of the moved slots is on g2 alone now: the source kept no copy.
        with _rpc.channel(address_of(three, "g0")) as channel:
            verify = shard_pb2_grpc.ShardStub(channel).Verify(shard_pb2.VerifyRequest(collection=name), timeout=30)
        on_g0 = np.frombuffer(verify.ids.u64, "<u8").astype(np.uint64)
        slots = slots_of(on_g0)
        assert not ((slots >= MOVED[0]) & (slots < MOVED[1])).any()
        assert verify.consistent
    error = foreign_upsert(address_of(three, "g0"), name, MOVED)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not owned" in str(error.details())


def test_a_shard_hides_copies_of_slots_it_does_not_own_yet(three: LocalCluster) -> None:
    name = "hidden"
    x = clustered(600, DIM)
    with shoal.Client(three.address) as client:
        client.create_collection(name, dim=DIM, metric="l2")
        client.upsert(name, ids=np.arange(600), vectors=x)

        async def begin(meta: MetaStore) -> Topology:
            from shoal._meta_values import Move

            return await meta.begin_move(await meta.get_topology(), Move("m1", *MOVED, "g0", "g2"))

        topology = meta_call(three, begin)
        settle(three, topology.version)
        ids = np.arange(600, dtype=np.uint64)
        inside = ids[(slots_of(ids) >= MOVED[0]) & (slots_of(ids) < MOVED[1])]
        points = pb.UpsertRequest(collection=name, ids=encode_ids(inside), vectors=encode_matrix(x[inside]))
        with _rpc.channel(address_of(three, "g2")) as channel:
            stub = shard_pb2_grpc.ShardStub(channel)
            assert stub.Import(shard_pb2.ImportRequest(points=points), timeout=10).written == len(inside)
            # Held, but hidden from every read: the coordinator's search, count and get see each point once.
            assert stub.Count(pb.CountRequest(collection=name), timeout=5).count == 0
        assert client.count(name) == 600
        found = client.search(name, x[inside[:5]], k=2)
        assert found.ids[:, 0].tolist() == inside[:5].tolist()
        assert len(client.get(name, ids=inside)) == len(inside)
        # A copy outside the moving slots is refused, and so is a caller's write to them on the target.
        outside = ids[slots_of(ids) >= HALF][:1]
        stray = pb.UpsertRequest(collection=name, ids=encode_ids(outside), vectors=encode_matrix(x[outside]))
        with _rpc.channel(address_of(three, "g2")) as channel, pytest.raises(grpc.RpcError) as info:
            shard_pb2_grpc.ShardStub(channel).Import(shard_pb2.ImportRequest(points=stray), timeout=10)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert foreign_upsert(address_of(three, "g2"), name, MOVED).code() == grpc.StatusCode.FAILED_PRECONDITION
        # A reader at another topology version is told so, not answered: here a newer one the shard never
        # applies; the older one differs only by the move's start, which changed no slot's owner: answered.
        with _rpc.channel(address_of(three, "g0")) as channel, pytest.raises(grpc.RpcError) as info:
            request = pb.CountRequest(collection=name, topology=topology.version + 1)
            shard_pb2_grpc.ShardStub(channel).Count(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.ABORTED
        with _rpc.channel(address_of(three, "g0")) as channel:
            stub = shard_pb2_grpc.ShardStub(channel)
            older = stub.Count(pb.CountRequest(collection=name, topology=topology.version - 1), timeout=5).count
            assert older == stub.Count(pb.CountRequest(collection=name, topology=topology.version), timeout=5).count
        # The move left behind (nobody holds the mover lock) is rolled back by the coordinator's janitor.
        deadline = time.monotonic() + 30
        while meta_call(three, lambda meta: meta.get_topology()).moves:
            assert time.monotonic() < deadline, "the janitor did not roll the move back"
            time.sleep(0.2)
        with _rpc.channel(address_of(three, "g2")) as channel:
            verify = shard_pb2_grpc.ShardStub(channel).Verify(shard_pb2.VerifyRequest(collection=name), timeout=30)
        assert verify.stored == 0  # the copies are gone
        assert client.count(name) == 600
        assert owner_of(meta_call(three, lambda meta: meta.get_topology()).ranges, *MOVED) == "g0"


def test_writes_to_frozen_slots_are_refused_retryably_and_the_coordinator_retries(three: LocalCluster) -> None:
    name = "frozen"
    x = clustered(100, DIM)
    with shoal.Client(three.address) as client:
        client.create_collection(name, dim=DIM, metric="l2")
        ids = np.arange(100, dtype=np.uint64)
        client.upsert(name, ids=ids, vectors=x)

        async def freeze(meta: MetaStore) -> Topology:
            from shoal._meta_values import Move

            t = await meta.begin_move(await meta.get_topology(), Move("m1", *MOVED, "g0", "g2"))
            return await meta.advance_move(t, "m1", "frozen")

        # The test is the mover here: it holds the mover lock, so the coordinators' janitor leaves the move be.
        held, release = threading.Event(), threading.Event()

        async def hold(meta: MetaStore) -> None:
            lock = await meta.lock_mover("test")
            assert lock is not None
            held.set()
            while not release.is_set():
                await asyncio.sleep(0.05)
            await lock.leave()

        holder = threading.Thread(target=meta_call, args=(three, hold))
        holder.start()
        assert held.wait(30)
        settle(three, meta_call(three, freeze).version)
        one = ids[(slots_of(ids) >= MOVED[0]) & (slots_of(ids) < MOVED[1])][:1]
        request = pb.UpsertRequest(collection=name, ids=encode_ids(one), vectors=encode_matrix(x[:1]))
        with _rpc.channel(address_of(three, "g0")) as channel, pytest.raises(grpc.RpcError) as info:
            shard_pb2_grpc.ShardStub(channel).Upsert(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "slots moving" in str(info.value.details())
        done: list[object] = []
        writer = threading.Thread(target=lambda: done.append(client.upsert(name, ids=one, vectors=x[:1], timeout=30)))
        writer.start()
        # Frozen longer than a group connection retries on its own (as when a mover dies in this phase and
        # the janitor rolls the move back once its lock is free): the coordinator keeps retrying.
        writer.join(RETRY_BUDGET + 1)
        assert writer.is_alive()
        release.set()
        holder.join(30)

        async def unfreeze(meta: MetaStore) -> Topology:
            t = await meta.advance_move(await meta.get_topology(), "m1", "abort")
            return await meta.advance_move(t, "m1", None)

        meta_call(three, unfreeze)
        writer.join(60)
        assert len(done) == 1  # the caller saw no error: the coordinator retried until the slots thawed
        (point,) = client.get(name, ids=one, with_vectors=True)
        assert np.allclose(point.vector, x[0])


MOVER = """
import asyncio, os, sys, time
from shoal._meta import MetaStore
from shoal.coordinator.mover import move

endpoint, cluster, pause, release = sys.argv[1:5]

started = False

def progress(p):
    global started
    if p.phase == pause:
        print("PAUSED", p.phase, flush=True)
        # The whole mover stands still here, until it is killed or the release file appears.
        while not (release and os.path.exists(release)):
            time.sleep(0.05)
    if not started and pause == "none":
        started = True
        print("STARTED", p.phase, flush=True)

async def main():
    async with await MetaStore.connect(endpoint, cluster) as meta:
        await move(meta, 0, 512, "g2", rate=100, progress=progress)

asyncio.run(main())
"""


def start_mover(cluster: LocalCluster, pause: str, release: str = "") -> subprocess.Popen[str]:
    """A mover process of slots MOVED to g2 that stops at phase `pause` until killed or `release` exists."""
    assert cluster.etcd is not None
    proc = subprocess.Popen(
        [sys.executable, "-c", MOVER, cluster.etcd.endpoint, cluster.cluster, pause, release],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PAUSED" if pause != "none" else "STARTED"), line
    return proc


def stop_mover(mover: subprocess.Popen[str]) -> None:
    """Kill the mover process if it still runs, and reap it."""
    mover.kill()
    mover.wait()
    assert mover.stdout is not None
    mover.stdout.close()


@pytest.mark.parametrize(
    ("pause", "victim", "owner"),
    [
        ("copy", "mover", "g0"),  # killed before the switch: rolled back
        ("frozen", "mover", "g0"),
        ("cleanup", "mover", "g2"),  # killed after the switch: completed
        ("none", "source", "g2"),  # the mover waits for the restarted primary and completes
        ("none", "target", "g2"),
        ("frozen", "source", "g2"),  # restarted while writes to the range are refused: it refuses them again
        ("frozen", "target", "g2"),
        ("cleanup", "source", "g2"),  # restarted holding the old copies, which stay hidden until deleted
        ("cleanup", "target", "g2"),
    ],
)
def test_an_interrupted_move_is_rolled_back_or_completed(
    three: LocalCluster, pause: str, victim: str, owner: str, tmp_path: Path
) -> None:
    name = "cut"
    x = clustered(2000, DIM)
    with shoal.Client(three.address) as client:
        client.create_collection(name, dim=DIM, metric="l2")
        client.upsert(name, ids=np.arange(2000), vectors=x)
        model = {i: x[i] for i in range(2000)}
        release = tmp_path / "release"
        mover = start_mover(three, pause, str(release))
        try:
            if victim == "mover":
                os.killpg(mover.pid, signal.SIGKILL)
            else:  # the mover goes on once the shard is back
                proc = three.shard_procs[0 if victim == "source" else 2]
                proc.kill()
                three.restart(proc)
                release.touch()
                assert mover.wait(120) == 0
        finally:
            stop_mover(mover)
        meta_call(three, lambda meta: resume(meta))
        topology = meta_call(three, lambda meta: meta.get_topology())
        assert topology.moves == ()
        assert owner_of(topology.ranges, *MOVED) == owner
        settle(three, topology.version)
        # Writes go on, and every acknowledged one is there, on one group only.
        more = clustered(100, DIM, seed=5)
        client.upsert(name, ids=np.arange(2000, 2100), vectors=more, timeout=30)
        model.update({2000 + i: more[i] for i in range(100)})
        check_exact(client, name, model)
        stored = 0
        for proc in three.shard_procs:
            with _rpc.channel(proc.address) as channel:
                request = shard_pb2.VerifyRequest(collection=name)
                stored += shard_pb2_grpc.ShardStub(channel).Verify(request, timeout=30).stored
        assert stored == len(model)


def test_a_move_completes_across_a_failover_of_the_sources_primary(tmp_path: Path) -> None:
    """Groups of two members: the source's primary dies during the copy and stays down; its replica takes over,
    the mover goes on with it, and every acknowledged write of a load meanwhile is there exactly once."""
    with halves(tmp_path, 2) as cluster:
        name = "failover"
        x = clustered(3000, DIM)
        release = tmp_path / "release"
        with shoal.Client(cluster.address) as client:
            client.create_collection(name, dim=DIM, metric="l2")
            for start in range(0, len(x), 500):
                client.upsert(name, ids=np.arange(start, start + 500), vectors=x[start : start + 500])
            with Load(client, name, x, fixed=1000) as load:
                mover = start_mover(cluster, "copy", str(release))
                try:
                    primary = meta_call(cluster, lambda meta: meta.get_group("g0")).primary
                    (victim,) = [p for p in cluster.members(0) if p.role == primary]
                    victim.kill()
                    release.touch()
                    assert mover.wait(120) == 0
                finally:
                    stop_mover(mover)
                time.sleep(1.0)
            assert load.failures == [] and load.misses == []
            topology = meta_call(cluster, lambda meta: meta.get_topology())
            assert topology.moves == () and owner_of(topology.ranges, *MOVED) == "g2"
            assert meta_call(cluster, lambda meta: meta.get_group("g0")).primary not in (None, primary)
            check_exact(client, name, load.model)
