"""Read results: search hits turned into external ids (with stored payloads and vectors on request),
fetched points, and an index compared with RocksDB."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shoal.shard.index import Hits
from shoal.shard.storage import CollectionStore, pack_keys


@dataclass(frozen=True)
class SearchResult:
    """The local top-k of q queries, nearest first; columns past counts[i] are padding."""

    k: int
    ids: np.ndarray  # (q, k): uint64 (0 in padding), or object of str ("" in padding)
    distances: np.ndarray  # (q, k) float32, +inf in padding
    counts: np.ndarray  # (q,) uint32
    payloads: list[bytes] | None  # q*k row-major, b"" in padding
    vectors: np.ndarray | None  # (q*k, dim) float32 row-major, zeros in padding


def resolve_hits(store: CollectionStore, hits: Hits, with_payload: bool, with_vectors: bool) -> SearchResult:
    """Look up string ids, payloads and vectors of the hits in RocksDB."""
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
        records = store.records(keys8)
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
    row = store.row_bytes
    found = [r for r in records if r is not None]
    payloads = None
    if with_payload:
        payloads = [b""] * (q * k)
        for p, r in zip(pos.tolist(), found, strict=True):
            payloads[p] = r[row:]
    vectors = None
    if with_vectors:
        vectors = np.zeros((q * k, store.config.dim), np.float32)
        if found:
            vectors[pos] = np.frombuffer(b"".join(r[:row] for r in found), "<f4").reshape(len(found), -1)
    return SearchResult(k, ids, distances, counts, payloads, vectors)


@dataclass(frozen=True)
class Verification:
    """A collection's index compared with RocksDB at one point in the write order."""

    ids: np.ndarray  # the external ids of every stored point
    indexed: int
    missing: np.ndarray  # internal keys stored in RocksDB but not in the index
    extra: np.ndarray  # internal keys in the index but not stored
    unmapped: int  # string-id collections: points without an id, or ids without a point

    @property
    def consistent(self) -> bool:
        """Whether the index holds exactly the stored points."""
        return not len(self.missing) and not len(self.extra) and not self.unmapped


@dataclass(frozen=True)
class Points:
    """The found points of a get, in request order; vectors and payloads only when asked."""

    ids: np.ndarray
    vectors: np.ndarray | None
    payloads: list[bytes] | None
