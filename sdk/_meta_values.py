"""The cluster metadata's values, their JSON form and their keys in etcd: pure code, no I/O.

Keys live under `/shoal/<cluster>/`:

    catalogue/<collection>          CollectionConfig
    topology                        {"ranges": [[start, end, group], ...], "moves": [Move, ...]}; its version is
                                    the etcd key version ("moves" is left out when there are none)
    mover                           the mover lock: {"owner": ...}, attached to the mover's lease
    moves/<id>/progress             a move's progress: {"points", "rate", ...} (beside the topology: no version bump)
    groups/<group>/members/<member> {"address": ...}, attached to the member's lease
    groups/<group>/term             the group's current term (an int; never attached to a lease)
    groups/<group>/primary          {"member": ..., "term": ...}, attached to the primary's lease
    groups/<group>/in_sync          {"term": ..., "members": [...]}
    groups/<group>/registered       true: the name is taken (a group made by `shoal shard --join`)
    keys/<key id>                   an API key's record: {"id", "role", "hash", "collections", "created", "revoked"}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from shoal._config import SLOTS, CollectionConfig, check_name
from shoal._errors import InvalidArgument

Section = Literal["catalogue", "topology", "groups", "keys", "moves"]
SECTIONS: tuple[Section, ...] = ("catalogue", "topology", "groups", "keys", "moves")
Json = Any  # a decoded JSON value: what json.loads returns


def encode(value: Json) -> bytes:
    """One canonical JSON encoding, so equal values are equal bytes (etcd compares values byte for byte)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def decode(raw: bytes) -> Json:
    """The JSON value stored in etcd."""
    return json.loads(raw)


def config_to_json(config: CollectionConfig) -> Json:
    """A collection config as a JSON object."""
    return dataclasses.asdict(config)


def config_from_json(value: Json) -> CollectionConfig:
    """A collection config from its JSON object."""
    return CollectionConfig(**value)


@dataclass(frozen=True)
class SlotRange:
    """Slots [start, end) belong to shard group `group`."""

    start: int
    end: int
    group: str


Phase = Literal["copy", "frozen", "cleanup", "abort"]
PHASES: tuple[Phase, ...] = ("copy", "frozen", "cleanup", "abort")


@dataclass(frozen=True)
class Move:
    """Slots [start, end) moving from group `source` to group `target`, in `phase`.

    copy: the source owns and serves the range, the target takes the mover's copies and hides them;
    frozen: as copy, but the source refuses writes to the range (retryable); cleanup: the target owns the
    range, the source hides its old copies until the mover deletes them; abort: rolled back (the source owns,
    writes flow), the target refuses copies and hides what it got until the mover deletes it.
    """

    id: str
    start: int
    end: int
    source: str
    target: str
    phase: Phase = "copy"

    def to_json(self) -> Json:
        """The move as a JSON object."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: Json) -> Move:
        """A move from its JSON object."""
        return cls(
            str(value["id"]), int(value["start"]), int(value["end"]), value["source"], value["target"], value["phase"]
        )


@dataclass(frozen=True)
class Topology:
    """Slot ranges → shard groups and the moves in progress; `version` counts its replacements (0: never set),
    `revision` is etcd's."""

    ranges: tuple[SlotRange, ...] = ()
    version: int = 0
    revision: int = 0
    moves: tuple[Move, ...] = ()

    def owned(self, group: str) -> list[tuple[int, int]]:
        """The slot ranges [start, end) that `group` owns."""
        return [(r.start, r.end) for r in self.ranges if r.group == group]

    def move(self, move_id: str) -> Move | None:
        """The move with this id, if it is in progress."""
        return next((m for m in self.moves if m.id == move_id), None)

    def groups(self) -> list[str]:
        """Every group that owns slots, in slot order."""
        return list(dict.fromkeys(r.group for r in self.ranges))

    def group_of(self, slot: int) -> str:
        """The group that owns `slot`."""
        for r in self.ranges:
            if r.start <= slot < r.end:
                return r.group
        raise InvalidArgument(f"slot {slot} is in no range of topology version {self.version}")


