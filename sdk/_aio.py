"""The asyncio Python client of a Shoal coordinator: the same methods as `Client`, awaited.

Many concurrent searches from one event loop cost the client far less CPU than as many threads with the
blocking client, above all over `search_stream` (one long-lived stream per concurrent caller).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import TypeVar

import grpc

from shoal import _rpc
from shoal._base import BaseClient, Call, InOrder, stream_request
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
)
from shoal._errors import from_rpc_error
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
)
from shoal.v1 import types_pb2 as pb

T = TypeVar("T")


class AsyncClient(BaseClient):
    """An asyncio connection to a Shoal cluster through one coordinator address; create it inside a coroutine.

    Every method raises a `shoal.ShoalError` subclass on failure, carrying the gRPC status code.
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
        channel: grpc.aio.Channel | None = None,
        api_key: str | None = None,
        tls: TLS | bool | None = None,
    ) -> None:
        key, tls_ = resolve(api_key, tls)
        super().__init__(
            address,
            channel if channel is not None else _rpc.aio_channel(address, tls=tls_),
            owns_channel=channel is None,
            timeout=timeout,
            batch_rows=batch_rows,
            api_key=key,
        )

    async def close(self) -> None:
        """Close the channel (unless it was passed in), cancelling calls still running."""
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _send(self, call: Call[T]) -> T:
        try:
            reply = await call.method(
                call.request, timeout=self.timeout if call.timed else None, metadata=self._call_metadata()
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return call.decode(reply)

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
    ) -> CollectionInfo:
        """Create a collection; AlreadyExists if the name is taken."""
        return await self._send(
            self._create_collection(name, dim, metric, precision, id_type, m, ef_construction, ef_search)
        )

    async def drop_collection(self, name: str) -> None:
        """Drop a collection and all its points; NotFound if there is none."""
        await self._send(self._drop_collection(name))

    async def list_collections(self) -> list[str]:
        """The names of all collections, sorted."""
        return await self._send(self._list_collections())

    async def describe_collection(self, name: str) -> CollectionInfo:
        """A collection's config, point count and per-shard sizes."""
        return await self._send(self._describe_collection(name))

    # points

    async def upsert(
        self,
        collection: str,
        ids: IdsLike,
        vectors: VectorsLike,
        payloads: Sequence[PayloadLike | None] | None = None,
        *,
        progress: bool = False,
    ) -> int:
        """Insert or replace points; large uploads go in bounded batches over one stream. Returns the count."""
        return await self._send(self._upsert(collection, ids, vectors, payloads, progress))

    async def get(
        self, collection: str, ids: IdsLike, *, with_vectors: bool = True, with_payload: bool = True
    ) -> list[Point]:
        """The points with these ids, in the order asked; ids that do not exist are left out."""
        return await self._send(self._get(collection, ids, with_vectors, with_payload))

    async def delete(self, collection: str, ids: IdsLike | None = None, *, filter: FilterLike | None = None) -> int:
        """Delete points by id or every point matching a filter (one of them); returns how many there were."""
        return await self._send(self._delete(collection, ids, filter))

    async def count(self, collection: str, *, filter: FilterLike | None = None) -> int:
        """The number of points in a collection, or of those matching a filter."""
        return await self._send(self._count(collection, filter))

    async def scroll(
        self,
        collection: str,
        *,
        filter: FilterLike | None = None,
        limit: int = DEFAULT_SCROLL,
        cursor: str | None = None,
        with_payload: bool = True,
        with_vectors: bool = False,
    ) -> ScrollPage:
        """A page of up to `limit` points (only those matching `filter`, if given) in a stable order.

        Pass the page's `next_cursor` to get the next page; it is None after the last one.
        """
        return await self._send(self._scroll(collection, filter, limit, cursor, with_payload, with_vectors))

    async def set_payload(
        self, collection: str, ids: IdsLike, payload: PayloadLike | None = None, *, unset: Sequence[str] = ()
    ) -> int:
        """Set top-level payload keys of existing points, then remove dotted `unset` paths; vectors stay.

        Returns how many of the ids exist (unknown ids are skipped).
        """
        return await self._send(self._set_payload(collection, ids, payload, unset))

    # search

    async def search(
        self,
        collection: str,
        queries: VectorsLike,
        k: int = 10,
        *,
        ef: int | None = None,
        with_payload: bool = False,
        with_vectors: bool = False,
        filter: FilterLike | None = None,
    ) -> SearchResult:
        """The k nearest points of each query row ((q, dim) or one (dim,) vector), nearest first.

        With a `filter`, only points whose payload matches it: min(k, matches) hits per query.
        """
        shape = self._search_shape(collection, k, ef, with_payload, with_vectors, filter)
        return await self._send(self._search(shape, queries))

    async def search_stream(
        self,
        collection: str,
        batches: Iterable[VectorsLike] | AsyncIterable[VectorsLike],
        k: int = 10,
        *,
        ef: int | None = None,
        with_payload: bool = False,
        with_vectors: bool = False,
        filter: FilterLike | None = None,
    ) -> AsyncIterator[SearchResult]:
        """Pipeline query batches (a plain or async iterable) over one stream; yields results in the order given.

        Fed from an async queue, one stream serves a caller that sends a query, awaits its answer and sends
        the next: cheaper per query than unary calls on both ends.
        """
        shape = self._search_shape(collection, k, ef, with_payload, with_vectors, filter)
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
        order = InOrder()
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
