"""The asyncio Python client of a Shoal coordinator: the same methods as `Client`, awaited.

Many concurrent searches from one event loop cost the client far less CPU than as many threads with the
blocking client, above all over `search_stream` (one long-lived stream per concurrent caller).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, TypeVar, cast

import grpc

from shoal import _rpc
from shoal._aio_mux import AsyncSearchMux
from shoal._base import (
    USE_CLIENT_DEFAULT,
    BaseClient,
    Call,
    InOrder,
    TimeoutLike,
    Watched,
    as_matrix,
    progress_bar,
    stream_request,
)
from shoal._config import (
    DEFAULT_ADDRESS,
    DEFAULT_BATCH_ROWS,
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_EF_SEARCH,
    DEFAULT_ID_TYPE,
    DEFAULT_M,
    DEFAULT_METRIC,
    DEFAULT_PRECISION,
    DEFAULT_SCROLL,
    DEFAULT_TIMEOUT,
    DEFAULT_WITH_PAYLOAD,
    DEFAULT_WITH_VECTORS,
)
from shoal._errors import DeadlineExceeded, from_rpc_error
from shoal._mux import ChannelClosed
from shoal._search import Search
from shoal._tls import TLS, resolve
from shoal._tracing import caller_traceparent
from shoal._types import (
    CollectionInfo,
    FilterLike,
    IdsLike,
    PayloadLike,
    Point,
    ScrollPage,
    SearchResult,
    VectorsLike,
    WithPayloadLike,
)
from shoal.v1 import types_pb2 as pb

T = TypeVar("T")


class AsyncClient(BaseClient):
    """An asyncio connection to a Shoal cluster through one coordinator address; create it inside a coroutine.

    Every method raises a `shoal.ShoalError` subclass on failure, carrying the gRPC status code, and takes
    `timeout=` to override the client's for that call; `options=` are gRPC channel arguments (see `Client`).
    With `channel=`, calls go over that channel (the caller's to close) and `address` only names it.
    `api_key` and `tls` default to the variables SHOAL_API_KEY and SHOAL_TLS_CA, SHOAL_TLS_CERT, SHOAL_TLS_KEY;
    `tls=False` forces plaintext, `tls=True` TLS with the system's roots (or those variables).
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        options: Sequence[tuple[str, Any]] = (),
        channel: grpc.aio.Channel | None = None,
        api_key: str | None = None,
        tls: TLS | bool | None = None,
    ) -> None:
        key, tls_ = resolve(api_key, tls)
        super().__init__(
            address,
            channel if channel is not None else _rpc.aio_client_channel(address, options, tls=tls_),
            owns_channel=channel is None,
            timeout=timeout,
            batch_rows=batch_rows,
            api_key=key,
        )
        open_stream = functools.partial(self._stub.SearchStream, timeout=None, metadata=self._metadata)
        self._searches = AsyncSearchMux(open_stream)  # plain searches ride one stream (_aio_mux.py)

    async def close(self) -> None:
        """Close the search stream and the channel (unless it was passed in), cancelling calls still running."""
        await self._searches.close()
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _send(self, call: Call[T], timeout: TimeoutLike = USE_CLIENT_DEFAULT) -> T:
        seconds = self._timeout(timeout)
        try:
            if call.timed:
                reply = await call.method(call.request, timeout=seconds, metadata=self._call_metadata())
            else:
                reply = await self._upload(call, seconds, self._call_metadata())
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return call.decode(reply)

    @staticmethod
    async def _upload(call: Call[T], idle: float | None, metadata: Any) -> object:
        """Send an upload stream with no overall deadline, failing once it makes no progress for `idle` s."""
        requests = Watched(cast(Iterator[Any], call.request))
        rpc = call.method(requests, timeout=None, metadata=metadata)

        async def answer() -> object:
            return await rpc

        task = asyncio.ensure_future(answer())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=requests.wait_left(idle))
                if done:
                    return task.result()
                if requests.wait_left(idle) == 0:
                    rpc.cancel()
                    raise DeadlineExceeded(f"the upload made no progress for {idle:g} s")
        finally:
            task.cancel()

    # collections

    async def create_collection(
        self,
        name: str,
        dim: int,
        metric: str = DEFAULT_METRIC,
        *,
        precision: str = DEFAULT_PRECISION,
        id_type: str = DEFAULT_ID_TYPE,
        m: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef_search: int = DEFAULT_EF_SEARCH,
        timeout: TimeoutLike = USE_CLIENT_DEFAULT,
    ) -> CollectionInfo:
        """Create a collection; AlreadyExists if the name is taken."""
        call = self._create_collection(name, dim, metric, precision, id_type, m, ef_construction, ef_search)
        return await self._send(call, timeout)

    async def drop_collection(self, name: str, *, timeout: TimeoutLike = USE_CLIENT_DEFAULT) -> None:
        """Drop a collection and all its points; NotFound if there is none."""
        await self._send(self._drop_collection(name), timeout)

    async def list_collections(self, *, timeout: TimeoutLike = USE_CLIENT_DEFAULT) -> list[str]:
        """The names of all collections, sorted."""
        return await self._send(self._list_collections(), timeout)

    async def describe_collection(self, name: str, *, timeout: TimeoutLike = USE_CLIENT_DEFAULT) -> CollectionInfo:
        """A collection's config, point count and per-shard sizes."""
        return await self._send(self._describe_collection(name), timeout)

    async def collection_exists(self, name: str, *, timeout: TimeoutLike = USE_CLIENT_DEFAULT) -> bool:
        """Whether a collection of this name exists."""
        return await self._send(self._collection_exists(name), timeout)

    # points

    async def upsert(
        self,
        collection: str,
        ids: IdsLike,
        vectors: VectorsLike,
        payloads: Sequence[PayloadLike | None] | None = None,
        *,
        progress: bool = False,
        timeout: TimeoutLike = USE_CLIENT_DEFAULT,
    ) -> int:
        """Insert or replace points; large uploads go in bounded batches over one stream. Returns the count.

        `progress=True` draws a bar with rate and time left. A large upload has no overall deadline: it
        fails only when it makes no progress for `timeout` seconds.
        """
        return await self._send(self._upsert(collection, ids, vectors, payloads, progress), timeout)

    async def get(
        self,
        collection: str,
        ids: IdsLike,
        *,
        with_payload: WithPayloadLike = DEFAULT_WITH_PAYLOAD,
        with_vectors: bool = DEFAULT_WITH_VECTORS,
        timeout: TimeoutLike = USE_CLIENT_DEFAULT,
    ) -> list[Point]:
        """The points with these ids, in the order asked; ids that do not exist are left out."""
        return await self._send(self._get(collection, ids, with_vectors, with_payload), timeout)

    async def delete(
        self,
        collection: str,
        ids: IdsLike | None = None,
        *,
        filter: FilterLike | None = None,
        timeout: TimeoutLike = USE_CLIENT_DEFAULT,
    ) -> int:
        """Delete points by id or every point matching a filter (one of them); returns how many there were."""
        return await self._send(self._delete(collection, ids, filter), timeout)

    async def count(
        self, collection: str, *, filter: FilterLike | None = None, timeout: TimeoutLike = USE_CLIENT_DEFAULT
    ) -> int:
        """The number of points in a collection, or of those matching a filter."""
        return await self._send(self._count(collection, filter), timeout)

    async def scroll(
        self,
        collection: str,
        *,
        filter: FilterLike | None = None,
        limit: int = DEFAULT_SCROLL,
        cursor: str | None = None,
        with_payload: WithPayloadLike = DEFAULT_WITH_PAYLOAD,
        with_vectors: bool = DEFAULT_WITH_VECTORS,
        timeout: TimeoutLike = USE_CLIENT_DEFAULT,
    ) -> ScrollPage:
        """A page of up to `limit` points (only those matching `filter`, if given) in a stable order.

        Pass the page's `next_cursor` to get the next page; it is None after the last one.
        """
        call = self._scroll(collection, filter, limit, cursor, with_payload, with_vectors)
        return await self._send(call, timeout)

    async def scroll_all(
        self,
        collection: str,
        *,
        filter: FilterLike | None = None,
        page: int = DEFAULT_SCROLL,
        with_payload: WithPayloadLike = DEFAULT_WITH_PAYLOAD,
        with_vectors: bool = DEFAULT_WITH_VECTORS,
        progress: bool = False,
        timeout: TimeoutLike = USE_CLIENT_DEFAULT,
    ) -> AsyncIterator[Point]:
        """Every point (matching `filter`, if given), fetched `page` at a time; `timeout` bounds each page.

        `progress=True` counts the points first and draws a bar with rate and time left.
        """
        total = await self.count(collection, filter=filter, timeout=timeout) if progress else None
        with progress_bar(f"scroll {collection}", total, progress) as bar:
            cursor: str | None = None
            while True:
                call = self._scroll(collection, filter, page, cursor, with_payload, with_vectors)
                got = await self._send(call, timeout)
                for point in got.points:
                    yield point
                bar.update(len(got))
                if (cursor := got.next_cursor) is None:
                    return

    async def set_payload(
        self,
        collection: str,
        ids: IdsLike,
        payload: PayloadLike | None = None,
        *,
        unset: Sequence[str] = (),
        timeout: TimeoutLike = USE_CLIENT_DEFAULT,
    ) -> int:
        """Set top-level payload keys of existing points, then remove dotted `unset` paths; vectors stay.

        Returns how many of the ids exist (unknown ids are skipped).
        """
        return await self._send(self._set_payload(collection, ids, payload, unset), timeout)

    # search

    async def search(
        self,
        collection: str,
        queries: VectorsLike,
        k: int = 10,
        *,
        ef: int | None = None,
        with_payload: WithPayloadLike = DEFAULT_WITH_PAYLOAD,
        with_vectors: bool = DEFAULT_WITH_VECTORS,
        filter: FilterLike | None = None,
        timeout: TimeoutLike = USE_CLIENT_DEFAULT,
    ) -> SearchResult:
        """The k nearest points of each query row ((q, dim) or one (dim,) vector), nearest first.

        With a `filter`, only points whose payload matches it: min(k, matches) hits per query.
        """
        shape, fields = self._search_shape(collection, k, ef, with_payload, with_vectors, filter)
        search = Search(shape, as_matrix(queries, "queries"), self.token)
        try:
            return await self._searches.search(search, self._timeout(timeout), caller_traceparent(), fields)
        except ChannelClosed:
            return await self._send(self._search(shape, fields, queries), timeout)  # raises what it always raised

    async def search_stream(
        self,
        collection: str,
        batches: Iterable[VectorsLike] | AsyncIterable[VectorsLike],
        k: int = 10,
        *,
        ef: int | None = None,
        with_payload: WithPayloadLike = DEFAULT_WITH_PAYLOAD,
        with_vectors: bool = DEFAULT_WITH_VECTORS,
        filter: FilterLike | None = None,
    ) -> AsyncIterator[SearchResult]:
        """Pipeline query batches (a plain or async iterable) over one stream; yields results in the order given.

        Fed from an async queue, one stream serves a caller that sends a query, awaits its answer and sends
        the next: cheaper per query than unary calls on both ends.
        """
        shape, fields = self._search_shape(collection, k, ef, with_payload, with_vectors, filter)
        traceparent = caller_traceparent()
        failed: list[Exception] = []

        async def requests() -> AsyncIterator[pb.SearchRequest]:
            items = batches if isinstance(batches, AsyncIterable) else _aiter(batches)
            i = 0
            try:
                async for q in items:
                    yield stream_request(shape, q, i, traceparent, self.token)
                    i += 1
            except Exception as exc:
                # gRPC would only cancel the call; the caller gets this error after the answers before it.
                failed.append(exc)

        call = self._stub.SearchStream(requests(), timeout=None, metadata=self._metadata)
        order = InOrder(fields)
        try:
            async for reply in call:
                for result in order.release(reply):
                    yield result
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()  # the caller stopped early or failed: end the stream rather than leave it open
        if failed:
            raise failed[0]


async def _aiter(items: Iterable[VectorsLike]) -> AsyncIterator[VectorsLike]:
    for item in items:
        yield item