def check_ranges(ranges: tuple[SlotRange, ...]) -> None:
    """Ranges must be sorted, non-empty, and cover every slot exactly once."""
    expected = 0
    for r in ranges:
        check_name(r.group)
        if r.start != expected or r.end <= r.start:
            raise InvalidArgument(f"slot ranges must cover 0..{SLOTS} in order without gaps; got {r} at {expected}")
        expected = r.end
    if expected != SLOTS:
        raise InvalidArgument(f"slot ranges must end at {SLOTS}, they end at {expected}")


def assign(ranges: tuple[SlotRange, ...], start: int, end: int, group: str) -> tuple[SlotRange, ...]:
    """The ranges with slots [start, end) given to `group` (ranges split as needed, neighbours of one group joined)."""
    owner = [(r.start, r.end, r.group) for r in ranges]
    pieces: list[tuple[int, int, str]] = []
    for s, e, g in owner:
        if e <= start or s >= end:
            pieces.append((s, e, g))
            continue
        if s < start:
            pieces.append((s, start, g))
        if e > end:
            pieces.append((end, e, g))
    pieces.append((start, end, group))
    pieces.sort()
    joined: list[SlotRange] = []
    for s, e, g in pieces:
        if joined and joined[-1].group == g and joined[-1].end == s:
            joined[-1] = SlotRange(joined[-1].start, e, g)
        else:
            joined.append(SlotRange(s, e, g))
    return tuple(joined)


def owner_of(ranges: tuple[SlotRange, ...], start: int, end: int) -> str | None:
    """The one group that owns all of slots [start, end), or None when several (or none) do."""
    groups = {r.group for r in ranges if r.start < end and r.end > start}
    covered = sum(min(r.end, end) - max(r.start, start) for r in ranges if r.start < end and r.end > start)
    return groups.pop() if len(groups) == 1 and covered == end - start else None


def check_moves(ranges: tuple[SlotRange, ...], moves: tuple[Move, ...]) -> None:
    """Moves must not overlap, and each range is owned by its source (by its target once in cleanup)."""
    taken: list[tuple[int, int]] = []
    for m in moves:
        check_name(m.source)
        check_name(m.target)
        if not 0 <= m.start < m.end <= SLOTS or m.source == m.target or m.phase not in PHASES:
            raise InvalidArgument(f"not a valid move: {m}")
        if any(s < m.end and m.start < e for s, e in taken):
            raise InvalidArgument(f"move {m.id} overlaps another move in progress")
        taken.append((m.start, m.end))
        owner = m.target if m.phase == "cleanup" else m.source
        if owner_of(ranges, m.start, m.end) != owner:
            raise InvalidArgument(f"slots [{m.start}, {m.end}) of move {m.id} are not all owned by {owner}")
    if len({m.id for m in moves}) != len(moves):
        raise InvalidArgument("two moves have the same id")


def moved(topology: Topology, move_id: str, phase: Phase | None) -> tuple[tuple[SlotRange, ...], tuple[Move, ...]]:
    """The ranges and moves once move `move_id` reaches `phase` (None: it is done and removed); entering
    cleanup gives its slots to the target. InvalidArgument for a step that is not allowed."""
    move = topology.move(move_id)
    if move is None:
        raise InvalidArgument(f"no move {move_id} is in progress")
    allowed = {"copy": ("frozen", "abort"), "frozen": ("cleanup", "abort"), "cleanup": (None,), "abort": (None,)}
    if phase not in allowed[move.phase]:
        raise InvalidArgument(f"move {move_id} cannot go from {move.phase} to {phase or 'done'}")
    others = tuple(m for m in topology.moves if m.id != move_id)
    if phase is None:
        return topology.ranges, others
    ranges = assign(topology.ranges, move.start, move.end, move.target) if phase == "cleanup" else topology.ranges
    return ranges, tuple(sorted((*others, dataclasses.replace(move, phase=phase)), key=lambda m: m.start))


