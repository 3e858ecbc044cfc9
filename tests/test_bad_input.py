"""Bad input gets its own status code and a message naming the problem, and changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest

import shoal
from shoal._config import MAX_EF, MAX_K, MAX_MESSAGE_BYTES
from shoal._wire import encode_ids, encode_matrix
from shoal.v1 import shoal_pb2_grpc
from shoal.v1 import types_pb2 as pb

DIM = 4
N = 50
X = np.random.default_rng(11).standard_normal((N, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def coll(client: shoal.Client) -> Iterator[str]:
    """A collection of N points that every bad call must leave exactly as it is."""
    client.create_collection("badinput", dim=DIM)
    client.upsert("badinput", ids=np.arange(N), vectors=X, payloads=[{"i": i} for i in range(N)])
    yield "badinput"
    client.drop_collection("badinput")


@pytest.fixture(scope="module")
def stub(cluster: Any) -> Iterator[shoal_pb2_grpc.ShoalStub]:
    """A raw gRPC stub, to send what the SDK would refuse to build."""
    with grpc.insecure_channel(cluster.address, options=[("grpc.max_send_message_length", -1)]) as ch:
        yield shoal_pb2_grpc.ShoalStub(ch)


def unchanged(client: shoal.Client, coll: str) -> None:
    assert client.count(coll) == N
    points = client.get(coll, ids=np.arange(N), with_vectors=True)
    assert [p.id for p in points] == list(range(N))
    assert all(
        p.vector.tobytes() == X[p.id].tobytes() and p.payload == {"i": p.id}  # type: ignore[union-attr]
        for p in points
    )


OVER = MAX_MESSAGE_BYTES // (DIM * 4) + 10  # rows of a message just over the size limit
NAN = X[:2].copy()
NAN[1, 1] = np.nan
INF_Q = X[:1].copy()
INF_Q[0, 0] = np.inf

SDK_CASES: list[tuple[str, Callable[[shoal.Client, str], Any], type[shoal.ShoalError], str]] = [
    (
        "wrong dimension",
        lambda c, n: c.upsert(n, ids=[100], vectors=np.ones((1, DIM + 1))),
        shoal.InvalidArgument,
        "dimension 5, the collection has dimension 4",
    ),
    (
        "wrong query dimension",
        lambda c, n: c.search(n, np.ones((1, DIM + 1)), k=3),
        shoal.InvalidArgument,
        "dimension 5",
    ),
    ("NaN in a vector", lambda c, n: c.upsert(n, ids=[100, 101], vectors=NAN), shoal.InvalidArgument, "NaN or Inf"),
    ("Inf in a query", lambda c, n: c.search(n, INF_Q, k=3), shoal.InvalidArgument, "NaN or Inf"),
    ("empty batch", lambda c, n: c.upsert(n, ids=[], vectors=np.zeros((0, DIM))), shoal.InvalidArgument, "empty"),
    (
        "ids and vectors differ",
        lambda c, n: c.upsert(n, ids=[100, 101], vectors=X[:3]),
        shoal.InvalidArgument,
        "2 ids but 3 vectors",
    ),
    (
        "duplicate id",
        lambda c, n: c.upsert(n, ids=[100, 100], vectors=X[:2]),
        shoal.InvalidArgument,
        "duplicate id in the batch: 100",
    ),
    ("k = 0", lambda c, n: c.search(n, X[:1], k=0), shoal.InvalidArgument, "k must be between 1"),
    ("k too large", lambda c, n: c.search(n, X[:1], k=MAX_K + 1), shoal.InvalidArgument, f"and {MAX_K}"),
    ("unknown collection", lambda c, n: c.upsert("nope", ids=[1], vectors=X[:1]), shoal.NotFound, "nope"),
    ("unknown collection search", lambda c, n: c.search("nope", X[:1]), shoal.NotFound, "nope"),
    ("existing collection", lambda c, n: c.create_collection(n, dim=DIM + 3), shoal.AlreadyExists, "already exists"),
    (
        "payload not an object",
        lambda c, n: c.upsert(n, ids=[100], vectors=X[:1], payloads=[[1, 2]]),  # type: ignore[list-item]
        shoal.InvalidArgument,
        "payload must be a dict",
    ),
    (
        "string ids in an integer collection",
        lambda c, n: c.upsert(n, ids=["a"], vectors=X[:1]),
        shoal.InvalidArgument,
        "uint64 ids, got string",
    ),
    ("empty get", lambda c, n: c.get(n, ids=[]), shoal.InvalidArgument, "empty"),
    ("empty delete", lambda c, n: c.delete(n, ids=[]), shoal.InvalidArgument, "empty"),
    (
        "dimension out of range",
        lambda c, n: c.create_collection("big", dim=20000),
        shoal.InvalidArgument,
        "dim must be between 1 and 16384",
    ),
    ("negative ef", lambda c, n: c.search(n, X[:1], k=3, ef=-1), shoal.InvalidArgument, "ef must be between 0"),
    (
        "zero vector in a cosine collection",
        lambda c, n: c.upsert(n, ids=[100, 101], vectors=np.stack([X[0], np.zeros(DIM)])),
        shoal.InvalidArgument,
        "vectors row 1 is all zeros",
    ),
    (
        "zero query in a cosine collection",
        lambda c, n: c.search(n, np.zeros(DIM), k=3),
        shoal.InvalidArgument,
        "queries row 0 is all zeros",
    ),
    (
        "filter wording",
        lambda c, n: c.count(n, filter={"year": {"$gt": [1]}}),
        shoal.InvalidArgument,
        r"^filter\.year\.\$gt: expected",
    ),
    (
        "unknown metric",
        lambda c, n: c.create_collection("m", dim=3, metric="hamming"),
        shoal.InvalidArgument,
        "metric must be one of",
    ),
]


@pytest.mark.parametrize(("case", "call", "error", "message"), SDK_CASES, ids=[c[0] for c in SDK_CASES])
def test_sdk_raises_the_right_class(
    client: shoal.Client, coll: str, case: str, call: Callable[..., Any], error: type[shoal.ShoalError], message: str
) -> None:
    with pytest.raises(error, match=message) as info:
        call(client, coll)
    assert info.value.code == error.code
    unchanged(client, coll)


def _upsert(coll: str, ids: Any, vectors: np.ndarray, payloads: list[bytes] | None = None) -> pb.UpsertRequest:
    return pb.UpsertRequest(
        collection=coll, ids=encode_ids(ids), vectors=encode_matrix(vectors), payloads=payloads or []
    )


WIRE_CASES: list[tuple[str, Callable[[str], tuple[str, Any]], grpc.StatusCode, str]] = [
    (
        "wrong dimension",
        lambda n: ("Upsert", _upsert(n, [100], np.ones((1, DIM + 1)))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "dimension",
    ),
    ("NaN", lambda n: ("Upsert", _upsert(n, [100, 101], NAN)), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    (
        "empty batch",
        lambda n: ("Upsert", _upsert(n, np.zeros(0, np.uint64), np.zeros((0, DIM)))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "empty",
    ),
    (
        "length mismatch",
        lambda n: ("Upsert", _upsert(n, [100], X[:2])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "1 ids but 2 vectors",
    ),
    ("duplicate id", lambda n: ("Upsert", _upsert(n, [7, 7], X[:2])), grpc.StatusCode.INVALID_ARGUMENT, "duplicate"),
    (
        "payload is a list",
        lambda n: ("Upsert", _upsert(n, [100], X[:1], [b"[1]"])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "payload 0 must be a JSON object",
    ),
    (
        "payload is not JSON",
        lambda n: ("Upsert", _upsert(n, [100, 101], X[:2], [b"{}", b"{nope"])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "payload 1 is not valid JSON",
    ),
    (
        "bytes do not fill the matrix",
        lambda n: (
            "Upsert",
            pb.UpsertRequest(collection=n, ids=encode_ids([100]), vectors=pb.Matrix(rows=1, dim=DIM, data=b"\0" * 3)),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "do not hold",
    ),
    (
        "k = 0",
        lambda n: ("Search", pb.SearchRequest(collection=n, queries=encode_matrix(X[:1]), k=0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "k must be between",
    ),
    (
        "no queries",
        lambda n: ("Search", pb.SearchRequest(collection=n, queries=encode_matrix(X[:0]), k=3)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "empty",
    ),
    ("unknown collection", lambda n: ("Count", pb.CountRequest(collection="nope")), grpc.StatusCode.NOT_FOUND, "nope"),
    *[
        (
            f"raw payload {label}",
            lambda n, raw=raw: ("Upsert", _upsert(n, [100, 101], X[:2], [b"{}", raw])),  # type: ignore[misc]
            grpc.StatusCode.INVALID_ARGUMENT,
            f"payload 1{message}",
        )
        for label, raw, message in (
            ("NaN", b'{"a":NaN}', ": NaN is not a JSON number"),
            ("Infinity", b'{"a":-Infinity}', ": -Infinity is not a JSON number"),
            ("1e400", b'{"a":1e400}', ": 1e400 is beyond the float range"),
            ("lone surrogate", b'{"a":"\\ud800"}', " holds a lone surrogate"),
            ("duplicate keys", b'{"a":1,"b":2,"a":3}', ": key 'a' appears twice"),
            ("1,000 deep", b'{"a":' * 1000 + b"1" + b"}" * 1000, " nests deeper than 64 levels"),
            ("100 deep", b'{"a":' + b"[" * 100 + b"]" * 100 + b"}", " nests deeper than 64 levels"),
        )
    ],
    (
        "filter 2,000 deep",
        lambda n: ("Count", pb.CountRequest(collection=n, filter='{"$not":' * 2000 + '{"a":1}' + "}" * 2000)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "filter nests deeper than 64 levels",
    ),
    (
        "filter with NaN",
        lambda n: ("Count", pb.CountRequest(collection=n, filter='{"a":NaN}')),
        grpc.StatusCode.INVALID_ARGUMENT,
        "filter: NaN is not a JSON number",
    ),
    (
        "negative ef",
        lambda n: ("Search", pb.SearchRequest(collection=n, queries=encode_matrix(X[:1]), k=3, ef=MAX_EF + 1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ef must be between 0",
    ),
    (
        "message over the size limit",
        lambda n: ("Upsert", _upsert(n, np.arange(100, 100 + OVER), np.ones((OVER, DIM)))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    ),
]


@pytest.mark.parametrize(("case", "build", "code", "message"), WIRE_CASES, ids=[c[0] for c in WIRE_CASES])
def test_server_answers_the_right_code(
    client: shoal.Client,
    stub: shoal_pb2_grpc.ShoalStub,
    coll: str,
    case: str,
    build: Callable[[str], tuple[str, Any]],
    code: grpc.StatusCode,
    message: str,
) -> None:
    method, request = build(coll)
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request, timeout=30)
    assert info.value.code() == code, info.value.details()
    assert message in (info.value.details() or "")
    unchanged(client, coll)


@pytest.mark.parametrize(
    ("method", "raw", "field"),
    [
        ("Count", pb.CountRequest(collection="badinpuX").SerializeToString(), "collection name"),
        ("Count", pb.CountRequest(collection="badinput", filter='{"X":1}').SerializeToString(), "filter"),
        ("Delete", pb.DeleteRequest(collection="badinput", ids=pb.Ids(str=["X"])).SerializeToString(), "string id"),
    ],
    ids=["collection name", "filter", "string id"],
)
def test_invalid_utf8_is_an_invalid_argument(
    client: shoal.Client, cluster: Any, coll: str, method: str, raw: bytes, field: str
) -> None:
    bad = raw.replace(b"X", b"\xff")  # not UTF-8: protobuf refuses to decode the message
    with grpc.insecure_channel(cluster.address) as channel:
        call = channel.unary_unary(
            f"/shoal.v1.Shoal/{method}", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        with pytest.raises(grpc.RpcError) as info:
            call(bad, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, info.value.details())
    assert "strings must be UTF-8" in (info.value.details() or "")
    unchanged(client, coll)
