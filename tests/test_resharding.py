"""Growing and shrinking a live cluster with `shoal rebalance` and `shoal drain`, under a load of upserts, deletes
and searches: no failed call, no lost acknowledged write, exact search equal to numpy afterwards."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import shoal
from shoal._errors import FailedPrecondition
from shoal._etcd import find_binary
from shoal._hash import slots_of
from shoal._local import LocalCluster
from shoal._meta import MetaStore
from shoal._meta_values import GroupState, Topology
from shoal._move_plan import slot_counts
from tests.conftest import brute_force, clustered

pytestmark = pytest.mark.slow  # every test starts and kills its own processes

DIM = 16
STATIC = 3000  # points the load never touches: searched for themselves while slots move
COLLECTION = "moving"


def needs_etcd() -> None:
    try:
        find_binary()
    except FailedPrecondition as exc:
        pytest.skip(f"no etcd binary can run here: {exc}")


def meta_read(cluster: LocalCluster) -> tuple[Topology, dict[str, GroupState]]:
    assert cluster.etcd is not None
    endpoint = cluster.etcd.endpoint

    async def read() -> tuple[Topology, dict[str, GroupState]]:
        async with await MetaStore.connect(endpoint, cluster.cluster) as meta:
            return await meta.get_topology(), await meta.get_groups()

    return asyncio.run(read())


def wait_for(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def shoal_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True, timeout=timeout)


@dataclass
class Load:
    """One writer (upserts of new points, deletes of some) and searchers for the static points, until stopped.

    The writer is the only one writing, so `model` (id → vector of every acknowledged point) is exact.
    """

    address: str
    x: np.ndarray
    model: dict[int, np.ndarray] = field(default_factory=dict)
    failures: list[BaseException] = field(default_factory=list)
    calls: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, searchers: int = 2) -> None:
        self.model.update({i: self.x[i] for i in range(STATIC)})
        self.threads = [threading.Thread(target=self._write)]
        self.threads += [threading.Thread(target=self._search, args=(s,)) for s in range(searchers)]
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def _write(self) -> None:
        rng = np.random.default_rng(7)
        next_id = STATIC
        with shoal.Client(self.address) as c:
            while not self.stop.is_set() and next_id + 20 <= len(self.x):
                ids = np.arange(next_id, next_id + 20)
                try:
                    c.upsert(COLLECTION, ids=ids, vectors=self.x[ids])
                    self.model.update({int(i): self.x[i] for i in ids})
                    gone = rng.choice(ids, 5, replace=False)
                    c.delete(COLLECTION, ids=gone)
                    for i in gone:
                        del self.model[int(i)]
                    self.calls += 2
                except BaseException as exc:
                    self.failures.append(exc)
                next_id += 20
                time.sleep(0.02)

    def _search(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with shoal.Client(self.address) as c:
            while not self.stop.is_set():
                ids = rng.integers(0, STATIC, 8)
                try:
                    res = c.search(COLLECTION, self.x[ids], k=3, ef=512)
                    # Each static point finds itself (distance 0), never twice: no miss, no duplicate.
                    missed = ids[res.ids[:, 0] != ids]
                    slots = slots_of(missed.astype(np.uint64))
                    assert not len(missed), f"{time.strftime('%T')} missed {missed} in slots {slots}"
                    assert all(len(set(row)) == len(row) for row in res.ids.tolist())
                    self.calls += 1
                except BaseException as exc:
                    self.failures.append(exc)


def check_data(address: str, model: dict[int, np.ndarray]) -> None:
    """The cluster holds exactly the acknowledged points, and exact search equals numpy brute force."""
    ids = np.array(sorted(model))
    x = np.stack([model[i] for i in ids])
    with shoal.Client(address) as c:
        assert c.count(COLLECTION) == len(ids)
        got = c.get(COLLECTION, ids=ids, with_vectors=True)
        assert [p.id for p in got] == ids.tolist()
        np.testing.assert_array_equal(np.stack([p.vector for p in got]), x)
        q = clustered(30, DIM, seed=9)
        res = c.search(COLLECTION, q, k=10, ef=min(len(ids), 4096))  # exact: no shard holds more
    want, _ = brute_force(x, q, 10, "cosine")
    np.testing.assert_array_equal(res.ids, ids[want])


def loaded(cluster: LocalCluster) -> Load:
    x = clustered(STATIC + 20_000, DIM, seed=3)
    with shoal.Client(cluster.address) as c:
        c.create_collection(COLLECTION, dim=DIM)
        for start in range(0, STATIC, 1000):
            c.upsert(COLLECTION, ids=np.arange(start, start + 1000), vectors=x[start : start + 1000])
    load = Load(cluster.address, x)
    load.start()
    return load


@pytest.fixture
def cluster_of(tmp_path: Path) -> Iterator[Callable[[int], LocalCluster]]:
    needs_etcd()
    started: list[LocalCluster] = []

    def start(groups: int) -> LocalCluster:
        c = LocalCluster(data=tmp_path / "c", shards=groups).start()
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def test_grow_two_to_three_groups_under_load(cluster_of: Callable[[int], LocalCluster]) -> None:
    cluster = cluster_of(2)
    load = loaded(cluster)
    cluster.join("shard-new")
    wait_for(lambda: meta_read(cluster)[1].get("g2", GroupState("g2")).primary is not None)
    # Small ranges, slowly: many phase changes while the load runs.
    done = shoal_cli("rebalance", "--data", str(cluster.data), "--rate", "400", "--max-slots", "128")
    load.finish()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "done: 12/12 ranges" in done.stdout, done.stdout  # 682 + 683 slots in ranges of at most 128
    assert load.failures == [], "\n".join([*map(str, load.failures[:5]), done.stdout, done.stderr])
    assert load.calls > 0
    topology, _ = meta_read(cluster)
    counts = slot_counts(topology.ranges)
    assert sorted(counts) == ["g0", "g1", "g2"] and all(1364 <= n <= 1366 for n in counts.values()), counts
    assert topology.moves == ()
    check_data(cluster.address, load.model)
    again = shoal_cli("rebalance", "--data", str(cluster.data))
    assert again.returncode == 0 and "nothing to move" in again.stdout, again.stdout + again.stderr


def test_drain_a_group_under_load_then_stop_it(cluster_of: Callable[[int], LocalCluster]) -> None:
    cluster = cluster_of(3)
    load = loaded(cluster)
    drain = ["drain", "g1", "--data", str(cluster.data), "--rate", "400", "--max-slots", "128", "--parallel", "2"]
    done = shoal_cli(*drain)  # two ranges at a time: their phase changes race for the topology's CAS
    load.finish()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "group g1 owns no slots now" in done.stdout
    assert load.failures == [], load.failures[:3]
    topology, _ = meta_read(cluster)
    assert sorted(slot_counts(topology.ranges).values()) == [2048, 2048]
    (g1,) = cluster.members(1)
    g1.stop()
    check_data(cluster.address, load.model)


def test_a_killed_rebalance_is_resumed_by_the_rerun(cluster_of: Callable[[int], LocalCluster]) -> None:
    cluster = cluster_of(2)
    load = loaded(cluster)
    cluster.join("shard-new")
    wait_for(lambda: meta_read(cluster)[1].get("g2", GroupState("g2")).primary is not None)
    args = ["rebalance", "--data", str(cluster.data), "--rate", "150", "--max-slots", "128"]
    first = subprocess.Popen([sys.executable, "-m", "shoal", *args], stdout=subprocess.PIPE, text=True)
    assert first.stdout is not None
    # Cut off in the middle of a move: after one range has moved, while the next one is under way.
    wait_for(lambda: first.stdout is not None and "moved slots" in first.stdout.readline(), timeout=120)
    wait_for(lambda: meta_read(cluster)[0].moves != ())
    first.kill()
    first.wait()
    first.stdout.close()
    done = shoal_cli(*args[:3])
    load.finish()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "done: " in done.stdout, done.stdout
    assert load.failures == [], "\n".join([*map(str, load.failures[:5]), done.stdout, done.stderr])
    topology, _ = meta_read(cluster)
    assert topology.moves == () and sorted(slot_counts(topology.ranges).values()) == [1365, 1365, 1366]
    check_data(cluster.address, load.model)
