"""Executing planned writes: the storage part on the committer thread, the index part on the index worker.

For each request of a group the committer calls `Writer.write`: it plans the request (`plan_write`, against
the committer's view of the collections), then writes the plan's RocksDB batch (`to_batch`), or creates or
drops the collection's column families, and returns a `Committed` value. Once the group is durable the
index worker calls `Committed.apply`: the plan's usearch and payload-mirror changes (`apply`), or the
publication of a created or dropped collection to callers; what it returns is the caller's result.
A new kind of plan gets its storage part in `Writer.write` and its index part in `Committed.apply`.
In a shard group the writer also logs each plan (serialized) under its sequence in the op log, in the
same batch; a replica executes the primary's plans (`Replicated`) the same way, without planning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from rocksdict import WriteBatch

from shoal._errors import FailedPrecondition
from shoal._filter import Node
from shoal.shard.collection import Collection, stats
from shoal.shard.index import VectorIndex
from shoal.shard.payload_index import rocks_match
from shoal.shard.reads import Verification
from shoal.shard.storage import CollectionStore, Storage, pack_keys
from shoal.shard.writes import (
    IDS,
    INDEX,
    POINTS,
    CreatePlan,
    Delete,
    DeleteByFilter,
    DropPlan,
    Plan,
    Request,
    StoreView,
    WritePlan,
    plan_from_bytes,
    plan_write,
    writable,
)

log = logging.getLogger("shoal.shard.execute")


class RocksView:
    """A StoreView over a collection's RocksDB column families (on the committer thread)."""

    def __init__(self, store: CollectionStore) -> None:
        self._store = store
        self.config = store.config
        self.born = store.born
        self.next_key = store.next_key
        self.records = store.records
        self.keys_of = store.keys_of
        self.ids_of = store.ids_of

    def match(self, node: Node) -> np.ndarray:
        """The sorted keys of stored points matching a filter."""
        return rocks_match(self._store, node)


@dataclass(frozen=True)
class Verify:
    """Not a write: compare a collection's index with RocksDB at one point in the write order."""

    collection: str
    born: int


@dataclass(frozen=True, eq=False)
class Scan:
    """What a Verify read from RocksDB on the committer, for the index worker to compare with the index."""

    ids: np.ndarray  # the external ids of every stored point
    stored: np.ndarray  # their internal keys, sorted
    unmapped: int


@dataclass(frozen=True)
class Replicated:
    """A plan the group's primary wrote under `seq`: a replica executes it as it is, strictly in order."""

    seq: int
    raw: bytes  # the serialized plan, logged unchanged


@dataclass(frozen=True)
class Barrier:
    """Not a write: resolves once every job queued before it is durable and applied."""


Job = Request | Verify | Replicated | Barrier  # what the committer executes, in order


@dataclass(eq=False)
class Committed:
    """A job whose storage part is done: what the index worker executes, in write order."""

    plan: Plan | Scan
    coll: Collection | None  # the collection the plan changes or reads (None: a drop)
    published: dict[str, Collection]  # the collections callers see, which a create or drop changes
    entry: bytes | None = None  # the serialized plan as logged in the op log (shard groups only)

    def apply(self) -> Any:
        """On the index worker: the plan's index part; the caller's result."""
        planned, coll = self.plan, self.coll
        if isinstance(planned, DropPlan):
            if planned.dropped:
                self.published.pop(planned.name, None)
            return planned.dropped
        assert coll is not None
        if isinstance(planned, WritePlan):
            return apply(planned, coll)
        if isinstance(planned, CreatePlan):
            if planned.created:
                self.published[planned.config.name] = coll
            return stats(coll), planned.created
        indexed = coll.index.keys()
        stored = planned.stored
        missing, extra = np.setdiff1d(stored, indexed), np.setdiff1d(indexed, stored)
        return Verification(planned.ids, len(indexed), missing, extra, planned.unmapped)


