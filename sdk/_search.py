"""A search as one value from the SDK to the shard: its shape (what searches share) and its query rows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from shoal._token import Token
from shoal._wire import decode_matrix, encode_matrix
from shoal.v1 import types_pb2 as pb


@dataclass(frozen=True)
class SearchShape:
    """Everything about a search but its query rows: searches of one shape can be answered by one call."""

    collection: str
    k: int
    ef: int = 0  # 0: the collection's ef_search
    filter: str = ""  # the filter's JSON text; "" for none
    with_payload: bool = False
    with_vectors: bool = False


@dataclass(frozen=True)
class Search:
    """A search: its shape, a (q, dim) float32 matrix of queries, and the caller's consistency token."""

    shape: SearchShape
    queries: np.ndarray
    token: Mapping[str, int] = field(default_factory=Token)  # no member behind it answers (empty: any)

    def to_proto(self, request_id: int = 0) -> pb.SearchRequest:
        """The wire form of this search."""
        s = self.shape
        return pb.SearchRequest(
            collection=s.collection,
            queries=encode_matrix(self.queries),
            k=s.k,
            ef=s.ef,
            filter=s.filter,
            with_payload=s.with_payload,
            with_vectors=s.with_vectors,
            request_id=request_id,
            token=self.token,
        )

    @classmethod
    def from_proto(cls, msg: pb.SearchRequest) -> Search:
        """The search a SearchRequest asks for (queries decoded without a copy; not yet validated)."""
        shape = SearchShape(msg.collection, msg.k, msg.ef, msg.filter, msg.with_payload, msg.with_vectors)
        return cls(shape, decode_matrix(msg.queries, "queries"), dict(msg.token))
