"""The wire codec: packed matrices, ids and counts to and from protobuf, and the input checks every side shares.

Ids in Python are numpy arrays: dtype uint64 for integer ids, dtype object (str) for string ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from shoal._config import MAX_BATCH_ROWS, MAX_QUERIES, MAX_STRING_ID_BYTES
from shoal._errors import InvalidArgument
from shoal.v1 import types_pb2 as pb

_F32 = np.dtype("<f4")
_U64 = np.dtype("<u8")
_U32 = np.dtype("<u4")
RESERVED_ID = np.uint64(2**64 - 1)  # usearch's marker for a free slot: a point with it could never be found


def encode_matrix(x: np.ndarray) -> pb.Matrix:
    """Pack a 2-D array as little-endian float32, row-major."""
    x = np.ascontiguousarray(x, dtype=_F32)
    if x.ndim != 2:
        raise InvalidArgument(f"expected a 2-D matrix, got shape {x.shape}")
    return pb.Matrix(rows=x.shape[0], dim=x.shape[1], data=x.tobytes())


def decode_matrix(m: pb.Matrix, what: str = "vectors") -> np.ndarray:
    """A read-only (rows, dim) float32 view of a packed matrix, without copying."""
    expected = m.rows * m.dim * 4
    if len(m.data) != expected:
        raise InvalidArgument(
            f"{what}: {len(m.data)} bytes of data do not hold {m.rows} x {m.dim} float32 ({expected} bytes)"
        )
    return np.frombuffer(m.data, dtype=_F32).reshape(m.rows, m.dim)


def as_id_array(ids: Any) -> np.ndarray:
    """Normalise user ids (ints, strings, arrays) to a uint64 or object-of-str array."""
    if isinstance(ids, np.ndarray) and ids.dtype == np.uint64:
        return ids.ravel()
    if isinstance(ids, (str, bytes, int, np.integer)):
        ids = [ids]
    items = list(ids)
    if items and all(isinstance(i, str) for i in items):
        return np.array(items, dtype=object)
    if any(isinstance(i, str) for i in items):
        raise InvalidArgument("ids must be all integers or all strings, not a mix")
    arr = np.asarray(items)
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if arr.dtype.kind not in "iu":
        raise InvalidArgument(f"ids must be integers or strings, got {arr.dtype}")
    if arr.dtype.kind == "i" and (arr < 0).any():
        raise InvalidArgument("integer ids must be non-negative (uint64)")
    return arr.astype(np.uint64).ravel()


def encode_ids(ids: np.ndarray | Sequence[Any]) -> pb.Ids:
    """Pack ids: uint64 as little-endian bytes, strings as a repeated field."""
    arr = as_id_array(ids)
    if arr.dtype == object:
        return pb.Ids(str=list(arr))
    return pb.Ids(u64=arr.astype(_U64, copy=False).tobytes())


def decode_ids(msg: pb.Ids) -> np.ndarray:
    """Unpack ids: a uint64 array, or an object array of str."""
    if msg.str:
        if msg.u64:
            raise InvalidArgument("ids carry both integer and string ids")
        return np.array(list(msg.str), dtype=object)
    if len(msg.u64) % 8:
        raise InvalidArgument(f"packed integer ids are {len(msg.u64)} bytes, not a multiple of 8")
    return np.frombuffer(msg.u64, dtype=_U64)


def encode_counts(counts: np.ndarray) -> bytes:
    """Pack per-query hit counts as little-endian uint32."""
    return np.ascontiguousarray(counts, dtype=_U32).tobytes()


def decode_counts(data: bytes) -> np.ndarray:
    """Unpack per-query hit counts."""
    return np.frombuffer(data, dtype=_U32)


def check_ids(
    ids: np.ndarray, id_type: str | None = None, *, allow_empty: bool = False, max_rows: int | None = MAX_BATCH_ROWS
) -> np.ndarray:
    """Reject empty or oversized batches, duplicates, and ids of the wrong type or size."""
    if len(ids) == 0 and not allow_empty:
        raise InvalidArgument("the batch is empty: give at least one id", field="ids")
    if max_rows is not None and len(ids) > max_rows:
        raise InvalidArgument(
            f"the batch has {len(ids)} ids; at most {MAX_BATCH_ROWS} are allowed per call", field="ids"
        )
    is_str = ids.dtype == object
    if id_type is not None and len(ids) and is_str != (id_type == "string"):
        raise InvalidArgument(
            f"this collection has {id_type} ids, got {'string' if is_str else 'integer'} ids", field="ids"
        )
    if is_str:
        for s in ids:
            if not s or len(s.encode()) > MAX_STRING_ID_BYTES:
                raise InvalidArgument(
                    f"string id {s[:40]!r} must be 1-{MAX_STRING_ID_BYTES} bytes of UTF-8", field="ids"
                )
        if len(set(ids)) != len(ids):
            raise InvalidArgument(f"duplicate id in the batch: {_first_duplicate(ids)!r}", field="ids")
    else:
        if len(np.unique(ids)) != len(ids):
            raise InvalidArgument(f"duplicate id in the batch: {_first_duplicate(ids)}", field="ids")
        if (ids == RESERVED_ID).any():
            raise InvalidArgument(f"id {RESERVED_ID} (2**64 - 1) is reserved", field="ids")
    return ids


def _first_duplicate(ids: np.ndarray) -> Any:
    seen: set[Any] = set()
    for i in ids:
        if i in seen:
            return i.item() if isinstance(i, np.generic) else i
        seen.add(i)
    return None


def check_vectors(x: np.ndarray, dim: int | None = None, what: str = "vectors") -> np.ndarray:
    """Reject a matrix of the wrong dimension or with NaN or Inf."""
    if dim is not None and x.shape[1] != dim:
        raise InvalidArgument(f"{what} have dimension {x.shape[1]}, the collection has dimension {dim}", field=what)
    if not np.isfinite(x).all():
        row = int(np.argwhere(~np.isfinite(x))[0][0])
        raise InvalidArgument(f"{what} row {row} contains NaN or Inf", field=what)
    return x


def check_nonzero(x: np.ndarray, what: str = "vectors") -> np.ndarray:
    """Reject all-zero rows, which have no direction: their cosine distance to anything is meaningless."""
    zero = ~x.any(axis=1)
    if zero.any():
        row = int(np.flatnonzero(zero)[0])
        raise InvalidArgument(f"{what} row {row} is all zeros, which has no cosine distance to anything", field=what)
    return x


def check_queries(queries: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Reject an empty or oversized query batch, a wrong dimension, NaN or Inf."""
    if len(queries) == 0:
        raise InvalidArgument("the query batch is empty: give at least one query", field="queries")
    if len(queries) > MAX_QUERIES:
        raise InvalidArgument(
            f"a search takes at most {MAX_QUERIES} queries per call, got {len(queries)}", field="queries"
        )
    return check_vectors(queries, dim, "queries")


