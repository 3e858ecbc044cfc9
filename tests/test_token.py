"""Read-your-writes tokens without processes: merging, a replica's bounded wait, and the coordinator asking
the primary when a replica is behind the caller's token."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from shoal._errors import FailedPrecondition, Unavailable
from shoal._meta_values import GroupState
from shoal._search import Search, SearchShape
from shoal._token import BEHIND, merge
from shoal.coordinator.groups import GroupConnection, GroupView
from shoal.v1 import types_pb2 as pb


def test_merge_keeps_the_highest_sequence_per_group() -> None:
    assert merge([{"g0": 5, "g1": 2}, {"g0": 3, "g2": 7}, {}]) == {"g0": 5, "g1": 2, "g2": 7}
    assert merge([]) == {}


def test_a_search_carries_its_token_over_the_wire() -> None:
    search = Search(SearchShape("c", 3), np.zeros((1, 4), np.float32), {"g0": 12})
    assert dict(search.to_proto().token) == {"g0": 12}
    assert dict(Search.from_proto(search.to_proto()).token) == {"g0": 12}
    assert not Search(SearchShape("c", 3), np.zeros((1, 4), np.float32)).to_proto().token


class FakeMember:
    """A member's client: answers searches, or refuses those whose token it is behind."""

    def __init__(self, name: str, seq: int) -> None:
        self.name, self.seq, self.searches = name, seq, 0

    async def search(self, request: pb.SearchRequest, timeout: float | None) -> Any:
        self.searches += 1
        if request.token.get("g0", 0) > self.seq:
            raise FailedPrecondition(f"member {self.name} of group g0 is at write {self.seq}, {BEHIND}")
        return self.name


def connection(replica_seq: int) -> tuple[GroupConnection, FakeMember, FakeMember]:
    view = GroupView(meta=None)  # type: ignore[arg-type]
    view.groups["g0"] = GroupState("g0", {"a": "a:1", "b": "b:1"}, primary="a", term=1, in_sync=("a", "b"))
    primary, replica = FakeMember("a", 10), FakeMember("b", replica_seq)
    view.clients.update({"a:1": primary, "b:1": replica})  # type: ignore[dict-item]
    conn = GroupConnection(view, "g0")
    conn.outstanding["a:1"] = 1  # the primary is busier: an unconstrained read goes to the replica
    return conn, primary, replica


def test_a_replica_behind_the_token_is_passed_over_for_the_primary() -> None:
    conn, primary, replica = connection(replica_seq=4)
    assert asyncio.run(conn.search(pb.SearchRequest(collection="c"), 5.0)) == "b"  # no token: least busy
    assert asyncio.run(conn.search(pb.SearchRequest(collection="c", token={"g0": 4}), 5.0)) == "b"
    answer = asyncio.run(conn.search(pb.SearchRequest(collection="c", token={"g0": 10}), 5.0))
    assert answer == "a"
    assert (primary.searches, replica.searches) == (1, 3)


def test_reads_alternate_between_members_with_equally_few_calls_in_flight() -> None:
    conn, primary, replica = connection(replica_seq=10)
    conn.outstanding["a:1"] = 0  # one call at a time, as the coordinator's batcher often sends them
    answers = [asyncio.run(conn.search(pb.SearchRequest(collection="c"), 5.0)) for _ in range(10)]
    assert sorted(answers) == ["a"] * 5 + ["b"] * 5
    assert (primary.searches, replica.searches) == (5, 5)


def test_a_replica_waits_for_its_primary_before_refusing() -> None:
    from shoal.shard.replication import ReplicaSide

    side = ReplicaSide.__new__(ReplicaSide)  # only the applied-sequence bookkeeping is used here

    async def run() -> tuple[bool, bool, float]:
        side.applied, side._advanced = 3, asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, side._applied, 5)
        reached = await side.reach(5, 2.0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        late = await side.reach(9, 0.1)
        return reached, late, loop.time() - start

    reached, late, waited = asyncio.run(run())
    assert reached and not late
    assert waited == pytest.approx(0.1, abs=0.08)


def test_a_primary_reports_each_members_lag_and_state() -> None:
    from prometheus_client import REGISTRY

    from shoal.shard.replication import Replicator

    class Link:
        def __init__(self, acked: int, diverged: bool = False) -> None:
            self.acked, self.diverged = acked, diverged

    class Shard:
        sequence = 50

    rep = Replicator.__new__(Replicator)  # only the reporting is used here
    rep.shard, rep.group, rep.in_sync = Shard(), "lagtest", {"a"}  # type: ignore[assignment]
    rep.links = {"a": Link(50), "b": Link(20), "c": Link(-1), "d": Link(49, diverged=True)}  # type: ignore[dict-item]
    rep.report()

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"group": "lagtest", **labels})

    lags = {m: value("shoal_replica_lag_sequences", replica=m) for m in "abcd"}
    assert lags == {"a": 0, "b": 30, "c": 50, "d": 1}
    states = {
        m: [s for s in ("in_sync", "catching_up", "out_of_sync") if value("shoal_replica_state", replica=m, state=s)]
        for m in "abcd"
    }
    assert states == {"a": ["in_sync"], "b": ["catching_up"], "c": ["out_of_sync"], "d": ["out_of_sync"]}


def test_a_caught_up_member_etcd_refused_to_add_is_added_again_on_an_idle_group() -> None:
    """The primary adds a member that has every write to the in-sync set; when etcd refuses that change (it was
    unreachable), the primary tries again by itself, not only when the next write is acknowledged: a group
    with no writes would otherwise keep a caught-up member out of the in-sync set for good."""
    from shoal.shard.replication import Replicator

    class Meta:
        def __init__(self) -> None:
            self.calls: list[list[str]] = []

        async def set_in_sync(self, group: str, members: list[str], term: int) -> None:
            self.calls.append(members)
            if len(self.calls) == 1:
                raise Unavailable("etcd: Deadline Exceeded")

    class Link:
        member, address, acked, diverged = "b", "b:1", 7, False

        async def stop(self) -> None:
            pass

    class Shard:
        sequence = 7

    async def main() -> None:
        meta = Meta()
        rep = Replicator(Shard(), meta, "idle", "a", 1, {"a"}, lambda: None, ack_timeout=0.2)  # type: ignore[arg-type]
        link = Link()
        rep.links["b"] = link  # type: ignore[assignment]
        try:
            rep.acked(link)  # type: ignore[arg-type]
            for _ in range(100):
                if rep.in_sync == {"b"}:
                    break
                await asyncio.sleep(0.02)
            assert rep.in_sync == {"b"} and meta.calls == [["a", "b"], ["a", "b"]]
        finally:
            await rep.stop()

    asyncio.run(main())
