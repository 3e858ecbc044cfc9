"""Errors as google.rpc.Status: BadRequest field violations for bad input, RetryInfo where a retry helps."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

import shoal
from shoal._errors import from_status, to_status
from shoal._local import LocalCluster
from shoal._rpc import channel
from shoal._server import abort_status, error_status
from shoal.v1 import shoal_pb2_grpc
from shoal.v1 import types_pb2 as pb


def _details(status: status_pb2.Status) -> tuple[list[str], float | None]:
    fields, delay = [], None
    for any_ in status.details:
        if any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
        if any_.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            any_.Unpack(retry)
            delay = retry.retry_delay.ToNanoseconds() / 1e9
    return fields, delay


def test_the_translator_adds_field_violations_and_retry_info() -> None:
    bad = error_status(shoal.InvalidArgument("k must be between 1 and 1024, got 0", field="k"), "/m")
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and bad.message.startswith("k must")
    assert _details(bad) == (["k"], None)
    down = error_status(shoal.Unavailable("shard 1 is unavailable"), "/m")
    assert _details(down) == ([], 0.1)
    assert _details(error_status(shoal.NotFound("no collection x"), "/m")) == ([], None)
    hidden = error_status(KeyError("secret detail"), "/m")
    assert hidden.code == grpc.StatusCode.INTERNAL.value[0] and "secret" not in str(hidden) and not hidden.details


def test_unavailable_answers_stop_automatic_retries() -> None:
    # The server already waited out the outage: gRPC's client retries are for calls that reached no server.
    code, _, trailers = abort_status(shoal.Unavailable("shard 1 is unavailable"), "/m")
    assert code == grpc.StatusCode.UNAVAILABLE and ("grpc-retry-pushback-ms", "-1") in trailers
    status = status_pb2.Status.FromString(dict(trailers)["grpc-status-details-bin"])
    assert _details(status) == ([], 0.1)
    _, _, trailers = abort_status(shoal.InvalidArgument("bad", field="k"), "/m")
    assert "grpc-retry-pushback-ms" not in dict(trailers)


def test_a_status_round_trips_to_the_same_error() -> None:
    for exc in (
        shoal.InvalidArgument("filter.year.$gt: expected a number", field="filter.year.$gt"),
        shoal.Unavailable("later", retry_after=1.5),
        shoal.NotFound("gone"),
    ):
        back = from_status(to_status(exc))
        assert (type(back), back.message, back.field, back.retry_after) == (
            type(exc),
            exc.message,
            exc.field,
            exc.retry_after,
        )


def test_bad_input_names_its_field_on_the_wire(cluster: LocalCluster, client: shoal.Client, name: str) -> None:
    client.create_collection(name, dim=4)
    with channel(cluster.address, cluster.tls) as ch:
        stub = shoal_pb2_grpc.ShoalStub(ch)
        bad_k = pb.SearchRequest(collection=name, k=0)
        bad_filter = pb.CountRequest(collection=name, filter='{"year": {"$gt": [1]}}')
        for call, request, field in ((stub.Search, bad_k, "k"), (stub.Count, bad_filter, "filter.year.$gt")):
            with pytest.raises(grpc.RpcError) as info:
                call(request, timeout=30, metadata=client._metadata)
            status = rpc_status.from_call(info.value)
            assert status is not None and status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert _details(status)[0] == [field]


def test_the_sdk_raises_with_the_servers_field(client: shoal.Client, name: str) -> None:
    client.create_collection(name, dim=4)
    with pytest.raises(shoal.InvalidArgument) as info:
        client.search(name, np.zeros(3, np.float32), k=1)  # the SDK cannot know the dimension: a shard checks it
    assert info.value.field == "queries" and "dimension 4" in info.value.message
    with pytest.raises(shoal.InvalidArgument) as info:
        client.search(name, np.zeros(4), k=1, filter={"year": {"$gt": [1]}})  # checked before sending
    assert info.value.field == "filter.year.$gt"


def test_a_stream_answer_carries_a_rich_status(client: shoal.Client, name: str) -> None:
    client.create_collection(name, dim=4)
    client.upsert(name, ids=[1], vectors=np.ones((1, 4)))
    results = client.search_stream(name, [np.ones(4), np.ones(3)], k=1)
    assert [h.id for h in next(results)[0]] == [1]
    with pytest.raises(shoal.InvalidArgument) as info:
        next(results)
    assert info.value.field == "queries"
