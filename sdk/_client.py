"""The blocking Python client of a Shoal coordinator."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np

from shoal import _rpc
from shoal._config import MAX_BATCH_ROWS, MAX_MESSAGE_BYTES, CollectionConfig, check_k
from shoal._errors import InvalidArgument, ShoalError, error_for_code, from_rpc_error, status_from_value
from shoal._filter import check_path, to_json
from shoal._types import CollectionInfo, Point, ScrollPage, SearchResult, points_from_proto
from shoal._wire import as_id_array, check_upsert, encode_ids, encode_matrix, encode_payload
from shoal.v1 import shoal_pb2_grpc
from shoal.v1 import types_pb2 as pb

T = TypeVar("T")

DEFAULT_ADDRESS = "127.0.0.1:7070"
DEFAULT_TIMEOUT = 60.0
DEFAULT_BATCH_ROWS = 2048
# An upload message stays well below the server's limit, so payloads cannot push it over.
_BATCH_BYTES = MAX_MESSAGE_BYTES // 4


def _as_matrix(vectors: Any, what: str) -> np.ndarray:
    """A 2-D float32 matrix from an array-like of rows (one 1-D vector becomes one row)."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise InvalidArgument(f"{what} must be a (n, dim) matrix or one (dim,) vector, got shape {x.shape}")
    return x


