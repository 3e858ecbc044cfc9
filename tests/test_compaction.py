"""Compaction: an index with many removed points is rebuilt from RocksDB and swapped in, losing no write."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoal._config import CollectionConfig
from shoal.shard import compaction, snapshotter
from shoal.shard.core import Shard
from shoal.shard.options import CompactionPolicy, ShardOptions, SnapshotPolicy
from tests.conftest import clustered

DIM = 16
NEVER = CompactionPolicy(share=2.0)  # compactions only when a test asks for one
# One thread: usearch's add on several threads leaves a few points unreachable, which "every point finds
# itself" would catch whether or not a compaction ran (see index.ADD_THREADS).
THREADS = 1


class Points:
    """What a test acknowledged: id -> vector, kept in step with the shard."""

    def __init__(self, shard: Shard, seed: int) -> None:
        self.shard = shard
        self.vectors: dict[int, np.ndarray] = {}
        self.rng = np.random.default_rng(seed)
        self.gone: set[int] = set()

    def upsert(self, ids: np.ndarray) -> None:
        x = clustered(len(ids), DIM, seed=int(self.rng.integers(1 << 30)))
        self.shard.upsert("u", ids.astype(np.uint64), x)
        self.vectors.update(zip(ids.tolist(), x, strict=True))
        self.gone.difference_update(ids.tolist())

    def delete(self, ids: np.ndarray) -> None:
        self.shard.delete("u", ids.astype(np.uint64))
        for i in ids.tolist():
            self.vectors.pop(i, None)
        self.gone.update(ids.tolist())

    def churn(self, rounds: int) -> None:
        """Replace half of the live points, then delete half of them, `rounds` times."""
        for _ in range(rounds):
            live = np.array(sorted(self.vectors))
            for part in np.array_split(self.rng.permutation(live)[: len(live) // 2], 8):
                self.upsert(part)
            live = np.array(sorted(self.vectors))
            for part in np.array_split(self.rng.permutation(live)[: len(live) // 2], 8):
                self.delete(part)

    def lost(self, ef: int) -> int:
        """How many live points a search for their own vector (k=1) does not find first."""
        ids = np.array(sorted(self.vectors))
        lost = 0
        for part in np.array_split(ids, -(-len(ids) // 10_000)):  # a search takes 10,000 queries at most
            found = self.shard.search("u", np.stack([self.vectors[i] for i in part.tolist()]), k=1, ef=ef)
            lost += int((found.ids[:, 0] != part).sum())
        return lost

    def check(self, ef: int) -> None:
        """The shard holds exactly the acknowledged points, its index equals RocksDB, each point finds itself."""
        report = self.shard.verify("u")
        assert report.consistent, (len(report.missing), len(report.extra))
        assert sorted(report.ids.tolist()) == sorted(self.vectors)
        assert self.shard.count("u") == len(self.vectors)
        assert self.lost(ef) == 0
        if self.gone:
            back = self.shard.get("u", np.array(sorted(self.gone), np.uint64), with_vectors=False, with_payload=False)
            assert len(back.ids) == 0, "deleted points came back"


def open_shard(path: Path, policy: CompactionPolicy = NEVER) -> Shard:
    shard = Shard(path, options=ShardOptions(threads=THREADS, compaction=policy))
    shard.open()
    shard.create_collection(CollectionConfig("u", DIM, metric="l2"))
    return shard


@pytest.fixture
def shard(tmp_path: Path) -> Iterator[Shard]:
    shard = open_shard(tmp_path)
    try:
        yield shard
    finally:
        shard.close()


def removed(shard: Shard) -> int:
    """Tombstones in the collection's index."""
    return shard._collections["u"].index.removed


def test_the_policy_waits_for_a_share_and_a_minimum_of_removed_points() -> None:
    policy = CompactionPolicy(share=0.25, min_removed=100)
    assert not policy.due(0, 0)
    assert not policy.due(99, 0)  # all removed, but too few to be worth a rebuild
    assert policy.due(100, 300)  # exactly a quarter
    assert not policy.due(100, 301)
    assert policy.due(10_000, 1_000)
    assert not CompactionPolicy(share=2.0, min_removed=1).due(10**9, 0)  # above 1: never
    default = CompactionPolicy()
    assert 0 < default.share < 1 and default.min_removed > 0


def test_options_read_the_policy_from_the_environment() -> None:
    options = ShardOptions.from_env(1, {"SHOAL_COMPACT_SHARE": "0.5", "SHOAL_COMPACT_MIN": "7"})
    assert options.compaction == CompactionPolicy(share=0.5, min_removed=7)
    assert ShardOptions.from_env(1, {}).compaction == CompactionPolicy()


