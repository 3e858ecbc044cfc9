"""Catch-up by snapshot with real processes and a real etcd: a member the op log no longer reaches copies its
primary's data, also after its copy was cut off half-way."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import shoal
from shoal import _rpc
from shoal._errors import FailedPrecondition
from shoal._etcd import find_binary
from shoal._local import LocalCluster, Process
from shoal._results import topk_from_proto
from shoal._search import Search, SearchShape
from shoal.shard.copies import CATCHUP, COMPLETE
from shoal.shard.faults import CRASHPOINT_ENV
from shoal.shard.options import OPLOG_KEEP_ENV, OPLOG_TRIM_ENV
from shoal.v1 import shard_pb2_grpc
from tests.conftest import clustered
from tests.test_replication import by_role, member_count, member_state, wait_for

pytestmark = pytest.mark.slow  # every test starts and kills its own processes

KEEP = 50  # op-log entries a primary keeps here: a member that misses more copies a snapshot
DIM = 16
SNAPSHOT_LINE = "caught up by snapshot"


@pytest.fixture
def short_log(tmp_path: Path) -> Iterator[LocalCluster]:
    """One shard group of a primary and a replica whose op log keeps only the last KEEP writes."""
    try:
        find_binary()
    except FailedPrecondition as exc:
        pytest.skip(f"no etcd binary can run here: {exc}")
    env = {OPLOG_KEEP_ENV: str(KEEP), OPLOG_TRIM_ENV: "0.2"}
    with LocalCluster(data=tmp_path / "c", shards=1, replicas=2, shard_env=env) as c:
        yield c


def write_past_the_log(cluster: LocalCluster, name: str, x: np.ndarray) -> Process:
    """Write the first half of `x`, stop the replica, write the rest in more batches than the op log keeps
    (and delete some), and wait until the primary's log no longer reaches the replica; the replica."""
    half = len(x) // 2
    with shoal.Client(cluster.address) as client:
        client.create_collection(name, dim=DIM, metric="l2")
        client.upsert(name, ids=np.arange(half), vectors=x[:half], payloads=[{"i": i} for i in range(half)])
        primary, (victim,) = by_role(cluster)
        victim.kill()
        at = member_state(primary.address).seq
        step = (len(x) - half) // (2 * KEEP)
        for start in range(half, len(x), step):
            end = min(start + step, len(x))
            client.upsert(name, ids=np.arange(start, end), vectors=x[start:end])
        client.delete(name, ids=np.arange(0, 40))
    wait_for(lambda: member_state(primary.address).log_start > at + 1)
    return victim


def assert_copy_matches(cluster: LocalCluster, victim: Process, name: str, x: np.ndarray) -> None:
    """The member caught up by snapshot, `shoal check` finds the copies identical, and its search is exact."""
    assert SNAPSHOT_LINE in victim.log_path.read_text()
    primary, _ = by_role(cluster)
    assert member_state(victim.address).seq == member_state(primary.address).seq
    assert member_count(victim.address, name) == len(x) - 40
    done = subprocess.run(
        [sys.executable, "-m", "shoal", "check", "--data", str(cluster.data)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"g0 {name}: 2 members identical ({len(x) - 40} points)" in done.stdout
    queries = x[::97] + 0.01
    search = Search(SearchShape(name, k=10, ef=512), queries)
    with _rpc.channel(victim.address) as channel:
        answer = shard_pb2_grpc.ShardStub(channel).Search(search.to_proto(1), timeout=10)
    found = topk_from_proto(answer, len(queries))
    live = np.arange(40, len(x))
    distances = ((queries[:, None, :] - x[None, live, :]) ** 2).sum(-1)
    exact = live[np.argsort(distances, axis=1)[:, :10]]
    assert np.array_equal(np.sort(found.ids, axis=1), np.sort(exact, axis=1).astype(np.uint64))


def test_a_member_behind_the_op_log_catches_up_by_snapshot(short_log: LocalCluster) -> None:
    name = "behind"
    x = clustered(1200, DIM)
    victim = write_past_the_log(short_log, name, x)
    short_log.restart(victim)
    short_log.wait_groups(2)
    assert_copy_matches(short_log, victim, name, x)
    # It is an ordinary member again: later writes reach it through the op log.
    with shoal.Client(short_log.address) as client:
        client.upsert(name, ids=[0], vectors=x[:1])
    wait_for(lambda: member_count(victim.address, name) == len(x) - 39)


def test_a_copy_cut_off_half_way_leaves_a_member_that_restarts_and_completes(short_log: LocalCluster) -> None:
    name = "cut"
    x = clustered(1200, DIM, seed=1)
    victim = write_past_the_log(short_log, name, x)
    settings = dict(victim.env)
    victim.env = {**settings, CRASHPOINT_ENV: "mid-catchup"}
    victim.start(short_log.timeout)
    assert victim.popen is not None
    victim.popen.wait(60)
    assert victim.kill() == -9  # killed by its crash point, with half the copy staged
    staged = short_log.data / victim.role / CATCHUP
    assert staged.is_dir() and not (staged / COMPLETE).exists()
    assert SNAPSHOT_LINE not in victim.log_path.read_text()
    victim.env = settings
    short_log.restart(victim)
    short_log.wait_groups(2)
    assert not staged.exists()
    assert_copy_matches(short_log, victim, name, x)
