"""The public Shoal service: decode, call the core, encode (the error interceptor maps exceptions)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator

import grpc
import numpy as np

from shoal import _tracing
from shoal._config import CollectionConfig
from shoal._errors import ResourceExhausted
from shoal._results import check_answer_size, found_to_proto, page_to_proto, topk_to_proto
from shoal._search import Search
from shoal._server import error_status
from shoal._wire import decode_ids, decode_matrix
from shoal.coordinator.batcher import Answer
from shoal.coordinator.core import Coordinator
from shoal.coordinator.topology import topology_to_proto
from shoal.v1 import shoal_pb2_grpc
from shoal.v1 import types_pb2 as pb

log = logging.getLogger("shoal.coordinator")

# Searches of one SearchStream in flight or answered but not yet sent; beyond it the stream stops reading
# (backpressure).
STREAM_WINDOW = 64
# The span of one search of a stream (the stream itself is not one span: its messages are different traces).
STREAM_SPAN = "/shoal.v1.Shoal/SearchStream message"
# Seconds a shard has to answer a status call before its row says unreachable.
STATUS_TIMEOUT = 3.0
# Messages of one UpsertStream being applied at once.
UPSERT_WINDOW = 2


def _timeout(context: grpc.aio.ServicerContext) -> float | None:
    """The seconds left before the caller's deadline (None without one)."""
    remaining: float | None = context.time_remaining()
    return remaining


