"""Traces across the fan-out: a search is one trace from the caller through the coordinator to every shard.

The coordinator and two shards run in this process on real gRPC servers (so one in-memory exporter sees
every span); the trace context crosses each hop over the wire, as between processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

import shoal
from shoal import _logs, _tracing
from shoal._server import add_standard_services, aio_server, bind
from shoal.coordinator.server import CoordinatorServer
from shoal.coordinator.topology import Topology
from shoal.shard.core import Shard
from shoal.shard.servicer import SEARCH_SPAN, ShardServicer
from shoal.v1 import shard_pb2_grpc

SHARDS = 2


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    _tracing.enable(provider)
    try:
        yield spans
    finally:
        _tracing.disable()


async def _cluster(data: Path) -> AsyncIterator[str]:
    """Two shards and a coordinator on loopback ports in this event loop; yields the coordinator's address."""
    shards, servers = [], []
    try:
        for i in range(SHARDS):
            shard = Shard(data / f"shard-{i}")
            await asyncio.to_thread(shard.open)
            shards.append(shard)
            server = aio_server()
            servicer = ShardServicer(shard)
            shard_pb2_grpc.add_ShardServicer_to_server(servicer, server)
            add_standard_services(server, [])
            servicer.address = bind(server, "127.0.0.1:0")
            await server.start()
            servers.append((server, servicer.address))
        coordinator = CoordinatorServer(Topology.even([a for _, a in servers]), "127.0.0.1:0")
        address = await coordinator.start()
        await coordinator.serving()
        try:
            yield address
        finally:
            await coordinator.stop(grace=1)
    finally:
        for server, _ in servers:
            await server.stop(grace=1)
        for shard in shards:
            await asyncio.to_thread(shard.close)


def _children(spans: list[ReadableSpan], parent: ReadableSpan, name: str) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.name == name and s.parent is not None and s.parent.span_id == parent.context.span_id]


def _check_search_trace(spans: list[ReadableSpan], root: ReadableSpan, server_name: str, filtered: bool) -> None:
    """One trace: root → coordinator span → queue wait, fan-out → each shard's search → its steps; merge."""
    assert root.context is not None
    trace_id = root.context.trace_id
    mine = [s for s in spans if s.context is not None and s.context.trace_id == trace_id]
    (server,) = _children(mine, root, server_name)
    assert len(_children(mine, server, "queue wait")) == 1
    (fan_out,) = _children(mine, server, "fan-out")
    assert len(_children(mine, fan_out, "merge")) == 1
    shard_spans = _children(mine, fan_out, SEARCH_SPAN)
    assert len(shard_spans) == SHARDS  # every shard, each a child of the coordinator's fan-out
    for shard_span in shard_spans:
        assert len(_children(mine, shard_span, "queue wait")) == 1
        (index,) = _children(mine, shard_span, "index search")
        assert index.attributes is not None and index.attributes["shoal.batch_queries"] == 1
        assert len(_children(mine, shard_span, "planner")) == (1 if filtered else 0)


def test_a_search_is_one_trace_across_the_fan_out(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    tracer = TracerProvider().get_tracer("test")  # the application's own tracer, as a client would have

    async def run() -> None:
        async for address in _cluster(tmp_path):
            async with shoal.AsyncClient(address) as client:
                await client.create_collection("t", dim=4)
                rng = np.random.default_rng(0)
                await client.upsert("t", ids=np.arange(40), vectors=rng.random((40, 4)), payloads=[{"a": 1}] * 40)
                exporter.clear()
                with tracer.start_as_current_span("client search") as root:
                    await client.search("t", rng.random(4), k=3)
                with tracer.start_as_current_span("client stream") as stream_root:
                    async for _ in client.search_stream("t", [rng.random(4)], k=3, filter={"a": 1}):
                        pass
                await client.search("t", rng.random(4), k=3)  # outside any span: a trace of its own
            spans = list(exporter.get_finished_spans())
            assert isinstance(root, ReadableSpan) and isinstance(stream_root, ReadableSpan)
            spans += [root, stream_root]
            # A plain search rides the client's search stream (_aio_mux.py): one message, traced alone.
            _check_search_trace(spans, root, "/shoal.v1.Shoal/SearchStream message", filtered=False)
            _check_search_trace(spans, stream_root, "/shoal.v1.Shoal/SearchStream message", filtered=True)
            traces = {s.context.trace_id for s in spans if s.context is not None}
            assert len(traces) == 3

    asyncio.run(run())


def test_an_unsampled_search_makes_no_spans_anywhere(tmp_path: Path) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(spans))
    _tracing.enable(provider)

    async def run() -> None:
        async for address in _cluster(tmp_path):
            async with shoal.AsyncClient(address) as client:
                await client.create_collection("t", dim=4)
                await client.upsert("t", ids=np.arange(10), vectors=np.ones((10, 4)))
                found = await client.search("t", np.ones(4), k=3)
                assert len(found[0]) == 3
                async for _ in client.search_stream("t", [np.ones(4)], k=3):
                    pass

    try:
        asyncio.run(run())
    finally:
        _tracing.disable()
    assert spans.get_finished_spans() == ()


def test_json_logs_carry_the_trace_id(exporter: InMemorySpanExporter) -> None:
    record = logging.LogRecord("shoal.test", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    plain = json.loads(_logs.JsonFormatter().format(record))
    assert plain["message"] == "hello world" and plain["level"] == "INFO" and "trace_id" not in plain
    with _tracing.span("work") as span:
        doc = json.loads(_logs.JsonFormatter().format(record))
    assert doc["trace_id"] == f"{span.get_span_context().trace_id:032x}"


def test_tracing_off_makes_no_spans(tmp_path: Path) -> None:
    assert not _tracing.ENABLED
    assert _tracing.current_trace_id() == "" and _tracing.metadata() == []


def test_the_sampled_flag_is_read_from_traceparent() -> None:
    trace = "00-3c9eb989f0ec4a7bbdff9f378a285f9b-047ee129442814e6"
    assert _tracing.sampled(f"{trace}-01") and _tracing.sampled(f"{trace}-03")
    assert not _tracing.sampled(f"{trace}-00") and not _tracing.sampled(f"{trace}-02") and not _tracing.sampled("")
