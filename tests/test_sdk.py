"""The SDK's conveniences: padding, defaults, payload fields, timeouts, retries, channel options, progress."""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest

import shoal
from shoal.v1 import shoal_pb2_grpc
from shoal.v1 import types_pb2 as pb

PADDING = 2**64 - 1


def test_padding_is_an_id_no_point_can_have(client: shoal.Client, name: str) -> None:
    client.create_collection(name, dim=2, metric="l2")
    client.upsert(name, ids=[0, 50, 7], vectors=[[0, 0], [1, 0], [5, 5]], payloads=[{"t": "a"}, {"t": "a"}, {}])
    res = client.search(name, [0, 0], k=3, filter={"t": "a"})
    assert res.ids.tolist() == [[0, 50, PADDING]] and res.counts.tolist() == [2]
    assert [h.id for h in res[0]] == [0, 50]  # padding left out
    with pytest.raises(shoal.InvalidArgument, match="reserved"):
        client.upsert(name, ids=[PADDING], vectors=[[0, 0]])


def test_string_padding_is_the_empty_id(client: shoal.Client, name: str) -> None:
    client.create_collection(name, dim=2, metric="l2", id_type="string")
    client.upsert(name, ids=["a", "b"], vectors=[[0, 0], [1, 0]])
    res = client.search(name, [0, 0], k=3)
    assert res.ids.tolist() == [["a", "b", ""]] and [h.id for h in res[0]] == ["a", "b"]
    with pytest.raises(shoal.InvalidArgument, match="1-512 bytes"):
        client.upsert(name, ids=[""], vectors=[[0, 0]])


def test_one_default_for_payloads_and_vectors_everywhere() -> None:
    for cls in (shoal.Client, shoal.AsyncClient):
        for method in ("search", "search_stream", "get", "scroll", "scroll_all"):
            params = inspect.signature(getattr(cls, method)).parameters
            assert params["with_payload"].default is True, (cls, method)
            assert params["with_vectors"].default is False, (cls, method)


def test_defaults_return_payloads_and_no_vectors(client: shoal.Client, name: str) -> None:
    client.create_collection(name, dim=2, metric="l2")
    client.upsert(name, ids=[1, 2], vectors=[[0, 0], [1, 0]], payloads=[{"n": 1}, {"n": 2}])
    hit = client.search(name, [0, 0], k=1)[0][0]
    (point,) = client.get(name, [1])
    scrolled = next(p for p in client.scroll(name, limit=2) if p.id == 1)
    for p in (hit, point, scrolled):
        assert p.payload == {"n": 1} and p.vector is None


def test_with_payload_selects_fields(client: shoal.Client, name: str) -> None:
    client.create_collection(name, dim=2, metric="l2")
    doc = {"title": "t", "body": "long text", "meta": {"lang": "en", "size": 3}}
    client.upsert(name, ids=[1], vectors=[[0, 0]], payloads=[doc])
    fields = ["title", "meta.lang", "missing", "body.x"]
    want = {"title": "t", "meta": {"lang": "en"}}
    assert client.search(name, [0, 0], k=1, with_payload=fields)[0][0].payload == want
    assert client.get(name, [1], with_payload=fields)[0].payload == want
    assert client.scroll(name, with_payload=fields).points[0].payload == want
    assert client.get(name, [1], with_payload="body")[0].payload == {"body": "long text"}
    assert client.get(name, [1], with_payload=False)[0].payload is None
    with pytest.raises(shoal.InvalidArgument, match="payload field"):
        client.get(name, [1], with_payload=["a..b"])


def test_collection_exists(client: shoal.Client, name: str) -> None:
    assert not client.collection_exists(name)
    client.create_collection(name, dim=2)
    assert client.collection_exists(name)