class Writer:
    """On the committer: the collections as it sees them (a Catalogue), and the storage part of every plan."""

    def __init__(
        self,
        storage: Storage,
        writing: dict[str, Collection],
        published: dict[str, Collection],
        threads: int,
        oplog: bool = False,
    ) -> None:
        self.storage = storage
        self.oplog = oplog  # log every plan under its sequence (a member of a shard group)
        self._writing = writing  # ahead of `published`: changed as soon as a create or drop is written
        self._published = published
        self._threads = threads

    def view(self, name: str) -> StoreView | None:
        """The committer's view of a collection, None if it does not exist."""
        coll = self._writing.get(name)
        return None if coll is None else RocksView(coll.store)

    def write(self, job: Job) -> tuple[Committed, bool]:
        """Plan a job and execute its storage part: its index part, and whether it wrote a batch to sync."""
        if isinstance(job, Verify):
            return self._scan(job), False
        if isinstance(job, Barrier):
            return Committed(DropPlan("", False), None, self._published), False
        raw: bytes | None = None
        if isinstance(job, Replicated):
            if job.seq != self.storage.seq + 1:
                raise FailedPrecondition(f"replicated write {job.seq} is out of order after {self.storage.seq}")
            planned, raw = plan_from_bytes(job.raw), job.raw
        else:
            planned = plan_write(job, self)
        if isinstance(planned, CreatePlan):
            return self._create(planned, raw), False
        if isinstance(planned, DropPlan):
            return self._drop(planned, raw), False
        coll = self._writing[planned.collection]
        batch = to_batch(planned, self.storage, coll.store)
        entry = None
        if batch is not None:
            entry = self._entry(planned, raw)
            # A replica frees space whenever its primary did: a plan that only deletes.
            frees = isinstance(job, (Delete, DeleteByFilter)) or (raw is not None and not planned.puts)
            self.storage.write(batch, entry, frees=frees)
        return Committed(planned, coll, self._published, entry), batch is not None

    def _entry(self, planned: Plan, raw: bytes | None) -> bytes | None:
        """The op-log entry of a plan that writes (None outside a shard group: no serializing cost)."""
        if not self.oplog:
            return None
        return raw if raw is not None else planned.to_bytes()

    def _create(self, planned: CreatePlan, raw: bytes | None) -> Committed:
        config = planned.config
        if not planned.created:
            return Committed(planned, self._writing[config.name], self._published)
        entry = self._entry(planned, raw)
        store = self.storage.create(config, entry)  # its own synced batch
        coll = Collection(store, VectorIndex(config, self._threads))
        self._writing[config.name] = coll
        log.info("created collection %s", config)
        return Committed(planned, coll, self._published, entry)

    def _drop(self, planned: DropPlan, raw: bytes | None) -> Committed:
        entry = None
        if planned.dropped:
            entry = self._entry(planned, raw)
            self.storage.drop(planned.name, entry)  # its own synced batch, then the column families go
            del self._writing[planned.name]
            log.info("dropped collection %s", planned.name)
        return Committed(planned, None, self._published, entry)

    def _scan(self, job: Verify) -> Committed:
        # On the committer nothing else writes, and the index part sees every earlier write applied.
        writable(self, job.collection, job.born)
        coll = self._writing[job.collection]
        store = coll.store
        stored = store.stored_keys()
        ids: np.ndarray = stored
        unmapped = 0
        if coll.config.id_type == "string":
            unmapped = len(np.setxor1d(stored, store.mapped_keys()))
            names = store.ids_of(pack_keys(stored))
            ids = np.array([n.decode() if n is not None else "" for n in names], dtype=object)
        return Committed(Scan(ids, stored, unmapped), coll, self._published)


def to_batch(plan: WritePlan, storage: Storage, store: CollectionStore) -> WriteBatch | None:
    """On the committer, just before writing: the plan's RocksDB changes as one batch (None: nothing)."""
    if not plan.writes:
        return None
    batch = Storage.batch()
    families = {POINTS: store.points_cf, IDS: store.ids_cf, INDEX: store.payload_index_cf}
    for cf, key in plan.deletes:
        batch.delete(key, families[cf])
    for cf, key, value in plan.puts:
        batch.put(key, value, families[cf])
    if plan.next_key is not None:
        store.next_key = plan.next_key
        store.put_next_key(batch)
    if plan.logged:
        storage.log_change(batch, store, plan.logged)
    return batch


def apply(plan: WritePlan, coll: Collection) -> int:
    """On the index worker, once the plan's batch is durable: its index changes; the caller's result."""
    if len(plan.removed):
        coll.index.remove(plan.removed)
        coll.filters.remove(plan.removed)
    if plan.index_vectors is not None:
        coll.index.upsert(plan.index_keys, plan.index_vectors)
    if len(plan.mirror_keys):
        coll.filters.upsert(plan.mirror_keys, plan.mirror_fields)
    return plan.result
