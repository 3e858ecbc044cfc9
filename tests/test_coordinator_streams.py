"""The coordinator's UpsertStream over raw gRPC: messages are pipelined, yet a later one still wins per id."""

from __future__ import annotations

import grpc
import numpy as np

import shoal
from shoal._rpc import channel
from shoal._wire import encode_ids, encode_matrix
from shoal.v1 import shoal_pb2_grpc
from shoal.v1 import types_pb2 as pb


def test_upsert_stream_applies_a_later_message_after_an_earlier_one_with_the_same_ids(
    client: shoal.Client, name: str
) -> None:
    client.create_collection(name, dim=2)
    ids = np.arange(50, dtype=np.uint64)

    def message(first: int, count: int, value: float) -> pb.UpsertRequest:
        part = ids[first : first + count]
        return pb.UpsertRequest(
            collection=name, ids=encode_ids(part), vectors=encode_matrix(np.full((len(part), 2), value, np.float32))
        )

    # Message 2 shares no id with 1 (they may run together); 3 and 4 rewrite ids of 1 and 2 and must win.
    messages = [message(0, 20, 1.0), message(20, 30, 2.0), message(10, 20, 3.0), message(0, 5, 4.0)]
    with channel(client.address) as ch:
        reply = shoal_pb2_grpc.ShoalStub(ch).UpsertStream(iter(messages), timeout=30)
    assert reply.upserted == 75
    got = {p.id: float(p.vector[0]) for p in client.get(name, ids=ids, with_vectors=True)}  # type: ignore[index]
    assert [got[i] for i in range(50)] == [4.0] * 5 + [1.0] * 5 + [3.0] * 20 + [2.0] * 20


def test_upsert_stream_fails_on_a_bad_message(client: shoal.Client, name: str) -> None:
    client.create_collection(name, dim=2)
    good = pb.UpsertRequest(
        collection=name,
        ids=encode_ids(np.arange(3, dtype=np.uint64)),
        vectors=encode_matrix(np.ones((3, 2), np.float32)),
    )
    bad = pb.UpsertRequest(
        collection=name,
        ids=encode_ids(np.arange(3, 5, dtype=np.uint64)),
        vectors=encode_matrix(np.ones((2, 3), np.float32)),
    )
    with channel(client.address) as ch:
        try:
            shoal_pb2_grpc.ShoalStub(ch).UpsertStream(iter([good, bad, good]), timeout=30)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        else:
            raise AssertionError("a message of the wrong dimension must fail the stream")
