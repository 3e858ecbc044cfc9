"""Searching a collection: the one path from a `Search` to the local top-k, with or without a filter.

A search is validated on the caller's thread, answered on the index worker (which coalesces searches of
one group into one call: see index.py), and, when it needs string ids, payloads or vectors, completed by
RocksDB look-ups on the lookup pool. Without a filter the runner is plain HNSW and nothing is parsed;
with one, the planner (planner.py) chooses exact search over the matches or HNSW with the filter.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future

import numpy as np

from shoal._config import MAX_MESSAGE_BYTES, check_ef, check_k
from shoal._errors import InvalidArgument, ResourceExhausted, Unavailable
from shoal._filter import Node
from shoal._results import TopK
from shoal._search import Search
from shoal._wire import check_nonzero, check_queries
from shoal.shard import planner
from shoal.shard import records as rec
from shoal.shard.collection import Collection, matching, parse_filter
from shoal.shard.index import Hits, IndexWorker, Runner
from shoal.shard.ownership import Ownership, visible
from shoal.shard.storage import CollectionStore, pack_keys

# Hits whose records are looked up at once: an answer that grows past the message limit is refused after
# at most this many more, so a search for too many payloads cannot fill the shard's memory first.
RESOLVE_CELLS = 4096
FETCH_BYTES = 4 * 1024 * 1024  # records fetched from RocksDB at once, about


def as_matrix(x: np.ndarray, what: str) -> np.ndarray:
    """A 2-D little-endian float32 C-contiguous array."""
    if getattr(x, "ndim", None) != 2:
        raise InvalidArgument(f"{what} must be a 2-D matrix, got shape {getattr(x, 'shape', None)}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are then rejected as such
        return np.ascontiguousarray(x, dtype="<f4")


def runner(coll: Collection, k: int, ef: int, filter_text: str, node: Node | None, hide: Ownership | None) -> Runner:
    """What answers a stacked batch of this search's group on the index worker (`hide`: leave out the points
    of slots not owned under this ownership, while slots move)."""
    # coll.index is read when the runner runs: compaction may have swapped it since the search was queued.
    if hide is not None:
        return lambda queries: planner.search(
            coll.index, coll.index.count, visible(coll, hide, filter_text, node), queries, k, ef
        )
    if node is None:
        return lambda queries: (coll.index.search(queries, k, ef), "")
    return lambda queries: planner.search(
        coll.index, coll.index.count, matching(coll, filter_text, node), queries, k, ef
    )


def submit(
    coll: Collection,
    worker: IndexWorker,
    lookups: Executor,
    search: Search,
    times: list[int] | None = None,
    hide: Ownership | None = None,
) -> Future[tuple[TopK, str]]:
    """Validate a search and queue it; resolves to the local top-k of every query and the plan that ran.

    `times`, when given, receives when the index worker's run of it began and ended (for tracing); `hide`,
    while slots move, the ownership whose unowned points the search leaves out.
    """
    shape = search.shape
    check_k(shape.k)
    check_ef(shape.ef)
    node = parse_filter(shape.filter) if shape.filter else None
    queries = check_queries(as_matrix(search.queries, "queries"), coll.config.dim)
    if coll.config.metric == "cosine":
        check_nonzero(queries, "queries")
    group = (coll.store.born, shape.k, shape.ef, shape.filter, hide.version if hide is not None else -1)
    found = worker.search(group, runner(coll, shape.k, shape.ef, shape.filter, node, hide), queries, times)
    result: Future[tuple[TopK, str]] = Future()
    result.add_done_callback(lambda f: found.cancel() if f.cancelled() else None)
    with_payload, with_vectors = shape.with_payload, shape.with_vectors
    lookup = with_payload or with_vectors or coll.config.id_type == "string"

    def finish() -> None:
        try:
            hits, plan = found.result()
            result.set_result((resolve_bounded(coll.store, hits, with_payload, with_vectors), plan))
        except Exception as exc:
            result.set_exception(exc)

    def on_hits(_: Future[tuple[Hits, str]]) -> None:
        if not result.set_running_or_notify_cancel():
            return
        if found.cancelled():
            result.set_exception(Unavailable("cancelled"))
        elif (error := found.exception()) is not None:
            result.set_exception(error)
        elif lookup:
            lookups.submit(finish)
        else:
            hits, plan = found.result()
            result.set_result((TopK(hits.keys, hits.distances, hits.counts), plan))

    found.add_done_callback(on_hits)
    return result


class AnswerBudget:
    """The bytes a search answer may still take; ResourceExhausted, saying how to split, once it is spent."""

    def __init__(self, queries: int, k: int) -> None:
        self.queries, self.k = queries, k
        self.left = MAX_MESSAGE_BYTES
        self.done = 0  # queries resolved so far

    def spend(self, size: int) -> None:
        """Count `size` more bytes."""
        self.left -= size
        if self.left < 0:
            raise ResourceExhausted(
                f"the answer to {self.queries} queries with k={self.k} outgrew the {MAX_MESSAGE_BYTES // 2**20} MiB "
                f"message limit after {self.done} of them (large payloads?): split the call into searches of at most "
                f"{max(1, self.done // 2)} queries, or lower k"
            )


def resolve_bounded(store: CollectionStore, hits: Hits, with_payload: bool, with_vectors: bool) -> TopK:
    """resolve_hits a few rows at a time; ResourceExhausted as soon as the answer outgrows one message."""
    q, k = hits.keys.shape
    budget = AnswerBudget(q, k)
    step = max(1, RESOLVE_CELLS // max(k, 1))
    parts: list[TopK] = []
    for lo in range(0, q, step):
        rows = slice(lo, lo + step)
        part = resolve_hits(
            store, Hits(hits.keys[rows], hits.distances[rows], hits.counts[rows]), with_payload, with_vectors, budget
        )
        budget.spend(part.ids.size * 12)
        budget.done += len(part.counts)
        parts.append(part)
    return parts[0] if len(parts) == 1 else _join(parts)


def _join(parts: list[TopK]) -> TopK:
    """Results of consecutive query rows as one."""
    first = parts[0]
    return TopK(
        np.concatenate([p.ids for p in parts]),
        np.concatenate([p.distances for p in parts]),
        np.concatenate([p.counts for p in parts]),
        None if first.payloads is None else np.concatenate([p.payloads for p in parts if p.payloads is not None]),
        None if first.vectors is None else np.concatenate([p.vectors for p in parts if p.vectors is not None]),
    )


def resolve_hits(
    store: CollectionStore, hits: Hits, with_payload: bool, with_vectors: bool, budget: AnswerBudget | None = None
) -> TopK:
    """Look up string ids, payloads and vectors of the hits in RocksDB (their bytes counted against a budget)."""
    q, k = hits.keys.shape
    pos = np.flatnonzero(np.arange(k)[None, :] < hits.counts[:, None])
    keys8 = pack_keys(hits.keys.ravel()[pos])
    alive = np.ones(len(pos), bool)
    names: list[bytes | None] = []
    records: list[bytes | None] = []
    if store.config.id_type == "string":
        names = store.ids_of(keys8)
        alive &= np.array([n is not None for n in names], bool)
    if with_payload or with_vectors:
        records = _records(store, keys8, with_payload, with_vectors, budget)
        alive &= np.array([r is not None for r in records], bool)
    keys, distances, counts = hits.keys, hits.distances, hits.counts
    if not alive.all():
        # A point deleted between the search and the look-up leaves its row; the rest close up.
        keep = np.zeros(q * k, bool)
        keep[pos[alive]] = True
        keep = keep.reshape(q, k)
        order = np.argsort(~keep, axis=1, kind="stable")
        counts = keep.sum(axis=1).astype(np.uint32)
        real = np.arange(k)[None, :] < counts[:, None]
        keys = np.where(real, np.take_along_axis(keys, order, axis=1), 0).astype(np.uint64)
        distances = np.where(real, np.take_along_axis(distances, order, axis=1), np.inf).astype(np.float32)
        lookup_of = np.full(q * k, -1, np.intp)
        lookup_of[pos] = np.arange(len(pos))
        moved = lookup_of[(np.arange(q)[:, None] * k + order)[real]]
        names = [names[i] for i in moved] if names else []
        records = [records[i] for i in moved] if records else []
        pos = np.flatnonzero(real)
    ids = keys
    if store.config.id_type == "string":
        ids = np.full(q * k, "", dtype=object)
        ids[pos] = [n.decode() for n in names if n is not None]
        ids = ids.reshape(q, k)
    dim = store.config.dim
    found = [r for r in records if r is not None]
    payloads = None
    if with_payload:
        payloads = np.full(q * k, b"", dtype=object)
        if found:
            payloads[pos] = _objects(rec.payloads(found, dim))
        payloads = payloads.reshape(q, k)
    vectors = None
    if with_vectors:
        vectors = np.zeros((q * k, dim), np.float32)
        if found:
            vectors[pos] = rec.vectors(found, dim)
        vectors = vectors.reshape(q, k, dim)
    return TopK(ids, distances, counts, payloads, vectors)


def _records(
    store: CollectionStore, keys8: list[bytes], with_payload: bool, with_vectors: bool, budget: AnswerBudget | None
) -> list[bytes | None]:
    """The records of keys, fetched a few at a time while the budget lasts."""
    if budget is None:
        return store.records(keys8)
    row = rec.row_bytes(store.config.dim)
    # What a record adds to the answer: its payload (with framing) if asked for, its vector if asked for.
    fixed = (2 - row if with_payload else 0) + (row if with_vectors else 0)
    records: list[bytes | None] = []
    lo, step = 0, 16  # the first look-ups learn how large the records are
    while lo < len(keys8):
        chunk = store.records(keys8[lo : lo + step])
        found = [r for r in chunk if r is not None]
        size = sum(map(len, found))
        budget.spend((size if with_payload else 0) + fixed * len(found))
        records.extend(chunk)
        lo += step
        step = max(16, min(RESOLVE_CELLS, FETCH_BYTES * len(found) // max(size, 1)))
    return records


def _objects(items: list[bytes]) -> np.ndarray:
    # np.array(list_of_bytes) would make a fixed-width bytes array that strips trailing zero bytes.
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
