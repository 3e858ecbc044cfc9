"""The SDK's types: what its methods take (the `...Like` aliases) and the value objects they return."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np

from shoal._config import CollectionConfig
from shoal._wire import decode_counts, decode_ids, decode_matrix, decode_payload
from shoal.v1 import types_pb2 as pb

PointId = int | str
# What the methods take: numpy arrays or plain Python sequences, converted once per call.
VectorsLike: TypeAlias = np.ndarray | Sequence[float] | Sequence[Sequence[float]]  # (n, dim) rows or one (dim,)
IdsLike: TypeAlias = np.ndarray | Iterable[int] | Iterable[str] | int | str  # all integers or all strings
PayloadLike: TypeAlias = dict[str, Any]  # a JSON object
FilterLike: TypeAlias = dict[str, Any]  # a MongoDB-style filter over payload fields (README "Filtered search")
# True: the whole payload; False: none; a list of dotted paths (or one path): only those fields.
WithPayloadLike: TypeAlias = bool | Sequence[str] | str
Fields: TypeAlias = tuple[str, ...] | None  # the dotted paths of payload fields kept; None keeps them all


def select_fields(payload: dict[str, Any] | None, fields: Fields) -> dict[str, Any] | None:
    """Only the given dotted paths of a payload (nested as they were), or all of it when `fields` is None."""
    if payload is None or fields is None:
        return payload
    out: dict[str, Any] = {}
    for path in fields:
        *parents, leaf = path.split(".")
        source: Any = payload
        for name in parents:
            source = source.get(name) if isinstance(source, dict) else None
        if not isinstance(source, dict) or leaf not in source:
            continue
        target = out
        for name in parents:
            target = target.setdefault(name, {})
        target[leaf] = source[leaf]
    return out


@dataclass(frozen=True)
class Point:
    """A stored point: its id, vector (float32) and payload."""

    id: PointId
    vector: np.ndarray | None
    payload: dict[str, Any] | None


@dataclass(frozen=True)
class Hit:
    """One search result: the id, its distance (smaller is nearer), and on request payload and vector."""

    id: PointId
    distance: float
    payload: dict[str, Any] | None = None
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class SearchResult:
    """Results of a batch of queries: `ids` and `distances` are (q, k), nearest first.

    Query i has `counts[i]` real hits; columns after them are padding: id 2**64 - 1 (reserved, never a point's
    id) or "" (never a string id), distance inf. `result[i]` gives query i's real hits as a list
    of `Hit`, padding left out. `plan` tells how each shard ran a filtered
    search (debug output, e.g. "exact(matches=120)" or "hnsw(matches=9000,k'=40)").
    """

    ids: np.ndarray
    distances: np.ndarray
    counts: np.ndarray
    payloads: list[bytes] = field(default_factory=list, repr=False)
    vectors: np.ndarray | None = field(default=None, repr=False)
    plan: str = ""
    fields: Fields = field(default=None, repr=False)  # the payload fields `result[i]` keeps (None: all)

    @classmethod
    def from_proto(cls, msg: pb.SearchResponse, fields: Fields = None) -> SearchResult:
        """Decode a SearchResponse without copying the packed arrays."""
        distances = decode_matrix(msg.distances, "distances")
        q, k = distances.shape
        ids = decode_ids(msg.ids).reshape(q, k)
        vectors = decode_matrix(msg.vectors).reshape(q, k, -1) if msg.vectors.rows else None
        return cls(
            ids=ids,
            distances=distances,
            counts=decode_counts(msg.counts),
            payloads=list(msg.payloads),
            vectors=vectors,
            plan=msg.plan,
            fields=fields,
        )

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, i: int) -> list[Hit]:
        k = self.ids.shape[1]
        hits = []
        for j in range(int(self.counts[i])):
            payload = select_fields(decode_payload(self.payloads[i * k + j]), self.fields) if self.payloads else None
            vector = self.vectors[i, j] if self.vectors is not None else None
            hits.append(Hit(_plain(self.ids[i, j]), float(self.distances[i, j]), payload, vector))
        return hits

    def __iter__(self) -> Iterator[list[Hit]]:
        return (self[i] for i in range(len(self)))


@dataclass(frozen=True)
class ShardStats:
    """One shard's share of a collection."""

    address: str
    count: int
    memory_bytes: int


@dataclass(frozen=True)
class CollectionInfo:
    """A collection's config and its size on every shard."""

    config: CollectionConfig
    count: int
    shards: list[ShardStats]

    @property
    def name(self) -> str:
        """The collection's name."""
        return self.config.name

    @property
    def dim(self) -> int:
        """The vectors' dimension."""
        return self.config.dim

    @property
    def memory_bytes(self) -> int:
        """Index memory over all shards."""
        return sum(s.memory_bytes for s in self.shards)

    @classmethod
    def from_proto(cls, msg: pb.CollectionInfo) -> CollectionInfo:
        """Decode a CollectionInfo message."""
        return cls(
            config=CollectionConfig.from_proto(msg.config),
            count=msg.count,
            shards=[ShardStats(s.address, s.count, s.memory_bytes) for s in msg.shards],
        )


def _plain(value: Any) -> PointId:
    """A numpy scalar id as a plain int (strings stay strings)."""
    return value if isinstance(value, str) else int(value)


@dataclass(frozen=True)
class ScrollPage:
    """One page of a scroll: its points, and the cursor of the next page (None after the last)."""

    points: list[Point]
    next_cursor: str | None

    @classmethod
    def from_proto(cls, msg: pb.ScrollResponse, fields: Fields = None) -> ScrollPage:
        """Decode a ScrollResponse, keeping only `fields` of each payload (None: all)."""
        return cls(points_from_proto(msg, fields), msg.next_cursor or None)

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self) -> Iterator[Point]:
        return iter(self.points)


def points_from_proto(msg: pb.GetResponse | pb.ScrollResponse, fields: Fields = None) -> list[Point]:
    """Decode a GetResponse into points, in the order the server answered, keeping only `fields` of payloads."""
    ids = decode_ids(msg.ids)
    vectors = decode_matrix(msg.vectors) if msg.vectors.rows else None
    return [
        Point(
            _plain(pid),
            vectors[i] if vectors is not None else None,
            select_fields(decode_payload(msg.payloads[i]), fields) if msg.payloads else None,
        )
        for i, pid in enumerate(ids)
    ]
