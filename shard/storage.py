"""A shard's RocksDB: meta records in the default column family, two column families per collection.

Layout (every key and value raw bytes):

    default     b"seq"            -> the shard's write sequence number, 8 bytes big-endian
                b"config/<name>"  -> the collection's CollectionConfig as JSON
                b"next/<name>"    -> the next internal key of a string-id collection, 8 bytes big-endian
    p.<name>    key8              -> vector (dim float32 little-endian) + payload JSON (possibly empty)
    i.<name>    b"s" + utf8 id    -> key8        (string-id collections only)
                b"k" + key8       -> utf8 id
    x.<name>    the payload index, written in the same batch as the points (see payload_index.py):
                INDEX_READY       -> b""         (the index covers every point)
                b"\0\0L" + key8   -> b""         (a live point)
                path + type + value + key8 -> b""

key8 is the internal usearch key, 8 bytes big-endian: the id itself for uint64 collections, a counter for
string-id collections.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from rocksdict import ColumnFamily, Options, Rdict, WriteBatch, WriteOptions

from shoal._config import CollectionConfig

log = logging.getLogger("shoal.shard.storage")

_SEQ = b"seq"
_CONFIG = b"config/"
_NEXT = b"next/"
INDEX_READY = b"\0\0R"  # an encoded path never starts with two zero bytes: reserved keys do
_BE64 = np.dtype(">u8")
_F32 = np.dtype("<f4")


def pack_key(key: int) -> bytes:
    """An internal key as 8 bytes big-endian."""
    return struct.pack(">Q", key)


def unpack_key(raw: bytes) -> int:
    """The internal key of 8 big-endian bytes."""
    return int(struct.unpack(">Q", raw)[0])


def pack_keys(keys: np.ndarray) -> list[bytes]:
    """Internal keys (uint64 array) as a list of 8-byte big-endian strings."""
    raw = np.ascontiguousarray(keys, dtype=_BE64).tobytes()
    return [raw[i:i + 8] for i in range(0, len(raw), 8)]


def unpack_keys(raws: Sequence[bytes]) -> np.ndarray:
    """8-byte big-endian keys as a native uint64 array."""
    return np.frombuffer(b"".join(raws), dtype=_BE64).astype(np.uint64)


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


def _index_cf(name: str) -> str:
    return f"x.{name}"


class CollectionStore:
    """One collection's column families; reads from any thread, writes only through a WriteBatch."""

    def __init__(self, config: CollectionConfig, db: Rdict, next_key: int) -> None:
        self.config = config
        self.row_bytes = config.dim * 4
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

    def records(self, keys: list[bytes]) -> list[bytes | None]:
        """The stored records of internal keys (None where missing)."""
        assert self._points is not None
        return _multi_get(self._points, keys)

    def keys_of(self, ids: Sequence[str]) -> list[bytes | None]:
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

    def scan(self, rows: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every stored point as (uint64 keys, float32 vectors) batches of at most `rows`."""
        assert self._points is not None
        keys: list[bytes] = []
        vectors: list[bytes] = []
        for key, record in cast(Iterator[tuple[bytes, bytes]], self._points.items()):
            keys.append(key)
            vectors.append(record[:self.row_bytes])
            if len(keys) == rows:
                yield self._batch(keys, vectors)
                keys, vectors = [], []
        if keys:
            yield self._batch(keys, vectors)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every stored (key8, record), in key order."""
        assert self._points is not None
        return cast(Iterator[tuple[bytes, bytes]], self._points.items())

    def _batch(self, keys: list[bytes], vectors: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        matrix = np.frombuffer(b"".join(vectors), dtype=_F32).reshape(len(keys), self.config.dim)
        return unpack_keys(keys), matrix

    def close(self, dropped: bool = False) -> None:
        """Release the column family handles; RocksDB closes only once none is left."""
        for cf in (self._points, self._ids, self.payload_index):
            if cf is not None and not dropped:  # closing flushes, which a dropped family refuses
                cf.close()
        self._points = self._ids = self.payload_index = None
        self._points_cf = self._ids_cf = self.payload_index_cf = None


class Storage:
    """One RocksDB per shard; only the committer thread writes (see committer.py)."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        names = Rdict.list_cf(str(path), _options()) if (path / "CURRENT").exists() else ["default"]
        self._db = Rdict(str(path), _options(),
                         column_families={n: _options() for n in names if n != "default"})
        self._write_options = WriteOptions()
        self._write_options.sync = False  # durability comes from one flush_wal per group
        raw = self._db.get(_SEQ)
        self.seq = unpack_key(raw) if raw else 0
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
        raw = self._db.get(_NEXT + config.name.encode())
        return CollectionStore(config, self._db, unpack_key(raw) if raw else 1)

    def _drop_orphans(self, names: list[str]) -> None:
        """Drop column families left by a create or drop that crashed half-way."""
        wanted = {cf for name in self.collections for cf in (_points_cf(name), _ids_cf(name), _index_cf(name))}
        for cf in names:
            if cf != "default" and cf not in wanted:
                log.warning("dropping orphan column family %s", cf)
                self._db.drop_column_family(cf)

    def create(self, config: CollectionConfig) -> CollectionStore:
        """Create a collection's column families, then durably record its config."""
        self._db.create_column_family(_points_cf(config.name), _options())
        if config.id_type == "string":
            self._db.create_column_family(_ids_cf(config.name), _options())
        self._db.create_column_family(_index_cf(config.name), _options())
        store = CollectionStore(config, self._db, 1)
        batch = WriteBatch(raw_mode=True)
        batch.put(_CONFIG + config.name.encode(), json.dumps(dataclasses.asdict(config)).encode())
        batch.put(INDEX_READY, b"", store.payload_index_cf)
        if config.id_type == "string":
            store.put_next_key(batch)
        self.write(batch)
        self.flush_wal()
        self.collections[config.name] = store
        return store

    def drop(self, name: str) -> None:
        """Durably forget a collection's config, then drop its column families."""
        store = self.collections[name]
        batch = WriteBatch(raw_mode=True)
        batch.delete(_CONFIG + name.encode())
        batch.delete(_NEXT + name.encode())
        self.write(batch)
        self.flush_wal()
        self._dropped.append(self.collections.pop(name))
        self._db.drop_column_family(_points_cf(name))
        if store.config.id_type == "string":
            self._db.drop_column_family(_ids_cf(name))
        self._db.drop_column_family(_index_cf(name))

    @staticmethod
    def batch() -> WriteBatch:
        """An empty write batch."""
        return WriteBatch(raw_mode=True)

    def write(self, batch: WriteBatch) -> None:
        """Write a batch (WAL on, no sync), bumping the sequence number inside it."""
        batch.put(_SEQ, pack_key(self.seq + 1))
        self._db.write(batch, self._write_options)
        self.seq += 1

    def flush_wal(self) -> None:
        """Make every batch written so far durable."""
        self._db.flush_wal(True)

    def close(self) -> None:
        """Flush and close the database."""
        for store in self.collections.values():
            store.close()
        for store in self._dropped:
            store.close(dropped=True)
        self.collections.clear()
        self._dropped.clear()
        # Handles held by garbage cycles (a failed job's future, its traceback and its batch) would keep
        # RocksDB open, and a reopen in this process would fail on the lock.
        gc.collect()
        self._db.close()