def ranges_to_json(ranges: tuple[SlotRange, ...], moves: tuple[Move, ...] = ()) -> Json:
    """Slot ranges (and the moves in progress) as a JSON object."""
    value: Json = {"ranges": [[r.start, r.end, r.group] for r in ranges]}
    if moves:
        value["moves"] = [m.to_json() for m in moves]
    return value


def ranges_from_json(value: Json) -> tuple[SlotRange, ...]:
    """Slot ranges from their JSON object."""
    return tuple(SlotRange(int(s), int(e), str(g)) for s, e, g in value["ranges"])


def moves_from_json(value: Json) -> tuple[Move, ...]:
    """The moves in progress from the topology's JSON object."""
    return tuple(Move.from_json(m) for m in value.get("moves", ()))


@dataclass(frozen=True)
class GroupState:
    """A shard group as etcd has it: live members, the primary (None while there is none) and its term."""

    name: str
    members: dict[str, str] = field(default_factory=dict)  # member → address
    primary: str | None = None
    term: int = 0
    in_sync: tuple[str, ...] = ()
    in_sync_term: int = 0  # the term whose primary last set `in_sync`
    revision: int = 0


@dataclass(frozen=True)
class Change:
    """One change under the cluster prefix: `key` relative to it, `value` None for a deletion."""

    key: str
    value: Json
    revision: int

    @property
    def deleted(self) -> bool:
        """Whether the key was deleted (or its lease expired)."""
        return self.value is None


class Keys:
    """The key layout of one cluster, as etcd keys (bytes)."""

    def __init__(self, cluster: str) -> None:
        check_name(cluster)
        self.root = f"/shoal/{cluster}/".encode()

    def section(self, section: Section) -> bytes:
        """The prefix of a section (for topology: the key itself)."""
        return self.root + (section if section == "topology" else section + "/").encode()

    def collection(self, name: str) -> bytes:
        """A collection's catalogue entry."""
        return self.root + f"catalogue/{name}".encode()

    def api_key(self, key_id: str) -> bytes:
        """An API key's record (its hash, role and collections; never the key itself)."""
        return self.root + f"keys/{key_id}".encode()

    @property
    def topology(self) -> bytes:
        """The topology key."""
        return self.root + b"topology"

    def group(self, group: str) -> bytes:
        """The prefix of everything about a group."""
        return self.root + f"groups/{group}/".encode()

    def member(self, group: str, member: str) -> bytes:
        """A member's liveness key."""
        return self.group(group) + f"members/{member}".encode()

    def term(self, group: str) -> bytes:
        """A group's term."""
        return self.group(group) + b"term"

    def primary(self, group: str) -> bytes:
        """A group's primary."""
        return self.group(group) + b"primary"

    def in_sync(self, group: str) -> bytes:
        """A group's in-sync set."""
        return self.group(group) + b"in_sync"

    def registered(self, group: str) -> bytes:
        """The key that claims a group's name."""
        return self.group(group) + b"registered"

    @property
    def mover(self) -> bytes:
        """The mover lock's key."""
        return self.root + b"mover"

    def progress(self, move_id: str) -> bytes:
        """A move's progress."""
        return self.root + f"moves/{move_id}/progress".encode()

    def relative(self, key: bytes) -> str:
        """A full etcd key without the cluster prefix."""
        return key[len(self.root) :].decode()


def group_from_kvs(name: str, kvs: dict[str, Json], revision: int) -> GroupState:
    """A group's state from its keys (relative to the group prefix) and their values."""
    members = {k.removeprefix("members/"): v["address"] for k, v in kvs.items() if k.startswith("members/")}
    primary = kvs.get("primary")
    in_sync = kvs.get("in_sync") or {"members": [], "term": 0}
    return GroupState(
        name=name,
        members=members,
        primary=primary["member"] if primary else None,
        term=int(kvs.get("term", 0)),
        in_sync=tuple(in_sync["members"]),
        in_sync_term=int(in_sync["term"]),
        revision=revision,
    )
