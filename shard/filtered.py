"""The shard's operations that read payloads: filtered search, count, scroll and delete, and payload updates.

A mixin of Shard (core.py). Filters are evaluated on the index worker against the in-memory mirror, which
changes there together with usearch, so they see exactly the acknowledged writes; delete by filter and
payload updates are evaluated on the committer against RocksDB, which holds every earlier write.
Concurrent filtered searches of the same collection, filter, k and ef run as one batch.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from rocksdict import WriteBatch

from shoal._config import check_ef, check_k
from shoal._errors import InvalidArgument
from shoal._filter import Node, check_path, parse_json
from shoal._wire import as_id_array, check_ids, check_payloads, check_queries
from shoal.shard import planner
from shoal.shard.index import Hits, IndexWorker
from shoal.shard.payload_index import delete_entries, indexed, rocks_match, write_entries
from shoal.shard.results import SearchResult, resolve_hits
from shoal.shard.storage import Storage, pack_keys, unpack_keys

if TYPE_CHECKING:
    from shoal.shard.core import Collection

DEFAULT_SCROLL = 100
MAX_SCROLL = 10_000
SCROLL_BYTES = 32 * 1024 * 1024  # a page stops growing here, well below the message limit


@dataclass(frozen=True)
class Page:
    """One page of a scroll: ids in key order, vectors and payloads when asked, and where to go on."""

    ids: np.ndarray
    vectors: np.ndarray | None
    payloads: list[bytes] | None
    next_cursor: str


@dataclass
class _Waiting:
    queries: np.ndarray
    future: Future[tuple[Hits, str]]


class _Batches:
    """Filtered searches waiting for the index worker, grouped so that one worker call answers a group."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.groups: dict[tuple[int, str, int, int], list[_Waiting]] = {}


def parse_filter(text: str) -> Node:
    """A filter's tree; InvalidArgument when it is empty or malformed."""
    node = parse_json(text)
    if node is None:
        raise InvalidArgument("the filter is empty")
    return node


def matching(coll: Collection, text: str, node: Node) -> planner.Matching:
    """On the index worker: the keys matching a filter, cached until the collection's next write."""
    return coll.filters.cached(text, lambda: planner.Matching(coll.filters.match(node)))


