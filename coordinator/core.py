"""The coordinator's operations on decoded inputs: validate, route or fan out to the shards, combine.

Every shard answers a filtered search with its own top-k among its matching points, so the merged top-k
is the global one, exactly as without a filter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Protocol, TypeVar

import numpy as np
from grpc import StatusCode

from shoal import _tracing
from shoal._config import DEFAULT_SCROLL, MAX_SCROLL, MAX_SCROLL_BYTES, CollectionConfig, check_k, check_name
from shoal._errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    ShoalError,
)
from shoal._filter import check_path, parse_json
from shoal._results import Found, Page, TopK, check_answer_budget, found_from_proto, topk_from_proto
from shoal._search import Search
from shoal._token import Token
from shoal._token import merge as merge_tokens
from shoal._wire import check_ids, check_payloads, check_queries, check_upsert, encode_ids, encode_matrix
from shoal.coordinator.batcher import DEFAULT_BATCHING, Answer, BatchConfig, SearchBatcher
from shoal.coordinator.merge import merge, merge_found
from shoal.coordinator.reroute import Refresh, at_one_version, by_slot
from shoal.coordinator.scroll import decode_cursor, encode_cursor, join_pages, points_in
from shoal.coordinator.topology import Topology
from shoal.v1 import types_pb2 as pb

T = TypeVar("T")

# When shards fail differently, the request's own fault is the most useful answer (retrying cannot fix
# it), then an unreachable shard, then a passed deadline; anything else (a bug) comes last.
_REQUEST_FAULTS = (
    StatusCode.INVALID_ARGUMENT,
    StatusCode.NOT_FOUND,
    StatusCode.ALREADY_EXISTS,
    StatusCode.FAILED_PRECONDITION,
    StatusCode.RESOURCE_EXHAUSTED,
    StatusCode.PERMISSION_DENIED,
    StatusCode.UNAUTHENTICATED,
)
# A shard whose status call fails so is down, or cut off; any other answer comes from a shard that is up.
_UNREACHABLE_CODES = (StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED)
_ERROR_RANK = {**dict.fromkeys(_REQUEST_FAULTS, 0), StatusCode.UNAVAILABLE: 1, StatusCode.DEADLINE_EXCEEDED: 2}


def pick_error(errors: Sequence[BaseException]) -> BaseException:
    """The one error to answer with when several shard calls failed (the first of the most telling kind)."""

    def rank(exc: BaseException) -> int:
        if not isinstance(exc, Exception):
            return -1  # cancellation and the like must not be swallowed
        return _ERROR_RANK.get(exc.code, 3) if isinstance(exc, ShoalError) else 3

    return min(errors, key=rank)


def check_filter(text: str) -> str:
    """A filter's JSON text, validated; InvalidArgument names the offending part."""
    if parse_json(text) is None:
        raise InvalidArgument("the filter is empty")
    return text


class ShardConnection(Protocol):
    """Every shard call the core makes (ShardClient, or a GroupConnection over a shard group)."""

    @property
    def address(self) -> str: ...

    async def create_collection(
        self, request: pb.CreateCollectionRequest, timeout: float | None
    ) -> pb.CreateCollectionResponse: ...
    async def drop_collection(
        self, request: pb.DropCollectionRequest, timeout: float | None
    ) -> pb.DropCollectionResponse: ...
    async def list_collections(self, timeout: float | None) -> pb.ListCollectionsResponse: ...
    async def describe_collection(
        self, request: pb.DescribeCollectionRequest, timeout: float | None
    ) -> pb.CollectionInfo: ...
    async def upsert(self, request: pb.UpsertRequest, timeout: float | None) -> pb.UpsertResponse: ...
    async def get(self, request: pb.GetRequest, timeout: float | None) -> pb.GetResponse: ...
    async def delete(self, request: pb.DeleteRequest, timeout: float | None) -> pb.DeleteResponse: ...
    async def count(self, request: pb.CountRequest, timeout: float | None) -> pb.CountResponse: ...
    async def search(self, request: pb.SearchRequest, timeout: float | None) -> pb.SearchResponse: ...
    async def scroll(self, request: pb.ScrollRequest, timeout: float | None) -> pb.ScrollResponse: ...
    async def set_payload(self, request: pb.SetPayloadRequest, timeout: float | None) -> pb.SetPayloadResponse: ...
    async def status(self, timeout: float | None) -> pb.ProcessStatus: ...


