"""Slot moves in the cluster metadata: the pure phase steps, and their compare-and-swap and lock against etcd."""

from __future__ import annotations

import asyncio

import pytest

from shoal._config import SLOTS
from shoal._errors import FailedPrecondition, InvalidArgument
from shoal._etcd import EmbeddedEtcd
from shoal._meta import MetaStore
from shoal._meta_values import Move, SlotRange, Topology, assign, check_moves, moved, owner_of
from tests.test_meta import TTL, etcd, halves, run

__all__ = ["etcd"]  # the module's etcd fixture, shared


def test_assign_splits_and_joins_ranges() -> None:
    ranges = halves()
    out = assign(ranges, 100, 200, "g2")
    assert out == (SlotRange(0, 100, "g0"), SlotRange(100, 200, "g2"), SlotRange(200, 2048, "g0"), halves()[1])
    assert assign(out, 100, 200, "g0") == ranges  # given back: the pieces join again
    assert assign(ranges, 2048, SLOTS, "g0") == (SlotRange(0, SLOTS, "g0"),)
    assert owner_of(out, 120, 150) == "g2"
    assert owner_of(out, 50, 150) is None  # two owners
    assert owner_of(ranges, 2000, 2100) is None


def test_phases_step_in_order_and_switch_ownership_once() -> None:
    move = Move("m1", 0, 100, "g0", "g2")
    t = Topology(halves(), version=3, moves=(move,))
    with pytest.raises(InvalidArgument):
        moved(t, "m1", "cleanup")  # never switch without freezing first
    ranges, moves = moved(t, "m1", "frozen")
    assert ranges == halves() and moves[0].phase == "frozen"
    t = Topology(ranges, 4, moves=moves)
    ranges, moves = moved(t, "m1", "cleanup")
    assert ranges[0] == SlotRange(0, 100, "g2") and moves[0].phase == "cleanup"
    check_moves(ranges, moves)
    ranges, moves = moved(Topology(ranges, 5, moves=moves), "m1", None)
    assert moves == () and owner_of(ranges, 0, 100) == "g2"
    with pytest.raises(InvalidArgument):
        moved(Topology(ranges, 6, moves=(Move("m1", 0, 100, "g0", "g2", "cleanup"),)), "m1", "abort")


def test_moves_that_overlap_or_that_the_source_does_not_own_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        check_moves(halves(), (Move("a", 2000, 2100, "g0", "g2"),))  # g0 owns only part of it
    with pytest.raises(InvalidArgument):
        check_moves(halves(), (Move("a", 0, 100, "g0", "g2"), Move("b", 50, 150, "g0", "g3")))
    with pytest.raises(InvalidArgument):
        check_moves(halves(), (Move("a", 0, 100, "g0", "g0"),))
    check_moves(halves(), (Move("a", 0, 100, "g0", "g2"), Move("b", 2048, 2100, "g1", "g2")))


def test_each_phase_is_one_compare_and_swap_that_bumps_the_version(etcd: EmbeddedEtcd) -> None:
    async def body(store: MetaStore) -> None:
        t = await store.replace_topology(halves(), 0)
        t = await store.begin_move(t, Move("m1", 0, 64, "g0", "g2"))
        assert t.version == 2 and t.moves == (Move("m1", 0, 64, "g0", "g2", "copy"),)
        stale = t
        t = await store.advance_move(t, "m1", "frozen")
        assert t.version == 3
        with pytest.raises(FailedPrecondition):
            await store.advance_move(stale, "m1", "abort")  # a second mover that read version 2 loses
        t = await store.advance_move(t, "m1", "cleanup")
        assert t.ranges[0] == SlotRange(0, 64, "g2") and (await store.get_topology()) == t
        t = await store.advance_move(t, "m1", None)
        assert t.moves == () and t.version == 5
        assert [r.group for r in t.ranges] == ["g2", "g0", "g1"]

    run(etcd, body)


def test_the_mover_lock_is_held_by_one_and_freed_with_its_lease(etcd: EmbeddedEtcd) -> None:
    async def body(store: MetaStore) -> None:
        assert await store.mover() is None
        first = await store.lock_mover("a", ttl=TTL)
        assert first is not None and await store.mover() == "a"
        assert await store.lock_mover("b", ttl=TTL) is None
        await first.abandon()  # as if its process died: the lease runs out
        for _ in range(100):
            if await store.mover() is None:
                break
            await asyncio.sleep(0.1)
        second = await store.lock_mover("b", ttl=TTL)
        assert second is not None and await store.mover() == "b"
        await second.leave()
        assert await store.mover() is None
        await store.put_progress("m1", {"points": 5})
        assert await store.get_progress("m1") == {"points": 5}
        t = await store.replace_topology(halves(), 0)
        assert (await store.get_topology()).version == t.version  # progress is not the topology
        await store.drop_progress("m1")
        assert await store.get_progress("m1") is None

    run(etcd, body)