def check_upsert(
    ids: np.ndarray,
    vectors: np.ndarray,
    payloads: Sequence[bytes],
    id_type: str | None = None,
    dim: int | None = None,
    max_rows: int | None = MAX_BATCH_ROWS,
) -> None:
    """All checks of an upsert batch, before anything is written."""
    check_ids(ids, id_type, max_rows=max_rows)
    if len(vectors) != len(ids):
        raise InvalidArgument(f"{len(ids)} ids but {len(vectors)} vectors: they must be the same length")
    if payloads and len(payloads) != len(ids):
        raise InvalidArgument(f"{len(ids)} ids but {len(payloads)} payloads: give one per id, or none")
    check_vectors(vectors, dim)
    check_payloads(payloads)


MAX_JSON_DEPTH = 64  # objects and lists nested in a payload or a filter
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class _JsonRefused(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _JsonRefused(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _JsonRefused(f"{text[:40]} is beyond the float range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _JsonRefused(f"key {twice[:40]!r} appears twice in one object")
    return value


def _depth(value: Any) -> int:
    """How deeply objects and lists nest in a JSON value (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                stack.extend((child, depth + 1) for child in children)
    return deepest


def load_json(raw: str | bytes, what: str, field: str | None = None) -> Any:
    """Strict JSON (as stored and compared everywhere): InvalidArgument naming `what` for NaN, Infinity,
    numbers beyond the float range, duplicate keys, lone surrogates, invalid UTF-8 and deep nesting; `field` is the
    request field it came from."""
    try:
        value = json.loads(
            raw, parse_constant=_refuse_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys
        )
    except RecursionError:
        raise InvalidArgument(f"{what} nests deeper than {MAX_JSON_DEPTH} levels", field=field) from None
    except _JsonRefused as exc:
        raise InvalidArgument(f"{what}: {exc}", field=field) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}", field=field) from None
    text = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise InvalidArgument(
                f"{what} holds a lone surrogate (\\ud800-\\udfff) that is not UTF-8", field=field
            ) from None
    if text.count(b"{") + text.count(b"[") > MAX_JSON_DEPTH and _depth(value) > MAX_JSON_DEPTH:
        raise InvalidArgument(f"{what} nests deeper than {MAX_JSON_DEPTH} levels", field=field)
    return value


def check_payloads(payloads: Sequence[bytes]) -> None:
    """Each payload must be empty (none) or the strict UTF-8 JSON of an object."""
    for i, raw in enumerate(payloads):
        if not raw:
            continue
        value = load_json(raw, f"payload {i}", field=f"payloads[{i}]")
        if not isinstance(value, dict):
            raise InvalidArgument(
                f"payload {i} must be a JSON object, got {type(value).__name__}", field=f"payloads[{i}]"
            )


def encode_payload(payload: dict[str, Any] | None) -> bytes:
    """A payload dict as compact UTF-8 JSON (empty bytes for none)."""
    if payload is None:
        return b""
    if not isinstance(payload, dict):
        raise InvalidArgument(f"a payload must be a dict, got {type(payload).__name__}")
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"payload is not JSON-serialisable: {exc}") from None


def decode_payload(raw: bytes) -> dict[str, Any] | None:
    """The payload dict of stored bytes (None for none)."""
    return json.loads(raw) if raw else None
