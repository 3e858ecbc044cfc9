"""The cluster metadata's values, their JSON form and their keys in etcd: pure code, no I/O.

Keys live under `/shoal/<cluster>/`:

    catalogue/<collection>          CollectionConfig
    topology                        {"ranges": [[start, end, group], ...]}; its version is the etcd key version
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

Section = Literal["catalogue", "topology", "groups", "keys"]
SECTIONS: tuple[Section, ...] = ("catalogue", "topology", "groups", "keys")
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


@dataclass(frozen=True)
class Topology:
    """Slot ranges → shard groups; `version` counts its replacements (0: never set), `revision` is etcd's."""

    ranges: tuple[SlotRange, ...] = ()
    version: int = 0
    revision: int = 0

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


def ranges_to_json(ranges: tuple[SlotRange, ...]) -> Json:
    """Slot ranges as a JSON object."""
    return {"ranges": [[r.start, r.end, r.group] for r in ranges]}


def ranges_from_json(value: Json) -> tuple[SlotRange, ...]:
    """Slot ranges from their JSON object."""
    return tuple(SlotRange(int(s), int(e), str(g)) for s, e, g in value["ranges"])


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