def test_progress_bars_show_rate_and_time_left(
    client: shoal.Client, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client.create_collection(name, dim=4)
    n = 5000
    x = np.random.default_rng(0).random((n, 4), dtype=np.float32)
    assert client.upsert(name, ids=np.arange(n), vectors=x, progress=True) == n
    err = capsys.readouterr().err
    assert f"upsert {name}" in err and "100%" in err and "pt/s" in err and "<" in err  # elapsed<remaining
    seen = [p.id for p in client.scroll_all(name, page=1000, with_payload=False, progress=True)]
    assert sorted(seen) == list(range(n))
    err = capsys.readouterr().err
    assert f"scroll {name}" in err and "100%" in err and "pt/s" in err
    assert capsys.readouterr().err == ""
    assert len(list(client.scroll_all(name, page=999, filter=None))) == n  # no bar unless asked


class FakeShoal(shoal_pb2_grpc.ShoalServicer):
    """A coordinator stand-in that fails on cue and uploads at a chosen pace."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        self.unavailable = 0  # calls to fail with UNAVAILABLE before answering
        self.pace = 0.0  # seconds per count and per upload message
        self.stall = threading.Event()  # set: an upload stops reading after its first message
        self.released = threading.Event()

    def _fail(self, method: str, context: grpc.ServicerContext) -> None:
        self.attempts[method] = self.attempts.get(method, 0) + 1
        if self.attempts[method] <= self.unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    def Count(self, request: pb.CountRequest, context: grpc.ServicerContext) -> pb.CountResponse:  # noqa: N802
        self._fail("Count", context)
        self.released.wait(self.pace)
        return pb.CountResponse(count=42)

    def CreateCollection(  # noqa: N802
        self, request: pb.CreateCollectionRequest, context: grpc.ServicerContext
    ) -> pb.CreateCollectionResponse:
        self._fail("CreateCollection", context)
        return pb.CreateCollectionResponse()

    def UpsertStream(  # noqa: N802
        self, request_iterator: Iterator[pb.UpsertRequest], context: grpc.ServicerContext
    ) -> pb.UpsertResponse:
        rows = 0
        for message in request_iterator:
            rows += len(message.ids.u64) // 8
            if self.stall.is_set():
                self.released.wait(30)
            self.released.wait(self.pace)  # a slow but steady server
        return pb.UpsertResponse(upserted=rows)


@pytest.fixture
def fake() -> Iterator[tuple[FakeShoal, str]]:
    servicer = FakeShoal()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    shoal_pb2_grpc.add_ShoalServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        servicer.released.set()
        server.stop(None)


def test_a_call_timeout_overrides_the_clients(fake: tuple[FakeShoal, str]) -> None:
    servicer, address = fake
    servicer.pace = 0.5  # every answer takes this long
    with shoal.Client(address, timeout=0.05) as hasty:
        with pytest.raises(shoal.DeadlineExceeded):
            hasty.count("c")
        assert hasty.count("c", timeout=None) == 42 and hasty.count("c", timeout=30) == 42
    with shoal.Client(address) as patient, pytest.raises(shoal.DeadlineExceeded):
        patient.count("c", timeout=0.05)


def test_idempotent_calls_are_retried_on_unavailable(fake: tuple[FakeShoal, str]) -> None:
    servicer, address = fake
    servicer.unavailable = 2
    with shoal.Client(address) as c:
        assert c.count("c") == 42 and servicer.attempts["Count"] == 3
        with pytest.raises(shoal.Unavailable):
            c.create_collection("c", dim=2)  # not idempotent: a repeat could answer ALREADY_EXISTS
        assert servicer.attempts["CreateCollection"] == 1
    servicer.unavailable, servicer.attempts = 10, {}
    with shoal.Client(address) as c, pytest.raises(shoal.Unavailable):
        c.count("c")
    assert servicer.attempts["Count"] == 5  # then it gives up


def test_the_async_client_retries_too(fake: tuple[FakeShoal, str]) -> None:
    servicer, address = fake
    servicer.unavailable = 1

    async def body() -> None:
        async with shoal.AsyncClient(address) as c:
            assert await c.count("c") == 42 and servicer.attempts["Count"] == 2

    asyncio.run(body())


def test_channel_options_replace_the_defaults(client: shoal.Client, cluster: Any, name: str) -> None:
    client.create_collection(name, dim=64)
    client.upsert(name, ids=np.arange(10), vectors=np.ones((10, 64), np.float32))
    with shoal.Client(cluster.address, options=[("grpc.max_receive_message_length", 1000)]) as small:
        assert small.count(name) == 10
        with pytest.raises(shoal.ResourceExhausted):
            small.get(name, np.arange(10), with_vectors=True)


def _big_upload(c: shoal.Client, batches: int) -> int:
    x = np.zeros((batches * 256, 1024), np.float32)  # 1 MB messages: flow control paces the sender
    return c.upsert("c", ids=np.arange(len(x)), vectors=x)


@pytest.mark.slow  # outlasts its timeout on purpose
def test_an_upload_longer_than_the_timeout_succeeds_while_it_progresses(fake: tuple[FakeShoal, str]) -> None:
    servicer, address = fake
    servicer.pace = 0.05
    with shoal.Client(address, timeout=0.6, batch_rows=256) as c:
        start = time.monotonic()
        assert _big_upload(c, 40) == 40 * 256
        assert time.monotonic() - start > 1.2  # well past the timeout, as the upload kept going


def test_an_upload_that_stops_progressing_fails(fake: tuple[FakeShoal, str]) -> None:
    servicer, address = fake
    servicer.stall.set()
    with shoal.Client(address, timeout=0.5, batch_rows=256) as c:
        start = time.monotonic()
        with pytest.raises(shoal.DeadlineExceeded, match="no progress for 0.5 s"):
            _big_upload(c, 40)
        assert time.monotonic() - start < 20


def test_an_async_upload_that_stops_progressing_fails(fake: tuple[FakeShoal, str]) -> None:
    servicer, address = fake
    servicer.stall.set()

    async def body() -> None:
        async with shoal.AsyncClient(address, timeout=0.5, batch_rows=256) as c:
            x = np.zeros((40 * 256, 1024), np.float32)
            with pytest.raises(shoal.DeadlineExceeded, match="no progress"):
                await c.upsert("c", ids=np.arange(len(x)), vectors=x)

    asyncio.run(body())


def test_version() -> None:
    out = subprocess.run([sys.executable, "-m", "shoal", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"shoal {importlib.metadata.version('shoal')}"
    assert shoal.__version__ == importlib.metadata.version("shoal")


def test_an_async_copy_has_the_address_options_credentials_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal import _rpc

    opened: list[tuple[str, tuple[tuple[str, Any], ...], shoal.TLS | None]] = []

    def channel(address: str, options: Any = (), tls: shoal.TLS | None = None) -> grpc.aio.Channel:
        opened.append((address, tuple(options), tls))
        return grpc.aio.insecure_channel(address)

    monkeypatch.setattr(_rpc, "aio_client_channel", channel)
    for variable in ("SHOAL_API_KEY", "SHOAL_TLS_CA", "SHOAL_TLS_CERT", "SHOAL_TLS_KEY"):  # set by --secure runs
        monkeypatch.delenv(variable, raising=False)
    options = [("grpc.lb_policy_name", "round_robin")]
    tls = shoal.TLS()
    secure = shoal.Client("dns:///coordinators:7070", timeout=3.0, batch_rows=99, options=options, api_key="k", tls=tls)
    plain = shoal.Client("127.0.0.1:7070", tls=False)
    # Set after the plaintext client was made: its copy must stay plaintext and keyless, as the client is.
    monkeypatch.setenv("SHOAL_TLS_CA", "/nonexistent/ca.pem")
    monkeypatch.setenv("SHOAL_API_KEY", "shoal_later_key")

    async def body() -> None:
        for client in (secure, plain):
            copy = client._async_copy()
            assert isinstance(copy, shoal.AsyncClient)
            assert (copy.address, copy.timeout, copy.batch_rows) == (client.address, client.timeout, client.batch_rows)
            assert copy._metadata == client._metadata
            await copy.close()

    asyncio.run(body())
    assert [o[0] for o in opened] == ["dns:///coordinators:7070", "127.0.0.1:7070"]
    assert opened[0][1:] == (tuple(options), tls) and opened[1][1:] == ((), None)
    assert secure._metadata and not plain._metadata
    for client in (secure, plain):
        client.close()
    with grpc.insecure_channel("127.0.0.1:1") as given, pytest.raises(shoal.InvalidArgument, match="channel passed in"):
        shoal.Client("x", channel=given)._async_copy()
