"""Payload indexes in RocksDB: every scalar field of a point's payload as keys of the x.<name> column family.

Entries (key -> b""), written and removed in the same WriteBatch as the point they describe:

    path + b"e" + key8               the path exists (whatever its value: null, an object, a list)
    path + b"b" + 0|1 + key8         a boolean
    path + b"n" + float64 + key8     a number (integers and floats alike), order-preserving
    path + b"s" + utf8 + key8        a string, order-preserving
    b"\\0\\0L" + key8                 the point is live (the universe for $ne, $nin and $not)

`path` is the dotted path, escaped (0 -> 0 1) and ended by 0 0, as strings are, so paths and strings keep
Python's order and no encoded value is a prefix of another. Elements of lists are indexed one by one;
objects inside lists and keys holding a dot are not, as a filter cannot reach them (shoal._filter.lookup).
A filter evaluates to a sorted array of keys by set algebra over ranges of entries (`evaluate`), the same
algebra the in-memory mirror (payload_mirror.py) uses.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from rocksdict import ReadOptions

from shoal._filter import And, Cond, Node, Not, Or, kind
from shoal.shard import records
from shoal.shard.storage import INDEX_READY, CollectionStore, Storage

LIVE = b"\0\0L"
_LIVE_END = b"\0\0M"
_TAGS = {"bool": "b", "num": "n", "str": "s"}
_KEY_BYTES = 8
_AFTER_ANY_KEY = b"\xff" * (_KEY_BYTES + 1)  # sorts after `value + any key8`, before the next value
_EMPTY = np.zeros(0, dtype=np.uint64)

Field = tuple[str, str, Any]  # (dotted path, tag "e" | "b" | "n" | "s", value: None | bool | float | str)
# A span of one column: (path, tag, low, low inclusive, high, high inclusive) -> keys, unsorted.
Span = Callable[[str, str, Any, bool, Any, bool], np.ndarray]


def as_float(value: int | float) -> float:
    """A number as the float64 the index compares (integers beyond the float range become +-inf)."""
    try:
        return float(value) + 0.0  # + 0.0 turns -0.0 into 0.0, which compares equal to it
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")


def fields(payload: dict[str, Any] | None) -> list[Field]:
    """The index entries of a payload: a presence entry per reachable path, a typed entry per scalar."""
    out: dict[Field, None] = {}  # ordered and without duplicates (a list may repeat a value)

    def scalar(path: str, value: Any) -> None:
        if isinstance(value, bool):
            out[(path, "b", value)] = None
        elif isinstance(value, int | float):
            number = as_float(value)
            if number == number:  # NaN compares false with everything: it is only present
                out[(path, "n", number)] = None
        elif isinstance(value, str):
            out[(path, "s", value)] = None

    def walk(obj: dict[str, Any], prefix: str) -> None:
        for name, value in obj.items():
            if not name or "." in name:
                continue  # no dotted path reaches it
            path = prefix + name
            out[(path, "e", None)] = None
            if isinstance(value, dict):
                walk(value, path + ".")
            elif isinstance(value, list):
                for element in value:
                    scalar(path, element)
            else:
                scalar(path, value)

    if payload:
        walk(payload, "")
    return list(out)


def _escaped(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass").replace(b"\0", b"\0\1") + b"\0\0"


def _unescaped(raw: bytes) -> str:
    return raw.replace(b"\0\1", b"\0").decode("utf-8", "surrogatepass")


def decode_string(raw: bytes) -> str:
    """An encoded string value back to str."""
    return _unescaped(raw[:-2])


_DOUBLE, _U64 = struct.Struct(">d"), struct.Struct(">Q")


def _number(value: float) -> bytes:
    bits = _U64.unpack(_DOUBLE.pack(value))[0]
    return _U64.pack(bits ^ 0xFFFF_FFFF_FFFF_FFFF if bits >> 63 else bits | 1 << 63)


def decode_numbers(raw: bytes) -> np.ndarray:
    """Concatenated 8-byte order-preserving numbers back to float64."""
    bits = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
    top = np.uint64(1 << 63)
    return np.where(bits & top, bits ^ top, ~bits).view(np.float64)


def encode_value(tag: str, value: Any) -> bytes:
    """The order-preserving bytes of a value of a column."""
    if tag == "n":
        return _number(as_float(value))
    if tag == "s":
        return _escaped(value)
    if tag == "b":
        return b"\1" if value else b"\0"
    return b""


_HEADS: dict[tuple[str, str], bytes] = {}  # encoded path + tag: payloads repeat their paths
_STRINGS: dict[str, bytes] = {}  # encoded string values: keyword fields repeat theirs


def prefix(path: str, tag: str, value: Any = None) -> bytes:
    """An entry's key without its key8."""
    head = _HEADS.get((path, tag))
    if head is None:
        if len(_HEADS) > 100_000:
            _HEADS.clear()
        head = _HEADS[(path, tag)] = _escaped(path) + tag.encode()
    if tag == "n":
        return head + _number(value)
    if tag == "s":
        encoded = _STRINGS.get(value)
        if encoded is None:
            if len(_STRINGS) > 100_000:
                _STRINGS.clear()
            encoded = _STRINGS[value] = _escaped(value)
        return head + encoded
    return head + (b"" if tag == "e" else b"\1" if value else b"\0")