def test_tombstones_are_counted_kept_across_a_restart_and_shed_by_compaction(tmp_path: Path) -> None:
    shard = open_shard(tmp_path)
    points = Points(shard, seed=1)
    try:
        points.upsert(np.arange(1000))
        assert removed(shard) == 0
        points.upsert(np.arange(100))  # replaced: 100 tombstones
        points.delete(np.arange(100, 150))
        assert removed(shard) == 150
    finally:
        shard.close()  # snapshots the index with its tombstones
    shard = Shard(tmp_path, options=ShardOptions(threads=THREADS, compaction=NEVER))
    shard.open()
    points.shard = shard
    try:
        assert removed(shard) == 150  # from the snapshot's manifest: the graph still holds them
        done = shard.compact("u")
        assert done is not None and done.live == 950 and done.shed == 150
        assert removed(shard) == 0
        points.check(ef=256)
        assert shard._collections["u"].snapshot_seq == shard.sequence  # the compact graph was snapshotted
    finally:
        shard.close()
    with Shard(tmp_path, options=ShardOptions(threads=THREADS, compaction=NEVER)) as again:
        points.shard = again
        assert removed(again) == 0
        points.check(ef=256)


def test_writes_during_a_compaction_are_all_in_the_swapped_index(shard: Shard, monkeypatch: pytest.MonkeyPatch) -> None:
    points = Points(shard, seed=2)
    points.upsert(np.arange(3000))
    points.churn(1)
    real_replay = compaction.replay
    caught_up = 0

    def replay_after_writes(*args: Any) -> int:
        # Writes between the scan and the catch-up (the first round), and between the catch-up and the swap.
        nonlocal caught_up
        caught_up += 1
        if caught_up == 1:
            points.upsert(np.arange(2900, 3300))  # replaces some, adds some
            points.delete(np.arange(0, 3000, 7))
        changed = real_replay(*args)
        points.upsert(np.arange(3300, 3400) if caught_up == 1 else np.arange(3400, 3410))
        points.delete(np.arange(1, 3000, 11))
        return changed

    monkeypatch.setattr(compaction, "replay", replay_after_writes)
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:  # and writes racing with all of it, from another thread
        n = 10_000
        # At most 30 rounds: a compaction built at the lowest priority on a busy machine takes longer, and the
        # points must stay fewer than the exact search's ef below.
        while not stop.is_set() and n < 10_600:
            points.upsert(np.arange(n, n + 20))
            points.delete(np.arange(n, n + 20, 3))
            written.append(n)
            n += 20

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        done = shard.compact("u")
    finally:
        stop.set()
        thread.join()
    assert done is not None and caught_up >= 1
    assert done.swapped > 0  # the last writes were aligned on the index worker
    # The old tombstones are gone; the new ones come from the deletes and replacements staged and racing above.
    assert removed(shard) < done.shed / 2
    # The writes after the swap left tombstones again: HNSW may miss a point, so search exactly (ef >= size).
    assert len(points.vectors) < 4096
    points.check(ef=4096)


def test_a_collection_dropped_during_its_compaction_is_left_dropped(
    shard: Shard, monkeypatch: pytest.MonkeyPatch
) -> None:
    Points(shard, seed=3).upsert(np.arange(500))
    real_replay = compaction.replay

    def drop_first(*args: Any) -> int:
        shard.drop_collection("u")
        return real_replay(*args)

    monkeypatch.setattr(compaction, "replay", drop_first)
    assert shard.compact("u") is None
    assert shard.list_collections() == []


@pytest.mark.slow
def test_the_background_policy_compacts_after_churn_and_every_point_finds_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A quarter of the graph removed, at least 1,000 points: the snapshot thread's next poll compacts it.
    policy = CompactionPolicy(share=0.25, min_removed=1000)
    shard = Shard(tmp_path, options=ShardOptions(threads=THREADS, compaction=policy, snapshots=SnapshotPolicy()))
    shard.open()
    try:
        shard.create_collection(CollectionConfig("u", DIM, metric="l2", ef_search=32))
        points = Points(shard, seed=5)
        compactions = 0
        real_compact = compaction.compact

        def counted(*args: Any) -> compaction.Compacted:
            nonlocal compactions
            compactions += 1
            return real_compact(*args)

        monkeypatch.setattr(snapshotter, "compact", counted)
        for start in range(0, 40_000, 4000):
            points.upsert(np.arange(start, start + 4000))
        points.churn(2)  # replace and delete half, twice: 10,000 live points left
        deadline = time.monotonic() + 60
        idle = threading.Event()
        while removed(shard) >= policy.min_removed and time.monotonic() < deadline:
            idle.wait(0.1)  # the snapshot thread polls once a second
        assert compactions >= 1
        assert removed(shard) < policy.min_removed
        points.check(ef=256)
    finally:
        shard.close()


@pytest.mark.skipif(sys.platform != "linux", reason="a nice value per thread is Linux's")
def test_the_build_runs_at_idle_priority_and_passes_results_and_errors_back() -> None:
    """The rebuild's thread runs at nice 19 while the caller's stays as it was; a result or an error comes back."""
    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = compaction.at_idle_priority(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    assert seen == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == caller

    def fails() -> None:
        raise compaction.Abandoned("the shard is closing")

    with pytest.raises(compaction.Abandoned, match="closing"):
        compaction.at_idle_priority(fails)
