"""What `Client` and `AsyncClient` share: settings, requests built and checked from Python values, decoding.

Every method of a client builds a `Call` here and sends it; the two clients differ only in sending
(blocking or awaited), as httpx's `Client` and `AsyncClient` do.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator, Sequence
from operator import attrgetter
from typing import Any, Generic, NamedTuple, TypeAlias, TypeVar

import grpc
import numpy as np
from tqdm import tqdm

from shoal._config import MAX_BATCH_ROWS, MAX_MESSAGE_BYTES, CollectionConfig, check_ef, check_k
from shoal._errors import InvalidArgument, ShoalError, from_status
from shoal._filter import check_path, to_json
from shoal._search import Search, SearchShape
from shoal._tls import Metadata, api_key_metadata
from shoal._tracing import HEADER as TRACE_HEADER
from shoal._tracing import caller_traceparent
from shoal._types import (
    CollectionInfo,
    Fields,
    FilterLike,
    IdsLike,
    PayloadLike,
    Point,
    ScrollPage,
    SearchResult,
    VectorsLike,
    WithPayloadLike,
    points_from_proto,
)
from shoal._wire import as_id_array, check_upsert, encode_ids, encode_matrix, encode_payload
from shoal.v1 import shoal_pb2_grpc
from shoal.v1 import types_pb2 as pb

T = TypeVar("T")


class _Default(enum.Enum):
    CLIENT = "the client's timeout"


# A method's `timeout=` when not given: the client's own. None means no deadline, so it cannot be the marker.
USE_CLIENT_DEFAULT = _Default.CLIENT
TimeoutLike: TypeAlias = float | None | _Default

# An upload message stays well below the server's limit, so payloads cannot push it over.
_BATCH_BYTES = MAX_MESSAGE_BYTES // 4


class Call(NamedTuple, Generic[T]):
    """One RPC to make: the stub's method, its request (an iterator of them for a client stream), the decoder."""

    method: Callable[..., Any]
    request: object  # a message, or an iterator of messages for a client stream
    decode: Callable[[Any], T]
    # False for an upload stream: its length is the caller's data, so a deadline meant for one call must not
    # cut it short; the timeout then bounds the wait for each next step of progress instead.
    timed: bool = True


def _nothing(reply: object) -> None:
    return None


def as_matrix(vectors: VectorsLike, what: str) -> np.ndarray:
    """A 2-D float32 matrix from an array-like of rows (one 1-D vector becomes one row)."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise InvalidArgument(f"{what} must be a (n, dim) matrix or one (dim,) vector, got shape {x.shape}")
    return x


def stream_request(
    shape: SearchShape, queries: VectorsLike, request_id: int, traceparent: str = ""
) -> pb.SearchRequest:
    """One request of a search stream (with the caller's trace context: the stream's messages are traced one by one)."""
    request = Search(shape, as_matrix(queries, "queries")).to_proto(request_id)
    if traceparent:
        request.traceparent = traceparent
    return request


def progress_bar(label: str, total: int | None, enabled: bool) -> tqdm[Any]:
    """A progress bar on stderr with rate and time left (a silent counter when not enabled)."""
    return tqdm(total=total, desc=label, unit="pt", unit_scale=True, disable=not enabled, dynamic_ncols=True)


class Watched(Generic[T]):
    """An upload's messages, noting when gRPC last took one: the upload's progress."""

    def __init__(self, items: Iterator[T]) -> None:
        self._items = items
        self.last = time.monotonic()

    def __iter__(self) -> Watched[T]:
        return self

    def __next__(self) -> T:
        item = next(self._items)
        self.last = time.monotonic()
        return item

    def wait_left(self, idle: float | None) -> float | None:
        """Seconds until the upload has made no progress for `idle` seconds (None: never)."""
        return None if idle is None else max(0.0, self.last + idle - time.monotonic())


def payload_fields(with_payload: WithPayloadLike) -> tuple[bool, Fields]:
    """Whether to ask for payloads, and which fields to keep (None: all): from True, False or dotted paths."""
    if isinstance(with_payload, bool):
        return with_payload, None
    paths = [with_payload] if isinstance(with_payload, str) else list(with_payload)
    # The server sends whole payloads (stored JSON, passed through unparsed); the SDK keeps the fields
    # asked for while it decodes each payload anyway.
    return True, tuple(check_path(p, "payload field") for p in paths)


class InOrder:
    """A search stream's answers, released in the order of their requests."""

    def __init__(self, fields: Fields = None) -> None:
        self._pending: dict[int, SearchResult | ShoalError] = {}
        self._next = 0
        self._fields = fields

    def release(self, reply: pb.SearchResponse) -> Iterator[SearchResult]:
        """Take one answer; the results now due, raising a request's error when its turn comes."""
        if reply.error.code:
            self._pending[reply.request_id] = from_status(reply.error)
        else:
            self._pending[reply.request_id] = SearchResult.from_proto(reply, self._fields)
        return self._due()

    def _due(self) -> Iterator[SearchResult]:
        while self._next in self._pending:
            outcome = self._pending.pop(self._next)
            self._next += 1
            if isinstance(outcome, ShoalError):
                raise outcome
            yield outcome


