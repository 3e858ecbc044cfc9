"""A shard's RocksDB: meta records in the default column family, two column families per collection.

Layout (every key and value raw bytes):

    default     b"seq"            -> the shard's write sequence number, 8 bytes big-endian
                b"config/<name>"  -> the collection's CollectionConfig as JSON
                b"next/<name>"    -> the next internal key of a string-id collection, 8 bytes big-endian
                b"born/<name>"    -> born: the sequence number of the batch that created the collection
                b"trim/" + born8  -> the sequence up to which the collection's change log was trimmed
                b"term"           -> the highest replication term this shard accepted, 8 bytes big-endian
                b"etcd"           -> the id of the etcd cluster whose catalogue the collections follow
    p.<name>    key8              -> vector (dim float32 little-endian) + payload JSON (possibly empty)
    i.<name>    b"s" + utf8 id    -> key8        (string-id collections only)
                b"k" + key8       -> utf8 id
    log         born8 + seq8      -> the key8s a batch upserted or deleted (the change log, see below)
    oplog       seq8              -> the serialized plan of the write with that sequence (shard groups only:
                                     what a primary ships to replicas and a returning replica catches up from)
    x.<name>    the payload index, written in the same batch as the points (see payload_index.py):
                INDEX_READY       -> b""         (the index covers every point)
                b"\0\0L" + key8   -> b""         (a live point)
                path + type + value + key8 -> b""

key8 is the internal usearch key, 8 bytes big-endian: the id itself for uint64 collections, a counter for
string-id collections. All integers are 8 bytes big-endian, so keys sort by number.

The change log: every batch that changes points also records, in the same WriteBatch, which keys of which
collection incarnation (born) it touched, under its own sequence number. An index snapshot taken at
sequence S is brought up to date by re-reading from RocksDB only the keys touched after S; once a
snapshot at S is durable, the collection's log entries up to S are deleted (trimmed).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from rocksdict import Checkpoint, ColumnFamily, Options, Rdict, WriteBatch, WriteOptions

from shoal._config import CollectionConfig
from shoal._errors import ResourceExhausted, ShoalError, Unavailable
from shoal.shard import records as rec

log = logging.getLogger("shoal.shard.storage")

_SEQ = b"seq"
_CONFIG = b"config/"
_NEXT = b"next/"
_BORN = b"born/"
_TRIM = b"trim/"
_LOG = "log"
_OPLOG = "oplog"
_TERM = b"term"
_ETCD = b"etcd"
INDEX_READY = b"\0\0R"  # an encoded path never starts with two zero bytes: reserved keys do
_BE64 = np.dtype(">u8")


def pack_key(key: int) -> bytes:
    """An internal key as 8 bytes big-endian."""
    return struct.pack(">Q", key)


def unpack_key(raw: bytes) -> int:
    """The internal key of 8 big-endian bytes."""
    return int(struct.unpack(">Q", raw)[0])


def pack_keys(keys: np.ndarray) -> list[bytes]:
    """Internal keys (uint64 array) as a list of 8-byte big-endian strings."""
    raw = keys_bytes(keys)
    return [raw[i : i + 8] for i in range(0, len(raw), 8)]


def keys_bytes(keys: np.ndarray) -> bytes:
    """Internal keys (uint64 array) as one string of 8-byte big-endian keys."""
    return np.ascontiguousarray(keys, dtype=_BE64).tobytes()


def unpack_keys(raws: Sequence[bytes]) -> np.ndarray:
    """8-byte big-endian keys as a native uint64 array."""
    return np.frombuffer(b"".join(raws), dtype=_BE64).astype(np.uint64)


def classify_write_error(exc: Exception) -> tuple[ShoalError, bool]:
    """The error a caller gets for a failed RocksDB write, and whether the shard must stop (fatal).

    rocksdict raises a plain Exception whose text starts with RocksDB's status ("IO error: ..."); it has no
    exception types per status, so the text is all there is to go by, and it is matched here only.
    An I/O error is fatal: RocksDB refuses every later write after a failed WAL append.
    """
    text = str(exc)
    if not text.startswith("IO error"):
        return Unavailable(f"the shard could not write: {type(exc).__name__}"), False
    if "No space left" in text:
        return ResourceExhausted("the shard's disk is full"), True
    return Unavailable("the shard could not write to its disk"), True


def _multi_get(cf: Rdict, keys: list[bytes]) -> list[bytes | None]:
    """Values of many keys in one call (None where missing)."""
    return list(cast(Any, cf).get(keys)) if keys else []


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    return opts


def _points_cf(name: str) -> str:
    return f"p.{name}"


def _ids_cf(name: str) -> str:
    return f"i.{name}"


def collection_families(config: CollectionConfig) -> tuple[str, ...]:
    """The column families a collection owns: points, the id map (string ids only) and the payload index."""
    ids = (_ids_cf(config.name),) if config.id_type == "string" else ()
    return (_points_cf(config.name), *ids, _index_cf(config.name))


def _index_cf(name: str) -> str:
    return f"x.{name}"


class CollectionStore:
    """One collection's column families; reads from any thread, writes only through a WriteBatch."""

    def __init__(self, config: CollectionConfig, db: Rdict, next_key: int, born: int) -> None:
        self.config = config
        self.born = born  # unique per incarnation: a dropped and recreated collection gets a new one
        self.next_key = next_key  # only the committer thread reads or advances it
        self._points: Rdict | None = db.get_column_family(_points_cf(config.name))
        self._points_cf: ColumnFamily | None = db.get_column_family_handle(_points_cf(config.name))
        self._ids: Rdict | None = None
        self._ids_cf: ColumnFamily | None = None
        if config.id_type == "string":
            self._ids = db.get_column_family(_ids_cf(config.name))
            self._ids_cf = db.get_column_family_handle(_ids_cf(config.name))
        self.payload_index: Rdict | None = db.get_column_family(_index_cf(config.name))
        self.payload_index_cf: ColumnFamily | None = db.get_column_family_handle(_index_cf(config.name))

    @property
    def name(self) -> str:
        """The collection's name."""
        return self.config.name

    @property
    def points_cf(self) -> ColumnFamily | None:
        """The handle of the points column family, for batches."""
        return self._points_cf

    @property
    def ids_cf(self) -> ColumnFamily | None:
        """The handle of the id-map column family (None for uint64 ids), for batches."""
        return self._ids_cf

    def records(self, keys: list[bytes]) -> list[bytes | None]:
        """The stored records of internal keys (None where missing)."""
        assert self._points is not None
        return _multi_get(self._points, keys)

    def keys_of(self, ids: Sequence[str] | np.ndarray) -> list[bytes | None]:
        """The internal keys of string ids (None where unknown)."""
        assert self._ids is not None
        return _multi_get(self._ids, [b"s" + s.encode() for s in ids])

    def ids_of(self, keys: list[bytes]) -> list[bytes | None]:
        """The UTF-8 string ids of internal keys (None where unknown)."""
        assert self._ids is not None
        return _multi_get(self._ids, [b"k" + k for k in keys])

    def put_point(self, batch: WriteBatch, key: bytes, record: bytes) -> None:
        """Add a point write to a batch."""
        batch.put(key, record, self._points_cf)

    def delete_point(self, batch: WriteBatch, key: bytes) -> None:
        """Add a point delete to a batch."""
        batch.delete(key, self._points_cf)

    def put_id(self, batch: WriteBatch, sid: bytes, key: bytes) -> None:
        """Add both directions of a string-id mapping to a batch."""
        batch.put(b"s" + sid, key, self._ids_cf)
        batch.put(b"k" + key, sid, self._ids_cf)

    def delete_id(self, batch: WriteBatch, sid: bytes, key: bytes) -> None:
        """Add the removal of both directions of a string-id mapping to a batch."""
        batch.delete(b"s" + sid, self._ids_cf)
        batch.delete(b"k" + key, self._ids_cf)

    def put_next_key(self, batch: WriteBatch) -> None:
        """Persist the string-id key counter in a batch."""
        batch.put(_NEXT + self.name.encode(), pack_key(self.next_key))

    def stored_keys(self) -> np.ndarray:
        """Every stored point's internal key, sorted."""
        assert self._points is not None
        return unpack_keys(list(cast(Iterator[bytes], self._points.keys())))

    def mapped_keys(self) -> np.ndarray:
        """Every internal key the string-id map names, sorted (empty for uint64 collections)."""
        if self._ids is None:
            return np.zeros(0, np.uint64)
        keys: list[bytes] = []
        for k in cast(Iterator[bytes], self._ids.keys(from_key=b"k")):
            if not k.startswith(b"k"):
                break
            keys.append(k[1:])
        return unpack_keys(keys)

    def scan(self, rows: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every stored point as (uint64 keys, float32 vectors) batches of at most `rows`."""
        assert self._points is not None
        keys: list[bytes] = []
        found: list[bytes] = []
        for key, record in cast(Iterator[tuple[bytes, bytes]], self._points.items()):
            keys.append(key)
            found.append(record)
            if len(keys) == rows:
                yield unpack_keys(keys), rec.vectors(found, self.config.dim)
                keys, found = [], []
        if keys:
            yield unpack_keys(keys), rec.vectors(found, self.config.dim)

    def keys_from(self, after: bytes | None) -> Iterator[bytes]:
        """The stored points' key8s after `after` (None: all), in key order."""
        assert self._points is not None
        keys = cast(Iterator[bytes], self._points.keys(from_key=after) if after is not None else self._points.keys())
        return (k for k in keys if after is None or k != after)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every stored (key8, record), in key order."""
        assert self._points is not None
        return cast(Iterator[tuple[bytes, bytes]], self._points.items())

    def close(self, dropped: bool = False) -> None:
        """Release the column family handles; RocksDB closes only once none is left."""
        for cf in (self._points, self._ids, self.payload_index):
            if cf is not None and not dropped:  # closing flushes, which a dropped family refuses
                cf.close()
        self._points = self._ids = self.payload_index = None
        self._points_cf = self._ids_cf = self.payload_index_cf = None


class Storage:
    """One RocksDB per shard; only the committer thread writes (see committer.py)."""

    def __init__(self, path: Path, min_free_bytes: int = 0) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.min_free_bytes = min_free_bytes
        names = Rdict.list_cf(str(path), _options()) if (path / "CURRENT").exists() else ["default"]
        self._db = Rdict(
            str(path), _options(), column_families={n: _options() for n in {*names, _LOG, _OPLOG} if n != "default"}
        )
        self._write_options = WriteOptions()
        self._write_options.sync = False  # durability comes from one flush_wal per group
        self._log: Rdict | None = self._db.get_column_family(_LOG)
        self._log_cf: ColumnFamily | None = self._db.get_column_family_handle(_LOG)
        self._oplog: Rdict | None = self._db.get_column_family(_OPLOG)
        self._oplog_cf: ColumnFamily | None = self._db.get_column_family_handle(_OPLOG)
        self.seq = self._counter(_SEQ)
        self.collections: dict[str, CollectionStore] = {}
        self._dropped: list[CollectionStore] = []  # closed only with the database: readers may hold them
        for key, value in cast(Iterator[tuple[bytes, bytes]], self._db.items(from_key=_CONFIG)):
            if not key.startswith(_CONFIG):
                break
            config = CollectionConfig(**json.loads(value))
            if _index_cf(config.name) not in names:  # data from before payload indexes: filled in at open
                self._db.create_column_family(_index_cf(config.name), _options())
            self.collections[config.name] = self._attach(config)
        self._drop_orphans(names)
        log.info("opened RocksDB at %s: %d collections, sequence %d", path, len(self.collections), self.seq)

    def _attach(self, config: CollectionConfig) -> CollectionStore:
        name = config.name.encode()
        raw = self._db.get(_NEXT + name)
        born = self._db.get(_BORN + name)
        if born is None:  # a collection made before change logs existed: give it an incarnation now
            batch = WriteBatch(raw_mode=True)
            batch.put(_BORN + name, pack_key(self.seq + 1))
            self.write(batch)
            self.flush_wal()
            born = pack_key(self.seq)
        return CollectionStore(config, self._db, unpack_key(raw) if raw else 1, unpack_key(born))

    def _drop_orphans(self, names: list[str]) -> None:
        """Drop column families left by a create or drop that crashed half-way."""
        wanted = {cf for store in self.collections.values() for cf in collection_families(store.config)}
        for cf in names:
            if cf not in ("default", _LOG, _OPLOG) and cf not in wanted:
                log.warning("dropping orphan column family %s", cf)
                self._db.drop_column_family(cf)

    def create(self, config: CollectionConfig, entry: bytes | None = None) -> CollectionStore:
        """Create a collection's column families, then durably record its config (and its op-log entry)."""
        self.check_space()
        for cf in collection_families(config):
            self._db.create_column_family(cf, _options())
        store = CollectionStore(config, self._db, 1, self.seq + 1)
        batch = WriteBatch(raw_mode=True)
        batch.put(_CONFIG + config.name.encode(), json.dumps(dataclasses.asdict(config)).encode())
        batch.put(_BORN + config.name.encode(), pack_key(store.born))
        batch.put(INDEX_READY, b"", store.payload_index_cf)
        if config.id_type == "string":
            store.put_next_key(batch)
        self.write(batch, entry)
        self.flush_wal()
        self.collections[config.name] = store
        return store

    def drop(self, name: str, entry: bytes | None = None) -> None:
        """Durably forget a collection's config (logging `entry`), then drop its column families."""
        store = self.collections[name]
        batch = WriteBatch(raw_mode=True)
        batch.delete(_CONFIG + name.encode())
        batch.delete(_NEXT + name.encode())
        batch.delete(_BORN + name.encode())
        born = pack_key(store.born)
        batch.delete(_TRIM + born)
        batch.delete_range(born, pack_key(store.born + 1), self._log_cf)
        self.write(batch, entry, frees=True)
        self.flush_wal()
        self._dropped.append(self.collections.pop(name))
        for cf in collection_families(store.config):
            self._db.drop_column_family(cf)

    @staticmethod
    def batch() -> WriteBatch:
        """An empty write batch."""
        return WriteBatch(raw_mode=True)

    def free_bytes(self) -> int:
        """Bytes free for this process on the database's file system."""
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def check_space(self) -> None:
        """Refuse (ResourceExhausted) writes while free space is below the reserve RocksDB needs to keep going."""
        free = self.free_bytes()
        if free < self.min_free_bytes:
            raise ResourceExhausted(
                f"the shard's disk is full: {free // 2**20} MiB free, {self.min_free_bytes // 2**20} MiB "
                "kept in reserve; free some space and retry"
            )

    def log_change(self, batch: WriteBatch, store: CollectionStore, keys: bytes) -> None:
        """On the committer, just before the batch is written: record in it the key8s it touches."""
        batch.put(pack_key(store.born) + pack_key(self.seq + 1), keys, self._log_cf)

    def changed_keys(self, store: CollectionStore, after: int) -> np.ndarray:
        """The distinct internal keys that batches after sequence `after` touched, sorted."""
        assert self._log is not None
        born = pack_key(store.born)
        parts: list[np.ndarray] = []
        entries = cast(Iterator[tuple[bytes, bytes]], self._log.items(from_key=born + pack_key(after + 1)))
        for key, value in entries:
            if not key.startswith(born):
                break
            parts.append(np.frombuffer(value, _BE64))
        return np.unique(np.concatenate(parts)).astype(np.uint64) if parts else np.zeros(0, np.uint64)

    def trimmed(self, store: CollectionStore) -> int:
        """The sequence up to which the collection's change log was trimmed (0: never)."""
        return self._counter(_TRIM + pack_key(store.born))

    def trim_log(self, store: CollectionStore, upto: int) -> None:
        """Forget the collection's log entries up to `upto`, which a durable snapshot covers.

        The one write outside the committer: it touches only entries the committer never writes again,
        needs no sync (a lost trim only leaves entries a replay skips) and leaves the sequence alone.
        """
        born = pack_key(store.born)
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(born, born + pack_key(upto + 1), self._log_cf)
        batch.put(_TRIM + born, pack_key(upto))
        self._db.write(batch, self._write_options)

    def write(self, batch: WriteBatch, entry: bytes | None = None, frees: bool = False) -> None:
        """Write a batch (WAL on, no sync), bumping the sequence number inside it; `entry` goes to the op log.

        A batch that frees space (deletes, drops) is written on a full disk too, out of the reserve: it is
        the only way to free space through the API.
        """
        if not frees:
            self.check_space()
        batch.put(_SEQ, pack_key(self.seq + 1))
        if entry is not None:
            batch.put(pack_key(self.seq + 1), entry, self._oplog_cf)
        self._db.write(batch, self._write_options)
        self.seq += 1

    def entries(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` op-log entries (seq, plan) after sequence `after`, in order."""
        assert self._oplog is not None
        found: list[tuple[int, bytes]] = []
        for key, value in cast(Iterator[tuple[bytes, bytes]], self._oplog.items(from_key=pack_key(after + 1))):
            found.append((unpack_key(key), value))
            if len(found) == limit:
                break
        return found

    def log_start(self) -> int:
        """The sequence of the oldest op-log entry (seq + 1 when the log is empty)."""
        assert self._oplog is not None
        for key in cast(Iterator[bytes], self._oplog.keys()):
            return unpack_key(key)
        return self.seq + 1

    def trim_oplog(self, keep: int) -> None:
        """Forget op-log entries older than the last `keep` (a replica further behind copies a snapshot)."""
        upto = self.seq - keep
        if upto > 0:
            batch = WriteBatch(raw_mode=True)
            batch.delete_range(pack_key(0), pack_key(upto + 1), self._oplog_cf)
            self._db.write(batch, self._write_options)

    @property
    def term(self) -> int:
        """The highest replication term this shard accepted (0: none)."""
        return self._counter(_TERM)

    def accept_term(self, term: int) -> None:
        """Durably record a higher accepted term."""
        self._put_counter_synced(_TERM, term)

    @property
    def etcd_cluster(self) -> int:
        """The etcd cluster whose catalogue this shard's collections follow (0: none yet)."""
        return self._counter(_ETCD)

    def follow_etcd(self, cluster_id: int) -> None:
        """Durably record the etcd cluster whose catalogue this shard's collections follow."""
        self._put_counter_synced(_ETCD, cluster_id)

    def _counter(self, key: bytes) -> int:
        """An 8-byte big-endian number of the default column family (0 when absent)."""
        raw = self._db.get(key)
        return unpack_key(raw) if raw else 0

    def _put_counter_synced(self, key: bytes, value: int) -> None:
        """Write such a number outside the committer's batches, synced before returning."""
        options = WriteOptions()
        options.sync = True
        self._db.put(key, pack_key(value), options)

    def flush_wal(self) -> None:
        """Make every batch written so far durable."""
        self._db.flush_wal(True)

    def checkpoint(self, path: Path) -> None:
        """A consistent copy of the whole database in `path` (a new folder; hard links where it can)."""
        checkpoint = Checkpoint(self._db)
        try:
            checkpoint.create_checkpoint(str(path))
        finally:
            del checkpoint  # it holds the database open

    def close(self) -> None:
        """Flush and close the database."""
        for store in self.collections.values():
            store.close()
        for store in self._dropped:
            store.close(dropped=True)
        self.collections.clear()
        self._dropped.clear()
        for cf in (self._log, self._oplog):
            if cf is not None:
                cf.close()
        self._log = self._log_cf = self._oplog = self._oplog_cf = None
        # Handles held by garbage cycles (a failed job's future, its traceback and its batch) would keep
        # RocksDB open, and a reopen in this process would fail on the lock.
        gc.collect()
        self._db.close()
