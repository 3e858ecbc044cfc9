"""The public Shoal service: decode, call the core, encode (the error interceptor maps exceptions)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from shoal._config import CollectionConfig
from shoal._errors import ShoalError
from shoal._wire import decode_ids, decode_matrix
from shoal.coordinator.codec import found_to_proto, topk_to_proto, topology_to_proto
from shoal.coordinator.core import Coordinator
from shoal.coordinator.filtered import Filtering, page_to_proto
from shoal.v1 import shoal_pb2_grpc
from shoal.v1 import types_pb2 as pb

log = logging.getLogger("shoal.coordinator")

# Searches of one SearchStream in flight at once; beyond it the stream stops reading (backpressure).
STREAM_WINDOW = 64

def _timeout(context: grpc.aio.ServicerContext) -> float | None:
    """The seconds left before the caller's deadline (None without one)."""
    remaining: float | None = context.time_remaining()
    return remaining


class ShoalServicer(shoal_pb2_grpc.ShoalServicer):
    """The Shoal service of a coordinator, over a Coordinator core."""

    def __init__(self, core: Coordinator) -> None:
        self._core = core
        self._filtering = Filtering(core)

    async def CreateCollection(self, request: pb.CreateCollectionRequest,
                               context: grpc.aio.ServicerContext) -> pb.CreateCollectionResponse:
        config = CollectionConfig.from_proto(request.config)
        info = await self._core.create_collection(config, _timeout(context))
        return pb.CreateCollectionResponse(info=info, created=True)

    async def DropCollection(self, request: pb.DropCollectionRequest,
                             context: grpc.aio.ServicerContext) -> pb.DropCollectionResponse:
        await self._core.drop_collection(request.name, _timeout(context))
        return pb.DropCollectionResponse(dropped=True)

    async def ListCollections(self, request: pb.ListCollectionsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListCollectionsResponse:
        return pb.ListCollectionsResponse(names=await self._core.list_collections(_timeout(context)))

    async def DescribeCollection(self, request: pb.DescribeCollectionRequest,
                                 context: grpc.aio.ServicerContext) -> pb.CollectionInfo:
        return await self._core.describe_collection(request.name, _timeout(context))

    async def GetTopology(self, request: pb.GetTopologyRequest,
                          context: grpc.aio.ServicerContext) -> pb.TopologyInfo:
        return topology_to_proto(self._core.topology)

    async def Upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.UpsertResponse:
        return pb.UpsertResponse(upserted=await self._upsert(request, context))

    async def UpsertStream(self, request_iterator: AsyncIterator[pb.UpsertRequest],
                           context: grpc.aio.ServicerContext) -> pb.UpsertResponse:
        total = 0
        # One message at a time, so a later message overwrites an earlier one with the same id.
        async for request in request_iterator:
            total += await self._upsert(request, context)
        return pb.UpsertResponse(upserted=total)

    async def _upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> int:
        ids, vectors = decode_ids(request.ids), decode_matrix(request.vectors)
        return await self._core.upsert(request.collection, ids, vectors, request.payloads, _timeout(context))

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        found = await self._core.get(request.collection, decode_ids(request.ids), request.with_vectors,
                                     request.with_payload, _timeout(context))
        return found_to_proto(found)

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        if request.filter:
            return pb.DeleteResponse(deleted=await self._filtering.delete(
                request.collection, request.filter, bool(request.ids.u64 or request.ids.str), _timeout(context)))
        deleted = await self._core.delete(request.collection, decode_ids(request.ids), _timeout(context))
        return pb.DeleteResponse(deleted=deleted)

    async def Count(self, request: pb.CountRequest, context: grpc.aio.ServicerContext) -> pb.CountResponse:
        if request.filter:
            return pb.CountResponse(count=await self._filtering.count(request.collection, request.filter,
                                                                      _timeout(context)))
        return pb.CountResponse(count=await self._core.count(request.collection, _timeout(context)))

    async def Scroll(self, request: pb.ScrollRequest, context: grpc.aio.ServicerContext) -> pb.ScrollResponse:
        return page_to_proto(await self._filtering.scroll(
            request.collection, request.filter, request.limit, request.cursor, request.with_payload,
            request.with_vectors, _timeout(context)))

    async def SetPayload(self, request: pb.SetPayloadRequest,
                         context: grpc.aio.ServicerContext) -> pb.SetPayloadResponse:
        return pb.SetPayloadResponse(updated=await self._filtering.set_payload(
            request.collection, decode_ids(request.ids), request.set, list(request.unset), _timeout(context)))

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        return await self._search(request, context)

    async def _search(self, request: pb.SearchRequest,
                      context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        if request.filter:
            found, plan = await self._filtering.search(
                request.collection, decode_matrix(request.queries, "queries"), request.k, request.ef,
                request.with_payload, request.with_vectors, request.filter, _timeout(context))
            response = topk_to_proto(found, request.request_id)
            response.plan = plan
            return response
        result = await self._core.search(
            request.collection, decode_matrix(request.queries, "queries"), request.k, request.ef,
            request.with_payload, request.with_vectors, _timeout(context))
        return topk_to_proto(result, request.request_id)

    async def _stream_answer(self, request: pb.SearchRequest,
                             context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        """The answer to one question of a stream; a failure answers only that question."""
        try:
            return await self._search(request, context)
        except ShoalError as exc:
            code, message = exc.code, exc.message
        except Exception:
            log.exception("unexpected error in SearchStream")
            code, message = grpc.StatusCode.INTERNAL, "internal error in SearchStream; see the server log"
        return pb.SearchResponse(request_id=request.request_id, error_code=code.value[0],
                                 error_message=message)

    async def SearchStream(self, request_iterator: AsyncIterator[pb.SearchRequest],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[pb.SearchResponse]:
        answers: asyncio.Queue[pb.SearchResponse | None] = asyncio.Queue()  # None: no more answers
        window = asyncio.Semaphore(STREAM_WINDOW)
        running: set[asyncio.Task[None]] = set()

        async def answer(request: pb.SearchRequest) -> None:
            try:
                answers.put_nowait(await self._stream_answer(request, context))
            finally:
                window.release()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await window.acquire()
                    task = asyncio.create_task(answer(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.wait(set(running))
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await answers.get()) is not None:
                yield item
            await reader  # a broken request stream fails the call
        finally:
            for task in (reader, *running):
                task.cancel()
            await asyncio.gather(reader, *running, return_exceptions=True)
