"""The per-shard planner of filtered searches: exact search over just the matches, or HNSW with a filter.

With S the keys matching the filter and n the live points, a batch of q queries costs about

    exact:  |S| * (q + PASS_COST) distance units, plus GATHER_COST * |S| to fetch the vectors once
    hnsw:   q * HNSW_COST * max(ef, k') units, asking k' = ceil(OVERSAMPLE * k * n / |S|) candidates

(units: one distance in a batched matrix product; measured on 384-d embeddings, see loadtest/
bench_filtered.py). The cheaper path runs. HNSW keeps the candidates in S; a query left with fewer than
k of them asks again with 4x the candidates, and once that reaches n, or exact is cheaper, runs exact
over S. So every query gets min(k, |S|) hits, and exact runs never miss one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from shoal._metrics import PLANNER_CANDIDATES, PLANNER_QUERIES
from shoal.shard.index import Hits, VectorIndex

OVERSAMPLE = 2.0  # candidates per expected match: slack for the filter not being spread evenly
WIDEN = 4  # candidates grow by this factor when a query found too few matches
PASS_COST = 8.0  # reading a vector once per batch, whatever the number of queries
GATHER_COST = 150.0  # fetching a vector out of usearch (once per filter and write; then cached)
HNSW_COST = 190.0  # one unit of search breadth (ef) for one query
CHUNK_CELLS = 1 << 22  # queries x matches per distance matrix, bounding its memory to 16 MiB

_PLANNED = {plan: PLANNER_QUERIES.labels(plan) for plan in ("none", "exact", "hnsw")}


@dataclass
class Matching:
    """The sorted keys matching one filter; their vectors once an exact search fetched them (cached)."""

    keys: np.ndarray
    vectors: np.ndarray | None = field(default=None, repr=False)  # normalised rows for cosine
    norms: np.ndarray | None = field(default=None, repr=False)  # squared norms, for l2

    @property
    def nbytes(self) -> int:
        """Memory held, for the cache's budget."""
        return sum(a.nbytes for a in (self.keys, self.vectors, self.norms) if a is not None)


def oversample(k: int, matches: int, live: int) -> int:
    """The candidates to ask HNSW for so that about k of them match."""
    if matches >= live:
        return k
    return min(live, math.ceil(OVERSAMPLE * k * live / max(matches, 1)))


def prefer_exact(queries: int, matches: int, candidates: int, ef: int, gathered: bool) -> bool:
    """Whether exact search over the matches costs no more than HNSW with `candidates`."""
    exact = matches * (queries + PASS_COST) + (0.0 if gathered else matches * GATHER_COST)
    return exact <= queries * HNSW_COST * max(ef, candidates)


def search(index: VectorIndex, live: int, matching: Matching, queries: np.ndarray, k: int, ef: int) -> tuple[Hits, str]:
    """The k nearest matching keys of every query, and the plan that found them (on the index worker)."""
    q, m = len(queries), len(matching.keys)
    if m == 0:
        _PLANNED["none"].inc(q)
        return Hits.empty(q, k), "none"
    ef = ef or index.config.ef_search
    count = oversample(k, m, live)
    if ef >= m or count >= live or prefer_exact(q, m, count, ef, matching.vectors is not None):
        _PLANNED["exact"].inc(q)
        return exact(index, matching, queries, k), f"exact(matches={m})"
    _PLANNED["hnsw"].inc(q)
    hits = Hits.empty(q, k)
    todo = np.arange(q)
    asked: list[int] = []
    plan = ""
    while len(todo):
        found = index.search(queries[todo], count, max(ef, count))
        asked.append(count)
        done = _keep_matches(found, matching.keys, k, hits, todo)
        todo = todo[~done]
        count *= WIDEN
        if len(todo) and (count >= live or prefer_exact(len(todo), m, count, ef, matching.vectors is not None)):
            rest = exact(index, matching, queries[todo], k)
            hits.keys[todo], hits.distances[todo], hits.counts[todo] = rest.keys, rest.distances, rest.counts
            plan = f"+exact(queries={len(todo)})"
            break
    PLANNER_CANDIDATES.observe(asked[-1])
    return hits, f"hnsw(matches={m},k'={'>'.join(map(str, asked))})" + plan


def _keep_matches(found: Hits, keys: np.ndarray, k: int, hits: Hits, rows: np.ndarray) -> np.ndarray:
    """Copy into `hits` the first k matching candidates of the rows that have k; which rows did."""
    cand = found.keys
    width = cand.shape[1]
    valid = np.arange(width)[None, :] < found.counts[:, None]
    at = np.minimum(np.searchsorted(keys, cand), len(keys) - 1)
    ok = valid & (keys[at] == cand)
    rank = np.cumsum(ok, axis=1)
    done = rank[:, -1] >= min(k, len(keys)) if width else np.zeros(len(rows), bool)
    take = ok & (rank <= k) & done[:, None]
    r, c = np.nonzero(take)
    column = rank[r, c] - 1
    hits.keys[rows[r], column] = cand[r, c]
    hits.distances[rows[r], column] = found.distances[r, c]
    hits.counts[rows[done]] = min(k, len(keys))
    return done


def _prepare(index: VectorIndex, matching: Matching) -> np.ndarray:
    """The matches' vectors, fetched once and shaped for the metric's distance."""
    if matching.vectors is None:
        x = index.vectors(matching.keys)
        if index.config.metric == "cosine":
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.where(norms > 0, norms, 1)
        elif index.config.metric == "l2":
            matching.norms = np.einsum("ij,ij->i", x, x)
        matching.vectors = np.ascontiguousarray(x, np.float32)
    return matching.vectors


def exact(index: VectorIndex, matching: Matching, queries: np.ndarray, k: int) -> Hits:
    """Brute force over just the matching vectors, with usearch's distances (cos 1-cos, l2sq, ip 1-dot)."""
    x = _prepare(index, matching)
    metric, m = index.config.metric, len(x)
    q: np.ndarray = np.asarray(queries, np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        q = q / np.where(norms > 0, norms, 1)
    hits = Hits.empty(len(q), k)
    take = min(k, m)
    step = max(1, CHUNK_CELLS // max(m, 1))
    for lo in range(0, len(q), step):
        part = q[lo : lo + step]
        dots = part @ x.T
        d: np.ndarray
        if metric == "l2":
            assert matching.norms is not None
            d = np.maximum(np.einsum("ij,ij->i", part, part)[:, None] - 2 * dots + matching.norms[None, :], 0)
        else:
            d = 1 - dots
        cols = np.argpartition(d, take - 1, axis=1)[:, :take] if take < m else np.broadcast_to(np.arange(m), d.shape)
        dist = np.take_along_axis(d, cols, axis=1)
        order = np.lexsort((cols, dist), axis=1)  # nearest first, ties by key
        cols, dist = np.take_along_axis(cols, order, axis=1), np.take_along_axis(dist, order, axis=1)
        hits.keys[lo : lo + step, :take] = matching.keys[cols]
        hits.distances[lo : lo + step, :take] = dist
        hits.counts[lo : lo + step] = take
    return hits
