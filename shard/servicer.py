"""The Shard gRPC service: decode, call the core (on a thread where it blocks), encode."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from shoal._config import CollectionConfig
from shoal._server import error_status
from shoal._wire import decode_ids, decode_matrix, encode_counts, encode_ids, encode_matrix
from shoal.shard import filtered_servicer as filtered
from shoal.shard.core import CollectionStats, Shard
from shoal.shard.results import SearchResult
from shoal.v1 import shard_pb2, shard_pb2_grpc
from shoal.v1 import types_pb2 as pb

log = logging.getLogger("shoal.shard.servicer")


class ShardServicer(shard_pb2_grpc.ShardServicer):
    """The coordinator-facing service of one shard."""

    def __init__(self, shard: Shard, address: str = "") -> None:
        self._shard = shard
        self.address = address  # reported in ShardStats; set once the port is bound

    def _info(self, stats: CollectionStats) -> pb.CollectionInfo:
        shard = pb.ShardStats(address=self.address, count=stats.count, memory_bytes=stats.memory_bytes)
        return pb.CollectionInfo(config=stats.config.to_proto(), count=stats.count, shards=[shard])

    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCollectionResponse:
        config = CollectionConfig.from_proto(request.config)
        stats, created = await asyncio.to_thread(self._shard.create_collection, config)
        return pb.CreateCollectionResponse(info=self._info(stats), created=created)

    async def DropCollection(
        self, request: pb.DropCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DropCollectionResponse:
        dropped = await asyncio.to_thread(self._shard.drop_collection, request.name)
        return pb.DropCollectionResponse(dropped=dropped)

    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCollectionsResponse:
        return pb.ListCollectionsResponse(names=self._shard.list_collections())

    async def DescribeCollection(
        self, request: pb.DescribeCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CollectionInfo:
        return self._info(await asyncio.to_thread(self._shard.describe, request.name))

    async def Upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.UpsertResponse:
        ids, vectors = decode_ids(request.ids), decode_matrix(request.vectors)
        future = await asyncio.to_thread(self._shard.submit_upsert, request.collection, ids, vectors, request.payloads)
        return pb.UpsertResponse(upserted=await asyncio.wrap_future(future))

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        points = await asyncio.to_thread(
            self._shard.get, request.collection, decode_ids(request.ids), request.with_vectors, request.with_payload
        )
        response = pb.GetResponse(ids=encode_ids(points.ids), payloads=points.payloads or [])
        if points.vectors is not None:
            response.vectors.CopyFrom(encode_matrix(points.vectors))
        return response

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        if request.filter:
            return await filtered.delete(self._shard, request)
        ids = decode_ids(request.ids)
        future = await asyncio.to_thread(self._shard.submit_delete, request.collection, ids)
        return pb.DeleteResponse(deleted=await asyncio.wrap_future(future))

    async def Count(self, request: pb.CountRequest, context: grpc.aio.ServicerContext) -> pb.CountResponse:
        if request.filter:
            return await filtered.count(self._shard, request)
        return pb.CountResponse(count=self._shard.count(request.collection))

    async def Scroll(self, request: pb.ScrollRequest, context: grpc.aio.ServicerContext) -> pb.ScrollResponse:
        return await filtered.scroll(self._shard, request)

    async def SetPayload(
        self, request: pb.SetPayloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetPayloadResponse:
        return await filtered.set_payload(self._shard, request)

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        return await self._search(request)

    async def SearchStream(
        self, request_iterator: AsyncIterator[pb.SearchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SearchResponse]:
        answers: asyncio.Queue[pb.SearchResponse | None] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()

        async def answer(request: pb.SearchRequest) -> None:
            await answers.put(await self._stream_answer(request))

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(answer(request))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                await asyncio.gather(*list(pending))
            finally:
                await answers.put(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await answers.get()) is not None:
                yield response
            await reader  # a broken request stream fails the call
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()

    async def Snapshot(
        self, request: shard_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.SnapshotResponse:
        taken = await asyncio.to_thread(self._shard.snapshot)
        return shard_pb2.SnapshotResponse(
            snapshots=[
                shard_pb2.CollectionSequence(collection=n, sequence=s) for n, s in taken.items() if s is not None
            ],
            failed=[n for n, s in taken.items() if s is None],
        )

    async def Backup(
        self, request: shard_pb2.BackupRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.BackupResponse:
        taken = await asyncio.to_thread(self._shard.backup, Path(request.path))
        return shard_pb2.BackupResponse(
            collections=[shard_pb2.CollectionSequence(collection=n, sequence=s) for n, s in taken.items()]
        )

    async def Verify(
        self, request: shard_pb2.VerifyRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.VerifyResponse:
        found = await asyncio.to_thread(self._shard.verify, request.collection)
        return shard_pb2.VerifyResponse(
            ids=encode_ids(found.ids) if len(found.ids) else pb.Ids(),
            stored=len(found.ids),
            indexed=found.indexed,
            missing=found.missing.astype("<u8").tobytes(),
            extra=found.extra.astype("<u8").tobytes(),
            unmapped=found.unmapped,
            consistent=found.consistent,
        )

    async def _stream_answer(self, request: pb.SearchRequest) -> pb.SearchResponse:
        """A stream answer: the result, or this request's error without breaking the stream."""
        try:
            return await self._search(request)
        except Exception as exc:
            code, message = error_status(exc, "/shoal.v1.Shard/SearchStream")
        return pb.SearchResponse(request_id=request.request_id, error_code=code.value[0], error_message=message)

    async def _search(self, request: pb.SearchRequest) -> pb.SearchResponse:
        if request.filter:
            return await filtered.search(self._shard, request)
        queries = decode_matrix(request.queries, "queries")
        future = self._shard.submit_search(
            request.collection, queries, request.k, request.ef, request.with_payload, request.with_vectors
        )
        return encode_search(await asyncio.wrap_future(future), request.request_id)


def encode_search(result: SearchResult, request_id: int) -> pb.SearchResponse:
    """The wire form of a search result."""
    response = pb.SearchResponse(
        k=result.k,
        ids=encode_ids(result.ids.ravel()),
        distances=encode_matrix(result.distances),
        counts=encode_counts(result.counts),
        payloads=result.payloads or [],
        request_id=request_id,
    )
    if result.vectors is not None:
        response.vectors.CopyFrom(encode_matrix(result.vectors))
    return response
