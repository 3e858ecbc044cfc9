"""Group commit: the one thread that writes the shard's RocksDB, executing write values in order.

`Shard.upsert` submits a request (a writes.py value such as `Upsert`); the committer takes queued jobs in
groups and, for each, `Writer.write` (execute.py) plans it against the current state (earlier batches of
the group are already written, so no locks) and writes its WriteBatch. The group is made durable by one
WAL sync; then the jobs' index parts go to the index worker, which applies them in order and only then
resolves the callers' futures: an acknowledged write is durable and visible to search.

A failed WAL sync or WAL append is fatal: the callers are failed, then the process exits. Retrying an
fsync after an error can report success for data the kernel already dropped, and RocksDB refuses every
later write after a failed append anyway; a restart recovers from what is really on disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from shoal._errors import ShoalError, Unavailable
from shoal._metrics import WAL_SYNC
from shoal.shard.execute import Job, Writer
from shoal.shard.faults import CrashPoints, fatal
from shoal.shard.index import IndexWorker, Step
from shoal.shard.options import MAX_GROUP
from shoal.shard.queue_thread import QueueThread
from shoal.shard.storage import classify_write_error

log = logging.getLogger("shoal.shard.committer")


@dataclass
class _Job:
    job: Job
    future: Future[Any]


class Committer(QueueThread[_Job]):
    """Writes every job's batch, one WAL sync per group, then hands the index parts to the worker."""

    def __init__(
        self,
        writer: Writer,
        worker: IndexWorker,
        max_group: int = MAX_GROUP,
        crash: CrashPoints | None = None,
        on_fatal: Callable[[str], None] = fatal,
    ) -> None:
        self._writer = writer
        self._storage = writer.storage
        self._worker = worker
        self._max_group = max_group
        self._crash = crash or CrashPoints()
        self._fatal = on_fatal
        super().__init__("shoal-committer")

    def submit(self, job: Job) -> Future[Any]:
        """Queue a write; the future resolves to its result once it is durable and applied to the index."""
        future: Future[Any] = Future()
        self._put(_Job(job, future))
        return future

    def _run(self) -> None:
        stop = False
        while not stop:
            group: list[_Job] = []
            item = self._queue.get()
            while item is not None:
                group.append(item)
                if len(group) == self._max_group or self._queue.empty():
                    break
                item = self._queue.get()
            stop = item is None
            if group:
                self._commit(group)

    def _commit(self, group: list[_Job]) -> None:
        steps: list[Step] = []
        unsynced: list[Future[Any]] = []
        for job in group:
            if not job.future.set_running_or_notify_cancel():
                continue  # cancelled before anything was written
            seq = None
            try:
                part, wrote = self._writer.write(job.job)
                if wrote:
                    seq = self._storage.seq
                    unsynced.append(job.future)
            except ShoalError as exc:
                job.future.set_exception(exc)
                continue
            except Exception as exc:
                error, fatal_error = classify_write_error(exc)
                if not fatal_error:
                    log.exception("a write failed")
                    job.future.set_exception(error)
                    continue
                # The batches written before this one cannot be synced: fail them all, then start over
                # from what is on disk.
                log.error("RocksDB write failed: %s", exc)
                job.future.set_exception(error)
                self._fail(group, Unavailable("the shard could not make the write durable"))
                self._fatal(f"RocksDB write failed: {exc}")
                return
            steps.append((job.future, part, seq))
        if unsynced:
            try:
                started = time.perf_counter()
                self._storage.flush_wal()
                WAL_SYNC.observe(time.perf_counter() - started)
            except Exception as exc:
                log.error("WAL sync failed: %s", exc)
                self._fail(group, Unavailable("the shard could not make the write durable"))
                self._fatal(f"WAL sync failed: {exc}")
                return
            self._crash("after-commit")
        if steps:
            self._worker.apply(steps)

    @staticmethod
    def _fail(group: list[_Job], error: ShoalError) -> None:
        """Fail every job of the group that has no outcome yet."""
        for job in group:
            if job.future.done() or not (job.future.running() or job.future.set_running_or_notify_cancel()):
                continue
            job.future.set_exception(error)
