"""Which slots a shard's group owns under a topology version, and what its reads may see while slots move.

The group's slots come from the topology in etcd (group.py follows it). While a slot range moves, the
target holds the mover's copies before it owns them, and the source keeps its old copies after the switch
until the mover deletes them: those points are hidden from every read (search, get, count, scroll), so a
search at one topology version sees each point in exactly one group. With no move touching the group,
nothing is hidden and reads take their usual paths at no cost.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from shoal._config import SLOTS
from shoal._errors import Aborted, FailedPrecondition, Unavailable
from shoal._filter import Node
from shoal._hash import slots_of
from shoal._meta_values import SlotRange, Topology
from shoal.shard.collection import Collection, matching
from shoal.shard.planner import Matching
from shoal.shard.storage import CollectionStore, pack_keys

FROZEN_RETRY = 0.05  # seconds a writer to frozen slots is told to wait before it tries again
_NONE = np.zeros(SLOTS, dtype=bool)
# The slots of string ids' internal keys, sorted by key: a key names one id for as long as the shard runs (keys
# are never handed out twice), so its slot is read from RocksDB once, not at every write while points are hidden.
_KEY_SLOTS: weakref.WeakKeyDictionary[CollectionStore, tuple[np.ndarray, np.ndarray]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, eq=False)
class Ownership:
    """A group's slots under one topology version: owned, frozen (writes wait), importing (mover copies land)."""

    version: int
    owned: np.ndarray  # bool per slot
    frozen: np.ndarray = field(default_factory=lambda: _NONE)
    importing: np.ndarray = field(default_factory=lambda: _NONE)
    hiding: bool = False  # the group may hold points of slots it does not own: reads leave them out
    ranges: tuple[SlotRange, ...] = ()  # every group's slots under this version
    since: int = 0  # the first version of the unbroken run of versions with these ranges (0: this version)

    def serves(self, version: int) -> bool:
        """Whether a read routed by topology `version` (0: any) may be answered here: the same version, or an
        older one of the same run of versions with every group's slots unchanged (only moves' phases changed).

        Exact because this shard answers with what it owns under its own version, which under such a version
        is what it owned then, and every other group answering within that run owns what it owned then too:
        each slot is read in exactly one group. Newer versions are not known here: the servicer waits for them.
        """
        return not version or version == self.version or 0 < self.since <= version < self.version


def ownership(topology: Topology, group: str, before: Ownership | None = None) -> Ownership:
    """What `group` owns, freezes and imports under `topology` (`before`: under the version applied so far)."""
    owned, frozen, importing = (np.zeros(SLOTS, dtype=bool) for _ in range(3))
    for start, end in topology.owned(group):
        owned[start:end] = True
    hiding = False
    for m in topology.moves:
        if m.source == group and m.phase == "frozen":
            frozen[m.start : m.end] = True
        if m.target == group and m.phase in ("copy", "frozen"):
            importing[m.start : m.end] = True
        hiding |= (m.target == group and m.phase != "cleanup") or (m.source == group and m.phase == "cleanup")
    since = topology.version
    # A version missed by the watch could have changed the slots and changed them back: only a next version
    # with the same ranges continues the run.
    if before is not None and before.ranges == topology.ranges and 0 <= topology.version - before.version <= 1:
        since = before.since or before.version
    return Ownership(topology.version, owned, frozen, importing, hiding, topology.ranges, since)


def static(ranges: list[tuple[int, int]], version: int = 0) -> Ownership:
    """Slot ranges owned with nothing moving."""
    owned = np.zeros(SLOTS, dtype=bool)
    for start, end in ranges:
        owned[start:end] = True
    return Ownership(version, owned)


def hidden_by(own: Ownership | None, version: int) -> Ownership | None:
    """The ownership a read at topology `version` hides unowned points by (None: nothing to hide); Aborted when
    `own` is at another version (0: the caller does not say)."""
    if own is None:
        return None
    if not own.serves(version):
        raise Aborted(f"topology version {version}, shard has {own.version}")
    return own if own.hiding else None


