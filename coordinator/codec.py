"""Search and get results to and from their wire form, checking that a shard's answer has the right shape."""

from __future__ import annotations

import numpy as np

from shoal._wire import decode_counts, decode_ids, decode_matrix, encode_counts, encode_ids, encode_matrix
from shoal.coordinator.merge import Found, TopK
from shoal.coordinator.topology import Topology
from shoal.v1 import types_pb2 as pb


def topk_from_proto(msg: pb.SearchResponse, queries: int, with_payload: bool = False) -> TopK:
    """A shard's search answer as a TopK of `queries` rows; ValueError when its parts do not fit together.

    With `with_payload`, an answer without payloads gets empty ones, so the merged answer always has them.
    """
    k = msg.k
    cells = queries * k
    ids = decode_ids(msg.ids)
    if len(ids) != cells:
        raise ValueError(f"{len(ids)} ids for {queries} queries x k={k}")
    distances = decode_matrix(msg.distances, "distances")
    if distances.size != cells:
        raise ValueError(f"{distances.size} distances for {queries} queries x k={k}")
    counts = decode_counts(msg.counts)
    if len(counts) != queries:
        raise ValueError(f"{len(counts)} counts for {queries} queries")
    payloads = None
    if msg.payloads:
        if len(msg.payloads) != cells:
            raise ValueError(f"{len(msg.payloads)} payloads for {queries} queries x k={k}")
        payloads = _object_array(list(msg.payloads)).reshape(queries, k)
    elif with_payload:
        payloads = np.full((queries, k), b"", dtype=object)
    vectors = None
    if msg.vectors.rows or msg.vectors.dim:
        flat = decode_matrix(msg.vectors, "result vectors")
        if len(flat) != cells:
            raise ValueError(f"{len(flat)} result vectors for {queries} queries x k={k}")
        vectors = flat.reshape(queries, k, flat.shape[1])
    return TopK(ids.reshape(queries, k), distances.reshape(queries, k), counts, payloads, vectors)


def topk_to_proto(result: TopK, request_id: int = 0) -> pb.SearchResponse:
    """The wire answer of a merged search."""
    q, k = result.queries, result.k
    if result.ids.dtype == object:
        ids = pb.Ids(str=result.ids.ravel().tolist())
    else:
        ids = pb.Ids(u64=np.ascontiguousarray(result.ids, dtype="<u8").tobytes())
    msg = pb.SearchResponse(
        k=k,
        ids=ids,
        distances=encode_matrix(result.distances.reshape(q, k)),
        counts=encode_counts(result.counts),
        request_id=request_id,
    )
    if result.payloads is not None:
        msg.payloads.extend(result.payloads.ravel().tolist())
    if result.vectors is not None:
        msg.vectors.CopyFrom(encode_matrix(result.vectors.reshape(q * k, result.vectors.shape[2])))
    return msg


def found_from_proto(msg: pb.GetResponse, with_vectors: bool, with_payload: bool) -> Found:
    """A shard's get answer; ValueError when its vectors or payloads do not match its ids."""
    ids = decode_ids(msg.ids)
    vectors = None
    if with_vectors:
        vectors = decode_matrix(msg.vectors, "found vectors")
        if len(vectors) != len(ids):
            raise ValueError(f"{len(vectors)} vectors for {len(ids)} found ids")
    payloads = None
    if with_payload:
        if len(msg.payloads) not in (0, len(ids)):
            raise ValueError(f"{len(msg.payloads)} payloads for {len(ids)} found ids")
        payloads = _object_array(list(msg.payloads) or [b""] * len(ids))
    return Found(ids, vectors, payloads)


def found_to_proto(found: Found) -> pb.GetResponse:
    """The wire answer of a get."""
    msg = pb.GetResponse(ids=encode_ids(found.ids))
    if found.vectors is not None:
        msg.vectors.CopyFrom(encode_matrix(found.vectors))
    if found.payloads is not None:
        msg.payloads.extend(found.payloads.tolist())
    return msg


def topology_to_proto(topology: Topology) -> pb.TopologyInfo:
    """The wire form of a topology: its version and every slot range with its shard's address."""
    return pb.TopologyInfo(
        version=topology.version,
        shards=[pb.ShardRange(address=r.address, slot_start=r.start, slot_end=r.end) for r in topology.ranges],
    )


def _object_array(items: list[bytes]) -> np.ndarray:
    # np.array(list_of_bytes) would make a fixed-width bytes array that strips trailing zero bytes.
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
