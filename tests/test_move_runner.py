"""The rebalance/drain runner over a fake metadata store and mover: resume first, bounded parallelism, the
throttle split between moves in flight, progress lines, and a rerun after a cut-off carrying on."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from shoal._errors import FailedPrecondition
from shoal._meta import MetaStore
from shoal._meta_init import even_ranges
from shoal._meta_values import GroupState, SlotRange, Topology, assign
from shoal._move_plan import RangeMove, slot_counts
from shoal._move_runner import Progress, RunProgress, run_moves


class CutOff(Exception):
    """The run stops half-way."""


class FakeMeta:
    """The two reads the runner makes, over a topology the fake mover changes."""

    def __init__(self, ranges: tuple[SlotRange, ...], groups: list[str]) -> None:
        self.topology = Topology(ranges, 1)
        self.groups = {g: GroupState(g, members={f"{g}-m": "127.0.0.1:1"}) for g in groups}

    async def get_topology(self) -> Topology:
        return self.topology

    async def get_groups(self) -> dict[str, GroupState]:
        return self.groups


class FakeMover:
    """Moves ranges in the fake topology, 10 points a slot, and records what it was asked."""

    def __init__(self, meta: FakeMeta, fail_after: int | None = None, conflicts: int = 0) -> None:
        self.meta, self.fail_after, self.conflicts = meta, fail_after, conflicts
        self.calls: list[tuple[RangeMove, float]] = []
        self.resumed = 0
        self.in_flight = self.most_in_flight = 0

    async def move(self, meta: MetaStore, move: RangeMove, rate: float, progress: Progress) -> None:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise CutOff("as Ctrl-C or a kill would cut the run off")
        self.calls.append((move, rate))
        if self.conflicts:
            self.conflicts -= 1
            raise FailedPrecondition("topology is at version 3, not 2")  # rolled back: tried again
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        progress(5 * move.slots)
        await asyncio.sleep(0.01)
        progress(10 * move.slots)
        t = self.meta.topology
        self.meta.topology = Topology(assign(t.ranges, move.start, move.end, move.target), t.version + 1)
        self.in_flight -= 1

    async def resume(self, meta: MetaStore, progress: Progress) -> int:
        self.resumed += 1
        return 0


def run(meta: FakeMeta, mover: FakeMover, **options: object) -> tuple[RunProgress, list[str]]:
    lines: list[str] = []
    kwargs: dict[str, object] = {"rate": 1000.0, **options}
    done = asyncio.run(
        run_moves(cast(MetaStore, meta), mover.move, mover.resume, lines.append, **kwargs)  # type: ignore[arg-type]
    )
    return done, lines


def test_grow_runs_every_move_two_at_a_time_with_the_rate_split_between_them() -> None:
    meta = FakeMeta(even_ranges(2), ["g0", "g1", "g2"])
    mover = FakeMover(meta)
    done, lines = run(meta, mover, parallel=2)
    assert mover.resumed == 1
    assert mover.most_in_flight == 2
    assert {rate for _, rate in mover.calls} == {500.0}
    assert slot_counts(meta.topology.ranges) == {"g0": 1366, "g1": 1365, "g2": 1365}
    assert done.ranges_done == done.ranges == len(mover.calls) and done.points == 13650
    assert lines[-1].startswith(f"done: {done.ranges}/{done.ranges} ranges, 13,650 points moved")
    assert sum(line.startswith("moved slots") for line in lines) == done.ranges


def test_drain_empties_the_group_and_a_dry_run_moves_nothing() -> None:
    meta = FakeMeta(even_ranges(3), ["g0", "g1", "g2"])
    mover = FakeMover(meta)
    _, lines = run(meta, mover, drain=("g1",), dry_run=True)
    assert mover.calls == [] and mover.resumed == 0
    assert lines and all(line.startswith("would move") for line in lines)
    run(meta, mover, drain=("g1",))
    assert "g1" not in slot_counts(meta.topology.ranges)


def test_a_rerun_after_a_cut_off_resumes_then_moves_only_what_is_left() -> None:
    meta = FakeMeta(even_ranges(2), ["g0", "g1", "g2"])
    mover = FakeMover(meta, fail_after=2)
    with pytest.raises(CutOff):
        run(meta, mover, parallel=1)
    assert len(mover.calls) == 2
    first = [m for m, _ in mover.calls]
    mover.fail_after = None
    done, _ = run(meta, mover, parallel=1)
    assert mover.resumed == 2
    assert not {(m.start, m.end) for m, _ in mover.calls[2:]} & {(m.start, m.end) for m in first}
    assert done.slots == 1365 - sum(m.slots for m in first)
    assert slot_counts(meta.topology.ranges) == {"g0": 1366, "g1": 1365, "g2": 1365}
    _, lines = run(meta, mover)
    assert lines == ["nothing to move: every group owns its share"]


def test_a_move_rolled_back_by_a_topology_conflict_is_tried_again_a_bounded_number_of_times() -> None:
    meta = FakeMeta(even_ranges(2), ["g0", "g1", "g2"])
    mover = FakeMover(meta, conflicts=2)
    done, lines = run(meta, mover, parallel=1)
    assert len(mover.calls) == done.ranges + 2
    assert mover.calls[0][0] == mover.calls[1][0] == mover.calls[2][0]
    assert sum("moving them again" in line for line in lines) == 2
    assert slot_counts(meta.topology.ranges) == {"g0": 1366, "g1": 1365, "g2": 1365}
    mover = FakeMover(FakeMeta(even_ranges(2), ["g0", "g1", "g2"]), conflicts=3)
    with pytest.raises(FailedPrecondition):
        run(mover.meta, mover, parallel=1)


def test_progress_line_tells_rate_and_time_left() -> None:
    p = RunProgress(ranges=4, slots=400, ranges_done=1, slots_done=100, points=1000, started=0.0)
    p.copied[RangeMove(0, 100, "g0", "g1")] = 1000
    assert p.line(now=10.0) == "1/4 ranges, 2,000 points moved, 200 points/s, about 30 s left"


def test_status_table_shows_endpoints_empty_groups_moves_and_the_mover() -> None:
    from shoal._group_status import GroupStatus, MemberStatus, MetaStatus, meta_table

    move = {"id": "m1", "start": 1366, "end": 1622, "source": "g0", "target": "g2", "phase": "copy"}
    status = MetaStatus(
        ["http://127.0.0.1:2379"],
        7,
        [
            GroupStatus("g0", [[0, 2048]], 1, [MemberStatus("s0", "h:1", "primary", "in-sync", 9, 0)], 2048, [move]),
            GroupStatus("g2", [], 1, [], 0, [move]),
        ],
        [{**move, "progress": {"points": 12345}}],
        "rebalance@host",
    )
    lines = meta_table(status).splitlines()
    assert lines[0] == "etcd http://127.0.0.1:2379: topology version 7"
    assert lines[2].startswith("g0     2048 0-2047")
    assert lines[3].startswith("g2     0 (none)") and lines[3].endswith("(no live member)")
    assert lines[4] == "moving slots 1366-1621 from g0 to g2: copy, 12,345 points copied"
    assert lines[5] == "mover: rebalance@host"
