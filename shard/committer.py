"""Group commit: the one thread that writes the shard's RocksDB, executing write values in order.

`Shard.upsert` submits a request (a writes.py value such as `Upsert`); the committer takes queued jobs in
groups and, for each, `Writer.write` (execute.py) plans it against the current state (earlier batches of
the group are already written, so no locks) and writes its WriteBatch. The group is made durable by one
WAL sync; then the jobs' index parts go to the index worker, which applies them in order and only then
resolves the callers' futures: an acknowledged write is durable and visible to search.

A failed WAL sync or WAL append is fatal: the callers are failed, then the process exits. Retrying an
fsync after an error can report success for data the kernel already dropped, and RocksDB refuses every
later write after a failed append anyway; a restart recovers from what is really on disk.

On a group's primary, `replicate` is set: once a group is durable, every logged write is handed to it
(sequence and serialized plan) and its caller is resolved only when both the index part is applied and
the replicas have it (the future `replicate` returns). Without it nothing changes on the write path.
A caller's write admitted on the primary carries the `replicate` in force then: should the shard step down
(or a new term begin) before the write is made, it is refused, not written ("not the primary", which the
coordinator retries on the new primary), since nothing would ship it and an acknowledgement would promise
what the new primary does not have.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from shoal._errors import FailedPrecondition, ShoalError, Unavailable
from shoal._metrics import WAL_SYNC
from shoal.shard.execute import Job, Writer
from shoal.shard.faults import CrashPoints, fatal
from shoal.shard.index import IndexWorker, Step
from shoal.shard.options import MAX_GROUP
from shoal.shard.queue_thread import QueueThread
from shoal.shard.storage import classify_write_error

log = logging.getLogger("shoal.shard.committer")

# Ship a durable write (sequence, serialized plan) to the replicas; resolves once the in-sync ones have it.
Replicate = Callable[[int, bytes], "Future[None]"]
STEPPED_DOWN = "not the primary of its group any more: the write was not made"


@dataclass
class _Job:
    job: Job
    future: Future[Any]
    via: Replicate | None = None  # a primary's write: the replicate in force when it was admitted


class _Both:
    """Resolve `outer` with `local`'s outcome once `local` and `remote` are both done (`remote`'s error first)."""

    def __init__(self, local: Future[Any], remote: Future[None], outer: Future[Any]) -> None:
        self._local, self._remote, self._outer = local, remote, outer
        self._left = 2
        self._lock = threading.Lock()
        local.add_done_callback(self._done)
        remote.add_done_callback(self._done)

    def _done(self, _: Future[Any]) -> None:
        with self._lock:
            self._left -= 1
            if self._left:
                return
        error = self._remote.exception() or self._local.exception()
        if error is not None:
            self._outer.set_exception(error)
        else:
            self._outer.set_result(self._local.result())


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
        self.replicate: Replicate | None = None  # set while this shard is its group's primary
        super().__init__("shoal-committer")

    def submit(self, job: Job, via: Replicate | None = None) -> Future[Any]:
        """Queue a write; the future resolves to its result once it is durable and applied to the index.

        `via`: a primary's write, made only while that replicate is still in force (see the module docstring).
        """
        future: Future[Any] = Future()
        self._put(_Job(job, future, via))
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
        replicate = self.replicate
        shipped: list[tuple[int, bytes, Future[Any], Future[Any]]] = []  # seq, plan, local, caller's
        for job in group:
            if not job.future.set_running_or_notify_cancel():
                continue  # cancelled before anything was written
            if job.via is not None and job.via is not replicate:
                job.future.set_exception(FailedPrecondition(STEPPED_DOWN))
                continue
            seq = None
            before = self._storage.seq
            try:
                part, wrote = self._writer.write(job.job)
                if wrote:
                    seq = self._storage.seq
                    unsynced.append(job.future)
                if replicate is not None and part.entry is not None and self._storage.seq != before:
                    local: Future[Any] = Future()
                    local.set_running_or_notify_cancel()
                    shipped.append((self._storage.seq, part.entry, local, job.future))
                    steps.append((local, part, seq))
                    continue
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
        if replicate is not None:
            for seq, entry, local, caller in shipped:
                _Both(local, replicate(seq, entry), caller)
        if steps:
            self._worker.apply(steps)

    @staticmethod
    def _fail(group: list[_Job], error: ShoalError) -> None:
        """Fail every job of the group that has no outcome yet."""
        for job in group:
            if job.future.done() or not (job.future.running() or job.future.set_running_or_notify_cancel()):
                continue
            job.future.set_exception(error)
