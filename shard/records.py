"""The stored record of a point: its vector (dim float32 little-endian) followed by its payload JSON (maybe empty).

The one module that knows this layout: every reader and writer of the points column family packs and
unpacks records here, one at a time or many at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_F32 = np.dtype("<f4")


def row_bytes(dim: int) -> int:
    """The bytes a vector of `dim` takes in a record."""
    return dim * _F32.itemsize


def pack(vector: bytes, payload: bytes) -> bytes:
    """One record of a vector's raw bytes and a payload."""
    return vector + payload


def pack_many(vectors: np.ndarray, payloads: Sequence[bytes]) -> list[bytes]:
    """The records of an (n, dim) float32 matrix and n payloads (none given: all empty)."""
    raw = np.ascontiguousarray(vectors, dtype=_F32).tobytes()
    row = vectors.shape[1] * _F32.itemsize
    if not payloads:
        return [raw[i : i + row] for i in range(0, len(raw), row)] if row else [b""] * len(vectors)
    return [raw[i * row : (i + 1) * row] + p for i, p in enumerate(payloads)]


def vector_bytes(record: bytes, dim: int) -> bytes:
    """The raw vector bytes of a record."""
    return record[: dim * _F32.itemsize]


def payload(record: bytes, dim: int) -> bytes:
    """The payload JSON of a record (b"" when it has none)."""
    return record[dim * _F32.itemsize :]


def with_payload(record: bytes, dim: int, new: bytes) -> bytes:
    """The record with its payload replaced."""
    return record[: dim * _F32.itemsize] + new


def vectors(records: Sequence[bytes], dim: int) -> np.ndarray:
    """The (n, dim) float32 matrix of many records' vectors."""
    row = dim * _F32.itemsize
    return np.frombuffer(b"".join(r[:row] for r in records), _F32).reshape(len(records), dim)


def payloads(records: Sequence[bytes], dim: int) -> list[bytes]:
    """The payloads of many records."""
    row = dim * _F32.itemsize
    return [r[row:] for r in records]
