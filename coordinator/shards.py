"""Long-lived connections to the shards: one channel each, and one multiplexed search stream each."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc

from shoal import _tracing
from shoal._errors import DeadlineExceeded, ShoalError, Unavailable, error_for_code, from_rpc_error, from_status
from shoal._rpc import member_channel
from shoal._tls import TLS, ClusterCredentials, Metadata
from shoal.v1 import shard_pb2_grpc
from shoal.v1 import types_pb2 as pb

log = logging.getLogger("shoal.coordinator")

# A channel in reconnect backoff after its shard went away is replaced by a fresh one, so a restarted
# shard is used at once instead of after gRPC's backoff (up to 2 s); at most this often per shard.
RECONNECT_INTERVAL_SECONDS = 0.05
# Shards are peers inside one cluster, so their links fail fast: a shard behind a cut link, on a host
# that is gone, or frozen is reported UNAVAILABLE within seconds, not at the caller's deadline.
SHARD_KEEPALIVE_MS = 2_000
SHARD_CHANNEL_OPTIONS = [
    # Channels to one address otherwise share a subchannel, and with it the backoff a fresh one escapes.
    ("grpc.use_local_subchannel_pool", 1),
    # Ping every 2 s and drop the connection when a ping goes 2 s unanswered (ping_timeout: gRPC waits 60 s
    # by default, whatever keepalive_timeout says): a frozen shard is noticed within about 4 s, even while
    # idle. On Linux keepalive_timeout becomes TCP_USER_TIMEOUT, so a call whose bytes stay unacknowledged
    # for 2 s (a cut link, a host gone) fails with UNAVAILABLE instead of waiting for its deadline.
    ("grpc.keepalive_time_ms", SHARD_KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", SHARD_KEEPALIVE_MS),
    ("grpc.http2.ping_timeout_ms", SHARD_KEEPALIVE_MS),
    # gRPC's minimum connect timeout (default 20 s): a connection attempt that gets no answer (packets
    # dropped, or a frozen shard that never completes the HTTP/2 handshake) gives up after 2 s, so a call
    # to an unreachable shard waits for at most one such attempt.
    ("grpc.min_reconnect_backoff_ms", SHARD_KEEPALIVE_MS),
]


# A shard call cut off on the way (the link, the stream or the shard went away) means the shard is unreachable.
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


def shard_error(address: str, code: grpc.StatusCode, details: str, field: str | None = None) -> ShoalError:
    """The catalogue error for a shard call that failed with `code`, or never got an answer.

    The one place a shard's status code becomes an error: unreachable shards and passed deadlines name
    the shard; a code outside the catalogue (UNKNOWN, UNIMPLEMENTED, ...: a bug or a version mismatch)
    becomes Internal, its detail only in the log; any other code passes through with the shard's message.
    """
    if code in _UNREACHABLE:
        return error_for_code(grpc.StatusCode.UNAVAILABLE, f"shard {address} is unavailable: {details or code.name}")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return error_for_code(code, f"shard {address} did not answer before the deadline")
    error = error_for_code(code, details or code.name, field=field)
    if type(error) is ShoalError:
        log.error("shard %s failed with %s: %s", address, code.name, details)
        return error_for_code(
            grpc.StatusCode.INTERNAL, f"shard {address} failed with {code.name}; see the coordinator log"
        )
    return error


def _check_timeout(address: str, timeout: float | None) -> None:
    if timeout is not None and timeout <= 0:
        raise DeadlineExceeded(f"the deadline passed before shard {address} was asked")


class SearchStream:
    """One long-lived SearchStream to a shard, multiplexing many searches by request_id."""

    def __init__(self, stub: Any, address: str, metadata: Metadata = ()) -> None:
        self.address = address
        self.broken = False
        self._pending: dict[int, asyncio.Future[pb.SearchResponse]] = {}
        self._outbox: asyncio.Queue[pb.SearchRequest] = asyncio.Queue()
        self._call = stub.SearchStream(metadata=metadata)
        self._writer = asyncio.create_task(self._write(), name=f"search-stream-writer {address}")
        self._reader = asyncio.create_task(self._read(), name=f"search-stream-reader {address}")

    async def ask(self, request: pb.SearchRequest, request_id: int, timeout: float | None) -> pb.SearchResponse:
        """Send one search and wait for its answer, at most `timeout` seconds."""
        if self.broken:
            raise shard_error(self.address, grpc.StatusCode.UNAVAILABLE, "the search stream is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[pb.SearchResponse] = loop.create_future()
        message = pb.SearchRequest()
        message.CopyFrom(request)
        message.request_id = request_id
        self._pending[request_id] = future
        self._outbox.put_nowait(message)
        # A timer that fails the future, rather than asyncio.wait_for: that costs a task-like wrapper per search.
        timer = None if timeout is None else loop.call_later(timeout, self._expire, future)
        try:
            answer = await future
        finally:
            if timer is not None:
                timer.cancel()
            answered = future.done() and not future.cancelled() and future.exception() is None
            if self._pending.pop(request_id, None) is not None and not answered and not self.broken:
                # The caller went away or its deadline passed: the shard drops the search if not yet begun.
                self._outbox.put_nowait(pb.SearchRequest(request_id=request_id, cancel=True))
        if answer.error.code:
            cause = from_status(answer.error)
            raise shard_error(self.address, cause.code, cause.message, cause.field)
        return answer

    def _expire(self, future: asyncio.Future[pb.SearchResponse]) -> None:
        if not future.done():
            future.set_exception(shard_error(self.address, grpc.StatusCode.DEADLINE_EXCEEDED, ""))

    async def close(self) -> None:
        """End the stream, failing the searches still waiting."""
        self._break("the coordinator is shutting down")
        await asyncio.gather(self._writer, self._reader, return_exceptions=True)

    async def _write(self) -> None:
        try:
            while True:
                message = await self._outbox.get()
                if message.cancel or message.request_id in self._pending:  # else its caller gave up already
                    await self._call.write(message)
        except Exception as exc:  # whatever ends the stream, the waiting searches must hear of it
            self._break(_reason(exc))

    async def _read(self) -> None:
        try:
            while True:
                answer = await self._call.read()
                if answer is grpc.aio.EOF:
                    self._break("the shard ended the search stream")
                    return
                future = self._pending.get(answer.request_id)
                if future is not None and not future.done():
                    future.set_result(answer)
        except Exception as exc:  # whatever ends the stream, the waiting searches must hear of it
            self._break(_reason(exc))

    def _break(self, reason: str) -> None:
        """Mark the stream broken and fail every waiting search; the next search opens a new stream."""
        if self.broken:
            return
        self.broken = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(shard_error(self.address, grpc.StatusCode.UNAVAILABLE, reason))
        self._pending.clear()
        self._call.cancel()
        current = asyncio.current_task()
        for task in (self._writer, self._reader):
            if task is not current:
                task.cancel()


def _reason(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return str(exc.details() or exc.code().name)
    if not isinstance(exc, (grpc.RpcError, asyncio.InvalidStateError, grpc.aio.UsageError)):
        log.error("search stream failed unexpectedly", exc_info=exc)
    return str(exc) or type(exc).__name__


class ShardClient:
    """The coordinator's connection to one shard: every Shard RPC, with errors in the catalogue."""

    def __init__(self, address: str, tls: TLS | None = None, cluster_secret: bytes | None = None) -> None:
        self.address = address
        self._credentials = ClusterCredentials(tls, cluster_secret)
        self._metadata = self._credentials.metadata  # proves to the shard that this is a cluster member
        # One counter across reopened streams, so a late answer can never match a newer question.
        self._request_ids = itertools.count(1)
        self._down_since: float | None = None  # when calls began failing with UNAVAILABLE
        self._open()

    def _open(self) -> None:
        self._channel = member_channel(self.address, self._credentials, SHARD_CHANNEL_OPTIONS)
        self._stub = shard_pb2_grpc.ShardStub(self._channel)
        self._stream: SearchStream | None = None
        self._opened = time.monotonic()

    async def _ready_stub(self) -> Any:
        """The stub to call: on a fresh channel when the current one waits out a reconnect backoff.

        A fresh channel resolves the shard's host name again, as gRPC does on every reconnect, so a shard
        that restarted on another address is found once its name points there.
        """
        if (
            self._channel.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE
            and time.monotonic() - self._opened >= RECONNECT_INTERVAL_SECONDS
        ):
            channel, stream = self._channel, self._stream
            self._open()
            if stream is not None:
                await stream.close()
            await channel.close()
        return self._stub

    async def _unary(self, method: str, request: Any, timeout: float | None) -> Any:
        _check_timeout(self.address, timeout)
        call = getattr(await self._ready_stub(), method)
        try:
            metadata = (*self._metadata, *_tracing.metadata()) if _tracing.ENABLED else self._metadata
            answer = await call(request, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            cause = from_rpc_error(exc)  # keeps the field a shard's bad-input error names
            error = shard_error(self.address, exc.code(), exc.details() or "", cause.field)
            self._note(error)
            raise error from exc
        self._note(None)
        return answer

    def _note(self, error: ShoalError | None) -> None:
        """Log when the shard becomes unreachable and when it answers again, not every call in between."""
        if isinstance(error, Unavailable):
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("%s; calls that need it fail with UNAVAILABLE until it answers again", error.message)
        elif self._down_since is not None and not isinstance(error, DeadlineExceeded):
            log.info("shard %s answers again after %.1f s", self.address, time.monotonic() - self._down_since)
            self._down_since = None

    async def create_collection(
        self, request: pb.CreateCollectionRequest, timeout: float | None
    ) -> pb.CreateCollectionResponse:
        """Create a collection on this shard (idempotent for the same config)."""
        return await self._unary("CreateCollection", request, timeout)

    async def drop_collection(
        self, request: pb.DropCollectionRequest, timeout: float | None
    ) -> pb.DropCollectionResponse:
        """Drop a collection on this shard."""
        return await self._unary("DropCollection", request, timeout)

    async def list_collections(self, timeout: float | None) -> pb.ListCollectionsResponse:
        """The collections this shard has."""
        return await self._unary("ListCollections", pb.ListCollectionsRequest(), timeout)

    async def describe_collection(
        self, request: pb.DescribeCollectionRequest, timeout: float | None
    ) -> pb.CollectionInfo:
        """This shard's view of a collection."""
        return await self._unary("DescribeCollection", request, timeout)

    async def status(self, timeout: float | None) -> pb.ProcessStatus:
        """This shard's status row (collections, sequence, metrics address)."""
        return await self._unary("GetStatus", pb.StatusRequest(), timeout)

    async def upsert(self, request: pb.UpsertRequest, timeout: float | None) -> pb.UpsertResponse:
        """Upsert points that all live in this shard's slots."""
        return await self._unary("Upsert", request, timeout)

    async def get(self, request: pb.GetRequest, timeout: float | None) -> pb.GetResponse:
        """Fetch points by id from this shard."""
        return await self._unary("Get", request, timeout)

    async def delete(self, request: pb.DeleteRequest, timeout: float | None) -> pb.DeleteResponse:
        """Delete points by id from this shard."""
        return await self._unary("Delete", request, timeout)

    async def count(self, request: pb.CountRequest, timeout: float | None) -> pb.CountResponse:
        """The number of points of a collection on this shard."""
        return await self._unary("Count", request, timeout)

    async def scroll(self, request: pb.ScrollRequest, timeout: float | None) -> pb.ScrollResponse:
        """A page of this shard's points after a cursor."""
        return await self._unary("Scroll", request, timeout)

    async def set_payload(self, request: pb.SetPayloadRequest, timeout: float | None) -> pb.SetPayloadResponse:
        """Set and remove payload keys of points on this shard."""
        return await self._unary("SetPayload", request, timeout)

    async def search(self, request: pb.SearchRequest, timeout: float | None) -> pb.SearchResponse:
        """This shard's local top-k, asked over the long-lived search stream (opened on first use)."""
        _check_timeout(self.address, timeout)
        stub = await self._ready_stub()
        if self._stream is None or self._stream.broken:
            self._stream = SearchStream(stub, self.address, self._metadata)
        try:
            answer = await self._stream.ask(request, next(self._request_ids), timeout)
        except ShoalError as exc:
            self._note(exc)
            raise
        self._note(None)
        return answer

    async def close(self) -> None:
        """End the search stream and close the channel."""
        if self._stream is not None:
            await self._stream.close()
        await self._channel.close()


class ShardPool:
    """One ShardClient per shard address, in topology order."""

    def __init__(self, addresses: Sequence[str], tls: TLS | None = None, cluster_secret: bytes | None = None) -> None:
        self.clients = [ShardClient(address, tls, cluster_secret) for address in addresses]

    def __getitem__(self, index: int) -> ShardClient:
        return self.clients[index]

    def __len__(self) -> int:
        return len(self.clients)

    async def close(self) -> None:
        """Close every connection."""
        await asyncio.gather(*(client.close() for client in self.clients))
