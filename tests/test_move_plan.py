"""The rebalance and drain planner: exact cases and properties over random topologies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal._config import DEFAULT_MOVE_SLOTS, SLOTS
from shoal._errors import InvalidArgument
from shoal._meta_init import even_ranges
from shoal._meta_values import SlotRange, check_ranges
from shoal._move_plan import RangeMove, apply, plan, shares, slot_counts


def test_grow_two_to_three_moves_a_third_to_the_new_group() -> None:
    ranges = even_ranges(2)
    moves = plan(ranges, ["g0", "g1", "g2"])
    assert all(m.target == "g2" and m.slots <= DEFAULT_MOVE_SLOTS for m in moves)
    assert sum(m.slots for m in moves) == 1365
    after = slot_counts(apply(ranges, moves))
    assert after == {"g0": 1366, "g1": 1365, "g2": 1365}
    # Consecutive moves alternate between sources, so side-by-side moves load both.
    assert moves[0].source != moves[1].source


def test_a_balanced_topology_plans_nothing() -> None:
    assert plan(even_ranges(3)) == []
    assert plan(even_ranges(1)) == []


def test_drain_moves_every_slot_of_the_group_and_nothing_else() -> None:
    ranges = even_ranges(3)
    moves = plan(ranges, drain=["g1"])
    assert {m.source for m in moves} == {"g1"}
    assert sum(m.slots for m in moves) == slot_counts(ranges)["g1"]
    after = slot_counts(apply(ranges, moves))
    assert "g1" not in after and sorted(after.values()) == [2048, 2048]


def test_drain_of_unknown_or_every_group_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="no group 'g9'"):
        plan(even_ranges(2), drain=["g9"])
    with pytest.raises(InvalidArgument, match="every group"):
        plan(even_ranges(2), drain=["g0", "g1"])
    with pytest.raises(InvalidArgument, match="at least one slot"):
        plan(even_ranges(2), ["g2"], max_slots=0)


def test_shares_give_the_extra_slots_to_the_largest_groups() -> None:
    assert shares({"a": 10, "b": 3000, "c": 1086}) == {"b": 1366, "c": 1365, "a": 1365}
    assert shares({"a": 4096, "b": 0}, drain=["a"]) == {"a": 0, "b": 4096}


def test_apply_refuses_a_move_of_slots_the_source_does_not_own() -> None:
    with pytest.raises(InvalidArgument, match="not all owned by 'g1'"):
        apply(even_ranges(2), [RangeMove(0, 10, "g1", "g0")])


@st.composite
def topologies(draw: st.DrawFn) -> tuple[tuple[SlotRange, ...], list[str], list[str]]:
    """Random ranges over random groups, some groups empty, some drained."""
    names = [f"g{i}" for i in range(draw(st.integers(1, 7)))]
    cuts = sorted(draw(st.sets(st.integers(1, SLOTS - 1), max_size=12)))
    bounds = [0, *cuts, SLOTS]
    owners = [draw(st.sampled_from(names)) for _ in bounds[1:]]
    ranges = tuple(SlotRange(s, e, g) for s, e, g in zip(bounds[:-1], bounds[1:], owners, strict=True))
    extra = [f"n{i}" for i in range(draw(st.integers(0, 3)))]  # joined, own nothing yet
    every = sorted({*owners, *extra})
    drain = draw(st.lists(st.sampled_from(every), unique=True, max_size=len(every) - 1))
    return ranges, extra, drain


@settings(max_examples=300, deadline=None)
@given(topologies(), st.integers(1, 600))
def test_plans_balance_every_topology_with_the_fewest_slots_moved(
    case: tuple[tuple[SlotRange, ...], list[str], list[str]], max_slots: int
) -> None:
    ranges, extra, drain = case
    moves = plan(ranges, extra, drain, max_slots)
    after = apply(ranges, moves)  # refuses a move whose range its source does not wholly own
    check_ranges(after)
    before = slot_counts(ranges, extra)
    counts = slot_counts(after, extra)
    staying = [g for g in before if g not in drain]
    assert all(counts.get(g, 0) == 0 for g in drain)
    assert max(counts[g] for g in staying) - min(counts[g] for g in staying) <= 1
    assert all(0 < m.slots <= max_slots and m.source != m.target for m in moves)
    assert all(m.target not in drain for m in moves)
    wanted = shares(before, drain)
    assert sum(m.slots for m in moves) == sum(max(0, before[g] - wanted[g]) for g in before)
    # Disjoint moves: the order does not matter, and planning again afterwards plans nothing.
    assert apply(ranges, reversed(moves)) == after
    assert plan(after, [*extra, *drain], drain, max_slots) == []
