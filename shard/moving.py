"""A shard's side of slot moves: exporting a slot range's points and the later changes to them (on the source),
from RocksDB and the op log. Importing and range deletes are ordinary writes (core.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shoal._errors import FailedPrecondition
from shoal._hash import slots_of
from shoal._results import Found
from shoal.shard import reads
from shoal.shard.collection import Collection
from shoal.shard.ownership import slots_of_keys
from shoal.shard.storage import Storage, pack_key, unpack_keys
from shoal.shard.writes import IDS, WritePlan, plan_from_bytes

SCAN_ROWS = 4096  # stored points read at once while looking for a range's
MAX_SCANNED = 65536  # stored points one export call reads at most (so a call stays short)
LOG_ENTRIES = 1024  # op-log entries one export of changes reads at most


@dataclass(frozen=True)
class Export:
    """Points of a slot range that exist, ids of points that do not, and where to go on."""

    found: Found
    deleted: np.ndarray
    cursor: str = ""  # ExportRange: the last key read ("" once done)
    seq: int = 0  # ExportChanges: the last sequence read


def range_ids(coll: Collection, start: int, end: int, cursor: str, limit: int) -> tuple[np.ndarray, str]:
    """Up to `limit` ids of points in slots [start, end) after the key `cursor`, in key order, and the next cursor."""
    store = coll.store
    after = pack_key(int(cursor)) if cursor else None
    keys: list[bytes] = []
    ids: list[np.ndarray] = []
    found = scanned = 0
    last = ""
    items = store.keys_from(after)
    while found < limit and scanned < MAX_SCANNED:
        keys = [k for _, k in zip(range(SCAN_ROWS), items, strict=False)]
        if not keys:
            return _joined(ids, coll), ""
        scanned += len(keys)
        batch = unpack_keys(keys)
        slots = slots_of_keys(coll, batch)
        inside = batch[(slots >= start) & (slots < end)]
        if len(inside) > limit - found:
            inside = inside[: limit - found]
            batch = batch[: int(np.searchsorted(batch, inside[-1])) + 1]
        ids.append(_ids_of(coll, inside))
        found += len(inside)
        last = str(int(batch[-1]))
    return _joined(ids, coll), last


def _ids_of(coll: Collection, keys: np.ndarray) -> np.ndarray:
    if coll.config.id_type == "uint64":
        return keys
    names = coll.store.ids_of([pack_key(int(k)) for k in keys])
    return np.array([n.decode() for n in names if n is not None], dtype=object)


def _joined(parts: list[np.ndarray], coll: Collection) -> np.ndarray:
    if not parts:
        return np.zeros(0, np.uint64) if coll.config.id_type == "uint64" else np.zeros(0, dtype=object)
    return np.concatenate(parts)


def _points(coll: Collection, ids: np.ndarray) -> Found:
    """The stored points of ids (with vectors and payloads)."""
    if not len(ids):
        dim = coll.config.dim
        return Found(ids, np.zeros((0, dim), np.float32), np.zeros(0, dtype=object))
    return reads.get(coll, ids)


def export_range(coll: Collection, start: int, end: int, cursor: str, limit: int) -> Export:
    """A page of the points of slots [start, end) after `cursor`."""
    ids, next_cursor = range_ids(coll, start, end, cursor, limit)
    return Export(_points(coll, ids), ids[:0], next_cursor)


def touched_ids(coll: Collection, plan: WritePlan) -> np.ndarray:
    """The ids a logged write touched (string ids: from the plan's id-map changes and the current map)."""
    keys = np.unique(np.concatenate([plan.index_keys, plan.removed, plan.mirror_keys]).astype(np.uint64))
    if coll.config.id_type == "uint64":
        return keys
    changes = [(cf, key) for cf, key, _ in plan.puts] + plan.deletes
    names = {key[1:] for cf, key in changes if cf == IDS and key.startswith(b"s")}
    names.update(n for n in coll.store.ids_of([pack_key(int(k)) for k in keys]) if n is not None)
    return np.array(sorted(n.decode() for n in names), dtype=object)


def export_changes(coll: Collection, storage: Storage, start: int, end: int, after: int, upto: int) -> Export:
    """The current state of the points of slots [start, end) that writes after sequence `after` touched."""
    entries = storage.entries(after, LOG_ENTRIES)
    if after < storage.seq and (not entries or entries[0][0] != after + 1):
        raise FailedPrecondition(f"the op log no longer holds the writes after {after}")
    touched: list[np.ndarray] = []
    seq = after
    for entry_seq, raw in entries:
        if upto and entry_seq > upto:
            break
        seq = entry_seq
        plan = plan_from_bytes(raw)
        if isinstance(plan, WritePlan) and plan.collection == coll.store.name:
            touched.append(touched_ids(coll, plan))
    if not touched:
        return Export(_points(coll, _joined([], coll)), _joined([], coll), seq=seq)
    ids = np.unique(np.concatenate(touched)) if coll.config.id_type == "uint64" else _unique_str(touched)
    if len(ids):
        slots = coll_slots(coll, ids)
        ids = ids[(slots >= start) & (slots < end)]
    found = _points(coll, ids)
    deleted = ids[~np.isin(ids, found.ids)] if len(ids) else ids
    return Export(found, deleted, seq=seq)


def _unique_str(parts: list[np.ndarray]) -> np.ndarray:
    return np.array(sorted({s for p in parts for s in p.tolist()}), dtype=object)


def coll_slots(coll: Collection, ids: np.ndarray) -> np.ndarray:
    """The slot of each id of the collection."""
    return slots_of(ids if coll.config.id_type == "uint64" else list(ids))
