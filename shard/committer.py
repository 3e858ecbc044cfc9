"""Group commit: the one thread that writes the shard's RocksDB.

Each job's `prepare` runs on the committer thread just before its batch is written, so it can read the
current state (earlier batches of the group are already written) without locks. A group of batches is
made durable by one WAL sync; then the jobs' index updates run on the index worker, in order, and only
then are the callers' futures resolved: an acknowledged write is durable and visible to search.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from rocksdict import WriteBatch

from shoal._errors import ShoalError, Unavailable
from shoal.shard.index import IndexWorker
from shoal.shard.storage import Storage

log = logging.getLogger("shoal.shard.committer")

MAX_GROUP = 256  # jobs per WAL sync; bounds the wait of the first job in a burst

# A job's prepare returns its batch (None when it has nothing to write) and the step to run on the
# index worker once the batch is durable; the step's return value is the caller's result.
Prepare = Callable[[], tuple[WriteBatch | None, Callable[[], Any]]]


@dataclass
class _Job:
    prepare: Prepare
    future: Future[Any]


class Committer:
    """Writes every job's batch, one WAL sync per group, then hands the index updates to the worker."""

    def __init__(self, storage: Storage, worker: IndexWorker) -> None:
        self._storage = storage
        self._worker = worker
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="shoal-committer", daemon=True)
        self._stopped = False
        self._lock = threading.Lock()  # no job may be queued behind the stop marker

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Commit everything queued, then end the thread."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join()

    def submit(self, prepare: Prepare) -> Future[Any]:
        """Queue a write; the future resolves once it is durable and applied to the index."""
        future: Future[Any] = Future()
        with self._lock:
            if self._stopped:
                raise Unavailable("the shard is shutting down")
            self._queue.put(_Job(prepare, future))
        return future

    def _run(self) -> None:
        stop = False
        while not stop:
            group: list[_Job] = []
            item = self._queue.get()
            while item is not None:
                group.append(item)
                if len(group) == MAX_GROUP or self._queue.empty():
                    break
                item = self._queue.get()
            stop = item is None
            if group:
                self._commit(group)

    def _commit(self, group: list[_Job]) -> None:
        steps: list[tuple[Future[Any], Callable[[], Any]]] = []
        unsynced: list[Future[Any]] = []
        for job in group:
            if not job.future.set_running_or_notify_cancel():
                continue  # cancelled before anything was written
            try:
                batch, step = job.prepare()
                if batch is not None:
                    self._storage.write(batch)
                    unsynced.append(job.future)
            except ShoalError as exc:
                job.future.set_exception(exc)
                continue
            except Exception as exc:
                log.exception("a write failed")
                job.future.set_exception(Unavailable(f"the shard could not write: {type(exc).__name__}"))
                continue
            steps.append((job.future, step))
        if unsynced:
            try:
                self._storage.flush_wal()
            except Exception:
                # TODO(durability): make this fatal; RocksDB may now hold writes nobody was told about.
                log.exception("WAL sync failed; failing %d writes", len(unsynced))
                failed = set(map(id, unsynced))
                for future in unsynced:
                    future.set_exception(Unavailable("the shard could not make the write durable"))
                steps = [(f, s) for f, s in steps if id(f) not in failed]
        if steps:
            self._worker.apply(steps)
