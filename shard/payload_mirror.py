"""The in-memory mirror of a collection's payload index: filters evaluate to sorted key arrays in numpy.

Derived state like the usearch index: rebuilt from the RocksDB index at open and changed on the index
worker together with usearch, so a search sees exactly the writes acknowledged before it. Each column
(a path and a type) keeps its keys sorted by value; changes collect beside it and are merged in on the
next read, so a burst of writes costs one merge. Results are cached per filter text until the next write.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from shoal._filter import Node
from shoal.shard.payload_index import Field, decode_numbers, decode_string, evaluate

T = TypeVar("T")
CACHED_FILTERS = 32  # per collection; a benchmark or a tenant filter reuses a handful
CACHE_BYTES = 256 * 1024 * 1024  # per collection: cached values may hold the matches' vectors (`nbytes`)
_EMPTY = np.zeros(0, dtype=np.uint64)


class Column:
    """The keys of one (path, tag), sorted by value (by key for presence and liveness)."""

    __slots__ = ("tag", "keys", "values", "_added", "_more", "_removed")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.keys = _EMPTY
        # float64 for numbers and booleans (0/1), object (str) for strings, None when only keys matter.
        self.values: np.ndarray | None = (
            np.zeros(0, np.float64) if tag in "nb" else np.zeros(0, object) if tag == "s" else None
        )
        # Pending changes. A key's first value goes in _added, further ones (list elements) in _more: no
        # container per entry, as millions of them would make Python's garbage collector crawl.
        self._added: dict[int, Any] = {}
        self._more: dict[int, list[Any]] = {}
        self._removed: set[int] = set()

    def add(self, key: int, value: Any) -> None:
        """Add an entry (merged in on the next read)."""
        if key in self._added:
            self._more.setdefault(key, []).append(value)
        else:
            self._added[key] = value

    def remove(self, key: int) -> None:
        """Remove every entry of a key."""
        if self._added.pop(key, self) is not self:
            self._more.pop(key, None)
        self._removed.add(key)

    def load(self, keys: np.ndarray, values: np.ndarray | None) -> None:
        """Replace the contents with entries read from RocksDB (keys in value order, then key order)."""
        self.keys = keys
        if self.values is not None:
            assert values is not None
            self.values = values

    def size(self) -> int:
        """The number of entries."""
        self._merge()
        return len(self.keys)

    def _merge(self) -> None:
        if self._removed:
            keep = ~np.isin(self.keys, np.fromiter(self._removed, np.uint64, len(self._removed)))
            self.keys = self.keys[keep]
            if self.values is not None:
                self.values = self.values[keep]
            self._removed = set()
        if not self._added:
            return
        added, more = self._added, self._more
        self._added, self._more = {}, {}
        count = len(added) + sum(map(len, more.values()))
        keys = np.fromiter((*added, *(k for k, vs in more.items() for _ in vs)), np.uint64, count)
        if self.values is None:
            keys.sort()
            self.keys = np.insert(self.keys, np.searchsorted(self.keys, keys), keys)
            return
        values = np.empty(count, dtype=self.values.dtype)
        values[:] = [*added.values(), *(v for vs in more.values() for v in vs)]
        order = np.argsort(values, kind="stable")
        keys, values = keys[order], values[order]
        at = np.searchsorted(self.values, values, side="right")
        self.keys = np.insert(self.keys, at, keys)
        self.values = np.insert(self.values, at, values)

    def span(self, low: Any, low_incl: bool, high: Any, high_incl: bool) -> np.ndarray:
        """The keys with values in the range (None: unbounded); unsorted, possibly repeated."""
        self._merge()
        if self.values is None:
            return self.keys
        if self.tag == "b":
            low, high = (None if low is None else float(low)), (None if high is None else float(high))
        start = 0 if low is None else int(np.searchsorted(self.values, low, side="left" if low_incl else "right"))
        end = (
            len(self.values)
            if high is None
            else int(np.searchsorted(self.values, high, side="right" if high_incl else "left"))
        )
        return self.keys[start:end] if start < end else _EMPTY


class FilterIndex:
    """One collection's payload index in memory; use it only on the index worker thread."""

    def __init__(self) -> None:
        self._columns: dict[tuple[str, str], Column] = {}
        self._live = Column("L")
        self._of_key: dict[int, tuple[Column, ...]] = {}
        self._cache: OrderedDict[str, Any] = OrderedDict()

    def _column(self, path: str, tag: str) -> Column:
        column = self._columns.get((path, tag))
        if column is None:
            column = self._columns[(path, tag)] = Column(tag)
        return column

    def upsert(self, keys: np.ndarray, entries: Sequence[Sequence[Field]]) -> None:
        """Points written (new or replaced) with the index fields of their payloads."""
        self._cache.clear()
        live, of_key, known = self._live, self._of_key, self._columns
        for key, point in zip(keys.tolist(), entries, strict=True):
            self._drop(key)
            live.remove(key)
            live.add(key, None)
            columns = tuple(
                self._column(path, tag) if (c := known.get((path, tag))) is None else c for path, tag, _ in point
            )
            for column, (_, _, value) in zip(columns, point, strict=True):
                column.add(key, value)
            of_key[key] = columns

    def remove(self, keys: np.ndarray) -> None:
        """Points deleted."""
        self._cache.clear()
        for key in keys.tolist():
            self._drop(key)
            self._live.remove(key)

    def _drop(self, key: int) -> None:
        for column in self._of_key.pop(key, ()):
            column.remove(key)

    def load(self, columns: Sequence[tuple[str, str, np.ndarray, list[bytes]]]) -> None:
        """Fill an empty mirror from the RocksDB index's columns (payload_index.columns)."""
        of_key: dict[int, list[Column]] = {}
        for path, tag, keys, raw in columns:
            if path == "" and tag == "L":
                self._live.load(keys, None)
                continue
            column = self._column(path, tag)
            values: np.ndarray | None = None
            if tag in "nb":
                values = decode_numbers(b"".join(raw)) if tag == "n" else np.array([r == b"\1" for r in raw], float)
            elif tag == "s":
                values = np.empty(len(raw), dtype=object)
                values[:] = [decode_string(r) for r in raw]
            column.load(keys, values)
            for key in keys.tolist():
                of_key.setdefault(key, []).append(column)
        self._of_key = {k: tuple(v) for k, v in of_key.items()}
        self._cache.clear()

    def live(self) -> np.ndarray:
        """Every live key, sorted."""
        return self._live.span(None, True, None, True)

    def __len__(self) -> int:
        return self._live.size()

    def entries(self) -> int:
        """Entries of every column (one per indexed value of a point), for metrics."""
        return sum(column.size() for column in self._columns.values())

    def _span(self, path: str, tag: str, low: Any, low_incl: bool, high: Any, high_incl: bool) -> np.ndarray:
        column = self._columns.get((path, tag))
        return column.span(low, low_incl, high, high_incl) if column is not None else _EMPTY

    def match(self, node: Node) -> np.ndarray:
        """The sorted keys of the live points matching a filter."""
        return evaluate(node, self._span, self.live)

    def cached(self, text: str, compute: Callable[[], T]) -> T:
        """The cached value for a filter's text, computed on a miss; forgotten at the next write."""
        if text in self._cache:
            self._cache.move_to_end(text)
        else:
            self._cache[text] = compute()
        # Values grow after they are cached (exact search adds vectors): sizes are taken now, oldest go first.
        total = sum(getattr(v, "nbytes", 0) for v in self._cache.values())
        while len(self._cache) > CACHED_FILTERS or (total > CACHE_BYTES and len(self._cache) > 1):
            _, oldest = self._cache.popitem(last=False)
            total -= getattr(oldest, "nbytes", 0)
        return self._cache[text]
