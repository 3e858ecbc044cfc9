"""Merge the shards' local top-k lists into the global top-k of every query (pure numpy)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shoal._results import Found, TopK, empty, valid_mask


def merge(parts: Sequence[TopK], k: int) -> TopK:
    """The global top-k per query over all parts; ties go to the earlier part, then the earlier column.

    Padding never beats a real hit, whatever its distance. Payloads and vectors travel with their hit
    when any part carries them (a part without them contributes empty payloads and zero vectors).
    """
    if not parts:
        raise ValueError("merge needs at least one part")
    q = parts[0].queries
    if any(p.queries != q for p in parts):
        raise ValueError(f"the parts answer different numbers of queries: {[p.queries for p in parts]}")
    if len(parts) == 1 and (alone := _as_merged(parts[0], k)) is not None:
        return alone
    string_ids = any(p.ids.dtype == object for p in parts)
    with_payloads = any(p.payloads is not None for p in parts)
    dims = {p.vectors.shape[2] for p in parts if p.vectors is not None and p.vectors.size}
    if len(dims) > 1:
        raise ValueError(f"the parts carry vectors of different dimensions: {sorted(dims)}")
    dim = dims.pop() if dims else (0 if any(p.vectors is not None for p in parts) else None)

    valid = np.concatenate([valid_mask(p) for p in parts], axis=1)
    distances = np.concatenate([np.asarray(p.distances, dtype=np.float32) for p in parts], axis=1)
    ids = np.concatenate([_ids_as(p, string_ids) for p in parts], axis=1)

    # lexsort is stable and sorts by its last key first: real hits first, then by distance.
    order = np.lexsort((distances, ~valid), axis=-1)[:, :k]
    taken = order.shape[1]
    out = empty(q, k, string_ids=string_ids, payloads=with_payloads, dim=dim)
    counts = np.minimum(valid.sum(axis=1), k).astype(np.uint32)
    real = np.arange(taken)[None, :] < counts[:, None]

    def place(target: np.ndarray, source: np.ndarray) -> None:
        picked = np.take_along_axis(source, order.reshape(order.shape + (1,) * (source.ndim - 2)), axis=1)
        target[:, :taken][real] = picked[real]

    place(out.ids, ids)
    place(out.distances, distances)
    if out.payloads is not None:
        place(out.payloads, np.concatenate([_payloads_of(p) for p in parts], axis=1))
    if out.vectors is not None and dim is not None:
        place(out.vectors, np.concatenate([_vectors_of(p, dim) for p in parts], axis=1))
    return TopK(out.ids, out.distances, counts, out.payloads, out.vectors)


def _as_merged(part: TopK, k: int) -> TopK | None:
    """A lone part as merge would return it, without sorting (None when it is not already sorted)."""
    # One shard (the fastest layout on one host) answers every search: its top-k is the answer.
    if part.k != k or part.vectors is not None:
        return None
    valid = valid_mask(part)
    distances = np.asarray(part.distances, dtype=np.float32)
    if k > 1 and not (valid[:, 1:] <= valid[:, :-1]).all():
        return None  # a hit after padding
    if k > 1 and not ((distances[:, 1:] >= distances[:, :-1]) | ~valid[:, 1:]).all():
        return None  # not nearest first (NaN included)
    counts = np.minimum(np.asarray(part.counts), k).astype(np.uint32)
    if valid.all():
        return TopK(part.ids, distances, counts, part.payloads)
    padded = empty(part.queries, k, string_ids=part.ids.dtype == object, payloads=part.payloads is not None)
    for target, source in ((padded.ids, part.ids), (padded.distances, distances), (padded.payloads, part.payloads)):
        if target is not None and source is not None:
            target[valid] = source[valid]
    return TopK(padded.ids, padded.distances, counts, padded.payloads)


def _ids_as(part: TopK, string_ids: bool) -> np.ndarray:
    if not string_ids or part.ids.dtype == object:
        return part.ids
    # A shard with no hits may encode its padding as integer zeros even in a string collection.
    if valid_mask(part).any():
        raise ValueError("the parts disagree on the id type: some carry integer ids, some string ids")
    return np.full(part.ids.shape, "", dtype=object)


def _payloads_of(part: TopK) -> np.ndarray:
    if part.payloads is not None:
        return part.payloads
    return np.full(part.ids.shape, b"", dtype=object)


def _vectors_of(part: TopK, dim: int) -> np.ndarray:
    if part.vectors is not None and part.vectors.shape[2] == dim:
        return part.vectors
    return np.zeros((*part.ids.shape, dim), dtype=np.float32)


def merge_found(requested: np.ndarray, parts: Sequence[Found]) -> Found:
    """All parts' found points in the order their ids have in `requested` (ids not found stay absent)."""
    string_ids = requested.dtype == object
    found = [p for p in parts if len(p.ids)]
    ids = np.concatenate([p.ids for p in found]) if found else np.zeros(0, dtype=object if string_ids else np.uint64)
    if len(ids) and (ids.dtype == object) != string_ids:
        raise ValueError("the found ids are not of the requested id type")
    positions = _positions(requested, ids)
    if len(np.unique(positions)) != len(positions):
        raise ValueError("an id was found more than once")
    order = np.argsort(positions, kind="stable")

    vectors = None
    if any(p.vectors is not None for p in parts):
        dims = {p.vectors.shape[1] for p in found if p.vectors is not None}
        if len(dims) > 1:
            raise ValueError(f"the found vectors have different dimensions: {sorted(dims)}")
        dim = dims.pop() if dims else max(p.vectors.shape[1] for p in parts if p.vectors is not None)
        stacked = [p.vectors if p.vectors is not None else np.zeros((len(p.ids), dim), np.float32) for p in found]
        if any(len(v) != len(p.ids) for v, p in zip(stacked, found, strict=True)):
            raise ValueError("a part has a different number of vectors than ids")
        vectors = np.concatenate(stacked)[order] if stacked else np.zeros((0, dim), dtype=np.float32)

    payloads = None
    if any(p.payloads is not None for p in parts):
        blobs = [p.payloads if p.payloads is not None else np.full(len(p.ids), b"", dtype=object) for p in found]
        if any(len(b) != len(p.ids) for b, p in zip(blobs, found, strict=True)):
            raise ValueError("a part has a different number of payloads than ids")
        payloads = np.concatenate(blobs)[order] if blobs else np.zeros(0, dtype=object)
    return Found(ids[order], vectors, payloads)


def _positions(requested: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The index in `requested` of each id; ValueError for an id that was not requested."""
    if requested.dtype == object:
        index = {s: i for i, s in enumerate(requested)}
        try:
            return np.array([index[s] for s in ids], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"id {exc.args[0]!r} was found but not requested") from None
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int64)
    if len(requested) == 0:
        raise ValueError("ids were found but none were requested")
    sorter = np.argsort(requested, kind="stable")
    loc = np.minimum(np.searchsorted(requested, ids, sorter=sorter), len(requested) - 1)
    positions = sorter[loc]
    stray = requested[positions] != ids
    if stray.any():
        raise ValueError(f"id {int(ids[stray][0])} was found but not requested")
    return positions.astype(np.int64)
