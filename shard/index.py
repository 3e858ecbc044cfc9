"""The usearch side of a shard: one index per collection, and the one worker thread that calls them all.

usearch indexes are not safe to call from several Python threads at once (every call uses the thread
contexts 0..threads-1), so every usearch call of the shard runs on the IndexWorker thread, in arrival
order. Queued searches of one group (same collection incarnation, k, ef and filter) are coalesced into
one call of the group's runner, the one place where searches are batched. Writes arrive from the
committer as values, once durable: each step's index part (execute.Committed: a plan's usearch and
payload-mirror changes, or a collection published or withdrawn) is applied in write order and its result
resolves the caller's future, so an acknowledged write is visible to every later search. The worker
also knows the sequence number of the last write it applied, so whatever it sees of an index between two
queue items is exactly the state of RocksDB at that sequence (what a snapshot records).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from usearch.index import Index, Matches

from shoal._coalesce import row_slices, stack
from shoal._config import CollectionConfig
from shoal._errors import Unavailable
from shoal._metrics import SEARCH_BATCH_QUERIES
from shoal.shard.queue_thread import QueueThread

log = logging.getLogger("shoal.shard.index")

_BATCH_QUERIES = SEARCH_BATCH_QUERIES.labels("shard")

T = TypeVar("T")

METRICS = {"cosine": "cos", "l2": "l2sq", "ip": "ip"}
DTYPES = {"f32": "f32", "bf16": "bf16", "f16": "f16", "i8": "i8"}
# Points are added on one thread: usearch's add on several leaves a few points stored but unreachable by any
# search (usearch issue #735, open in 2.26; measured here 2-9 of 20,000 at ef=256, and a slot move's copies
# missed by searches on a 2-thread shard; none on one thread). Searches still use every thread.
ADD_THREADS = 1
MAX_DRAIN = 1024  # queue items taken at once; bounds the latency a long burst adds to the first item
# Queries per usearch call of a coalesced group: between calls the worker drops the searches whose callers
# left and stops on shutdown, so abandoned work ends within one call (well under a second), not minutes.
CHUNK_ROWS = 256


@dataclass(frozen=True)
class Hits:
    """Raw results of q queries: internal keys and distances (q x k), real hits per query."""

    keys: np.ndarray  # uint64, 0 in padding
    distances: np.ndarray  # float32, +inf in padding
    counts: np.ndarray  # uint32

    @classmethod
    def empty(cls, q: int, k: int) -> Hits:
        """q rows of padding only."""
        return cls(np.zeros((q, k), np.uint64), np.full((q, k), np.inf, np.float32), np.zeros(q, np.uint32))


class VectorIndex:
    """One collection's usearch index; call it only on the index worker thread."""

    def __init__(self, config: CollectionConfig, threads: int, source: Any = None) -> None:
        self.config = config
        self.threads = threads
        self._index = Index(
            ndim=config.dim,
            metric=METRICS[config.metric],
            dtype=DTYPES[config.precision],
            connectivity=config.m,
            expansion_add=config.ef_construction,
            expansion_search=config.ef_search,
        )
        if source is not None:  # a snapshot: a path or a buffer (a memory map) in usearch's format
            meta = Index.metadata(source)
            want = (config.dim, self._index.metric_kind, self._index.dtype)
            got = (meta["dimensions"], meta["kind_metric"], meta["kind_scalar"]) if meta else None
            if got != want:
                raise ValueError(f"the snapshot holds a {got} index where the collection needs {want}")
            self._index.load(source)
        self.count = len(self._index)  # live points, refreshed by every update; read from any thread
        self.changes = 0  # points added or removed so far; only the worker writes it
        self.removed = 0  # tombstones: points removed or replaced since the graph was built (see compaction.py)

    def upsert(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add points, replacing those whose keys are present."""
        present = np.atleast_1d(self._index.contains(keys))
        if present.any():
            self._index.remove(keys[present])
            self.removed += int(present.sum())
        self._index.add(keys, vectors, threads=ADD_THREADS)
        self.count = len(self._index)
        self.changes += len(keys)

    def extend(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add points whose keys are not present (rebuilding from storage)."""
        self._index.add(keys, vectors, threads=ADD_THREADS)
        self.count = len(self._index)

    def remove(self, keys: np.ndarray) -> None:
        """Remove points by key (all of them must be present)."""
        if len(keys):
            self._index.remove(keys)
            self.count = len(self._index)
            self.changes += len(keys)
            self.removed += len(keys)

    def discard(self, keys: np.ndarray) -> None:
        """Remove whichever of these keys are present."""
        if len(keys):
            self.remove(keys[np.atleast_1d(self._index.contains(keys))])

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Which of these keys are live points, as a bool array."""
        if len(keys) == 0:
            return np.zeros(0, bool)
        return np.atleast_1d(np.asarray(self._index.contains(keys), bool))

    def keys(self) -> np.ndarray:
        """The keys of every live point, sorted."""
        return np.sort(np.asarray(self._index.keys, dtype=np.uint64))

    def save(self, path: Path) -> None:
        """Write the index to a file in usearch's format."""
        self._index.save(str(path))

    def search(self, queries: np.ndarray, k: int, ef: int) -> Hits:
        """The k nearest keys of every query; exact when ef covers the whole index."""
        size = len(self._index)
        if size == 0 or len(queries) == 0:
            return Hits.empty(len(queries), k)
        ef = ef or self.config.ef_search
        exact = ef >= size
        if not exact:
            self._index.expansion_search = ef  # type: ignore[misc]  # usearch declares the setter apart
        found = self._index.search(queries, k, threads=self.threads, exact=exact)
        if isinstance(found, Matches):  # usearch answers a single query with a trimmed 1-D result
            hits = Hits.empty(1, k)
            n = len(found.keys)
            hits.keys[0, :n] = found.keys
            hits.distances[0, :n] = found.distances
            hits.counts[0] = n
            return hits
        counts = found.counts.astype(np.uint32)
        real = np.arange(k)[None, :] < counts[:, None]
        return Hits(
            np.where(real, found.keys, 0).astype(np.uint64),
            np.where(real, found.distances, np.inf).astype(np.float32),
            counts,
        )

    def memory_bytes(self) -> int:
        """Bytes usearch holds for this index."""
        return int(self._index.memory_usage)

    def vectors(self, keys: np.ndarray) -> np.ndarray:
        """The vectors of present keys as float32 rows, as the index holds them (quantised for bf16, f16, i8)."""
        if len(keys) == 0:
            return np.zeros((0, self.config.dim), np.float32)
        found: Any = self._index.get(keys, dtype="f32")  # a tuple of rows for several keys
        rows = np.stack(found) if isinstance(found, tuple) else np.asarray(found, np.float32)
        return rows.reshape(-1, self.config.dim)


# Answers a stacked batch of queries: their hits and the plan that ran ("" for plain HNSW).
Runner = Callable[[np.ndarray], tuple[Hits, str]]


@dataclass
class _Search:
    group: tuple[object, ...]  # searches with equal groups are answered by one call of `run`
    run: Runner
    queries: np.ndarray
    future: Future[tuple[Hits, str]]
    times: list[int] | None = None  # traced searches: filled with the run's start and end (time.time_ns())


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future[Any]


class IndexPart(Protocol):
    """A committed write's index side (execute.Committed): applied in write order, it returns the caller's result."""

    def apply(self) -> Any: ...


# A committed write on its way to the index: its caller's future, its index part, and the sequence of its
# batch (None when the write wrote no batch of its own).
Step = tuple[Future[Any], IndexPart, int | None]


@dataclass
class _Apply:
    steps: list[Step]


def _unreachable(message: str) -> None:
    raise AssertionError(message)


class IndexWorker(QueueThread["_Search | _Call | _Apply"]):
    """The one thread that calls usearch: updates, searches and calls in arrival order."""

    def __init__(self, applied_seq: int = 0, on_fatal: Callable[[str], None] = _unreachable) -> None:
        self.applied_seq = applied_seq  # the sequence of the last write applied; only the worker writes it
        self._on_fatal = on_fatal
        self._halting = False  # set by stop(): queued and running searches end, updates still apply
        super().__init__("shoal-index")

    def stop(self) -> None:
        """Fail queued searches, end the running one after its current call, apply queued updates, then end."""
        self._halting = True
        super().stop()

    def search(
        self, group: tuple[object, ...], run: Runner, queries: np.ndarray, times: list[int] | None = None
    ) -> Future[tuple[Hits, str]]:
        """Queue a search; the future resolves to its hits and plan. Queued searches of one group share a run.

        `times`, when given, receives when the run began and ended (for tracing).
        """
        future: Future[tuple[Hits, str]] = Future()
        self._put(_Search(group, run, queries, future, times))
        return future

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run fn on the worker thread, after everything queued before it."""
        future: Future[T] = Future()
        self._put(_Call(fn, future))
        return future

    def apply(self, steps: list[Step]) -> None:
        """Apply each step's index part in order and resolve its (already running) future with the result."""
        self._put(_Apply(steps))

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < MAX_DRAIN and not self._queue.empty():
                items.append(self._queue.get())
            searches: list[_Search] = []
            for item in items:
                if isinstance(item, _Search):
                    searches.append(item)
                    continue
                # Searches never move past an update: a search queued after it must see it.
                self._searches(searches)
                searches = []
                if item is None:
                    return
                if isinstance(item, _Apply):
                    for future, part, seq in item.steps:
                        if not _resolve(future, part.apply) and seq is not None:
                            # The write is in RocksDB but not in the index: it must not be served like this.
                            self._on_fatal(f"the index update of committed batch {seq} failed")
                        if seq is not None:
                            self.applied_seq = seq
                elif item.future.set_running_or_notify_cancel():
                    _resolve(item.future, item.fn)
            self._searches(searches)

    def _searches(self, searches: list[_Search]) -> None:
        groups: dict[tuple[object, ...], list[_Search]] = {}
        for s in searches:
            if not s.future.cancelled():
                groups.setdefault(s.group, []).append(s)
        for group in groups.values():
            blocks = [s.queries for s in group]
            found: tuple[Hits, str] | None | Exception
            queries = stack(blocks)
            _BATCH_QUERIES.observe(len(queries))
            started = time.time_ns()
            try:
                found = self._run_group(group, queries)
            except Exception as exc:
                log.exception("search failed")
                found = exc
            for s in group:
                if s.times is not None:
                    s.times[:] = [started, time.time_ns()]
            for s, rows in zip(group, row_slices(blocks), strict=True):
                if not s.future.set_running_or_notify_cancel():
                    continue  # its caller left
                if isinstance(found, Exception):
                    s.future.set_exception(found)
                elif found is None:
                    s.future.set_exception(Unavailable("the shard is shutting down"))
                else:
                    hits, plan = found
                    part = hits if len(group) == 1 else Hits(hits.keys[rows], hits.distances[rows], hits.counts[rows])
                    s.future.set_result((part, plan))

    def _run_group(self, group: list[_Search], queries: np.ndarray) -> tuple[Hits, str] | None:
        """The group's hits, CHUNK_ROWS queries per call; None once every caller left or the shard stops."""
        parts: list[Hits] = []
        plan = ""
        for lo in range(0, max(len(queries), 1), CHUNK_ROWS):
            if self._halting or all(s.future.cancelled() for s in group):
                return None
            hits, plan = group[0].run(queries[lo : lo + CHUNK_ROWS])
            parts.append(hits)
        if len(parts) == 1:
            return parts[0], plan
        keys = np.concatenate([h.keys for h in parts])
        distances = np.concatenate([h.distances for h in parts])
        return Hits(keys, distances, np.concatenate([h.counts for h in parts])), plan


def _resolve(future: Future[Any], fn: Callable[[], Any]) -> bool:
    """Run fn and resolve the future with its outcome; whether it succeeded."""
    try:
        result = fn()
    except Exception as exc:
        log.exception("index worker task failed")
        future.set_exception(exc)
        return False
    future.set_result(result)
    return True