class ShoalServicer(shoal_pb2_grpc.ShoalServicer):
    """The Shoal service of a coordinator, over a Coordinator core."""

    def __init__(self, core: Coordinator, address: str = "", metrics_address: str = "") -> None:
        self._core = core
        self.address = address  # this coordinator's own row in GetStatus
        self.metrics_address = metrics_address

    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCollectionResponse:
        config = CollectionConfig.from_proto(request.config)
        info = await self._core.create_collection(config, _timeout(context))
        return pb.CreateCollectionResponse(info=info, created=True)

    async def DropCollection(
        self, request: pb.DropCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DropCollectionResponse:
        await self._core.drop_collection(request.name, _timeout(context))
        return pb.DropCollectionResponse(dropped=True)

    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCollectionsResponse:
        return pb.ListCollectionsResponse(names=await self._core.list_collections(_timeout(context)))

    async def DescribeCollection(
        self, request: pb.DescribeCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CollectionInfo:
        return await self._core.describe_collection(request.name, _timeout(context))

    async def GetTopology(self, request: pb.GetTopologyRequest, context: grpc.aio.ServicerContext) -> pb.TopologyInfo:
        return topology_to_proto(self._core.topology)

    async def GetStatus(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.ClusterStatus:
        # Each shard gets at most STATUS_TIMEOUT, so one frozen shard cannot hold the whole answer back.
        remaining = _timeout(context)
        timeout = STATUS_TIMEOUT if remaining is None else min(STATUS_TIMEOUT, remaining)
        me = pb.ProcessStatus(
            role="coordinator", address=self.address, state="SERVING", metrics_address=self.metrics_address
        )
        shards = await self._core.status(timeout)
        return pb.ClusterStatus(topology_version=self._core.topology.version, processes=[me, *shards])

    async def Upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.UpsertResponse:
        return pb.UpsertResponse(upserted=await self._upsert(request, context))

    async def UpsertStream(
        self, request_iterator: AsyncIterator[pb.UpsertRequest], context: grpc.aio.ServicerContext
    ) -> pb.UpsertResponse:
        total = 0
        # Up to UPSERT_WINDOW messages are applied at once, so each shard works through its share at its own
        # pace instead of waiting for the slowest shard after every message; a message that shares an id with
        # one still running waits for it, so a later message still overwrites an earlier one.
        running: dict[asyncio.Task[int], np.ndarray] = {}
        try:
            async for request in request_iterator:
                ids = decode_ids(request.ids)
                while running and (
                    len(running) >= UPSERT_WINDOW or any(_share_ids(ids, other) for other in running.values())
                ):
                    done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        del running[task]
                        total += task.result()
                running[asyncio.create_task(self._upsert(request, context, ids))] = ids
            for task in list(running):
                total += await task
                del running[task]
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        return pb.UpsertResponse(upserted=total)

    async def _upsert(
        self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext, ids: np.ndarray | None = None
    ) -> int:
        ids = decode_ids(request.ids) if ids is None else ids
        return await self._core.upsert(
            request.collection, ids, decode_matrix(request.vectors), request.payloads, _timeout(context)
        )

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        found = await self._core.get(
            request.collection, decode_ids(request.ids), request.with_vectors, request.with_payload, _timeout(context)
        )
        return found_to_proto(found)

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        deleted = await self._core.delete(
            request.collection, decode_ids(request.ids), _timeout(context), request.filter
        )
        return pb.DeleteResponse(deleted=deleted)

    async def Count(self, request: pb.CountRequest, context: grpc.aio.ServicerContext) -> pb.CountResponse:
        return pb.CountResponse(count=await self._core.count(request.collection, _timeout(context), request.filter))

    async def Scroll(self, request: pb.ScrollRequest, context: grpc.aio.ServicerContext) -> pb.ScrollResponse:
        page = await self._core.scroll(
            request.collection,
            request.filter,
            request.limit,
            request.cursor,
            request.with_payload,
            request.with_vectors,
            _timeout(context),
        )
        return page_to_proto(page)

    async def SetPayload(
        self, request: pb.SetPayloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetPayloadResponse:
        updated = await self._core.set_payload(
            request.collection, decode_ids(request.ids), request.set, list(request.unset), _timeout(context)
        )
        return pb.SetPayloadResponse(updated=updated)

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        answer = await self._core.submit_search(Search.from_proto(request), _timeout(context))
        return _answer_to_proto(answer, request.request_id)

    async def SearchStream(
        self, request_iterator: AsyncIterator[pb.SearchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SearchResponse]:
        answers: asyncio.Queue[pb.SearchResponse | None] = asyncio.Queue()  # None: no more answers
        window = asyncio.Semaphore(STREAM_WINDOW)
        # Each search is a future with a callback rather than a task: a stream of single queries is the
        # hottest path there is, and a task per question costs more than the rest of its handling.
        running: dict[int, asyncio.Future[Answer]] = {}  # by request_id

        # A question holds its place in the window until its answer is handed to gRPC, whose write waits
        # for the client to read: a client that never reads stops the reading, so nothing piles up here.
        def answered(request_id: int, future: asyncio.Future[Answer]) -> None:
            if running.get(request_id) is future:
                del running[request_id]
            if future.cancelled():
                window.release()
            else:
                answers.put_nowait(_stream_answer(request_id, future.exception() or future.result()))

        async def read() -> None:
            try:
                async for request in request_iterator:
                    if request.cancel:  # its caller went away: the search is withdrawn, nothing is answered
                        if (withdrawn := running.get(request.request_id)) is not None:
                            withdrawn.cancel()
                        continue
                    await window.acquire()
                    try:
                        # A message without trace context starts a trace (if sampled); one not sampled, none.
                        if _tracing.ENABLED and (not request.traceparent or _tracing.sampled(request.traceparent)):
                            with _tracing.span(STREAM_SPAN, _tracing.context_of(request.traceparent), "server"):
                                future = self._core.submit_search(Search.from_proto(request), _timeout(context))
                        else:
                            future = self._core.submit_search(Search.from_proto(request), _timeout(context))
                    except Exception as exc:  # a bad question: answer it and read on
                        answers.put_nowait(_stream_answer(request.request_id, exc))
                        continue
                    running[request.request_id] = future
                    future.add_done_callback(functools.partial(answered, request.request_id))
                while running:
                    await asyncio.wait(set(running.values()))
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await answers.get()) is not None:
                yield item
                window.release()
            await reader  # a broken request stream fails the call
        finally:
            reader.cancel()
            for future in list(running.values()):
                future.cancel()
            await asyncio.gather(reader, return_exceptions=True)


def _share_ids(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two batches of ids have one in common."""
    if a.dtype == object or b.dtype == object:
        return not set(a.tolist()).isdisjoint(b.tolist())
    return bool(np.intersect1d(a, b).size)


def _answer_to_proto(answer: Answer, request_id: int) -> pb.SearchResponse:
    """The wire answer of a search; a filtered one also tells how each shard ran it."""
    found, plan = answer
    response = topk_to_proto(found, request_id)
    if plan:
        response.plan = plan
    return check_answer_size(response)


def _stream_answer(request_id: int, outcome: Answer | BaseException) -> pb.SearchResponse:
    """The answer to one question of a stream; a failure answers only that question."""
    if not isinstance(outcome, BaseException):
        try:
            return _answer_to_proto(outcome, request_id)
        except ResourceExhausted as exc:  # too large to send: only this question fails
            outcome = exc
    return pb.SearchResponse(request_id=request_id, error=error_status(outcome, "/shoal.v1.Shoal/SearchStream"))
