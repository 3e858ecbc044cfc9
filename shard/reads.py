"""Reading a collection without searching it: points by id, pages of a scroll, counts, and a consistency check.

Ids and records come from RocksDB (readable from any thread); which keys are live or match a filter comes
from the in-memory payload mirror on the index worker, which changes together with usearch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shoal._config import DEFAULT_SCROLL, MAX_SCROLL, MAX_SCROLL_BYTES
from shoal._errors import InvalidArgument
from shoal._hash import slots_of
from shoal._results import Found, Page
from shoal._wire import as_id_array, check_ids
from shoal.shard import records as rec
from shoal.shard.collection import Collection, matching, parse_filter
from shoal.shard.index import IndexWorker
from shoal.shard.ownership import Ownership, visible
from shoal.shard.storage import pack_keys


def valid_ids(coll: Collection, ids: np.ndarray) -> np.ndarray:
    """The ids as an array of the collection's id type; InvalidArgument otherwise."""
    return check_ids(as_id_array(ids), coll.config.id_type)


def get(
    coll: Collection,
    ids: np.ndarray,
    with_vectors: bool = True,
    with_payload: bool = True,
    hide: Ownership | None = None,
) -> Found:
    """The stored points of ids, in request order; missing ids (and those of slots `hide` does not own) are left out."""
    store = coll.store
    ids = valid_ids(coll, ids)
    if hide is not None and len(ids):
        ids = ids[hide.owned[slots_of(ids)]]
    records: list[bytes | None]
    if coll.config.id_type == "uint64":
        records = store.records(pack_keys(ids))
    else:
        keys8 = store.keys_of(ids)
        known = [k for k in keys8 if k is not None]
        by_key = dict(zip(known, store.records(known), strict=True))
        records = [None if k is None else by_key[k] for k in keys8]
    keep = np.array([i for i, r in enumerate(records) if r is not None], dtype=np.intp)
    kept = [r for r in records if r is not None]
    dim = coll.config.dim
    vectors = rec.vectors(kept, dim) if with_vectors else None
    payloads = None
    if with_payload:
        payloads = np.empty(len(kept), dtype=object)
        payloads[:] = rec.payloads(kept, dim)
    return Found(ids[keep], vectors, payloads)


def count(coll: Collection, worker: IndexWorker, filter_text: str = "", hide: Ownership | None = None) -> int:
    """The number of live points, or of those matching a filter (only of owned slots, with `hide`)."""
    node = parse_filter(filter_text) if filter_text else None
    if hide is not None:
        return worker.call(lambda: len(visible(coll, hide, filter_text, node).keys)).result()
    if node is None:
        return coll.index.count
    return worker.call(lambda: len(matching(coll, filter_text, node).keys)).result()


def scroll(
    coll: Collection,
    worker: IndexWorker,
    filter_text: str = "",
    limit: int = 0,
    cursor: str = "",
    with_payload: bool = True,
    with_vectors: bool = False,
    max_bytes: int = 0,
    hide: Ownership | None = None,
) -> Page:
    """The points after `cursor` (a key) in key order, only those matching the filter if one is given (and
    only of owned slots, with `hide`).

    The page stops growing once it holds `max_bytes` of records (0 or more than MAX_SCROLL_BYTES: that), and
    always holds at least one point.
    """
    max_bytes = min(max_bytes or MAX_SCROLL_BYTES, MAX_SCROLL_BYTES)
    node = parse_filter(filter_text) if filter_text else None
    limit = limit or DEFAULT_SCROLL
    if not 1 <= limit <= MAX_SCROLL:
        raise InvalidArgument(f"limit must be between 1 and {MAX_SCROLL}, got {limit}")
    try:
        after = int(cursor) if cursor else -1
    except ValueError:
        raise InvalidArgument(f"cursor {cursor[:40]!r} is not one this shard gave out") from None

    def page() -> tuple[np.ndarray, bool]:
        if hide is not None:
            keys = visible(coll, hide, filter_text, node).keys
        else:
            keys = matching(coll, filter_text, node).keys if node is not None else coll.filters.live()
        start = int(np.searchsorted(keys, after, side="right")) if after >= 0 else 0
        return keys[start : start + limit].copy(), start + limit < len(keys)

    keys, more = worker.call(page).result()
    store = coll.store
    keys8 = pack_keys(keys)
    records = store.records(keys8) if (with_payload or with_vectors) else [b""] * len(keys8)
    size, kept = 0, []
    for i, record in enumerate(records):
        if record is None:
            continue  # deleted since the page was taken
        size += len(record)
        kept.append(i)
        if size >= max_bytes:
            more = more or i + 1 < len(records)
            keys = keys[: i + 1]
            break
    index = np.array(kept, dtype=np.intp)
    found: list[bytes] = [records[i] for i in kept]  # type: ignore[misc]  # None left out above
    ids: np.ndarray = keys[index]
    if coll.config.id_type == "string":
        names = store.ids_of([keys8[i] for i in kept])
        alive = [j for j, n in enumerate(names) if n is not None]
        ids = np.array([names[j].decode() for j in alive], dtype=object)  # type: ignore[union-attr]
        found = [found[j] for j in alive]
    dim = coll.config.dim
    vectors = rec.vectors(found, dim) if with_vectors else None
    payloads = rec.payloads(found, dim) if with_payload else None
    return Page(ids, vectors, payloads, str(int(keys[-1])) if more and len(keys) else "")


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
