"""The topology: which shard serves which hash slots, and the grouping of ids by shard."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shoal._config import SLOTS
from shoal._hash import slots_of
from shoal.v1 import types_pb2 as pb


class TopologyError(ValueError):
    """A topology that cannot be used: bad syntax, or slot ranges that do not cover every slot once."""


@dataclass(frozen=True)
class SlotRange:
    """Slots [start, end) served by the shard at `address`."""

    address: str
    start: int
    end: int


@dataclass(frozen=True)
class Topology:
    """A versioned map from slot ranges to shard addresses; shard i is `addresses[i]`."""

    version: int
    ranges: tuple[SlotRange, ...]
    addresses: tuple[str, ...] = field(init=False)
    owner: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            raise TopologyError(f"version must be a non-negative integer, got {self.version!r}")
        if not self.ranges:
            raise TopologyError("a topology needs at least one shard")
        # One address may serve several ranges (slots moved to it); it is still one shard.
        addresses = tuple(dict.fromkeys(r.address for r in self.ranges))
        index = {a: i for i, a in enumerate(addresses)}
        owner = np.full(SLOTS, -1, dtype=np.int64)
        for r in sorted(self.ranges, key=lambda r: (r.start, r.end)):
            check_address(r.address)
            if not 0 <= r.start < r.end <= SLOTS:
                raise TopologyError(
                    f"shard {r.address}: slots [{r.start}, {r.end}) must satisfy 0 <= start < end <= {SLOTS}"
                )
            taken = np.flatnonzero(owner[r.start : r.end] >= 0)
            if taken.size:
                slot = r.start + int(taken[0])
                raise TopologyError(f"slot {slot} is assigned twice: to {addresses[owner[slot]]} and to {r.address}")
            owner[r.start : r.end] = index[r.address]
        missing = np.flatnonzero(owner < 0)
        if missing.size:
            raise TopologyError(f"{missing.size} slots have no shard, the first is slot {int(missing[0])}")
        owner.flags.writeable = False
        object.__setattr__(self, "addresses", addresses)
        object.__setattr__(self, "owner", owner)

    @classmethod
    def even(cls, addresses: Sequence[str], version: int = 1) -> Topology:
        """Split the slots evenly: shard i of n gets the contiguous range [i*SLOTS//n, (i+1)*SLOTS//n)."""
        n = len(addresses)
        if n == 0:
            raise TopologyError("give at least one shard address")
        if n > SLOTS:
            raise TopologyError(f"at most {SLOTS} shards are possible, got {n}")
        seen: set[str] = set()
        for a in addresses:
            if a in seen:
                raise TopologyError(f"shard address {a} is given twice")
            seen.add(a)
        return cls(version, tuple(SlotRange(a, i * SLOTS // n, (i + 1) * SLOTS // n) for i, a in enumerate(addresses)))

    @classmethod
    def from_dict(cls, doc: Any) -> Topology:
        """Parse `{"version": 1, "shards": [{"address": "host:port", "slots": [start, end]}, ...]}`."""
        if not isinstance(doc, Mapping):
            raise TopologyError(f"a topology is a JSON object, got {type(doc).__name__}")
        _no_unknown_keys(doc, {"version", "shards"}, "the topology")
        if "version" not in doc:
            raise TopologyError("the topology has no 'version'")
        shards = doc.get("shards")
        if not isinstance(shards, list) or not shards:
            raise TopologyError("'shards' must be a non-empty list")
        ranges = []
        for i, entry in enumerate(shards):
            where = f"shards[{i}]"
            if not isinstance(entry, Mapping):
                raise TopologyError(f"{where} must be an object, got {type(entry).__name__}")
            _no_unknown_keys(entry, {"address", "slots"}, where)
            address = entry.get("address")
            if not isinstance(address, str):
                raise TopologyError(f"{where}.address must be a string 'host:port'")
            slots = entry.get("slots")
            if (
                not isinstance(slots, list)
                or len(slots) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in slots)
            ):
                raise TopologyError(f"{where}.slots must be [start, end] (integers, end exclusive)")
            ranges.append(SlotRange(address, slots[0], slots[1]))
        return cls(doc["version"], tuple(ranges))

    @classmethod
    def from_file(cls, path: Path) -> Topology:
        """Read and validate a JSON topology file."""
        try:
            doc = json.loads(Path(path).read_text())
        except OSError as exc:
            raise TopologyError(f"cannot read topology file {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise TopologyError(f"topology file {path} is not valid JSON: {exc}") from None
        return cls.from_dict(doc)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form that `from_dict` reads."""
        return {
            "version": self.version,
            "shards": [{"address": r.address, "slots": [r.start, r.end]} for r in self.ranges],
        }

    def shard_of_slots(self, slots: np.ndarray) -> np.ndarray:
        """The shard index serving each slot."""
        return self.owner[np.asarray(slots, dtype=np.int64)]

    def route(self, ids: np.ndarray) -> dict[int, np.ndarray]:
        """Group ids by shard: shard index -> ascending positions of its ids (only shards that have ids)."""
        if len(ids) == 0:
            return {}
        shard = self.owner[slots_of(ids)]
        order = np.argsort(shard, kind="stable")
        bounds = np.flatnonzero(np.diff(shard[order])) + 1
        return {int(shard[group[0]]): group for group in np.split(order, bounds)}


def check_address(address: str) -> str:
    """A shard address: 'host:port' with a port between 1 and 65535."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise TopologyError(f"shard address {address!r} must be 'host:port' with a port between 1 and 65535")
    return address


def _no_unknown_keys(doc: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(doc) - known)
    if unknown:
        raise TopologyError(f"{where} has unknown keys {unknown}; expected {sorted(known)}")


def topology_to_proto(topology: Topology) -> pb.TopologyInfo:
    """The wire form of a topology: its version and every slot range with its shard's address."""
    return pb.TopologyInfo(
        version=topology.version,
        shards=[pb.ShardRange(address=r.address, slot_start=r.start, slot_end=r.end) for r in topology.ranges],
    )