class Catalogue(Protocol):
    """The cluster's collection catalogue (etcd), when there is one: the truth about which collections exist."""

    async def create(self, config: CollectionConfig) -> bool: ...
    async def drop(self, name: str) -> bool: ...
    async def names(self) -> list[str]: ...
    async def applied(self, name: str, exists: bool, timeout: float | None) -> bool: ...


CATALOGUE_POLL = 0.05  # seconds between checks that every shard group applied a catalogue change


class Coordinator:
    """Every public operation over the shards of one topology; holds no collection state.

    Writes that fail on some shards may have been applied on others; upserts and deletes are
    idempotent, so the caller retries the whole call.
    """

    def __init__(
        self,
        topology: Topology,
        shards: Sequence[ShardConnection],
        *,
        batching: BatchConfig | None = DEFAULT_BATCHING,
        catalogue: Catalogue | None = None,
    ) -> None:
        self.retarget(topology, shards)
        self.catalogue = catalogue
        self.refresh: Refresh | None = None  # set over shard groups, whose slots move
        # None: every search fans out on its own (no coalescing).
        self.batcher = SearchBatcher(self._search_shards, batching) if batching is not None else None

    def retarget(self, topology: Topology, shards: Sequence[ShardConnection]) -> None:
        """Route by a new topology over these connections (shard i serves `topology.addresses[i]`)."""
        if len(shards) != len(topology.addresses):
            raise ValueError(f"{len(shards)} shard connections for {len(topology.addresses)} shards")
        self.topology, self.shards = topology, list(shards)

    async def _fan_out(self, shard_indexes: Iterable[int], call: Callable[[int], Awaitable[T]]) -> list[T]:
        """Call the given shards concurrently; every call finishes before the answer or the error."""
        results = await asyncio.gather(*(call(i) for i in shard_indexes), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise pick_error(errors)
        return results  # type: ignore[return-value]

    async def _all(self, call: Callable[[ShardConnection], Awaitable[T]]) -> list[T]:
        return await self._fan_out(range(len(self.shards)), lambda i: call(self.shards[i]))

    def _routing(self) -> tuple[Topology, Sequence[ShardConnection]]:
        return self.topology, self.shards

    async def _at_one_version(self, run: Callable[[int], Awaitable[T]], timeout: float | None) -> T:
        return await at_one_version(self.refresh, lambda: self.topology.version, run, timeout)

    async def _by_slot(
        self, ids: np.ndarray, call: Callable[[ShardConnection, np.ndarray, int], Awaitable[T]], timeout: float | None
    ) -> list[T]:
        return await by_slot(self.refresh, self._routing, ids, call, timeout, pick_error)

    async def create_collection(self, config: CollectionConfig, timeout: float | None) -> pb.CollectionInfo:
        """Create the collection on every shard; AlreadyExists when no shard had to create it."""
        if self.catalogue is not None:
            return await self._create_in_catalogue(config, timeout)
        request = pb.CreateCollectionRequest(config=config.to_proto())
        answers = await self._all(lambda s: s.create_collection(request, timeout))
        if not any(a.created for a in answers):
            raise AlreadyExists(f"collection '{config.name}' already exists")
        return self._combine_info([a.info for a in answers])

    async def drop_collection(self, name: str, timeout: float | None) -> None:
        """Drop the collection on every shard; NotFound when no shard had it."""
        check_name(name)
        if self.catalogue is not None:
            if not await self.catalogue.drop(name):
                raise NotFound(f"collection '{name}' does not exist")
            await self._until_applied(name, False, timeout)
            return
        request = pb.DropCollectionRequest(name=name)

        async def drop(shard: ShardConnection) -> bool:
            try:
                return bool((await shard.drop_collection(request, timeout)).dropped)
            except NotFound:
                return False

        if not any(await self._all(drop)):
            raise NotFound(f"collection '{name}' does not exist")

    async def list_collections(self, timeout: float | None) -> list[str]:
        """The names of the collections any shard has (the catalogue's, when there is one), sorted."""
        if self.catalogue is not None:
            return await self.catalogue.names()
        answers = await self._all(lambda s: s.list_collections(timeout))
        return sorted({name for a in answers for name in a.names})

    async def _create_in_catalogue(self, config: CollectionConfig, timeout: float | None) -> pb.CollectionInfo:
        assert self.catalogue is not None
        if not await self.catalogue.create(config):
            raise AlreadyExists(f"collection '{config.name}' already exists")
        await self._until_applied(config.name, True, timeout)
        return await self.describe_collection(config.name, timeout)

    async def _until_applied(self, name: str, exists: bool, timeout: float | None) -> None:
        """Wait until every shard group applied a catalogue change (the catalogue is already right)."""
        assert self.catalogue is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout if timeout is not None else 30.0)
        while not await self.catalogue.applied(name, exists, max(deadline - loop.time(), 0.01)):
            if loop.time() >= deadline:
                raise DeadlineExceeded(f"the shard groups did not apply collection '{name}' in time; it will be")
            await asyncio.sleep(CATALOGUE_POLL)

    async def describe_collection(self, name: str, timeout: float | None) -> pb.CollectionInfo:
        """The config, the total count and one ShardStats per shard."""
        check_name(name)
        request = pb.DescribeCollectionRequest(name=name)
        return self._combine_info(await self._all(lambda s: s.describe_collection(request, timeout)))

    async def status(self, timeout: float | None) -> list[pb.ProcessStatus]:
        """Every shard's status row; a shard that does not answer gets an `unreachable` row, never an error."""

        async def row(shard: ShardConnection) -> pb.ProcessStatus:
            try:
                answer = await shard.status(timeout)
            except ShoalError as exc:
                state = "UNREACHABLE" if exc.code in _UNREACHABLE_CODES else "NOT_SERVING"
                answer = pb.ProcessStatus(role="shard", address=shard.address, state=state, error=exc.message)
            first = next(r for r in self.topology.ranges if r.address == shard.address)
            answer.address, answer.slot_start, answer.slot_end = shard.address, first.start, first.end
            return answer

        return list(await asyncio.gather(*(row(s) for s in self.shards)))

    def _combine_info(self, infos: Sequence[pb.CollectionInfo]) -> pb.CollectionInfo:
        stats = [
            pb.ShardStats(address=address, count=info.count, memory_bytes=sum(s.memory_bytes for s in info.shards))
            for address, info in zip(self.topology.addresses, infos, strict=True)
        ]
        return pb.CollectionInfo(config=infos[0].config, count=sum(s.count for s in stats), shards=stats)

    async def upsert(
        self, name: str, ids: np.ndarray, vectors: np.ndarray, payloads: Sequence[bytes], timeout: float | None
    ) -> tuple[int, Token]:
        """Write each point to the shard of its slot, one batch per shard; the number upserted and the token."""
        check_name(name)
        check_upsert(ids, vectors, payloads)
        payloads = list(payloads)

        def request(positions: np.ndarray) -> pb.UpsertRequest:
            return pb.UpsertRequest(
                collection=name,
                ids=encode_ids(ids[positions]),
                vectors=encode_matrix(vectors[positions]),
                payloads=[payloads[i] for i in positions.tolist()] if payloads else [],
            )

        answers = await self._by_slot(ids, lambda s, positions, _: s.upsert(request(positions), timeout), timeout)
        return sum(a.upserted for a in answers), merge_tokens(a.token for a in answers)

    async def get(
        self,
        name: str,
        ids: np.ndarray,
        with_vectors: bool,
        with_payload: bool,
        timeout: float | None,
        token: Token | None = None,
    ) -> Found:
        """The points that exist among `ids`, in request order."""
        check_name(name)
        check_ids(ids)

        async def get(shard: ShardConnection, positions: np.ndarray, version: int) -> Found:
            request = pb.GetRequest(
                collection=name,
                ids=encode_ids(ids[positions]),
                with_vectors=with_vectors,
                with_payload=with_payload,
                token=token,
                topology=version,
            )
            answer = await shard.get(request, timeout)
            try:
                return found_from_proto(answer, with_vectors, with_payload)
            except (ValueError, InvalidArgument) as exc:
                raise Internal(f"shard {shard.address} answered get with a bad result: {exc}") from exc

        parts = await self._by_slot(ids, get, timeout)
        try:
            return merge_found(ids, parts)
        except ValueError as exc:
            raise Internal(f"the shards' get results do not fit the request: {exc}") from exc

    async def delete(
        self, name: str, ids: np.ndarray, timeout: float | None, filter_text: str = ""
    ) -> tuple[int, Token]:
        """Delete points by id, one batch per shard, or every point matching a filter; the number and the token."""
        check_name(name)
        if filter_text:
            if len(ids):
                raise InvalidArgument("give ids or a filter to delete, not both")
            request = pb.DeleteRequest(collection=name, filter=check_filter(filter_text))
            answers = await self._all(lambda s: s.delete(request, timeout))
            return sum(a.deleted for a in answers), merge_tokens(a.token for a in answers)
        check_ids(ids)
        answers = await self._by_slot(
            ids,
            lambda s, positions, _: s.delete(
                pb.DeleteRequest(collection=name, ids=encode_ids(ids[positions])), timeout
            ),
            timeout,
        )
        return sum(a.deleted for a in answers), merge_tokens(a.token for a in answers)

    async def count(self, name: str, timeout: float | None, filter_text: str = "", token: Token | None = None) -> int:
        """The number of points over all shards, or of those matching a filter."""
        check_name(name)
        text = check_filter(filter_text) if filter_text else ""

        async def count(version: int) -> int:
            request = pb.CountRequest(collection=name, filter=text, token=token, topology=version)
            return sum(a.count for a in await self._all(lambda s: s.count(request, timeout)))

        return await self._at_one_version(count, timeout)

    async def set_payload(
        self, name: str, ids: np.ndarray, set_raw: bytes, unset: Sequence[str], timeout: float | None
    ) -> tuple[int, Token]:
        """Set and remove payload keys of existing points, one batch per shard; how many points exist, and the token."""
        check_name(name)
        check_ids(ids)
        check_payloads([set_raw])
        for path in unset:
            check_path(path, "unset path")
        if not set_raw and not unset:
            raise InvalidArgument("nothing to change: give keys to set or paths to unset")

        def request(positions: np.ndarray) -> pb.SetPayloadRequest:
            return pb.SetPayloadRequest(collection=name, ids=encode_ids(ids[positions]), set=set_raw, unset=list(unset))

        answers = await self._by_slot(ids, lambda s, positions, _: s.set_payload(request(positions), timeout), timeout)
        return sum(a.updated for a in answers), merge_tokens(a.token for a in answers)

    async def scroll(
        self,
        name: str,
        filter_text: str,
        limit: int,
        cursor: str,
        with_payload: bool,
        with_vectors: bool,
        timeout: float | None,
    ) -> Page:
        """Up to `limit` points after the cursor, shard by shard in topology order, by key within a shard.

        The page is bounded by bytes over all shards: each shard is given what is left of MAX_SCROLL_BYTES.
        """
        check_name(name)
        if filter_text:
            check_filter(filter_text)
        limit = limit or DEFAULT_SCROLL
        if not 1 <= limit <= MAX_SCROLL:
            raise InvalidArgument(f"limit must be between 1 and {MAX_SCROLL}, got {limit}")
        if not cursor:
            return await self._at_one_version(
                lambda v: self._scroll_at(name, filter_text, limit, cursor, with_payload, with_vectors, timeout, v),
                timeout,
            )
        version = self.topology.version
        try:
            return await self._scroll_at(name, filter_text, limit, cursor, with_payload, with_vectors, timeout, version)
        except Aborted:
            raise InvalidArgument("slots moved during the scroll (the topology changed): start over") from None

    async def _scroll_at(
        self,
        name: str,
        filter_text: str,
        limit: int,
        cursor: str,
        with_payload: bool,
        with_vectors: bool,
        timeout: float | None,
        version: int,
    ) -> Page:
        position, shard_cursor = decode_cursor(cursor, version, len(self.shards))
        shards = self.shards
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        answers: list[pb.ScrollResponse] = []
        remaining, room = limit, MAX_SCROLL_BYTES
        while position < len(shards) and remaining > 0 and room > 0:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise DeadlineExceeded("the deadline passed during the scroll")
            request = pb.ScrollRequest(
                collection=name,
                filter=filter_text,
                limit=remaining,
                cursor=shard_cursor,
                with_payload=with_payload,
                with_vectors=with_vectors,
                max_bytes=room,
                topology=version,
            )
            answer = await shards[position].scroll(request, left)
            answers.append(answer)
            remaining -= points_in(answer)
            room -= answer.ByteSize()
            shard_cursor = answer.next_cursor
            if not shard_cursor:
                position += 1
        next_cursor = encode_cursor(version, position, shard_cursor) if position < len(shards) else ""
        return join_pages(answers, with_payload, with_vectors, next_cursor)

    def submit_search(self, search: Search, timeout: float | None) -> asyncio.Future[Answer]:
        """Validate a search (raising at once) and start it; the future resolves to its merged top-k and plan.

        A future rather than a coroutine, so a stream can wait for many searches without a task each.
        """
        shape = search.shape
        check_name(shape.collection)
        check_k(shape.k)
        if shape.filter:
            check_filter(shape.filter)
        queries = check_queries(search.queries)
        # Refused before any work: an answer that cannot be sent would cost the shards for nothing.
        check_answer_budget(len(queries), shape.k, queries.shape[1], shape.with_payload, shape.with_vectors)
        if self.batcher is not None:
            return self.batcher.submit(search, timeout)
        return asyncio.ensure_future(self._search_shards(search, timeout))

    async def _search_shards(self, search: Search, timeout: float | None) -> Answer:
        """Every shard's local top-k of all the queries at one topology version, merged, and each shard's plan."""
        if self.refresh is None:
            return await self._search_at(search, timeout, self.topology.version)
        return await self._at_one_version(lambda version: self._search_at(search, timeout, version), timeout)

    async def _search_at(self, search: Search, timeout: float | None, version: int) -> Answer:
        """One fan-out: every shard's local top-k of all the queries, merged, and each shard's plan."""
        request = search.to_proto()
        request.topology = version
        if _tracing.ENABLED:  # each shard's search becomes a child of this fan-out (or learns it is not sampled)
            request.traceparent = _tracing.traceparent()
        rows, shape = len(search.queries), search.shape

        async def ask(shard: ShardConnection) -> tuple[TopK, str]:
            answer = await shard.search(request, timeout)
            try:
                return topk_from_proto(answer, rows, shape.with_payload), answer.plan
            except (ValueError, InvalidArgument) as exc:
                raise Internal(f"shard {shard.address} answered search with a bad result: {exc}") from exc

        parts = await self._all(ask)
        try:
            with _tracing.span("merge") if _tracing.ENABLED and _tracing.recording() else nullcontext():
                merged = merge([part for part, _ in parts], shape.k)
        except ValueError as exc:
            raise Internal(f"the shards' search results do not fit together: {exc}") from exc
        if not shape.filter:
            return merged, ""
        return merged, "; ".join(f"{s.address}: {plan}" for s, (_, plan) in zip(self.shards, parts, strict=True))
