"""The blocking Python client of a Shoal coordinator."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar, cast

import grpc

from shoal import _rpc
from shoal._aio import AsyncClient
from shoal._base import (
    USE_CLIENT_DEFAULT,
    BaseClient,
    Call,
    InOrder,
    TimeoutLike,
    Watched,
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
from shoal._errors import DeadlineExceeded, InvalidArgument, from_rpc_error
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

T = TypeVar("T")


class Client(BaseClient):
    """A connection to a Shoal cluster through one coordinator address.

    Every method raises a `shoal.ShoalError` subclass on failure, carrying the gRPC status code, and takes
    `timeout=` (seconds, None for none) to override the client's `timeout` for that call. Idempotent calls
    are retried with backoff on UNAVAILABLE. `options=` are gRPC channel arguments, e.g.
    `[("grpc.lb_policy_name", "round_robin")]` for a `dns:///` address behind a Kubernetes Service.
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
        channel: grpc.Channel | None = None,
        api_key: str | None = None,
        tls: TLS | bool | None = None,
    ) -> None:
        key, tls_ = resolve(api_key, tls)
        super().__init__(
            address,
            channel if channel is not None else _rpc.client_channel(address, options, tls=tls_),
            owns_channel=channel is None,
            timeout=timeout,
            batch_rows=batch_rows,
            api_key=key,
        )
        # What `_async_copy` opens the same connection with (None: on the caller's channel, which it cannot copy).
        self._connection = (tuple(options), key, tls_) if channel is None else None

    def _async_copy(self) -> AsyncClient:
        """An AsyncClient like this one (address, options, credentials, timeout); make it in the loop that uses it."""
        if self._connection is None:
            raise InvalidArgument("a Client on a channel passed in cannot be copied: give an AsyncClient too")
        options, key, tls = self._connection
        return AsyncClient(
            self.address,
            timeout=self.timeout,
            batch_rows=self.batch_rows,
            options=options,
            # As resolved for this client: the SHOAL_* variables are not read again, so none stays none.
            api_key=key if key is not None else "",
            tls=tls if tls is not None else False,
        )

    def close(self) -> None:
        """Close the channel (unless it was passed in)."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: Call[T], timeout: TimeoutLike = USE_CLIENT_DEFAULT) -> T:
        seconds = self._timeout(timeout)
        try:
            if call.timed:
                reply = call.method(call.request, timeout=seconds, metadata=self._call_metadata())
            else:
                reply = self._upload(call, seconds, self._call_metadata())
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return call.decode(reply)

    @staticmethod
    def _upload(call: Call[T], idle: float | None, metadata: Any) -> object:
        """Send an upload stream with no overall deadline, failing once it makes no progress for `idle` s."""
        requests = Watched(cast(Iterator[Any], call.request))
        future = cast(grpc.StreamUnaryMultiCallable, call.method).future(requests, timeout=None, metadata=metadata)
        while True:
            try:
                return future.result(timeout=requests.wait_left(idle))
            except grpc.FutureTimeoutError:
                if requests.wait_left(idle) == 0:
                    future.cancel()
                    raise DeadlineExceeded(f"the upload made no progress for {idle:g} s") from None

    # collections

    def create_collection(
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
        return self._send(call, timeout)

    def drop_collection(self, name: str, *, timeout: TimeoutLike = USE_CLIENT_DEFAULT) -> None:
        """Drop a collection and all its points; NotFound if there is none."""
        self._send(self._drop_collection(name), timeout)

    def list_collections(self, *, timeout: TimeoutLike = USE_CLIENT_DEFAULT) -> list[str]:
        """The names of all collections, sorted."""
        return self._send(self._list_collections(), timeout)

    def describe_collection(self, name: str, *, timeout: TimeoutLike = USE_CLIENT_DEFAULT) -> CollectionInfo:
        """A collection's config, point count and per-shard sizes."""
        return self._send(self._describe_collection(name), timeout)

    def collection_exists(self, name: str, *, timeout: TimeoutLike = USE_CLIENT_DEFAULT) -> bool:
        """Whether a collection of this name exists."""
        return self._send(self._collection_exists(name), timeout)

    # points

    def upsert(
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
        return self._send(self._upsert(collection, ids, vectors, payloads, progress), timeout)

    def get(
        self,
        collection: str,
        ids: IdsLike,
        *,
        with_payload: WithPayloadLike = DEFAULT_WITH_PAYLOAD,
        with_vectors: bool = DEFAULT_WITH_VECTORS,
        timeout: TimeoutLike = USE_CLIENT_DEFAULT,
    ) -> list[Point]:
        """The points with these ids, in the order asked; ids that do not exist are left out."""
        return self._send(self._get(collection, ids, with_vectors, with_payload), timeout)

    def delete(
        self,
        collection: str,
        ids: IdsLike | None = None,
        *,
        filter: FilterLike | None = None,
        timeout: TimeoutLike = USE_CLIENT_DEFAULT,
    ) -> int:
        """Delete points by id or every point matching a filter (one of them); returns how many there were."""
        return self._send(self._delete(collection, ids, filter), timeout)

    def count(
        self, collection: str, *, filter: FilterLike | None = None, timeout: TimeoutLike = USE_CLIENT_DEFAULT
    ) -> int:
        """The number of points in a collection, or of those matching a filter."""
        return self._send(self._count(collection, filter), timeout)

    def scroll(
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
        return self._send(self._scroll(collection, filter, limit, cursor, with_payload, with_vectors), timeout)

    def scroll_all(
        self,
        collection: str,
        *,
        filter: FilterLike | None = None,
        page: int = DEFAULT_SCROLL,
        with_payload: WithPayloadLike = DEFAULT_WITH_PAYLOAD,
        with_vectors: bool = DEFAULT_WITH_VECTORS,
        progress: bool = False,
        timeout: TimeoutLike = USE_CLIENT_DEFAULT,
    ) -> Iterator[Point]:
        """Every point (matching `filter`, if given), fetched `page` at a time; `timeout` bounds each page.

        `progress=True` counts the points first and draws a bar with rate and time left.
        """
        total = self.count(collection, filter=filter, timeout=timeout) if progress else None
        with progress_bar(f"scroll {collection}", total, progress) as bar:
            cursor: str | None = None
            while True:
                call = self._scroll(collection, filter, page, cursor, with_payload, with_vectors)
                got = self._send(call, timeout)
                yield from got.points
                bar.update(len(got))
                if (cursor := got.next_cursor) is None:
                    return

    def set_payload(
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
        return self._send(self._set_payload(collection, ids, payload, unset), timeout)

    # search

    def search(
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
        return self._send(self._search(shape, fields, queries), timeout)

    def search_stream(
        self,
        collection: str,
        batches: Iterable[VectorsLike],
        k: int = 10,
        *,
        ef: int | None = None,
        with_payload: WithPayloadLike = DEFAULT_WITH_PAYLOAD,
        with_vectors: bool = DEFAULT_WITH_VECTORS,
        filter: FilterLike | None = None,
    ) -> Iterator[SearchResult]:
        """Pipeline many query batches over one stream; yields their results in the order given."""
        shape, fields = self._search_shape(collection, k, ef, with_payload, with_vectors, filter)
        traceparent = caller_traceparent()  # here: gRPC draws the requests on its own thread, outside the trace
        requests = (stream_request(shape, q, i, traceparent, self.token) for i, q in enumerate(batches))
        order = InOrder(fields)
        try:
            for reply in self._stub.SearchStream(requests, timeout=None, metadata=self._metadata):
                yield from order.release(reply)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
