"""Waiting out topology changes without fixed sleeps: a shard wakes when it applies a version, a coordinator
reads etcd itself when its watch lags behind a version a shard named."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

from shoal._config import SLOTS, CollectionConfig
from shoal._errors import Aborted
from shoal._meta import MetaStore
from shoal._meta_values import GroupState, SlotRange, Topology
from shoal.coordinator.groups import GroupView
from shoal.coordinator.reroute import at_one_version, shard_version
from shoal.shard.core import Shard
from shoal.shard.options import ShardOptions
from shoal.shard.ownership import ownership
from shoal.shard.servicer import ShardServicer

RANGES = (SlotRange(0, SLOTS, "g0"),)


class StillEtcd:
    """The topology and groups as etcd has them, with no watch: only a direct read sees a change."""

    def __init__(self) -> None:
        self.topology = Topology(RANGES, 1)
        self.reads = 0

    async def get_topology(self) -> Topology:
        self.reads += 1
        return self.topology

    async def get_group(self, group: str) -> GroupState:
        return GroupState(group, {"m0": "127.0.0.1:1"}, "m0", 1)


def test_the_version_a_refused_read_waits_for_is_the_one_the_shard_named() -> None:
    assert shard_version(Aborted("topology version 3, shard has 5"), 3) == 5
    assert shard_version(Aborted("topology version 5, shard has 4"), 5) == 4  # behind: run again at once
    assert shard_version(Aborted("stale"), 5) == 6


async def test_a_view_whose_watch_lags_reads_etcd_to_reach_a_version() -> None:
    etcd = StillEtcd()
    view = GroupView(cast(MetaStore, etcd))
    await view.reach(1, 1.0)
    assert view.topology.version == 1
    etcd.topology = Topology(RANGES, 3)
    started = time.monotonic()
    await asyncio.gather(*(view.reach(3, 5.0) for _ in range(20)))
    assert view.topology.version == 3
    assert time.monotonic() - started < 1.0  # not the whole timeout
    assert etcd.reads <= 3  # one read shared by every waiter
    await view.reach(2, 5.0)  # reached already: no wait


async def test_a_read_refused_by_a_shard_ahead_runs_again_once_the_view_has_its_version() -> None:
    etcd = StillEtcd()
    view = GroupView(cast(MetaStore, etcd))
    await view.reach(1, 1.0)
    etcd.topology = Topology(RANGES, 4)
    versions: list[int] = []

    async def run(version: int) -> str:
        versions.append(version)
        if version < 4:
            raise Aborted(f"topology version {version}, shard has 4")
        return "answered"

    started = time.monotonic()
    assert await at_one_version(view.reach, lambda: view.topology.version, run, 10.0) == "answered"
    assert versions == [1, 4] and time.monotonic() - started < 0.2


@pytest.fixture
def shard(tmp_path: Path) -> Any:
    with Shard(tmp_path, options=ShardOptions(threads=1, oplog=True)) as s:
        s.create_collection(CollectionConfig("c", dim=4, metric="l2"))
        s.set_ownership(ownership(Topology(RANGES, 1), "g0"))
        yield s


async def test_a_shard_wakes_a_read_the_moment_it_applies_the_version(shard: Shard) -> None:
    servicer = ShardServicer(shard)
    await servicer._topology(1, 5.0)  # at it already
    waiting = asyncio.create_task(servicer._topology(2, 5.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    applied = threading.Timer(0.05, lambda: shard.set_ownership(ownership(Topology(RANGES, 2), "g0", shard.ownership)))
    started = time.monotonic()
    applied.start()  # from another thread, as the watch may
    await asyncio.wait_for(waiting, 5.0)
    assert time.monotonic() - started < 0.5
    assert shard.count("c", version=1) == 0  # same slots as version 1: answered