@dataclass(frozen=True)
class Indexed:
    """What one payload puts in the index: fields for the in-memory mirror, key prefixes for RocksDB."""

    raw: bytes
    fields: tuple[Field, ...]
    prefixes: tuple[bytes, ...]


def indexed(raw: bytes) -> Indexed:
    """The index entries of a stored payload (UTF-8 JSON of an object, or empty)."""
    found = fields(json.loads(raw)) if raw else []
    return Indexed(raw, tuple(found), tuple(prefix(*f) for f in found))


EMPTY_PAYLOAD = indexed(b"")


def entries_to_write(
    keys8: Sequence[bytes], new: Sequence[Indexed], old_records: Sequence[bytes | None], dim: int
) -> tuple[list[bytes], list[bytes]]:
    """The index entries (puts, deletes) of upserted points, removing those of the payloads they replace."""
    puts: list[bytes] = []
    deletes: list[bytes] = []
    for key8, entry, old in zip(keys8, new, old_records, strict=True):
        if old is None:
            puts.append(LIVE + key8)
        elif (old_payload := records.payload(old, dim)) == entry.raw:
            continue  # the same payload: the same entries
        else:
            deletes.extend(stale + key8 for stale in indexed(old_payload).prefixes)
        puts.extend(p + key8 for p in entry.prefixes)
    return puts, deletes


def entries_to_delete(keys8: Sequence[bytes], old_records: Sequence[bytes | None], dim: int) -> list[bytes]:
    """The index entries of deleted points."""
    deletes: list[bytes] = []
    for key8, old in zip(keys8, old_records, strict=True):
        if old is not None:
            deletes.append(LIVE + key8)
            deletes.extend(stale + key8 for stale in indexed(records.payload(old, dim)).prefixes)
    return deletes


def spans(cond: Cond) -> list[tuple[str, Any, bool, Any, bool]]:
    """The column ranges whose union is a positive condition: (tag, low, low incl., high, high incl.)."""
    op, value = cond.op, cond.value
    if op == "$exists":
        return [("e", None, True, None, True)]
    if op in ("$eq", "$ne"):
        return [(_TAGS[kind(value)], value, True, value, True)]
    if op in ("$in", "$nin"):
        return [(_TAGS[kind(v)], v, True, v, True) for v in value]
    tag = _TAGS[kind(value)]
    return {
        "$gt": [(tag, value, False, None, True)],
        "$gte": [(tag, value, True, None, True)],
        "$lt": [(tag, None, True, value, False)],
        "$lte": [(tag, None, True, value, True)],
    }[op]


def _positive(node: Node) -> Node | None:
    """The condition a negation negates ($ne -> $eq, $nin -> $in, $exists false, $not), else None."""
    if isinstance(node, Not):
        return node.child
    if isinstance(node, Cond):
        if node.op == "$ne":
            return Cond(node.path, "$eq", node.value)
        if node.op == "$nin":
            return Cond(node.path, "$in", node.value)
        if node.op == "$exists" and not node.value:
            return Cond(node.path, "$exists", True)
    return None


def evaluate(node: Node, span: Span, live: Callable[[], np.ndarray]) -> np.ndarray:
    """The sorted keys of the live points matching a filter: spans combined by set algebra."""
    if isinstance(node, Or):
        return np.unique(np.concatenate([evaluate(c, span, live) for c in node.children]))
    if isinstance(node, And):
        plain = [evaluate(c, span, live) for c in node.children if _positive(c) is None]
        negated = [p for c in node.children if (p := _positive(c)) is not None]
        plain.sort(key=len)
        result = plain[0] if plain else live()
        for part in plain[1:]:
            result = np.intersect1d(result, part, assume_unique=True)
        for p in negated:
            result = np.setdiff1d(result, evaluate(p, span, live), assume_unique=True)
        return result
    inner = _positive(node)
    if inner is not None:
        return np.setdiff1d(live(), evaluate(inner, span, live), assume_unique=True)
    assert isinstance(node, Cond)
    parts = [span(node.path, *s) for s in spans(node)]
    return np.unique(np.concatenate(parts)) if parts else _EMPTY


