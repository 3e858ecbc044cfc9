"""Bringing a collection's index up to date on start: from its snapshot plus the change log, or from RocksDB.

RocksDB is the truth. A snapshot is used only when its manifest belongs to this collection incarnation
and config, is not ahead of RocksDB, is not older than the change log, and its file has the recorded size
and checksum; then only the points touched after its sequence are re-read. Anything else is logged and
the index is rebuilt from every stored point, so a corrupt index is never served.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from shoal.shard import records as rec
from shoal.shard.collection import Collection
from shoal.shard.index import VectorIndex
from shoal.shard.snapshots import Manifest, SnapshotError, SnapshotFiles
from shoal.shard.storage import CollectionStore, Storage, pack_keys

log = logging.getLogger("shoal.shard.recovery")

REPLAY_ROWS = 8192  # points re-read from RocksDB per index call while replaying


def manifest_problem(manifest: Manifest, store: CollectionStore, sequence: int, trimmed: int) -> str | None:
    """Why a manifest cannot be used for this collection (None when it can)."""
    if manifest.format != 1:
        return f"its snapshot has an unknown format {manifest.format}"
    if manifest.collection != store.name or manifest.born != store.born:
        return "its snapshot belongs to an earlier collection of the same name"
    if manifest.config != dataclasses.asdict(store.config):
        return f"its snapshot was taken with another config ({manifest.config})"
    if manifest.sequence > sequence:
        return f"its snapshot is ahead of RocksDB (sequence {manifest.sequence} > {sequence})"
    if manifest.sequence < trimmed:
        return f"its snapshot (sequence {manifest.sequence}) is older than the change log (from {trimmed + 1})"
    return None


def recover(store: CollectionStore, storage: Storage, files: SnapshotFiles, threads: int) -> Collection:
    """The collection with an index equal to what RocksDB holds."""
    started = time.perf_counter()
    try:
        manifest = files.read_manifest(store)
        problem = manifest_problem(manifest, store, storage.seq, storage.trimmed(store))
        if problem is not None:
            raise SnapshotError(problem)
        with files.open(store, manifest) as buffer:
            index = VectorIndex(store.config, threads, buffer)
        if index.count != manifest.count:
            raise SnapshotError(f"its snapshot holds {index.count} points where its manifest says {manifest.count}")
        index.removed = manifest.removed
    except (SnapshotError, ValueError, RuntimeError) as exc:
        return rebuild(store, threads, str(exc), started)
    loaded = time.perf_counter()
    replayed = replay(index, store, storage, manifest.sequence)
    log.info(
        "collection %s: %d points from the snapshot at sequence %d in %.2f s, %d changed points "
        "re-read from RocksDB in %.2f s",
        store.name,
        manifest.count,
        manifest.sequence,
        loaded - started,
        replayed,
        time.perf_counter() - loaded,
    )
    return Collection(store, index, manifest.sequence, snapshot_bytes=manifest.size)


def rebuild(store: CollectionStore, threads: int, reason: str, started: float) -> Collection:
    """The collection with its index built from every stored point."""
    index = VectorIndex(store.config, threads)
    for keys, vectors in store.scan():
        index.extend(keys, vectors)
    level = logging.INFO if reason == "it has no snapshot" else logging.WARNING
    log.log(
        level,
        "collection %s: %s; rebuilt its index of %d points from RocksDB in %.2f s",
        store.name,
        reason,
        index.count,
        time.perf_counter() - started,
    )
    # Nothing on disk covers these points: count them all as unsnapshotted, so a snapshot follows.
    return Collection(store, index, None, snapshot_changes=-index.count)


def replay(index: VectorIndex, store: CollectionStore, storage: Storage, after: int) -> int:
    """Make the index hold exactly what RocksDB holds for every key changed after sequence `after`."""
    touched = storage.changed_keys(store, after)
    dim = store.config.dim
    for start in range(0, len(touched), REPLAY_ROWS):
        keys = touched[start : start + REPLAY_ROWS]
        records = store.records(pack_keys(keys))
        alive = np.array([r is not None for r in records], bool)
        index.discard(keys[~alive])
        if alive.any():
            index.upsert(keys[alive], rec.vectors([r for r in records if r is not None], dim))
    return len(touched)