class BaseClient:
    """A client's settings and channel, and every request it sends; subclasses only send them."""

    def __init__(
        self,
        address: str,
        channel: grpc.Channel | grpc.aio.Channel,
        *,
        owns_channel: bool,
        timeout: float | None,
        batch_rows: int,
        api_key: str | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._metadata = api_key_metadata(api_key)  # sent with every call
        self.batch_rows = batch_rows
        self._channel = channel
        self._owns_channel = owns_channel  # a channel the caller passed in is the caller's to close
        self._stub = shoal_pb2_grpc.ShoalStub(channel)

    def _timeout(self, timeout: TimeoutLike) -> float | None:
        """A call's timeout in seconds (None: none), the client's when not given."""
        return self.timeout if timeout is USE_CLIENT_DEFAULT else timeout

    def _call_metadata(self) -> Metadata:
        """The metadata of one call: the API key, and the application's trace context when it has one."""
        traceparent = caller_traceparent()
        return (*self._metadata, (TRACE_HEADER, traceparent)) if traceparent else self._metadata

    # collections

    def _create_collection(
        self,
        name: str,
        dim: int,
        metric: str,
        precision: str,
        id_type: str,
        m: int,
        ef_construction: int,
        ef_search: int,
    ) -> Call[CollectionInfo]:
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
        return Call(
            self._stub.CreateCollection,
            pb.CreateCollectionRequest(config=config.to_proto()),
            lambda reply: CollectionInfo.from_proto(reply.info),
        )

    def _drop_collection(self, name: str) -> Call[None]:
        return Call(self._stub.DropCollection, pb.DropCollectionRequest(name=name), _nothing)

    def _list_collections(self) -> Call[list[str]]:
        return Call(self._stub.ListCollections, pb.ListCollectionsRequest(), lambda reply: list(reply.names))

    def _describe_collection(self, name: str) -> Call[CollectionInfo]:
        return Call(self._stub.DescribeCollection, pb.DescribeCollectionRequest(name=name), CollectionInfo.from_proto)

    def _collection_exists(self, name: str) -> Call[bool]:
        # The catalogue answers alone; describing the collection would ask every shard for its size.
        return Call(self._stub.ListCollections, pb.ListCollectionsRequest(), lambda reply: name in reply.names)

    # points

    def _upsert(
        self,
        collection: str,
        ids: IdsLike,
        vectors: VectorsLike,
        payloads: Sequence[PayloadLike | None] | None,
        progress: bool,
    ) -> Call[int]:
        """One unary call for a small upload; bounded batches over one client stream for a large one."""
        id_arr = as_id_array(ids)
        x = as_matrix(vectors, "vectors")
        raw = [encode_payload(p) for p in payloads] if payloads is not None else []
        # The whole upload is checked before the first batch is sent, so bad input changes nothing.
        check_upsert(id_arr, x, raw, max_rows=None)
        rows = len(id_arr)
        row_bytes = x.shape[1] * 4 + (max(map(len, raw)) if raw else 0) + 16
        step = max(1, min(self.batch_rows, MAX_BATCH_ROWS, _BATCH_BYTES // row_bytes))
        bar = progress_bar(f"upsert {collection}", rows, progress)

        def batch(lo: int) -> pb.UpsertRequest:
            hi = lo + step
            return pb.UpsertRequest(
                collection=collection,
                ids=encode_ids(id_arr[lo:hi]),
                vectors=encode_matrix(x[lo:hi]),
                payloads=raw[lo:hi],
            )

        if rows <= step:

            def upserted(reply: pb.UpsertResponse) -> int:
                bar.update(rows)
                bar.close()
                return int(reply.upserted)

            return Call(self._stub.Upsert, batch(0), upserted)

        def stream() -> Iterator[pb.UpsertRequest]:
            try:
                for lo in range(0, rows, step):
                    yield batch(lo)
                    bar.update(min(step, rows - lo))
            finally:
                bar.close()

        return Call(self._stub.UpsertStream, stream(), attrgetter("upserted"), timed=False)

    def _get(
        self, collection: str, ids: IdsLike, with_vectors: bool, with_payload: WithPayloadLike
    ) -> Call[list[Point]]:
        wanted, fields = payload_fields(with_payload)
        request = pb.GetRequest(
            collection=collection,
            ids=encode_ids(as_id_array(ids)),
            with_vectors=with_vectors,
            with_payload=wanted,
        )
        return Call(self._stub.Get, request, lambda reply: points_from_proto(reply, fields))

    def _delete(self, collection: str, ids: IdsLike | None, filter: FilterLike | None) -> Call[int]:
        if (ids is None) == (filter is None):
            raise InvalidArgument("give ids or a filter to delete, not both and not neither")
        request = (
            pb.DeleteRequest(collection=collection, filter=to_json(filter))
            if ids is None
            else pb.DeleteRequest(collection=collection, ids=encode_ids(as_id_array(ids)))
        )
        return Call(self._stub.Delete, request, attrgetter("deleted"))

    def _count(self, collection: str, filter: FilterLike | None) -> Call[int]:
        request = pb.CountRequest(collection=collection, filter=to_json(filter))
        return Call(self._stub.Count, request, attrgetter("count"))

    def _scroll(
        self,
        collection: str,
        filter: FilterLike | None,
        limit: int,
        cursor: str | None,
        with_payload: WithPayloadLike,
        with_vectors: bool,
    ) -> Call[ScrollPage]:
        wanted, fields = payload_fields(with_payload)
        request = pb.ScrollRequest(
            collection=collection,
            filter=to_json(filter),
            limit=limit,
            cursor=cursor or "",
            with_payload=wanted,
            with_vectors=with_vectors,
        )
        return Call(self._stub.Scroll, request, lambda reply: ScrollPage.from_proto(reply, fields))

    def _set_payload(
        self, collection: str, ids: IdsLike, payload: PayloadLike | None, unset: Sequence[str] | str
    ) -> Call[int]:
        paths = [check_path(p, "unset path") for p in ([unset] if isinstance(unset, str) else unset)]
        request = pb.SetPayloadRequest(
            collection=collection, ids=encode_ids(as_id_array(ids)), set=encode_payload(payload), unset=paths
        )
        return Call(self._stub.SetPayload, request, attrgetter("updated"))

    # search

    @staticmethod
    def _search_shape(
        collection: str,
        k: int,
        ef: int | None,
        with_payload: WithPayloadLike,
        with_vectors: bool,
        filter: FilterLike | None,
    ) -> tuple[SearchShape, Fields]:
        """What every query batch of a search or search stream shares, checked once, and the payload fields kept."""
        wanted, fields = payload_fields(with_payload)
        return SearchShape(collection, check_k(k), check_ef(ef or 0), to_json(filter), wanted, with_vectors), fields

    def _search(self, shape: SearchShape, fields: Fields, queries: VectorsLike) -> Call[SearchResult]:
        request = Search(shape, as_matrix(queries, "queries")).to_proto()
        return Call(self._stub.Search, request, lambda reply: SearchResult.from_proto(reply, fields))