class Readers:
    """Reads in flight, by the ownership version that admitted them.

    A read admitted before a move's switch may run on the index worker (or read RocksDB) after it: the source
    still owned the range then and answers from its copies, which the move's range delete removes. So the delete
    first waits for every read admitted at an older version; reads at the new version hide the range anyway.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._in_flight: Counter[int] = Counter()

    def admit(self, current: Callable[[], Ownership | None]) -> Ownership | None:
        """The ownership in force now, with one more read counted under its version (None: not counted)."""
        with self._changed:
            own = current()
            if own is not None:
                self._in_flight[own.version] += 1
            return own

    def leave(self, own: Ownership | None) -> None:
        """A read `admit` counted is done."""
        if own is None:
            return
        with self._changed:
            self._in_flight[own.version] -= 1
            if not self._in_flight[own.version]:
                del self._in_flight[own.version]
                self._changed.notify_all()

    def drain(self, version: int, timeout: float) -> bool:
        """Wait until no read admitted at a version older than `version` is in flight; whether none is."""
        with self._changed:
            return self._changed.wait_for(lambda: all(v >= version for v in self._in_flight), timeout)


def check_write(own: Ownership, slots: np.ndarray, importing: bool = False) -> None:
    """Refuse a write to slots the group does not own (FailedPrecondition), to frozen slots (Unavailable, retry
    soon), or a mover's copy to slots it is not importing (FailedPrecondition)."""
    if importing:
        stray = np.flatnonzero(~own.importing[slots])
        if len(stray):
            raise FailedPrecondition(f"slot {int(slots[stray[0]])} is not moving to this shard group")
        return
    foreign = np.flatnonzero(~own.owned[slots])
    if len(foreign):
        raise FailedPrecondition(
            f"slot {int(slots[foreign[0]])} is not owned by this shard group (the topology changed?)"
        )
    if own.frozen[slots].any():
        raise Unavailable("slots moving: try again", retry_after=FROZEN_RETRY)  # coordinator/reroute.py knows it


def slots_of_keys(coll: Collection, keys: np.ndarray) -> np.ndarray:
    """The slot of each internal key (its id's slot; string ids are read from RocksDB)."""
    if coll.config.id_type == "uint64":
        return slots_of(keys)
    known, slots = _KEY_SLOTS.get(coll.store, (keys[:0], np.zeros(0, np.int64)))
    at = np.minimum(np.searchsorted(known, keys), max(len(known) - 1, 0))
    hit = known[at] == keys if len(known) else np.zeros(len(keys), bool)
    if hit.all():
        return slots[at]
    fresh = np.unique(keys[~hit])
    names = coll.store.ids_of(pack_keys(fresh))
    fresh_slots = slots_of([n.decode() if n is not None else "" for n in names])
    found = np.empty(len(keys), np.int64)
    found[hit] = slots[at[hit]]
    found[~hit] = fresh_slots[np.searchsorted(fresh, keys[~hit])]
    if len(known) > 2 * len(keys) + 65536:  # mostly keys deleted since: start again from these
        known, slots = keys[hit], slots[at[hit]]
    stored = np.array([n is not None for n in names], bool)
    known = np.concatenate([known, fresh[stored]])
    order = np.argsort(known, kind="stable")
    known, slots = known[order], np.concatenate([slots, fresh_slots[stored]])[order]
    keep = np.concatenate([[True], known[1:] != known[:-1]]) if len(known) else np.zeros(0, bool)
    _KEY_SLOTS[coll.store] = (known[keep], slots[keep])  # a key twice: `keys` repeated one
    return found


def visible(coll: Collection, own: Ownership, text: str = "", node: Node | None = None) -> Matching:
    """On the index worker: the keys a read may see (those matching the filter, if any) in owned slots,
    cached until the collection's next write."""

    def compute() -> Matching:
        keys = matching(coll, text, node).keys if node is not None else coll.filters.live()
        return Matching(keys[own.owned[slots_of_keys(coll, keys)]] if len(keys) else keys)

    return coll.filters.cached(f"\0visible {own.version}\0{text}", compute)
