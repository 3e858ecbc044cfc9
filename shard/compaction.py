"""Compaction: a collection's index rebuilt from RocksDB and swapped in, to shed usearch's tombstones.

usearch keeps a removed or replaced point in its graph, marked as removed: searches still walk through
it, so they slow down, and after heavy churn some live points can no longer be reached at all. When the
tombstones pass a share of the graph (options.CompactionPolicy), a second index is built and swapped in:

1. off the index worker (on the snapshot thread, under the snapshot lock, so the change log it catches up
   from is not trimmed meanwhile): note the write sequence S, then build the new index from every stored
   point. The scan may see writes after S; every key those touched is in the change log after S.
2. Still off the worker, catch up: re-read from RocksDB the keys the log shows changed after S (again,
   while many changed during the round before).
3. On the index worker: make the new index agree with the old one on every key changed since, and swap.
   The old index is exactly RocksDB at the worker's applied sequence, so the writes still on their way to
   the worker apply to the new index as they would have to the old one, and none is lost.

Searches pause only for step 3 (a few thousand keys at most), no longer than a snapshot's fork. Steps 1
and 2 run on a thread of the lowest CPU priority: the shard's own threads and the other processes serving
calls on the same cores go first, so a compaction (after a slot move's range delete, say) takes spare CPU
rather than the foreground's.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from shoal.shard import records as rec
from shoal.shard.collection import Collection
from shoal.shard.index import IndexWorker, VectorIndex
from shoal.shard.recovery import REPLAY_ROWS, replay
from shoal.shard.storage import CollectionStore, Storage, pack_keys

log = logging.getLogger("shoal.shard.compaction")

CATCH_UP_ROUNDS = 4  # off the worker; writes faster than a round re-reads them are caught up on the worker
SWAP_KEYS = 4096  # catch up off the worker until at most this many changed keys are left for the swap

T = TypeVar("T")


class Abandoned(Exception):
    """The compaction stopped early: the shard is closing, or the collection was dropped meanwhile."""


@dataclass(frozen=True)
class Compacted:
    """What one compaction did."""

    live: int  # points in the new index
    shed: int  # tombstones the old index held
    swapped: int  # changed keys the swap aligned on the index worker
    paused: float  # seconds the index worker spent on the swap (searches waited that long at most)
    seconds: float  # the whole compaction


def compact(
    coll: Collection,
    storage: Storage,
    worker: IndexWorker,
    published: Callable[[], dict[str, Collection]],
    stopping: threading.Event,
) -> Compacted:
    """Rebuild a collection's index from RocksDB and swap it in (see the module docstring); Abandoned if stopped."""
    started = time.perf_counter()
    store = coll.store

    def build() -> tuple[VectorIndex, int]:
        after = storage.seq  # every batch up to here is in RocksDB, so the scan sees it
        fresh = VectorIndex(coll.config, coll.index.threads)
        for keys, vectors in store.scan():
            if stopping.is_set():
                raise Abandoned("the shard is closing")
            fresh.extend(keys, vectors)
        for _ in range(CATCH_UP_ROUNDS):
            upto = storage.seq
            changed = replay(fresh, store, storage, after)
            after = upto
            if changed <= SWAP_KEYS:
                break
        return fresh, after

    fresh, after = at_idle_priority(build)

    def swap() -> tuple[VectorIndex, int, float]:
        began = time.perf_counter()
        if published().get(store.name) is not coll:
            raise Abandoned(f"collection {store.name} was dropped during its compaction")
        old = coll.index
        # Batches after the applied sequence may be in RocksDB already: those keys must stay as `old` has them.
        keys = storage.changed_keys(store, min(after, worker.applied_seq))
        align(fresh, old, store, keys)
        fresh.changes = old.changes  # the snapshot policy counts on
        coll.index = fresh
        return old, len(keys), time.perf_counter() - began

    old, swapped, paused = worker.call(swap).result()
    return Compacted(fresh.count, old.removed, swapped, paused, time.perf_counter() - started)


def align(fresh: VectorIndex, old: VectorIndex, store: CollectionStore, keys: np.ndarray) -> None:
    """On the index worker: give `fresh` the points `old` has among these keys, and none it lacks."""
    dim = store.config.dim
    for start in range(0, len(keys), REPLAY_ROWS):
        part = keys[start : start + REPLAY_ROWS]
        live = old.contains(part)
        fresh.discard(part[~live])
        kept = part[live]
        if not len(kept):
            continue
        records = store.records(pack_keys(kept))
        stored = np.array([r is not None for r in records], bool)
        vectors = np.empty((len(kept), dim), np.float32)
        if stored.any():  # RocksDB's vector, exact (a write still on its way to the worker sets it again)
            vectors[stored] = rec.vectors([r for r in records if r is not None], dim)
        if not stored.all():  # deleted by a write still on its way to the worker, which removes it again
            vectors[~stored] = old.vectors(kept[~stored])
        fresh.upsert(kept, vectors)


def at_idle_priority(fn: Callable[[], T]) -> T:
    """Run `fn` on a new thread at the lowest CPU priority (nice 19) and return its result or raise its error."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        if sys.platform == "linux":  # there a nice value is per thread; elsewhere it would slow the whole process
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name="shoal-compaction", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