def _keys_between(store: CollectionStore, start: bytes, end: bytes) -> np.ndarray:
    """The key8 suffixes of the entries in [start, end), as uint64."""
    assert store.payload_index is not None
    options = ReadOptions()
    options.set_iterate_upper_bound(end)
    found = cast(Iterator[bytes], store.payload_index.keys(from_key=start, read_opt=options))
    raws = [k[-_KEY_BYTES:] for k in found]
    return np.frombuffer(b"".join(raws), dtype=">u8").astype(np.uint64) if raws else _EMPTY


def rocks_span(store: CollectionStore) -> Span:
    """Spans read from the RocksDB index, which reflects every batch written so far."""

    def span(path: str, tag: str, low: Any, low_incl: bool, high: Any, high_incl: bool) -> np.ndarray:
        head = _escaped(path) + tag.encode()
        start = head if low is None else head + encode_value(tag, low) + (b"" if low_incl else _AFTER_ANY_KEY)
        if high is None:
            end = head[:-1] + bytes([head[-1] + 1])
        else:
            end = head + encode_value(tag, high) + (_AFTER_ANY_KEY if high_incl else b"")
        return _keys_between(store, start, end)

    return span


def rocks_match(store: CollectionStore, node: Node) -> np.ndarray:
    """The sorted keys matching a filter, from RocksDB (on the committer: it sees every earlier write)."""
    return evaluate(node, rocks_span(store), lambda: _keys_between(store, LIVE, _LIVE_END))


def columns(store: CollectionStore) -> Iterator[tuple[str, str, np.ndarray, list[bytes]]]:
    """Every column of the RocksDB index in key order: (path, tag, keys, encoded values); path "" is live."""
    assert store.payload_index is not None
    current: tuple[bytes, int] | None = None
    keys: list[bytes] = []
    values: list[bytes] = []

    def flush() -> tuple[str, str, np.ndarray, list[bytes]]:
        assert current is not None
        path, tag = current
        array = np.frombuffer(b"".join(keys), dtype=">u8").astype(np.uint64)
        return (_unescaped(path[:-2]) if path else "", chr(tag), array, values)

    for raw in cast(Iterator[bytes], store.payload_index.keys()):  # noqa: SIM118 - an Rdict is not iterable itself
        if raw.startswith(b"\0\0"):
            column = (b"", raw[2]) if raw[:3] == LIVE else None
            value = b""
        else:
            end = raw.index(b"\0\0") + 2
            column, value = (raw[:end], raw[end]), raw[end + 1 : -_KEY_BYTES]
        if column is None:
            continue  # INDEX_READY
        if column != current:
            if current is not None:
                yield flush()
            current, keys, values = column, [], []
        keys.append(raw[-_KEY_BYTES:])
        values.append(value)
    if current is not None:
        yield flush()


def ensure_complete(storage: Storage, store: CollectionStore) -> bool:
    """Rebuild the index from the points when it is not marked complete (data from before it); True if so."""
    assert store.payload_index is not None
    if store.payload_index.get(INDEX_READY) is not None:
        return False
    cf, dim = store.payload_index_cf, store.config.dim
    batch = storage.batch()
    # One batch: a crash half-way leaves the index unmarked, and the next open starts over.
    batch.delete_range(b"", b"\xff", cf)
    for key8, record in store.items():
        batch.put(LIVE + key8, b"", cf)
        for p in indexed(records.payload(record, dim)).prefixes:
            batch.put(p + key8, b"", cf)
    batch.put(INDEX_READY, b"", cf)
    storage.write(batch)
    storage.flush_wal()
    return True


def check(store: CollectionStore) -> list[str]:
    """Differences between the RocksDB index and the entries the stored payloads call for (empty: consistent)."""
    assert store.payload_index is not None
    dim = store.config.dim
    want = {INDEX_READY}
    for key8, record in store.items():
        want.add(LIVE + key8)
        want.update(p + key8 for p in indexed(records.payload(record, dim)).prefixes)
    have = set(store.payload_index.keys())
    return [f"missing {k!r}" for k in sorted(want - have)[:20]] + [f"stale {k!r}" for k in sorted(have - want)[:20]]
