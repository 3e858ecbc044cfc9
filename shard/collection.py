"""A collection on a shard: its storage and its indexes as one unit, and the keys matching a filter."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shoal._config import CollectionConfig
from shoal._errors import InvalidArgument
from shoal._filter import Node, parse_json
from shoal.shard.index import VectorIndex
from shoal.shard.payload_mirror import FilterIndex
from shoal.shard.planner import Matching
from shoal.shard.storage import CollectionStore


@dataclass
class Collection:
    """A collection's storage and index, as one unit, and what its last snapshot covers."""

    store: CollectionStore
    index: VectorIndex
    snapshot_seq: int | None = None  # the write sequence the last durable snapshot holds (None: none)
    snapshot_changes: int = 0  # index.changes when that snapshot was taken
    snapshot_time: float = field(default_factory=time.monotonic)  # also set by a failed try, to retry later
    # When the last snapshot succeeded (or the index was loaded, before its first snapshot here): for its age.
    snapshot_done: float = field(default_factory=time.monotonic)
    snapshot_bytes: int = 0  # the size of that snapshot file
    filters: FilterIndex = field(default_factory=FilterIndex)  # the payload index in memory, like `index`

    @property
    def config(self) -> CollectionConfig:
        """The collection's config."""
        return self.store.config

    @property
    def unsnapshotted(self) -> int:
        """Points changed since the last snapshot (an estimate: read from outside the worker)."""
        return self.index.changes - self.snapshot_changes


@dataclass(frozen=True)
class CollectionStats:
    """A collection as this shard sees it."""

    config: CollectionConfig
    count: int
    memory_bytes: int


@dataclass(frozen=True)
class CollectionStatus:
    """A collection's row in `shoal status` and in the shard's metrics."""

    name: str
    points: int
    memory_bytes: int
    payload_index_entries: int
    snapshot_age_seconds: float
    snapshot_sequence: int
    unsnapshotted: int  # points changed since that snapshot (a restart replays them)


def status(coll: Collection) -> CollectionStatus:
    """On the index worker: what an operator watches of a collection."""
    return CollectionStatus(
        coll.store.name,
        coll.index.count,
        coll.index.memory_bytes(),
        coll.filters.entries(),
        time.monotonic() - coll.snapshot_done,
        coll.snapshot_seq or 0,
        coll.unsnapshotted,
    )


def stats(coll: Collection) -> CollectionStats:
    """On the index worker: the collection's config, count and memory."""
    return CollectionStats(coll.config, coll.index.count, coll.index.memory_bytes())


def parse_filter(text: str) -> Node:
    """A filter's tree; InvalidArgument when it is empty or malformed."""
    node = parse_json(text)
    if node is None:
        raise InvalidArgument("the filter is empty")
    return node


def matching(coll: Collection, text: str, node: Node) -> Matching:
    """On the index worker: the keys matching a filter, cached until the collection's next write."""
    return coll.filters.cached(text, lambda: Matching(coll.filters.match(node)))
