"""Which slot ranges to move so that every group owns an equal share: pure code for `shoal rebalance` and `drain`.

Every group that stays gets `SLOTS // n` slots, the largest ones one more (so the fewest slots move), a drained
group none. Groups over their share give slots from the top of their highest ranges, in moves of at most
`max_slots` contiguous slots each, to groups under it. The moves are disjoint and each range is wholly owned by
its source, so they can run in any order, side by side; planning again after some of them ran plans the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shoal._config import DEFAULT_MOVE_SLOTS, SLOTS
from shoal._errors import InvalidArgument
from shoal._meta_values import SlotRange, assign, owner_of


@dataclass(frozen=True)
class RangeMove:
    """Move slots [start, end) from group `source` to group `target`."""

    start: int
    end: int
    source: str
    target: str

    @property
    def slots(self) -> int:
        """How many slots it moves."""
        return self.end - self.start


def slot_counts(ranges: Iterable[SlotRange], groups: Iterable[str] = ()) -> dict[str, int]:
    """Slots each group owns; `groups` adds groups that own none (say, just joined)."""
    counts = dict.fromkeys(groups, 0)
    for r in ranges:
        counts[r.group] = counts.get(r.group, 0) + r.end - r.start
    return counts


def shares(counts: dict[str, int], drain: Iterable[str] = ()) -> dict[str, int]:
    """The slots each group should own: equal shares (±1) over the groups not drained, 0 for drained ones."""
    drained = set(drain)
    if unknown := sorted(drained - set(counts)):
        raise InvalidArgument(f"no group {unknown[0]!r}; the groups are {', '.join(sorted(counts))}")
    staying = sorted((g for g in counts if g not in drained), key=lambda g: (-counts[g], g))
    if not staying:
        raise InvalidArgument("every group would be drained: at least one must keep the slots")
    base, extra = divmod(SLOTS, len(staying))
    wanted = dict.fromkeys(drained, 0)
    wanted.update({g: base + (1 if i < extra else 0) for i, g in enumerate(staying)})
    return wanted


def plan(
    ranges: Iterable[SlotRange],
    groups: Iterable[str] = (),
    drain: Iterable[str] = (),
    max_slots: int = DEFAULT_MOVE_SLOTS,
) -> list[RangeMove]:
    """The moves that give every group its share (see `shares`), each of at most `max_slots` slots."""
    if max_slots < 1:
        raise InvalidArgument(f"a move must take at least one slot, not {max_slots}")
    ranges = sorted(ranges, key=lambda r: r.start)
    counts = slot_counts(ranges, groups)
    wanted = shares(counts, drain)
    needs = {g: wanted[g] - counts[g] for g in sorted(counts) if counts[g] < wanted[g]}
    moves: list[RangeMove] = []
    for source in sorted(counts):
        surplus = counts[source] - wanted[source]
        owned = [r for r in ranges if r.group == source]
        while surplus > 0:
            top = owned.pop()
            end = top.end
            while end > top.start and surplus > 0:
                target = next(g for g, n in needs.items() if n > 0)
                size = min(max_slots, surplus, needs[target], end - top.start)
                moves.append(RangeMove(end - size, end, source, target))
                end -= size
                surplus -= size
                needs[target] -= size
    return _interleaved(moves)


def _interleaved(moves: list[RangeMove]) -> list[RangeMove]:
    """Moves ordered so that consecutive ones come from different sources where possible (spreads the load)."""
    by_source: dict[str, list[RangeMove]] = {}
    for m in moves:
        by_source.setdefault(m.source, []).append(m)
    queues = list(by_source.values())
    ordered: list[RangeMove] = []
    while queues:
        ordered.extend(q.pop(0) for q in queues)
        queues = [q for q in queues if q]
    return ordered


def apply(ranges: Iterable[SlotRange], moves: Iterable[RangeMove]) -> tuple[SlotRange, ...]:
    """The ranges after `moves` (adjacent ranges of one group joined): what the topology becomes."""
    after = tuple(ranges)
    for m in moves:
        if owner_of(after, m.start, m.end) != m.source:
            raise InvalidArgument(f"slots {m.start}..{m.end - 1} are not all owned by {m.source!r}")
        after = assign(after, m.start, m.end, m.target)
    return after
