"""The Shard gRPC service: decode, call the core (on a thread where it blocks), encode."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Future
from pathlib import Path

import grpc
import numpy as np

from shoal import _tracing
from shoal._config import CollectionConfig
from shoal._errors import FailedPrecondition, InvalidArgument, Unavailable
from shoal._results import TopK, check_answer_size, found_to_proto, page_to_proto, topk_to_proto
from shoal._search import Search
from shoal._server import error_status
from shoal._wire import decode_ids, decode_matrix, encode_ids, encode_matrix
from shoal.shard.catchup import serve_copy
from shoal.shard.collection import CollectionStats
from shoal.shard.core import Shard
from shoal.shard.group import GroupMember
from shoal.shard.moving import Export
from shoal.v1 import shard_pb2, shard_pb2_grpc
from shoal.v1 import types_pb2 as pb

log = logging.getLogger("shoal.shard.servicer")

SEARCH_SPAN = "/shoal.v1.Shard/search"
# A status waits for the index worker at most this long (behind queued searches and writes).
STATUS_TIMEOUT_SECONDS = 5.0
TOPOLOGY_WAIT = 0.2  # seconds a read at a newer topology version waits for this shard's own watch to reach it
AWAIT_TOPOLOGY_LIMIT = 30.0  # seconds AwaitTopology waits at most
MAX_EXPORT = 4096  # points per export page
IMPORT_SLICE = 32  # imported points indexed at once: a search waits for one slice (~10 ms), not a page
# A search of a stream being answered: the index worker's future, or a task for a traced one.
Withdrawable = Future[tuple[TopK, str]] | asyncio.Future[pb.SearchResponse]


class ShardServicer(shard_pb2_grpc.ShardServicer):
    """The coordinator-facing service of one shard."""

    def __init__(self, shard: Shard, address: str = "", metrics_address: str = "") -> None:
        self._shard = shard
        self.address = address  # reported in ShardStats; set once the port is bound
        self.metrics_address = metrics_address  # reported in GetStatus; empty when metrics are not served
        self.member: GroupMember | None = None  # set when the shard is a member of a shard group
        self._loop: asyncio.AbstractEventLoop | None = None  # the server's, once a read waited for a version
        self._versions = asyncio.Event()  # set (and replaced) when the shard applies a topology version
        shard.on_ownership = self._applied

    def _member(self) -> GroupMember:
        if self.member is None:
            raise FailedPrecondition("this shard is not a member of a shard group")
        return self.member

    def _token(self) -> dict[str, int]:
        """A write's consistency token: the sequence this group's primary reached (empty outside a group)."""
        return {} if self.member is None else {self.member.group: self._shard.sequence}

    async def _caught_up(self, token: Mapping[str, int]) -> None:
        """Wait (bounded) until this member has the writes of a read's consistency token, or refuse the read."""
        if token and self.member is not None:
            await self.member.caught_up(token)

    def _applied(self) -> None:
        """The shard applied a topology version (on any thread): wake the reads waiting for one."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        woken, self._versions = self._versions, asyncio.Event()
        woken.set()

    async def _topology(self, version: int, wait: float = TOPOLOGY_WAIT) -> None:
        """Wait (at most `wait` seconds) until this shard's own watch applied a read's newer topology version,
        waking the moment it does (the core then answers, or refuses with ABORTED at another version)."""
        self._loop = asyncio.get_running_loop()
        deadline = self._loop.time() + wait
        while True:
            own = self._shard.ownership
            left = deadline - self._loop.time()
            if not version or own is None or own.version >= version or left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._versions.wait(), left)

    def _at_other_version(self, version: int) -> bool:
        own = self._shard.ownership
        return own is not None and not own.serves(version)

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

    async def GetStatus(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.ProcessStatus:
        me = pb.ProcessStatus(role="shard", address=self.address, metrics_address=self.metrics_address)
        try:
            rows = await asyncio.to_thread(self._shard.status, STATUS_TIMEOUT_SECONDS)
        except Unavailable as exc:  # loading its data, or stopping
            me.state, me.error = "NOT_SERVING", exc.message
            return me
        return pb.ProcessStatus(
            role="shard",
            address=self.address,
            state="SERVING",
            metrics_address=self.metrics_address,
            sequence=self._shard.sequence,
            collections=[
                pb.CollectionStatus(
                    name=r.name,
                    points=r.points,
                    memory_bytes=r.memory_bytes,
                    payload_index_entries=r.payload_index_entries,
                    snapshot_age_seconds=r.snapshot_age_seconds,
                    snapshot_sequence=r.snapshot_sequence,
                )
                for r in rows
            ],
        )

    async def Upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.UpsertResponse:
        ids, vectors = decode_ids(request.ids), decode_matrix(request.vectors)
        future = await asyncio.to_thread(self._shard.submit_upsert, request.collection, ids, vectors, request.payloads)
        upserted: int = await asyncio.wrap_future(future)
        return pb.UpsertResponse(upserted=upserted, token=self._token())

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        await self._caught_up(request.token)
        await self._topology(request.topology)
        found = await asyncio.to_thread(
            self._shard.get,
            request.collection,
            decode_ids(request.ids),
            request.with_vectors,
            request.with_payload,
            request.topology,
        )
        return found_to_proto(found)

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        if request.filter:
            if request.ids.u64 or request.ids.str:
                raise InvalidArgument("give ids or a filter to delete, not both")
            future = await asyncio.to_thread(self._shard.submit_delete_filter, request.collection, request.filter)
        else:
            ids = decode_ids(request.ids)
            future = await asyncio.to_thread(self._shard.submit_delete, request.collection, ids)
        deleted: int = await asyncio.wrap_future(future)
        return pb.DeleteResponse(deleted=deleted, token=self._token())

    async def Count(self, request: pb.CountRequest, context: grpc.aio.ServicerContext) -> pb.CountResponse:
        await self._caught_up(request.token)
        await self._topology(request.topology)
        if request.filter or self._shard.reading(request.topology) is not None:
            count = await asyncio.to_thread(self._shard.count, request.collection, request.filter, request.topology)
        else:
            count = self._shard.count(request.collection)
        return pb.CountResponse(count=count)

    async def Scroll(self, request: pb.ScrollRequest, context: grpc.aio.ServicerContext) -> pb.ScrollResponse:
        await self._topology(request.topology)
        page = await asyncio.to_thread(
            self._shard.scroll,
            request.collection,
            request.filter,
            request.limit,
            request.cursor,
            request.with_payload,
            request.with_vectors,
            request.max_bytes,
            request.topology,
        )
        return page_to_proto(page)

    async def SetPayload(
        self, request: pb.SetPayloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetPayloadResponse:
        ids = decode_ids(request.ids)
        future = await asyncio.to_thread(
            self._shard.submit_set_payload, request.collection, ids, request.set, list(request.unset)
        )
        updated: int = await asyncio.wrap_future(future)
        return pb.SetPayloadResponse(updated=updated, token=self._token())

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        return await self._search(request)

    async def SearchStream(
        self, request_iterator: AsyncIterator[pb.SearchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SearchResponse]:
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[pb.SearchResponse | None] = asyncio.Queue()  # None: no more answers
        # Each search is the index worker's future with a callback rather than a task: a stream of single
        # queries is the hottest path there is, and a task per message costs more than the rest of its handling.
        pending: dict[int, Withdrawable] = {}  # by request_id
        idle = asyncio.Event()  # set whenever nothing is pending

        def answered(request: pb.SearchRequest, future: Withdrawable) -> None:  # on the event loop
            if pending.get(request.request_id) is future:
                del pending[request.request_id]
            if not pending:
                idle.set()
            if not future.cancelled():
                answers.put_nowait(self._outcome(request, future))

        def done(request: pb.SearchRequest, future: Withdrawable) -> None:  # on any thread
            if isinstance(future, asyncio.Future):
                answered(request, future)
            else:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for the answer
                    loop.call_soon_threadsafe(answered, request, future)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    if request.cancel:  # its caller went away: a search not yet begun is dropped
                        if (withdrawn := pending.get(request.request_id)) is not None:
                            withdrawn.cancel()
                        continue
                    future: Withdrawable
                    try:
                        if (
                            request.token
                            or (_tracing.ENABLED and _tracing.sampled(request.traceparent))
                            or self._at_other_version(request.topology)
                        ):
                            future = asyncio.ensure_future(self._search(request))  # may wait for its token
                        else:
                            future = self._shard.submit_search(Search.from_proto(request), None, request.topology)
                    except Exception as exc:  # a bad question: answer it and read on
                        answers.put_nowait(_error_answer(request.request_id, exc))
                        continue
                    pending[request.request_id] = future
                    idle.clear()
                    future.add_done_callback(functools.partial(done, request))
                if pending:
                    await idle.wait()
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await answers.get()) is not None:
                yield response
            await reader  # a broken request stream fails the call
        finally:
            reader.cancel()
            for future in list(pending.values()):
                future.cancel()

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

    async def Replicate(
        self, request_iterator: AsyncIterator[shard_pb2.ReplicateRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[shard_pb2.ReplicateAck]:
        async for ack in self._member().replica.serve(request_iterator):
            yield ack

    async def ReplicaState(
        self, request: shard_pb2.ReplicaStateRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.ReplicaStateResponse:
        if self.member is None:
            return shard_pb2.ReplicaStateResponse(seq=self._shard.sequence)
        return await asyncio.to_thread(self.member.state)

    async def ReadLog(
        self, request: shard_pb2.ReadLogRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[shard_pb2.ReplicateRequest]:
        storage = self._shard.storage
        after, end = int(request.after), storage.seq
        while after < end:
            entries = await asyncio.to_thread(storage.entries, after, 256)
            if not entries or entries[0][0] != after + 1:
                raise FailedPrecondition(f"the op log no longer holds the writes after {after}")
            for seq, raw in entries:
                yield shard_pb2.ReplicateRequest(seq=seq, plan=raw, term=self._member().term)
                after = seq

    async def ReadSnapshot(
        self, request: shard_pb2.ReadSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[shard_pb2.SnapshotChunk]:
        self._member()  # only members of a group copy each other's data
        async for chunk in serve_copy(self._shard):
            yield chunk

    async def ExportRange(
        self, request: shard_pb2.ExportRangeRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.ExportResponse:
        self._member()
        limit = min(max(int(request.limit), 1), MAX_EXPORT)
        found = await asyncio.to_thread(
            self._shard.export_range, request.collection, request.start, request.end, request.cursor, limit
        )
        return _export(request.collection, found)

    async def ExportChanges(
        self, request: shard_pb2.ExportChangesRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.ExportResponse:
        self._member()
        found = await asyncio.to_thread(
            self._shard.export_changes, request.collection, request.start, request.end, request.after, request.upto
        )
        return _export(request.collection, found)

    async def Import(
        self, request: shard_pb2.ImportRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.ImportResponse:
        self._member()
        points = request.points
        ids = decode_ids(points.ids) if points.ids.u64 or points.ids.str else np.zeros(0, np.uint64)
        vectors = decode_matrix(points.vectors) if len(ids) else np.zeros((0, 1), np.float32)
        deleted = decode_ids(request.deleted) if request.deleted.u64 or request.deleted.str else np.zeros(0, np.uint64)
        payloads = list(points.payloads)
        written = 0
        # Applied a slice at a time: searches queued meanwhile run between slices, not after the whole page.
        for at in range(0, max(len(ids), 1), IMPORT_SLICE):
            rest = at + IMPORT_SLICE >= len(ids)
            part = slice(at, at + IMPORT_SLICE)
            futures = await asyncio.to_thread(
                self._shard.submit_import,
                points.collection,
                ids[part],
                vectors[part],
                payloads[part],
                deleted if rest else deleted[:0],
            )
            written += sum([await asyncio.wrap_future(f) for f in futures])
        return shard_pb2.ImportResponse(written=written)

    async def DeleteRange(
        self, request: shard_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.DeleteRangeResponse:
        self._member()
        deleted = await asyncio.to_thread(self._shard.delete_range, request.collection, request.start, request.end)
        return shard_pb2.DeleteRangeResponse(deleted=deleted)

    async def AwaitTopology(
        self, request: shard_pb2.AwaitTopologyRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.AwaitTopologyResponse:
        self._member()
        left = context.time_remaining()
        await self._topology(request.version, min(left, AWAIT_TOPOLOGY_LIMIT) if left else AWAIT_TOPOLOGY_LIMIT)
        own = self._shard.ownership
        if own is None or own.version < request.version:
            raise Unavailable(f"this shard has not applied topology version {request.version} yet")
        await asyncio.wrap_future(self._shard.barrier())
        return shard_pb2.AwaitTopologyResponse(version=own.version, seq=self._shard.sequence)

    @classmethod
    def _outcome(cls, request: pb.SearchRequest, future: Withdrawable) -> pb.SearchResponse:
        """A stream answer: the result, or this request's error without breaking the stream."""
        try:
            outcome = future.result()
            if isinstance(outcome, pb.SearchResponse):  # a traced search answers ready-made
                return outcome
            return cls._response(request, *outcome)
        except Exception as exc:
            return _error_answer(request.request_id, exc)

    async def _search(self, request: pb.SearchRequest) -> pb.SearchResponse:
        if request.token:
            await self._caught_up(request.token)
        if self._at_other_version(request.topology):
            await self._topology(request.topology)
        if _tracing.ENABLED and _tracing.sampled(request.traceparent):
            return await self._traced_search(request)
        future = self._shard.submit_search(Search.from_proto(request), None, request.topology)
        result, plan = await asyncio.wrap_future(future)
        return self._response(request, result, plan)

    async def _traced_search(self, request: pb.SearchRequest) -> pb.SearchResponse:
        """A search in a span of the coordinator's trace, with its queue wait, planner and index search."""
        with _tracing.span(SEARCH_SPAN, _tracing.context_of(request.traceparent), "server") as span:
            times: list[int] = []
            queued = time.time_ns()
            future = self._shard.submit_search(Search.from_proto(request), times, request.topology)
            result, plan = await asyncio.wrap_future(future)
            if times:
                started, ended = times
                here = _tracing.context_of("")
                _tracing.record("queue wait", here, queued, started)
                attributes = {"shoal.batch_queries": len(result.counts), "shoal.plan": plan or "hnsw"}
                _tracing.record("index search", here, started, ended, attributes)
                if request.filter:
                    _tracing.record("planner", here, started, ended, {"shoal.plan": plan})
            span.set_attribute("shoal.collection", request.collection)
            return self._response(request, result, plan)

    @staticmethod
    def _response(request: pb.SearchRequest, result: TopK, plan: str) -> pb.SearchResponse:
        response = topk_to_proto(result, request.request_id)
        if plan:
            response.plan = plan
        return check_answer_size(response)  # too large to send: this request fails, the stream stays up


def _export(collection: str, found: Export) -> shard_pb2.ExportResponse:
    """An export's answer."""
    points = found.found
    response = shard_pb2.ExportResponse(cursor=found.cursor, seq=found.seq)
    if len(points.ids):
        assert points.vectors is not None and points.payloads is not None
        response.points.CopyFrom(
            pb.UpsertRequest(
                collection=collection,
                ids=encode_ids(points.ids),
                vectors=encode_matrix(points.vectors),
                payloads=list(points.payloads),
            )
        )
    else:
        response.points.collection = collection
    if len(found.deleted):
        response.deleted.CopyFrom(encode_ids(found.deleted))
    return response


def _error_answer(request_id: int, exc: Exception) -> pb.SearchResponse:
    """The answer of a stream's request that failed: its error, the stream stays up."""
    return pb.SearchResponse(request_id=request_id, error=error_status(exc, "/shoal.v1.Shard/SearchStream"))