class FilterOps:
    """The payload-reading operations of a Shard."""

    _worker: IndexWorker
    _storage: Storage
    _lookups: ThreadPoolExecutor

    if TYPE_CHECKING:

        def _collection(self, name: str) -> Collection: ...
        def _writable(self, name: str, coll: Collection) -> Collection: ...
        def _submit(self, prepare: Callable[[], tuple[WriteBatch | None, Callable[[], Any]]]) -> Future[Any]: ...

    @cached_property
    def _batches(self) -> _Batches:
        # Two threads racing here may each make one; a group then simply runs in whichever it joined.
        return _Batches()

    def submit_filtered_search(
        self, name: str, queries: np.ndarray, k: int, ef: int, with_payload: bool, with_vectors: bool, filter_text: str
    ) -> Future[tuple[SearchResult, str]]:
        """Validate a filtered search and queue it; resolves to the local top-k and the plan that ran."""
        coll = self._collection(name)
        check_k(k)
        check_ef(ef)
        node = parse_filter(filter_text)
        if getattr(queries, "ndim", None) != 2:
            raise InvalidArgument(f"queries must be a 2-D matrix, got shape {getattr(queries, 'shape', None)}")
        queries = check_queries(np.ascontiguousarray(queries, "<f4"), coll.config.dim)
        hits: Future[tuple[Hits, str]] = Future()
        key = (id(coll), filter_text, k, ef)
        batches = self._batches
        with batches.lock:
            group = batches.groups.get(key)
            first = group is None
            if group is None:
                group = batches.groups[key] = []
            group.append(_Waiting(queries, hits))
        if first:
            try:
                self._worker.call(lambda: self._run_group(coll, key, node))
            except Exception as exc:
                with batches.lock:
                    for waiting in batches.groups.pop(key, []):
                        waiting.future.set_exception(exc)
        result: Future[tuple[SearchResult, str]] = Future()

        def finish() -> None:
            try:
                found, plan = hits.result()
                result.set_result((resolve_hits(coll.store, found, with_payload, with_vectors), plan))
            except Exception as exc:
                result.set_exception(exc)

        def on_hits(_: Future[tuple[Hits, str]]) -> None:
            if hits.exception() is not None:
                result.set_exception(hits.exception())  # type: ignore[arg-type]
            elif with_payload or with_vectors or coll.config.id_type == "string":
                self._lookups.submit(finish)
            else:
                found, plan = hits.result()
                result.set_result((SearchResult(k, found.keys, found.distances, found.counts, None, None), plan))

        hits.add_done_callback(on_hits)
        return result

    def _run_group(self, coll: Collection, key: tuple[int, str, int, int], node: Node) -> None:
        """On the index worker: answer every search of a group with one plan."""
        with self._batches.lock:
            group = self._batches.groups.pop(key)
        try:
            queries = group[0].queries if len(group) == 1 else np.concatenate([w.queries for w in group])
            found, plan = planner.search(
                coll.index, coll.index.count, matching(coll, key[1], node), queries, key[2], key[3]
            )
        except Exception as exc:
            for waiting in group:
                waiting.future.set_exception(exc)
            return
        start = 0
        for waiting in group:
            rows = slice(start, start + len(waiting.queries))
            waiting.future.set_result((Hits(found.keys[rows], found.distances[rows], found.counts[rows]), plan))
            start = rows.stop

    def count_filtered(self, name: str, filter_text: str) -> int:
        """The number of live points matching a filter."""
        coll = self._collection(name)
        node = parse_filter(filter_text)
        return self._worker.call(lambda: len(matching(coll, filter_text, node).keys)).result()

    def scroll(
        self,
        name: str,
        filter_text: str = "",
        limit: int = 0,
        cursor: str = "",
        with_payload: bool = True,
        with_vectors: bool = False,
    ) -> Page:
        """The points after `cursor` (a key) in key order, only those matching the filter if one is given."""
        coll = self._collection(name)
        node = parse_filter(filter_text) if filter_text else None
        limit = limit or DEFAULT_SCROLL
        if not 1 <= limit <= MAX_SCROLL:
            raise InvalidArgument(f"limit must be between 1 and {MAX_SCROLL}, got {limit}")
        try:
            after = int(cursor) if cursor else -1
        except ValueError:
            raise InvalidArgument(f"cursor {cursor[:40]!r} is not one this shard gave out") from None

        def page() -> tuple[np.ndarray, bool]:
            keys = matching(coll, filter_text, node).keys if node is not None else coll.filters.live()
            start = int(np.searchsorted(keys, after, side="right")) if after >= 0 else 0
            return keys[start : start + limit].copy(), start + limit < len(keys)

        keys, more = self._worker.call(page).result()
        store = coll.store
        keys8 = pack_keys(keys)
        records = store.records(keys8) if (with_payload or with_vectors) else [b""] * len(keys8)
        size, kept = 0, []
        for i, record in enumerate(records):
            if record is None:
                continue  # deleted since the page was taken
            size += len(record)
            kept.append(i)
            if size >= SCROLL_BYTES:
                more = more or i + 1 < len(records)
                keys = keys[: i + 1]
                break
        index = np.array(kept, dtype=np.intp)
        found = [records[i] for i in kept]
        ids: np.ndarray = keys[index]
        if coll.config.id_type == "string":
            names = store.ids_of([keys8[i] for i in kept])
            alive = [j for j, n in enumerate(names) if n is not None]
            ids = np.array([names[j].decode() for j in alive], dtype=object)  # type: ignore[union-attr]
            found = [found[j] for j in alive]
        row = store.row_bytes
        vectors = None
        if with_vectors:
            vectors = np.frombuffer(b"".join(r[:row] for r in found), "<f4").reshape(len(found), coll.config.dim)
        payloads = [r[row:] for r in found] if with_payload else None
        return Page(ids, vectors, payloads, str(int(keys[-1])) if more and len(keys) else "")

    def submit_delete_filter(self, name: str, filter_text: str) -> Future[int]:
        """Queue the deletion of every point matching a filter; resolves to how many there were."""
        coll = self._collection(name)
        node = parse_filter(filter_text)

        def prepare() -> tuple[WriteBatch | None, Callable[[], int]]:
            store = self._writable(name, coll).store
            keys = rocks_match(store, node)
            keys8 = pack_keys(keys)
            batch = Storage.batch()
            if coll.config.id_type == "string":
                for key8, sid in zip(keys8, store.ids_of(keys8), strict=True):
                    if sid is not None:
                        store.delete_id(batch, sid, key8)
            for key8 in keys8:
                store.delete_point(batch, key8)
            delete_entries(store, batch, keys8, store.records(keys8))
            if len(keys):  # so that recovery from an older index snapshot removes them too
                self._storage.log_change(batch, store, b"".join(keys8))

            def apply() -> int:
                coll.index.remove(keys)
                coll.filters.remove(keys)
                return len(keys)

            return (batch if len(keys) else None), apply

        return self._submit(prepare)

    def submit_set_payload(self, name: str, ids: Any, set_raw: bytes, unset: Sequence[str]) -> Future[int]:
        """Queue setting and removing payload keys of existing points; resolves to how many exist."""
        coll = self._collection(name)
        ids = check_ids(as_id_array(ids), coll.config.id_type)
        check_payloads([set_raw])
        updates: dict[str, Any] = json.loads(set_raw) if set_raw else {}
        paths = [check_path(p, "unset path") for p in unset]
        if not updates and not paths:
            raise InvalidArgument("nothing to change: give keys to set or paths to unset")

        def prepare() -> tuple[WriteBatch | None, Callable[[], int]]:
            store = self._writable(name, coll).store
            if coll.config.id_type == "string":
                keys8 = [k for k in store.keys_of(ids) if k is not None]
            else:
                keys8 = pack_keys(ids)
            batch = Storage.batch()
            changed, entries, existing = [], [], 0
            row = store.row_bytes
            for key8, record in zip(keys8, store.records(keys8), strict=True):
                if record is None:
                    continue
                existing += 1
                old = json.loads(record[row:]) if record[row:] else None
                new = _changed(old, updates, paths)
                if new == old:
                    continue
                raw = json.dumps(new, separators=(",", ":"), ensure_ascii=False).encode()
                store.put_point(batch, key8, record[:row] + raw)
                entry = indexed(raw)
                write_entries(store, batch, [key8], [entry], [record])
                changed.append(key8)
                entries.append(entry.fields)
            keys = unpack_keys(changed)

            def apply() -> int:
                coll.filters.upsert(keys, entries)
                return existing

            return (batch if changed else None), apply

        return self._submit(prepare)


def _changed(old: dict[str, Any] | None, updates: dict[str, Any], paths: Sequence[str]) -> dict[str, Any] | None:
    """A payload with top-level keys set, then dotted paths removed (None stays None if nothing is set)."""
    if old is None and not updates:
        return None
    new = json.loads(json.dumps(old)) if old else {}  # a deep copy: removals may reach nested objects
    new.update(updates)
    for path in paths:
        *parents, last = path.split(".")
        node: Any = new
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return new
