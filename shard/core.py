"""The shard core: collections, writes, reads and searches on numpy arrays, with no gRPC in sight.

Threads: callers validate on their own thread; writes run on the committer thread (committer.py), every
usearch call on the index worker thread (index.py), search results that need RocksDB look-ups on a small
lookup pool, and index snapshots on the snapshot thread (snapshotter.py). Two views of the collections
exist: `_writing` (the committer's, ahead) and `_collections` (what callers see, changed on the index
worker once a create or drop is durable). Opening recovers every index (recovery.py); closing snapshots
every changed one, so a graceful restart loads them instead of replaying anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rocksdict import WriteBatch

from shoal._config import CollectionConfig, check_ef, check_k, check_name
from shoal._errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from shoal._wire import as_id_array, check_ids, check_queries, check_upsert
from shoal.shard.committer import Committer
from shoal.shard.faults import CrashPoints, fatal
from shoal.shard.filtered import FilterOps
from shoal.shard.index import Hits, IndexWorker, VectorIndex
from shoal.shard.options import ShardOptions
from shoal.shard.payload_index import EMPTY_PAYLOAD, columns, delete_entries, ensure_complete, indexed, write_entries
from shoal.shard.recovery import Collection, recover
from shoal.shard.results import Points, SearchResult, Verification, resolve_hits
from shoal.shard.snapshots import SnapshotFiles
from shoal.shard.snapshotter import Snapshotter
from shoal.shard.storage import CollectionStore, Storage, keys_bytes, pack_key, pack_keys, unpack_keys

log = logging.getLogger("shoal.shard")


@dataclass(frozen=True)
class CollectionStats:
    """A collection as this shard sees it."""

    config: CollectionConfig
    count: int
    memory_bytes: int


class Shard(FilterOps):
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

    def open(self) -> None:
        """Open RocksDB and bring every index up to date with it (snapshot plus changes, or a rebuild)."""
        started = time.perf_counter()
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
        self._committer = Committer(storage, self._worker, self.options.max_group, self._crash)
        self._snapshotter = Snapshotter(
            files, storage, self._worker, lambda: self._collections, self.options.snapshots, self._crash
        )
        self._snapshotter.cleanup_on_start()
        self._worker.start()
        self._committer.start()
        self._snapshotter.start()
        self._ready = True
        log.info("shard opened in %.1f s", time.perf_counter() - started)

    def close(self) -> None:
        """Finish queued work, stop the threads, snapshot every changed index and close RocksDB."""
        self._ready = False
        if self._snapshotter is not None:
            self._snapshotter.stop()
        if self._committer is not None:
            self._committer.stop()
            self._worker.stop()
        if self._snapshotter is not None:
            self._snapshotter.snapshot_all(fork=False)  # nothing else touches the indexes any more
            self._snapshotter = None
        self._lookups.shutdown(wait=True)
        self._collections.clear()
        self._writing.clear()
        if self._storage is not None:
            self._storage.close()
            self._storage = None

    def __enter__(self) -> Shard:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sequence(self) -> int:
        """The sequence number of the last written batch."""
        return self._storage.seq if self._storage is not None else 0

    def _submit(self, prepare: Callable[[], tuple[WriteBatch | None, Callable[[], Any]]]) -> Future[Any]:
        if not self._ready or self._committer is None:
            raise Unavailable("the shard is not open")
        return self._committer.submit(prepare)

    def _collection(self, name: str) -> Collection:
        if not self._ready:
            raise Unavailable("the shard is not open")
        coll = self._collections.get(name)
        if coll is None:
            raise NotFound(f"collection {name!r} does not exist")
        return coll

    def _writable(self, name: str, coll: Collection) -> Collection:
        """On the committer: the collection the caller validated against, unless dropped since."""
        if self._writing.get(name) is not coll:
            raise NotFound(f"collection {name!r} does not exist")
        return coll

    def _stats(self, coll: Collection) -> CollectionStats:
        """On the index worker: count and memory."""
        return CollectionStats(coll.config, coll.index.count, coll.index.memory_bytes())

    # Collections

    def create_collection(self, config: CollectionConfig) -> tuple[CollectionStats, bool]:
        """Create a collection; (stats, False) if it exists with the same config."""

        def prepare() -> tuple[None, Callable[[], tuple[CollectionStats, bool]]]:
            assert self._storage is not None
            existing = self._writing.get(config.name)
            if existing is not None:
                if existing.config != config:
                    raise AlreadyExists(
                        f"collection {config.name!r} already exists with another config: {existing.config}"
                    )
                return None, lambda: (self._stats(existing), False)
            coll = Collection(self._storage.create(config), VectorIndex(config, self.threads))
            self._writing[config.name] = coll

            def publish() -> tuple[CollectionStats, bool]:
                self._collections[config.name] = coll
                return self._stats(coll), True

            log.info("created collection %s", config)
            return None, publish

        return self._submit(prepare).result()  # type: ignore[no-any-return]

    def drop_collection(self, name: str) -> bool:
        """Drop a collection and all its points; False if it did not exist."""
        check_name(name)

        def prepare() -> tuple[None, Callable[[], bool]]:
            assert self._storage is not None
            if name not in self._writing:
                return None, lambda: False
            self._storage.drop(name)
            del self._writing[name]

            def unpublish() -> bool:
                self._collections.pop(name, None)
                return True

            log.info("dropped collection %s", name)
            return None, unpublish

        return self._submit(prepare).result()  # type: ignore[no-any-return]

    def list_collections(self) -> list[str]:
        """The names of all collections, sorted."""
        if not self._ready:
            raise Unavailable("the shard is not open")
        return sorted(self._collections)

    def describe(self, name: str) -> CollectionStats:
        """A collection's config, count and memory."""
        coll = self._collection(name)
        return self._worker.call(lambda: self._stats(coll)).result()

    def count(self, name: str) -> int:
        """The number of live points."""
        return self._collection(name).index.count

    # Writes

    @staticmethod
    def _ids(ids: Any, config: CollectionConfig) -> np.ndarray:
        return check_ids(as_id_array(ids), config.id_type)

    def submit_upsert(self, name: str, ids: Any, vectors: np.ndarray, payloads: Sequence[bytes] = ()) -> Future[int]:
        """Validate an upsert and queue it; the future resolves to the number of points written."""
        coll = self._collection(name)
        config = coll.config
        vectors = _matrix(vectors, "vectors")
        payloads = list(payloads)
        ids = as_id_array(ids)
        check_upsert(ids, vectors, payloads, config.id_type, config.dim)
        raw = vectors.tobytes()
        row = coll.store.row_bytes
        records = [raw[i * row : (i + 1) * row] + (payloads[i] if payloads else b"") for i in range(len(ids))]
        entries = [indexed(p) for p in payloads] if payloads else [EMPTY_PAYLOAD] * len(ids)

        batch = Storage.batch()
        keys8: list[bytes] = []
        if config.id_type == "uint64":  # nothing depends on current state: build the batch here
            keys8 = pack_keys(ids)
            for key, record in zip(keys8, records, strict=True):
                coll.store.put_point(batch, key, record)

        def prepare() -> tuple[WriteBatch, Callable[[], int]]:
            nonlocal keys8
            assert self._storage is not None
            store = self._writable(name, coll).store
            keys = ids
            if config.id_type == "string":
                keys8 = self._string_keys(store, ids, batch)
                for key, record in zip(keys8, records, strict=True):
                    store.put_point(batch, key, record)
                keys = unpack_keys(keys8)
            self._storage.log_change(batch, store, keys_bytes(keys))
            write_entries(store, batch, keys8, entries, store.records(keys8))

            def apply() -> int:
                coll.index.upsert(keys, vectors)
                coll.filters.upsert(keys, [e.fields for e in entries])
                return len(keys)

            return batch, apply

        return self._submit(prepare)

    @staticmethod
    def _string_keys(store: CollectionStore, ids: np.ndarray, batch: WriteBatch) -> list[bytes]:
        """On the committer: the internal keys of string ids, allocating (in the batch) those that are new."""
        keys8: list[bytes] = []
        fresh = False
        for sid, key in zip(ids, store.keys_of(ids), strict=True):
            if key is None:
                key = pack_key(store.next_key)
                store.next_key += 1
                store.put_id(batch, sid.encode(), key)
                fresh = True
            keys8.append(key)
        if fresh:
            store.put_next_key(batch)
        return keys8

    def upsert(self, name: str, ids: Any, vectors: np.ndarray, payloads: Sequence[bytes] = ()) -> int:
        """Insert or replace points; returns once they are durable and searchable."""
        return self.submit_upsert(name, ids, vectors, payloads).result()

    def submit_delete(self, name: str, ids: Any) -> Future[int]:
        """Validate a delete and queue it; the future resolves to the number of points that existed."""
        coll = self._collection(name)
        config = coll.config
        ids = self._ids(ids, config)

        def prepare() -> tuple[WriteBatch | None, Callable[[], int]]:
            assert self._storage is not None
            store = self._writable(name, coll).store
            batch = Storage.batch()
            existing: list[bytes] = []
            if config.id_type == "uint64":
                keys8 = pack_keys(ids)
                existing = [k for k, r in zip(keys8, store.records(keys8), strict=True) if r is not None]
            else:
                for sid, key in zip(ids, store.keys_of(ids), strict=True):
                    if key is not None:
                        store.delete_id(batch, sid.encode(), key)
                        existing.append(key)
            for key in existing:
                store.delete_point(batch, key)
            delete_entries(store, batch, existing, store.records(existing))
            keys = unpack_keys(existing)
            if existing:
                self._storage.log_change(batch, store, b"".join(existing))

            def apply() -> int:
                coll.index.remove(keys)
                coll.filters.remove(keys)
                return len(keys)

            return (batch if existing else None), apply

        return self._submit(prepare)

    def delete(self, name: str, ids: Any) -> int:
        """Delete points; returns how many existed, once durable and gone from search."""
        return self.submit_delete(name, ids).result()

    # Durability

    def verify(self, name: str) -> Verification:
        """Compare the index's keys with RocksDB's (a full scan, holding writes back while it reads)."""
        coll = self._collection(name)

        def prepare() -> tuple[None, Callable[[], Verification]]:
            # On the committer nothing else writes, and the step below sees every earlier write applied.
            store = self._writable(name, coll).store
            stored = store.stored_keys()
            ids: np.ndarray = stored
            unmapped = 0
            if coll.config.id_type == "string":
                unmapped = len(np.setxor1d(stored, store.mapped_keys()))
                ids = np.array(
                    [n.decode() if n is not None else "" for n in store.ids_of(pack_keys(stored))], dtype=object
                )

            def compare() -> Verification:
                indexed = coll.index.keys()
                return Verification(
                    ids, len(indexed), np.setdiff1d(stored, indexed), np.setdiff1d(indexed, stored), unmapped
                )

            return None, compare

        return self._submit(prepare).result()  # type: ignore[no-any-return]

    def snapshot(self) -> dict[str, int | None]:
        """Snapshot every changed index now; the write sequence each snapshot holds (None: failed)."""
        if not self._ready or self._snapshotter is None:
            raise Unavailable("the shard is not open")
        return self._snapshotter.snapshot_all()

    def backup(self, target: Path) -> dict[str, int]:
        """Write a consistent copy of this shard (index snapshots, a RocksDB checkpoint) into a new folder."""
        if not self._ready or self._snapshotter is None or self._storage is None:
            raise Unavailable("the shard is not open")
        if not target.is_absolute():
            raise InvalidArgument(f"a backup folder must be an absolute path, got {str(target)!r}")
        try:
            target.mkdir(parents=True)
        except FileExistsError:
            raise FailedPrecondition(f"the backup folder {target} already exists") from None
        try:
            return self._snapshotter.backup(target, self._storage.checkpoint)
        except OSError as exc:
            raise Unavailable(f"the backup into {target} failed: {exc}") from exc

    # Reads

    def get(self, name: str, ids: Any, with_vectors: bool = True, with_payload: bool = True) -> Points:
        """The stored points of ids, in request order; missing ids are left out."""
        coll = self._collection(name)
        store = coll.store
        ids = self._ids(ids, coll.config)
        if coll.config.id_type == "uint64":
            records = store.records(pack_keys(ids))
        else:
            keys8 = store.keys_of(ids)
            found = [k for k in keys8 if k is not None]
            by_key = dict(zip(found, store.records(found), strict=True))
            records = [None if k is None else by_key[k] for k in keys8]
        keep = np.array([i for i, r in enumerate(records) if r is not None], dtype=np.intp)
        kept = [r for r in records if r is not None]
        row, dim = store.row_bytes, coll.config.dim
        vectors = None
        if with_vectors:
            vectors = np.frombuffer(b"".join(r[:row] for r in kept), "<f4").reshape(len(kept), dim)
        return Points(ids[keep], vectors, [r[row:] for r in kept] if with_payload else None)

    def submit_search(
        self,
        name: str,
        queries: np.ndarray,
        k: int,
        ef: int = 0,
        with_payload: bool = False,
        with_vectors: bool = False,
    ) -> Future[SearchResult]:
        """Validate a search and queue it; the future resolves to the local top-k of every query."""
        coll = self._collection(name)
        check_k(k)
        check_ef(ef)
        queries = check_queries(_matrix(queries, "queries"), coll.config.dim)
        hits = self._worker.search(coll.index, queries, k, ef)
        result: Future[SearchResult] = Future()
        result.add_done_callback(lambda f: hits.cancel() if f.cancelled() else None)
        lookup = with_payload or with_vectors or coll.config.id_type == "string"

        def finish() -> None:
            try:
                result.set_result(resolve_hits(coll.store, hits.result(), with_payload, with_vectors))
            except Exception as exc:
                result.set_exception(exc)

        def on_hits(_: Future[Hits]) -> None:
            if not result.set_running_or_notify_cancel():
                return
            if hits.cancelled() or hits.exception() is not None:
                result.set_exception(hits.exception() if not hits.cancelled() else Unavailable("cancelled"))
            elif lookup:
                self._lookups.submit(finish)
            else:
                h = hits.result()
                result.set_result(SearchResult(k, h.keys, h.distances, h.counts, None, None))

        hits.add_done_callback(on_hits)
        return result

    def search(
        self,
        name: str,
        queries: np.ndarray,
        k: int,
        ef: int = 0,
        with_payload: bool = False,
        with_vectors: bool = False,
    ) -> SearchResult:
        """The local top-k of every query, nearest first."""
        return self.submit_search(name, queries, k, ef, with_payload, with_vectors).result()


def _matrix(x: np.ndarray, what: str) -> np.ndarray:
    """A 2-D little-endian float32 C-contiguous array."""
    if getattr(x, "ndim", None) != 2:
        raise InvalidArgument(f"{what} must be a 2-D matrix, got shape {getattr(x, 'shape', None)}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are then rejected as such
        return np.ascontiguousarray(x, dtype="<f4")
