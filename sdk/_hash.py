"""The pinned hash that places every id in one of 4096 slots, identical in every process and version."""

from __future__ import annotations

import hashlib

import numpy as np

from shoal._config import SLOTS

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def hash_u64(ids: np.ndarray) -> np.ndarray:
    """splitmix64 of each uint64 id, vectorised (wrapping arithmetic)."""
    z = np.asarray(ids, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def hash_str(ids: list[str] | np.ndarray) -> np.ndarray:
    """blake2b (8 bytes, little-endian) of each string id's UTF-8 bytes."""
    out = np.empty(len(ids), dtype=np.uint64)
    for i, s in enumerate(ids):
        out[i] = int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
    return out


def slots_of(ids: np.ndarray | list[str]) -> np.ndarray:
    """The slot (0..4095) of each id: uint64 arrays by splitmix64, strings by blake2b."""
    h = hash_u64(ids) if isinstance(ids, np.ndarray) and ids.dtype == np.uint64 else hash_str(ids)
    return (h % np.uint64(SLOTS)).astype(np.int64)