def _upsert_plan(
    collection: str, ids: Any, vectors: Any, payloads: Sequence[dict[str, Any] | None] | None, batch_rows: int
) -> tuple[int, int, Callable[[int], pb.UpsertRequest]]:
    """Check a whole upload; (rows, rows per batch, the batch starting at a row) to send it in bounded batches."""
    id_arr = as_id_array(ids)
    x = _as_matrix(vectors, "vectors")
    raw = [encode_payload(p) for p in payloads] if payloads is not None else []
    # The whole upload is checked before the first batch is sent, so bad input changes nothing.
    check_upsert(id_arr, x, raw, max_rows=None)
    row_bytes = x.shape[1] * 4 + (max(map(len, raw)) if raw else 0) + 16
    step = max(1, min(batch_rows, MAX_BATCH_ROWS, _BATCH_BYTES // row_bytes))

    def batch(lo: int) -> pb.UpsertRequest:
        hi = lo + step
        return pb.UpsertRequest(
            collection=collection, ids=encode_ids(id_arr[lo:hi]), vectors=encode_matrix(x[lo:hi]), payloads=raw[lo:hi]
        )

    return len(id_arr), step, batch


def _search_request(
    collection: str,
    queries: Any,
    k: int,
    ef: int | None,
    with_payload: bool,
    with_vectors: bool,
    request_id: int = 0,
    filter_json: str = "",
) -> pb.SearchRequest:
    """A SearchRequest of a (q, dim) matrix or one (dim,) vector, with an optional filter (wire JSON)."""
    check_k(k)
    return pb.SearchRequest(
        collection=collection,
        queries=encode_matrix(_as_matrix(queries, "queries")),
        k=k,
        ef=ef or 0,
        with_payload=with_payload,
        with_vectors=with_vectors,
        request_id=request_id,
        filter=filter_json,
    )


def _stream_outcome(reply: pb.SearchResponse) -> SearchResult | ShoalError:
    """The result of one SearchStream answer, or its error (raised by the caller when its turn comes)."""
    if reply.error_code:
        return error_for_code(status_from_value(reply.error_code), reply.error_message)
    return SearchResult.from_proto(reply)


class _Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label, self.total, self.enabled, self.done = label, total, enabled, 0

    def advance(self, n: int) -> None:
        self.done += n
        if self.enabled:
            pct = 100 * self.done // max(self.total, 1)
            end = "\n" if self.done >= self.total else ""
            print(f"\r{self.label}: {self.done:,}/{self.total:,} ({pct}%)", end=end, file=sys.stderr, flush=True)


class Client:
    """A connection to a Shoal cluster through one coordinator address.

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
        self._channel = _rpc.channel(address)
        self._stub = shoal_pb2_grpc.ShoalStub(self._channel)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        try:
            return fn(request, timeout=timeout if timeout is not None else self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    # collections

    def create_collection(
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
        reply = self._call(self._stub.CreateCollection, pb.CreateCollectionRequest(config=config.to_proto()))
        return CollectionInfo.from_proto(reply.info)

    def drop_collection(self, name: str) -> None:
        """Drop a collection and all its points; NotFound if there is none."""
        self._call(self._stub.DropCollection, pb.DropCollectionRequest(name=name))

    def list_collections(self) -> list[str]:
        """The names of all collections, sorted."""
        return list(self._call(self._stub.ListCollections, pb.ListCollectionsRequest()).names)

    def describe_collection(self, name: str) -> CollectionInfo:
        """A collection's config, point count and per-shard sizes."""
        return CollectionInfo.from_proto(
            self._call(self._stub.DescribeCollection, pb.DescribeCollectionRequest(name=name))
        )

    # points

    def upsert(
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
            n = self._call(self._stub.Upsert, batch(0)).upserted
            bar.advance(rows)
            return n

        def stream() -> Iterator[pb.UpsertRequest]:
            for lo in range(0, rows, step):
                yield batch(lo)
                bar.advance(min(step, rows - lo))

        return self._call(self._stub.UpsertStream, stream(), timeout=None).upserted

    def get(self, collection: str, ids: Any, *, with_vectors: bool = True, with_payload: bool = True) -> list[Point]:
        """The points with these ids, in the order asked; ids that do not exist are left out."""
        request = pb.GetRequest(
            collection=collection, ids=encode_ids(ids), with_vectors=with_vectors, with_payload=with_payload
        )
        return points_from_proto(self._call(self._stub.Get, request))

    def delete(self, collection: str, ids: Any = None, *, filter: dict[str, Any] | None = None) -> int:
        """Delete points by id or every point matching a filter (one of them); returns how many there were."""
        if (ids is None) == (filter is None):
            raise InvalidArgument("give ids or a filter to delete, not both and not neither")
        request = (
            pb.DeleteRequest(collection=collection, filter=to_json(filter))
            if filter is not None
            else pb.DeleteRequest(collection=collection, ids=encode_ids(ids))
        )
        return self._call(self._stub.Delete, request).deleted

    def count(self, collection: str, *, filter: dict[str, Any] | None = None) -> int:
        """The number of points in a collection, or of those matching a filter."""
        return self._call(self._stub.Count, pb.CountRequest(collection=collection, filter=to_json(filter))).count

    def scroll(
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
        return ScrollPage.from_proto(self._call(self._stub.Scroll, request))

    def set_payload(
        self, collection: str, ids: Any, payload: dict[str, Any] | None = None, *, unset: Sequence[str] = ()
    ) -> int:
        """Set top-level payload keys of existing points, then remove dotted `unset` paths; vectors stay.

        Returns how many of the ids exist (unknown ids are skipped).
        """
        unset = [check_path(p, "unset path") for p in ([unset] if isinstance(unset, str) else unset)]
        request = pb.SetPayloadRequest(
            collection=collection, ids=encode_ids(ids), set=encode_payload(payload), unset=unset
        )
        return self._call(self._stub.SetPayload, request).updated

    # search

    def search(
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
        return SearchResult.from_proto(self._call(self._stub.Search, request))

    def search_stream(
        self,
        collection: str,
        batches: Iterable[Any],
        k: int = 10,
        *,
        ef: int | None = None,
        with_payload: bool = False,
        with_vectors: bool = False,
        filter: dict[str, Any] | None = None,
    ) -> Iterator[SearchResult]:
        """Pipeline many query batches over one stream; yields their results in the order given."""
        filter_json = to_json(filter)
        requests = (
            _search_request(collection, q, k, ef, with_payload, with_vectors, request_id=i, filter_json=filter_json)
            for i, q in enumerate(batches)
        )
        pending: dict[int, SearchResult | ShoalError] = {}
        want = 0
        try:
            for reply in self._stub.SearchStream(requests, timeout=None):
                pending[reply.request_id] = _stream_outcome(reply)
                while want in pending:
                    outcome = pending.pop(want)
                    want += 1
                    if isinstance(outcome, ShoalError):
                        raise outcome
                    yield outcome
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
