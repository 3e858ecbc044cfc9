"""When snapshots are taken (in the background by policy, on demand, for a backup, and on shutdown) and
when indexes are compacted (compaction.py: in the background by policy, followed by a snapshot).

One snapshot or compaction at a time (a lock). After a snapshot is durable, the collection's change log is trimmed up
to its sequence, so a restart replays at most the changes since.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from shoal.shard.collection import Collection
from shoal.shard.compaction import Abandoned, Compacted, compact
from shoal.shard.faults import CrashPoints, fatal
from shoal.shard.index import IndexWorker
from shoal.shard.options import CompactionPolicy, SnapshotPolicy
from shoal.shard.snapshots import FsyncFailed, Manifest, SnapshotFiles, Writing, fork_write, write_index
from shoal.shard.storage import Storage

log = logging.getLogger("shoal.shard.snapshots")

POLL_SECONDS = 1.0  # how often the policy is checked; snapshots are seconds to minutes apart
RETRY_SECONDS = 60.0  # after a failed compaction; it costs a full rebuild, so not at every poll


class Snapshotter:
    """Takes index snapshots; start() runs the background policy, stop() ends it."""

    def __init__(
        self,
        files: SnapshotFiles,
        storage: Storage,
        worker: IndexWorker,
        collections: Callable[[], dict[str, Collection]],
        policy: SnapshotPolicy,
        crash: CrashPoints,
        compaction: CompactionPolicy | None = None,
    ) -> None:
        self._files = files
        self._storage = storage
        self._worker = worker
        self._collections = collections
        self._policy = policy
        self._compaction = compaction or CompactionPolicy()
        self._crash = crash
        self._retry_at: dict[int, float] = {}  # by born: when a failed compaction may be tried again
        self._lock = threading.RLock()  # one snapshot (or backup) at a time
        self._stop = threading.Event()
        self._tags = itertools.count()
        self._thread = threading.Thread(target=self._run, name="shoal-snapshots", daemon=True)

    def start(self) -> None:
        """Start the background policy."""
        self._thread.start()

    def stop(self) -> None:
        """End the background policy, after the snapshot in progress (if any) is done."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        poll = min(POLL_SECONDS, max(self._policy.min_interval, 0.05))
        while not self._stop.wait(poll):
            try:
                for coll in list(self._collections().values()):
                    if self._stop.is_set():
                        break
                    index, retry_at = coll.index, self._retry_at.get(coll.store.born, 0.0)
                    if self._compaction.due(index.removed, index.count) and time.monotonic() >= retry_at:
                        self.compact(coll)
                    if self._policy.due(coll.unsnapshotted, time.monotonic() - coll.snapshot_time):
                        self.snapshot(coll)
                with self._lock:
                    self._files.cleanup(self._live(), temporary=False)
            except Exception:
                log.exception("background snapshot failed")

    def _live(self) -> set[Path]:
        return {self._files.folder(c.store) for c in list(self._collections().values())}

    def compact(self, coll: Collection) -> Compacted | None:
        """Rebuild a collection's index from RocksDB, swap it in and snapshot it; None if it failed or stopped."""
        with self._lock:
            try:
                done = compact(coll, self._storage, self._worker, self._collections, self._stop)
            except Abandoned as exc:
                log.info("compaction of collection %s abandoned: %s", coll.store.name, exc)
                return None
            except Exception:
                self._retry_at[coll.store.born] = time.monotonic() + RETRY_SECONDS
                log.exception("compaction of collection %s failed, the index stays as it was", coll.store.name)
                return None
            log.info(
                "collection %s: compacted to %d points, %d removed points shed, in %.2f s "
                "(index paused %.0f ms for %d changed keys)",
                coll.store.name,
                done.live,
                done.shed,
                done.seconds,
                done.paused * 1000,
                done.swapped,
            )
            self._try(coll, fork=True)  # the compact graph is what a restart should load
            return done

    def snapshot(self, coll: Collection, fork: bool = True) -> int | None:
        """Snapshot one collection's index if it changed since its last snapshot; the sequence it holds."""
        with self._lock:
            if coll.snapshot_seq is not None and coll.unsnapshotted == 0:
                return coll.snapshot_seq
            return self._try(coll, fork)

    def _try(self, coll: Collection, fork: bool) -> int | None:
        try:
            return self._take(coll, fork)
        except OSError as exc:
            if isinstance(exc, FsyncFailed):
                fatal(str(exc))  # what was written may be lost, and a retry could not tell
            coll.snapshot_time = time.monotonic()  # try again after the policy's interval, not at once
            log.warning("snapshot of collection %s failed, the previous one stays: %s", coll.store.name, exc)
            return None

    def _take(self, coll: Collection, fork: bool) -> int:
        store, index = coll.store, coll.index
        estimate = max(coll.snapshot_bytes, index.count * (store.config.dim * 4 + store.config.m * 8 + 64))
        free = self._storage.free_bytes()
        if free - estimate < self._storage.min_free_bytes:
            raise OSError(
                f"not enough disk space: {free // 2**20} MiB free, a snapshot needs about "
                f"{estimate // 2**20} MiB plus the {self._storage.min_free_bytes // 2**20} MiB reserve"
            )
        tmp = self._files.temporary(store, str(next(self._tags)))

        paused = 0.0

        def start() -> tuple[int, int, int, int, Writing]:
            # On the worker (or with it stopped): the index is exactly RocksDB at the last applied sequence.
            nonlocal paused
            began = time.perf_counter()
            state = self._worker.applied_seq, index.changes, index.count, index.removed
            writing = (
                fork_write(index, tmp, self._crash) if fork else Writing(result=write_index(index, tmp, self._crash))
            )
            paused = time.perf_counter() - began  # the time the worker served nobody else
            return (*state, writing)

        started = time.perf_counter()
        try:
            seq, changes, count, removed, writing = self._worker.call(start).result() if fork else start()
            size, crc = writing.wait()
            self._crash("before-rename")
            manifest = Manifest(
                store.name,
                store.born,
                seq,
                f"snapshot-{seq}.usearch",
                size,
                crc,
                count,
                dataclasses.asdict(store.config),
                removed=removed,
            )
            self._files.publish(store, tmp, manifest, self._crash)
        finally:
            tmp.unlink(missing_ok=True)
        coll.snapshot_seq, coll.snapshot_changes, coll.snapshot_bytes = seq, changes, size
        coll.snapshot_time = coll.snapshot_done = time.monotonic()
        self._storage.trim_log(store, seq)
        log.info(
            "collection %s: snapshot of %d points at sequence %d, %.1f MiB, in %.2f s (index paused %.0f ms)",
            store.name,
            count,
            seq,
            size / 2**20,
            time.perf_counter() - started,
            paused * 1000,
        )
        return seq

    def snapshot_all(self, fork: bool = True) -> dict[str, int | None]:
        """Snapshot every collection that changed since its last snapshot; the sequence each holds."""
        with self._lock:
            return {name: self.snapshot(coll, fork) for name, coll in sorted(self._collections().items())}

    def backup(self, target: Path, checkpoint: Callable[[Path], None]) -> dict[str, int]:
        """Fresh snapshots and a RocksDB checkpoint in `target`, consistent: the log covers the gap."""
        with self._lock:  # no trim may happen between the snapshots and the checkpoint
            taken = self.snapshot_all()
            failed = [name for name, seq in taken.items() if seq is None]
            if failed:
                raise OSError(f"could not snapshot {', '.join(failed)}; see the shard log")
            collections = self._collections()
            for name in taken:
                if name in collections:  # else dropped meanwhile
                    store = collections[name].store
                    self._files.link(store, self._files.read_manifest(store), target / "index")
            checkpoint(target / "rocksdb")
            return {name: seq for name, seq in taken.items() if seq is not None}

    def cleanup_on_start(self) -> None:
        """Remove unfinished writes and the folders of collections that no longer exist."""
        self._files.cleanup(self._live(), temporary=True)
