"""The shard core: the Shard's lifecycle and its thin public methods, with no gRPC in sight.

Searches are in search.py, reads in reads.py. A write's path: `Shard.upsert` validates on the caller's
thread and submits a request value (writes.py: `Upsert`, `Delete`, `CreateCollection`, ...) to the
committer (committer.py), which plans it (`writes.plan_write`) and writes its batch to RocksDB
(execute.py), one WAL sync per group; the index worker (index.py) then applies the plan's index part and
resolves the caller. A new kind of write is added in writes.py. Other threads: search results that need
RocksDB look-ups run on a small lookup pool, index snapshots on the snapshot thread (snapshotter.py).
Two views of the collections exist: `_writing` (the committer's, ahead) and `_collections` (what callers
see, changed on the index worker once a create or drop is durable). Opening recovers every index
(recovery.py); closing snapshots every changed one, so a graceful restart loads them instead of
replaying anything.

In a shard group (group.py) the shard also keeps an op log, a replica applies its primary's plans through
`submit_replicated`, and writes from callers pass `gate` (refused on a replica) and, once the shard knows
the slots its group owns (`owned`), a slot check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from shoal._config import CollectionConfig, check_name
from shoal._errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from shoal._filter import check_path
from shoal._hash import slots_of
from shoal._results import Found, Page, TopK
from shoal._search import Search, SearchShape
from shoal._wire import as_id_array, check_ids, check_nonzero, check_payloads, check_upsert
from shoal.shard import copies, moving, reads
from shoal.shard import search as searching
from shoal.shard.backup import backup_folder
from shoal.shard.collection import Collection, CollectionStats, CollectionStatus, parse_filter, stats, status
from shoal.shard.committer import STEPPED_DOWN, Committer, Replicate
from shoal.shard.compaction import Compacted
from shoal.shard.execute import Barrier, Job, Replicated, Verify, Writer
from shoal.shard.faults import CrashPoints, fatal
from shoal.shard.index import IndexWorker
from shoal.shard.moving import Export
from shoal.shard.options import ShardOptions
from shoal.shard.ownership import FROZEN_RETRY, Ownership, Readers, check_write, hidden_by, static
from shoal.shard.payload_index import columns, ensure_complete
from shoal.shard.reads import Verification
from shoal.shard.recovery import recover
from shoal.shard.snapshots import SnapshotFiles
from shoal.shard.snapshotter import Snapshotter
from shoal.shard.storage import Storage
from shoal.shard.writes import CreateCollection, Delete, DeleteByFilter, DropCollection, SetPayload, Upsert

log = logging.getLogger("shoal.shard")

READ_DRAIN = 30.0  # seconds a move's range delete waits for the reads admitted before its switch


class Shard:
    """One shard's collections; open() before use, close() after."""

    def __init__(self, data: Path, threads: int = 1, options: ShardOptions | None = None) -> None:
        self.data = data
        self.options = options if options is not None else ShardOptions(threads=threads)
        self.threads = self.options.threads
        self._crash = CrashPoints(self.options.crashpoint)
        self._storage: Storage | None = None
        self._worker = IndexWorker(on_fatal=fatal)
        self._committer: Committer | None = None
        self._snapshotter: Snapshotter | None = None
        self._lookups = ThreadPoolExecutor(max_workers=4, thread_name_prefix="shoal-lookup")
        self._collections: dict[str, Collection] = {}
        self._writing: dict[str, Collection] = {}
        self._ready = False  # True between the end of open() and the start of close()
        # In a shard group: raises when callers may not write here (a replica); the slots the group owns.
        self.gate: Callable[[], None] | None = None
        self.ownership: Ownership | None = None  # None: no slot check (static mode)
        self.on_ownership: Callable[[], None] = lambda: None  # told (on any thread) after every set_ownership
        # Held while a write's slots are checked and it is queued, and while the ownership changes: once a new
        # ownership is set, every write checked under the old one is already in the committer's queue.
        self._owning = threading.Lock()
        self._readers = Readers()  # reads in flight by the ownership version that admitted them

    def open(self) -> None:
        """Open RocksDB and bring every index up to date with it (snapshot plus changes, or a rebuild)."""
        started = time.perf_counter()
        copies.finish(self.data)  # a catch-up copy that was whole when the process died goes in first
        self._storage = storage = Storage(self.data / "rocksdb", self.options.min_free_bytes)
        files = SnapshotFiles(self.data / "index")
        for store in storage.collections.values():
            coll = recover(store, storage, files, self.threads)
            self._collections[store.name] = self._writing[store.name] = coll
            # The payload index in memory is derived from RocksDB's, never from the snapshot.
            if ensure_complete(storage, store):
                log.warning("collection %s: payload index rebuilt from the points", store.name)
            coll.filters.load(list(columns(store)))
        self._worker.applied_seq = storage.seq  # every stored write is in the indexes now
        writer = Writer(storage, self._writing, self._collections, self.threads, self.options.oplog)
        self._committer = Committer(writer, self._worker, self.options.max_group, self._crash)
        self._snapshotter = Snapshotter(
            files,
            storage,
            self._worker,
            lambda: self._collections,
            self.options.snapshots,
            self._crash,
            self.options.compaction,
        )
        self._snapshotter.cleanup_on_start()
        self._worker.start()
        self._committer.start()
        self._snapshotter.start()
        self._ready = True
        log.info("shard opened in %.1f s", time.perf_counter() - started)

    def close(self, snapshot: bool = True) -> None:
        """Finish queued work, stop the threads, snapshot every changed index (unless told not to: the data is
        about to be replaced) and close RocksDB. A closed shard can be opened again."""
        self._ready = False
        if self._snapshotter is not None:
            self._snapshotter.stop()
        if self._committer is not None:
            self._committer.stop()
            self._worker.stop()
        if self._snapshotter is not None:
            if snapshot:
                self._snapshotter.snapshot_all(fork=False)  # nothing else touches the indexes any more
            self._snapshotter = None
        self._lookups.shutdown(wait=True)
        self._collections.clear()
        self._writing.clear()
        if self._storage is not None:
            self._storage.close()
            self._storage = None
        # Threads cannot be started twice: fresh ones for a later open().
        self._worker = IndexWorker(on_fatal=fatal)
        self._lookups = ThreadPoolExecutor(max_workers=4, thread_name_prefix="shoal-lookup")
        self._committer = None

    def reload(self) -> None:
        """Close, swap in the catch-up copy staged in the data folder (copies.py), and open again."""
        self.close(snapshot=False)
        self.open()

    def __enter__(self) -> Shard:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sequence(self) -> int:
        """The sequence number of the last written batch."""
        return self._storage.seq if self._storage is not None else 0

    def _writable(self) -> None:
        """Refuse a caller's write on a replica."""
        if self.gate is not None:
            self.gate()

    def _submit_write(self, job: Job) -> Future[Any]:
        """Queue a caller's (or the catalogue's) write: on a group's primary, tied to its current replicate."""
        via = None
        if self.gate is not None and self._committer is not None:
            via = self._committer.replicate
            # Writes are admitted on threads: the shard may have stepped down since its gate let this one in,
            # and a group member's write with nothing to ship it through would be made on this member alone.
            if via is None:
                raise FailedPrecondition(STEPPED_DOWN)
        return self._submit(job, via)

    def _submit_owned(self, job: Job, ids: np.ndarray | None = None, importing: bool = False) -> Future[Any]:
        """Queue a caller's write after checking, in write order, that this group may write its ids' slots
        (a mover's copy: that they are moving here)."""
        self._writable()
        with self._owning:
            own = self.ownership
            if own is not None and ids is not None and len(ids):
                check_write(own, slots_of(ids), importing)
            elif importing and own is None:
                raise FailedPrecondition("this shard is not a member of a shard group")
            return self._submit_write(job)

    def set_owned(self, ranges: Sequence[tuple[int, int]]) -> None:
        """The slot ranges [start, end) this shard's group owns, nothing moving."""
        self.set_ownership(static(list(ranges)))

    def set_ownership(self, ownership: Ownership) -> None:
        """The slots this shard's group owns, freezes and imports under its current topology version."""
        with self._owning:
            self.ownership = ownership
        self.on_ownership()

    def barrier(self) -> Future[Any]:
        """Resolves once every write queued before it is durable and applied."""
        return self._submit(Barrier())

    def reading(self, version: int) -> Ownership | None:
        """The ownership a read at topology `version` hides unowned points by (None: nothing to hide); Aborted
        when this shard is at another version (0: the caller does not say)."""
        return hidden_by(self.ownership, version)

    @contextlib.contextmanager
    def _read(self, version: int) -> Iterator[Ownership | None]:
        """A read at topology `version`: what it hides, with the read counted in flight meanwhile (Readers)."""
        own = self._readers.admit(lambda: self.ownership)
        try:
            yield hidden_by(own, version)
        finally:
            self._readers.leave(own)

    def _submit(self, job: Job, via: Replicate | None = None) -> Future[Any]:
        if not self._ready or self._committer is None:
            raise Unavailable("the shard is not open")
        return self._committer.submit(job, via)

    def _collection(self, name: str) -> Collection:
        if not self._ready:
            raise Unavailable("the shard is not open")
        coll = self._collections.get(name)
        if coll is None:
            raise NotFound(f"collection {name!r} does not exist")
        return coll

    # Collections

    def create_collection(self, config: CollectionConfig) -> tuple[CollectionStats, bool]:
        """Create a collection; (stats, False) if it exists with the same config."""
        self._writable()
        result: tuple[CollectionStats, bool] = self._submit_write(CreateCollection(config)).result()
        return result

    def drop_collection(self, name: str) -> bool:
        """Drop a collection and all its points; False if it did not exist."""
        check_name(name)
        self._writable()
        return bool(self._submit_write(DropCollection(name)).result())

    def submit_catalogue(self, config: CollectionConfig | None, name: str) -> Future[Any]:
        """On a group's primary: apply the catalogue's create (config) or drop (None) of a collection as a write."""
        return self._submit_write(CreateCollection(config) if config is not None else DropCollection(name))

    # Replication

    def submit_replicated(self, seq: int, raw: bytes) -> Future[Any]:
        """On a replica: queue the primary's write `seq` (a serialized plan); resolves once durable and applied."""
        return self._submit(Replicated(seq, raw))

    def set_replicate(self, replicate: Replicate | None) -> None:
        """Ship every durable write through `replicate` (this shard is the primary), or stop (None)."""
        if self._committer is not None:
            self._committer.replicate = replicate

    @property
    def storage(self) -> Storage:
        """The open RocksDB (op log, term)."""
        if self._storage is None:
            raise Unavailable("the shard is not open")
        return self._storage

    def list_collections(self) -> list[str]:
        """The names of all collections, sorted."""
        if not self._ready:
            raise Unavailable("the shard is not open")
        return sorted(self._collections)

    def describe(self, name: str) -> CollectionStats:
        """A collection's config, count (of the points callers may see) and memory."""
        coll = self._collection(name)
        found = self._worker.call(lambda: stats(coll)).result()
        own = self.ownership
        if own is not None and own.hiding:
            return dataclasses.replace(found, count=reads.count(coll, self._worker, "", own))
        return found

    def status(self, timeout: float | None = None) -> list[CollectionStatus]:
        """Every collection's points, memory, payload-index entries and snapshot age, by name."""
        if not self._ready:
            raise Unavailable("the shard is not open")
        colls = [self._collections[name] for name in sorted(self._collections)]
        try:
            return self._worker.call(lambda: [status(c) for c in colls]).result(timeout)
        except TimeoutError:
            raise Unavailable(f"the index worker did not get to the status within {timeout} s") from None

    def queue_depths(self) -> dict[str, int]:
        """Items waiting in the committer's and the index worker's queues (approximate: read without locks)."""
        committer = self._committer.depth() if self._committer is not None else 0
        return {"committer": committer, "index": self._worker.depth()}

    def count(self, name: str, filter_text: str = "", version: int = 0) -> int:
        """The number of live points, or of those matching a filter (at topology `version`, 0: any)."""
        coll = self._collection(name)
        with self._read(version) as hide:
            return reads.count(coll, self._worker, filter_text, hide)

    # Writes

    @staticmethod
    def _ids(ids: np.ndarray, config: CollectionConfig) -> np.ndarray:
        return check_ids(as_id_array(ids), config.id_type)

    def submit_upsert(
        self, name: str, ids: np.ndarray, vectors: np.ndarray, payloads: Sequence[bytes] = ()
    ) -> Future[int]:
        """Validate an upsert and queue it; the future resolves to the number of points written."""
        coll = self._collection(name)
        vectors = searching.as_matrix(vectors, "vectors")
        payloads = list(payloads)
        ids = as_id_array(ids)
        check_upsert(ids, vectors, payloads, coll.config.id_type, coll.config.dim)
        if coll.config.metric == "cosine":
            check_nonzero(vectors)
        return self._submit_owned(Upsert(name, coll.store.born, ids, vectors, payloads), ids)

    def upsert(self, name: str, ids: np.ndarray, vectors: np.ndarray, payloads: Sequence[bytes] = ()) -> int:
        """Insert or replace points; returns once they are durable and searchable."""
        return self.submit_upsert(name, ids, vectors, payloads).result()

    def submit_delete(self, name: str, ids: np.ndarray) -> Future[int]:
        """Validate a delete and queue it; the future resolves to the number of points that existed."""
        coll = self._collection(name)
        ids = self._ids(ids, coll.config)
        return self._submit_owned(Delete(name, coll.store.born, ids), ids)

    def delete(self, name: str, ids: np.ndarray) -> int:
        """Delete points; returns how many existed, once durable and gone from search."""
        return self.submit_delete(name, ids).result()

    # Durability

    def verify(self, name: str) -> Verification:
        """Compare the index's keys with RocksDB's (a full scan, holding writes back while it reads)."""
        coll = self._collection(name)
        result: Verification = self._submit(Verify(name, coll.store.born)).result()
        return result

    def snapshot(self) -> dict[str, int | None]:
        """Snapshot every changed index now; the write sequence each snapshot holds (None: failed)."""
        if not self._ready or self._snapshotter is None:
            raise Unavailable("the shard is not open")
        return self._snapshotter.snapshot_all()

    def compact(self, name: str) -> Compacted | None:
        """Rebuild a collection's index from RocksDB now and swap it in (compaction.py); None if it failed."""
        coll = self._collection(name)
        if self._snapshotter is None:
            raise Unavailable("the shard is not open")
        return self._snapshotter.compact(coll)

    def backup(self, target: Path) -> dict[str, int]:
        """Write a consistent copy of this shard (index snapshots, a RocksDB checkpoint) into a new folder."""
        if not self._ready or self._snapshotter is None or self._storage is None:
            raise Unavailable("the shard is not open")
        return self.copy_to(backup_folder(self.options.backup_root, target))

    def copy_to(self, target: Path) -> dict[str, int]:
        """Write a consistent copy of this shard into a new folder `target`; the sequence each index snapshot holds."""
        if not self._ready or self._snapshotter is None or self._storage is None:
            raise Unavailable("the shard is not open")
        try:
            target.mkdir(parents=True)
        except FileExistsError:
            raise FailedPrecondition(f"the backup folder {target} already exists") from None
        try:
            return self._snapshotter.backup(target, self._storage.checkpoint)
        except OSError as exc:
            raise Unavailable(f"the backup into {target} failed: {exc}") from exc

    # Reads

    def get(
        self, name: str, ids: np.ndarray, with_vectors: bool = True, with_payload: bool = True, version: int = 0
    ) -> Found:
        """The stored points of ids, in request order; missing ids are left out (at topology `version`, 0: any)."""
        coll = self._collection(name)
        with self._read(version) as hide:
            return reads.get(coll, ids, with_vectors, with_payload, hide)

    def scroll(
        self,
        name: str,
        filter_text: str = "",
        limit: int = 0,
        cursor: str = "",
        with_payload: bool = True,
        with_vectors: bool = False,
        max_bytes: int = 0,
        version: int = 0,
    ) -> Page:
        """The points after `cursor` in key order, only those matching the filter if one is given."""
        coll = self._collection(name)
        with self._read(version) as hide:
            return reads.scroll(
                coll, self._worker, filter_text, limit, cursor, with_payload, with_vectors, max_bytes, hide
            )

    def submit_search(
        self, search: Search, times: list[int] | None = None, version: int = 0
    ) -> Future[tuple[TopK, str]]:
        """Validate a search and queue it; resolves to the local top-k of every query and the plan that ran.

        `times`, when given, receives when the index worker's run of it began and ended (for tracing);
        `version` is the caller's topology version (0: any).
        """
        coll = self._collection(search.shape.collection)
        own = self._readers.admit(lambda: self.ownership)
        try:
            future = searching.submit(coll, self._worker, self._lookups, search, times, hidden_by(own, version))
        except BaseException:
            self._readers.leave(own)
            raise
        future.add_done_callback(lambda _: self._readers.leave(own))
        return future

    def search(
        self,
        name: str,
        queries: np.ndarray,
        k: int,
        ef: int = 0,
        with_payload: bool = False,
        with_vectors: bool = False,
        filter_text: str = "",
    ) -> TopK:
        """The local top-k of every query, nearest first (sugar over submit_search)."""
        shape = SearchShape(name, k, ef, filter_text, with_payload, with_vectors)
        return self.submit_search(Search(shape, queries)).result()[0]

    # Slot moves (moving.py has the exports)

    def export_range(self, name: str, start: int, end: int, cursor: str, limit: int) -> Export:
        """A page of the points of slots [start, end) after `cursor`."""
        return moving.export_range(self._collection(name), start, end, cursor, limit)

    def export_changes(self, name: str, start: int, end: int, after: int, upto: int = 0) -> Export:
        """The current state of the points of slots [start, end) that the writes after `after` touched."""
        return moving.export_changes(self._collection(name), self.storage, start, end, after, upto)

    def submit_import(
        self, name: str, ids: np.ndarray, vectors: np.ndarray, payloads: Sequence[bytes], deleted: np.ndarray
    ) -> list[Future[int]]:
        """Queue the mover's copies of points of slots moving to this group: upserts, then deletes."""
        coll = self._collection(name)
        futures = []
        if len(ids):
            ids = as_id_array(ids)
            vectors = searching.as_matrix(vectors, "vectors")
            check_upsert(ids, vectors, list(payloads), coll.config.id_type, coll.config.dim)
            futures.append(self._submit_owned(Upsert(name, coll.store.born, ids, vectors, list(payloads)), ids, True))
        if len(deleted):
            deleted = self._ids(deleted, coll.config)
            futures.append(self._submit_owned(Delete(name, coll.store.born, deleted), deleted, True))
        return futures

    def delete_range(self, name: str, start: int, end: int) -> int:
        """Delete every point of slots [start, end), which this group must neither own nor import."""
        coll = self._collection(name)
        self._writable()
        own = self.ownership
        if own is None or own.owned[start:end].any() or own.importing[start:end].any():
            raise FailedPrecondition(f"slots [{start}, {end}) are owned by or moving to this shard group")
        if not self._readers.drain(own.version, READ_DRAIN):
            raise Unavailable(f"reads from before topology version {own.version} are still running: try again")
        deleted, cursor = 0, ""
        while True:
            ids, cursor = moving.range_ids(coll, start, end, cursor, 4096)
            if len(ids):
                deleted += int(self._submit_write(Delete(name, coll.store.born, ids)).result())
            if not cursor:
                break
        # A range is a large share of a group's points: past the policy's share of tombstones, usearch leaves
        # some live points unreachable, so the index is rebuilt now rather than once a large minimum is reached.
        index, share = coll.index, self.options.compaction.share
        if deleted and self._snapshotter is not None and index.removed >= share * (index.count + index.removed):
            self._snapshotter.compact(coll)
        return deleted

    # Payload writes

    def submit_delete_filter(self, name: str, filter_text: str) -> Future[int]:
        """Queue the deletion of every point matching a filter; resolves to how many there were."""
        coll = self._collection(name)
        node = parse_filter(filter_text)
        self._writable()
        with self._owning:
            own = self.ownership
            if own is not None and own.frozen.any():
                raise Unavailable("slots moving: try again", retry_after=FROZEN_RETRY)
            # While slots move, the points of slots not owned are the mover's, not the caller's.
            owned = own.owned if own is not None and own.hiding else None
            return self._submit_write(DeleteByFilter(name, coll.store.born, node, owned))

    def submit_set_payload(self, name: str, ids: np.ndarray, set_raw: bytes, unset: Sequence[str]) -> Future[int]:
        """Queue setting and removing payload keys of existing points; resolves to how many exist."""
        coll = self._collection(name)
        ids = self._ids(ids, coll.config)
        check_payloads([set_raw])
        updates: dict[str, Any] = json.loads(set_raw) if set_raw else {}
        paths = [check_path(p, "unset path") for p in unset]
        if not updates and not paths:
            raise InvalidArgument("nothing to change: give keys to set or paths to unset")
        return self._submit_owned(SetPayload(name, coll.store.born, ids, updates, paths), ids)
