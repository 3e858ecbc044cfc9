"""The asyncio Python client of a Shoal coordinator: the same methods as `Client`, awaited.

Many concurrent searches from one event loop cost the client far less CPU than as many threads with the
blocking client, above all over `search_stream` (one long-lived stream per concurrent caller).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from shoal import _rpc
from shoal._client import (
    DEFAULT_ADDRESS,
    DEFAULT_BATCH_ROWS,
    DEFAULT_TIMEOUT,
    _Progress,
    _search_request,
    _stream_outcome,
    _upsert_plan,
)
from shoal._config import CollectionConfig
from shoal._errors import InvalidArgument, ShoalError, from_rpc_error
from shoal._filter import check_path, to_json
from shoal._types import CollectionInfo, Point, ScrollPage, SearchResult, points_from_proto
from shoal._wire import encode_ids, encode_payload
from shoal.v1 import shoal_pb2_grpc
from shoal.v1 import types_pb2 as pb

T = TypeVar("T")


class AsyncClient:
    """An asyncio connection to a Shoal cluster through one coordinator address; create it inside a coroutine.

    Every method raises a `shoal.ShoalError` subclass on failure, carrying the gRPC status code.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        batch_rows: int = DEFAULT_BATCH_ROWS,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.batch_rows = batch_rows
        self._channel = _rpc.aio_channel(address)
        self._stub = shoal_pb2_grpc.ShoalStub(self._channel)

    async def close(self) -> None:
        """Close the channel, cancelling calls still running."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, fn: Callable[..., Awaitable[T]], request: Any, timeout: float | None = None) -> T:
        try:
            return await fn(request, timeout=timeout if timeout is not None else self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    # collections

    async def create_collection(
        self,
        name: str,
        dim: int,
        metric: str = "cosine",
        *,
        precision: str = "f32",
        id_type: str = "uint64",
        m: int = 16,
        ef_construction: int = 128,
        ef_search: int = 64,
    ) -> CollectionInfo:
        """Create a collection; AlreadyExists if the name is taken."""
        config = CollectionConfig(
            name=name,
            dim=dim,
            metric=metric,
            precision=precision,
            id_type=id_type,
            m=m,
            ef_construction=ef_construction,
            ef_search=ef_search,
        )
        reply = await self._call(self._stub.CreateCollection, pb.CreateCollectionRequest(config=config.to_proto()))
        return CollectionInfo.from_proto(reply.info)

    async def drop_collection(self, name: str) -> None:
        """Drop a collection and all its points; NotFound if there is none."""
        await self._call(self._stub.DropCollection, pb.DropCollectionRequest(name=name))

    async def list_collections(self) -> list[str]:
        """The names of all collections, sorted."""
        return list((await self._call(self._stub.ListCollections, pb.ListCollectionsRequest())).names)

    async def describe_collection(self, name: str) -> CollectionInfo:
        """A collection's config, point count and per-shard sizes."""
        return CollectionInfo.from_proto(
            await self._call(self._stub.DescribeCollection, pb.DescribeCollectionRequest(name=name))
        )

    # points

    async def upsert(
        self,
        collection: str,
        ids: Any,
        vectors: Any,
        payloads: Sequence[dict[str, Any] | None] | None = None,
        *,
        progress: bool = False,
    ) -> int:
        """Insert or replace points; large uploads go in bounded batches over one stream. Returns the count."""
        rows, step, batch = _upsert_plan(collection, ids, vectors, payloads, self.batch_rows)
        bar = _Progress(f"upsert {collection}", rows, progress)
        if rows <= step:
            n = (await self._call(self._stub.Upsert, batch(0))).upserted
            bar.advance(rows)
            return n

        def stream() -> Iterator[pb.UpsertRequest]:
            for lo in range(0, rows, step):
                yield batch(lo)
                bar.advance(min(step, rows - lo))

        try:
            return (await self._stub.UpsertStream(stream(), timeout=None)).upserted
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    async def get(
        self, collection: str, ids: Any, *, with_vectors: bool = True, with_payload: bool = True
    ) -> list[Point]:
        """The points with these ids, in the order asked; ids that do not exist are left out."""
        request = pb.GetRequest(
            collection=collection, ids=encode_ids(ids), with_vectors=with_vectors, with_payload=with_payload
        )
        return points_from_proto(await self._call(self._stub.Get, request))

    async def delete(self, collection: str, ids: Any = None, *, filter: dict[str, Any] | None = None) -> int:
        """Delete points by id or every point matching a filter (one of them); returns how many there were."""
        if (ids is None) == (filter is None):
            raise InvalidArgument("give ids or a filter to delete, not both and not neither")
        request = (
            pb.DeleteRequest(collection=collection, filter=to_json(filter))
            if filter is not None
            else pb.DeleteRequest(collection=collection, ids=encode_ids(ids))
        )
        return (await self._call(self._stub.Delete, request)).deleted

    async def count(self, collection: str, *, filter: dict[str, Any] | None = None) -> int:
        """The number of points in a collection, or of those matching a filter."""
        request = pb.CountRequest(collection=collection, filter=to_json(filter))
        return (await self._call(self._stub.Count, request)).count

    async def scroll(
        self,
        collection: str,
        *,
        filter: dict[str, Any] | None = None,
        limit: int = 100,
        cursor: str | None = None,
        with_payload: bool = True,
        with_vectors: bool = False,
    ) -> ScrollPage:
        """A page of up to `limit` points (only those matching `filter`, if given) in a stable order.

        Pass the page's `next_cursor` to get the next page; it is None after the last one.
        """
        request = pb.ScrollRequest(
            collection=collection,
            filter=to_json(filter),
            limit=limit,
            cursor=cursor or "",
            with_payload=with_payload,
            with_vectors=with_vectors,
        )
        return ScrollPage.from_proto(await self._call(self._stub.Scroll, request))

    async def set_payload(
        self, collection: str, ids: Any, payload: dict[str, Any] | None = None, *, unset: Sequence[str] = ()
    ) -> int:
        """Set top-level payload keys of existing points, then remove dotted `unset` paths; vectors stay.

        Returns how many of the ids exist (unknown ids are skipped).
        """
        unset = [check_path(p, "unset path") for p in ([unset] if isinstance(unset, str) else unset)]
        request = pb.SetPayloadRequest(
            collection=collection, ids=encode_ids(ids), set=encode_payload(payload), unset=unset
        )
        return (await self._call(self._stub.SetPayload, request)).updated

    # search

    async def search(
        self,
        collection: str,
        queries: Any,
        k: int = 10,
        *,
        ef: int | None = None,
        with_payload: bool = False,
        with_vectors: bool = False,
        filter: dict[str, Any] | None = None,
    ) -> SearchResult:
        """The k nearest points of each query row ((q, dim) or one (dim,) vector), nearest first.

        With a `filter`, only points whose payload matches it: min(k, matches) hits per query.
        """
        request = _search_request(collection, queries, k, ef, with_payload, with_vectors, filter_json=to_json(filter))
        return SearchResult.from_proto(await self._call(self._stub.Search, request))

    async def search_stream(
        self,
        collection: str,
        batches: Iterable[Any] | AsyncIterable[Any],
        k: int = 10,
        *,
        ef: int | None = None,
        with_payload: bool = False,
        with_vectors: bool = False,
        filter: dict[str, Any] | None = None,
    ) -> AsyncIterator[SearchResult]:
        """Pipeline query batches (a plain or async iterable) over one stream; yields results in the order given.

        Fed from an async queue, one stream serves a caller that sends a query, awaits its answer and sends
        the next: cheaper per query than unary calls on both ends.
        """

        failed: list[Exception] = []
        filter_json = to_json(filter)

        async def requests() -> AsyncIterator[pb.SearchRequest]:
            items = batches if isinstance(batches, AsyncIterable) else _aiter(batches)
            i = 0
            try:
                async for q in items:
                    yield _search_request(
                        collection, q, k, ef, with_payload, with_vectors, request_id=i, filter_json=filter_json
                    )
                    i += 1
            except Exception as exc:
                # gRPC would only cancel the call; the caller gets this error after the answers before it.
                failed.append(exc)

        call = self._stub.SearchStream(requests(), timeout=None)
        pending: dict[int, SearchResult | ShoalError] = {}
        want = 0
        try:
            async for reply in call:
                pending[reply.request_id] = _stream_outcome(reply)
                while want in pending:
                    outcome = pending.pop(want)
                    want += 1
                    if isinstance(outcome, ShoalError):
                        raise outcome
                    yield outcome
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            call.cancel()  # the caller stopped early or failed: end the stream rather than leave it open
        if failed:
            raise failed[0]


async def _aiter(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item
