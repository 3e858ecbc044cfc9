"""The coordinator's filtered operations and payload updates: validate once, then fan out or route.

Every shard answers a filtered search with its own top-k among its matching points, so the merged top-k
is the global one. Scroll walks the shards in topology order and each shard's points by internal key;
its cursor names the shard and the shard's own cursor.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from shoal._config import check_k, check_name
from shoal._errors import DeadlineExceeded, Internal, InvalidArgument
from shoal._filter import check_path, parse_json
from shoal._results import TopK, topk_from_proto
from shoal._wire import (
    check_ids,
    check_payloads,
    check_queries,
    decode_ids,
    decode_matrix,
    encode_ids,
    encode_matrix,
)
from shoal.coordinator.core import Coordinator, ShardConnection
from shoal.coordinator.merge import merge
from shoal.v1 import types_pb2 as pb

DEFAULT_SCROLL = 100
MAX_SCROLL = 10_000


class FilteringShard(ShardConnection, Protocol):
    """What the filtered operations need beyond a ShardConnection (ShardClient has it)."""

    async def scroll(self, request: pb.ScrollRequest, timeout: float | None) -> pb.ScrollResponse: ...
    async def set_payload(self, request: pb.SetPayloadRequest, timeout: float | None) -> pb.SetPayloadResponse: ...


@dataclass(frozen=True)
class Page:
    """A page of a scroll: ids, vectors and payloads when asked, and the cursor of the next page ("" at the end)."""

    ids: np.ndarray
    vectors: np.ndarray | None
    payloads: list[bytes] | None
    next_cursor: str


def check_filter(text: str) -> str:
    """A filter's JSON text, validated; InvalidArgument names the offending part."""
    if parse_json(text) is None:
        raise InvalidArgument("the filter is empty")
    return text


def encode_cursor(version: int, shard: int, cursor: str) -> str:
    """An opaque scroll cursor: the topology version, a shard's position in it and that shard's cursor."""
    raw = json.dumps({"v": version, "s": shard, "c": cursor}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(text: str, version: int, shards: int) -> tuple[int, str]:
    """(shard position, shard cursor) of a scroll cursor; InvalidArgument for one this cluster did not give."""
    if not text:
        return 0, ""
    try:
        value = json.loads(base64.urlsafe_b64decode(text.encode()))
        shard, cursor, made_for = value["s"], value["c"], value["v"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise InvalidArgument(f"cursor {text[:40]!r} is not one this cluster gave out") from None
    if not isinstance(shard, int) or not 0 <= shard < shards or not isinstance(cursor, str):
        raise InvalidArgument(f"cursor {text[:40]!r} is not one this cluster gave out")
    if made_for != version:
        raise InvalidArgument(f"the cursor belongs to topology version {made_for}, not {version}: start over")
    return shard, cursor


class Filtering:
    """The filtered operations over a Coordinator's shards."""

    def __init__(self, core: Coordinator) -> None:
        self.core = core

    @property
    def _shards(self) -> list[FilteringShard]:
        return self.core.shards  # type: ignore[return-value]

    async def search(
        self,
        name: str,
        queries: np.ndarray,
        k: int,
        ef: int,
        with_payload: bool,
        with_vectors: bool,
        filter_text: str,
        timeout: float | None,
    ) -> tuple[TopK, str]:
        """The global top-k among the matching points of each query, and each shard's plan."""
        check_name(name)
        check_k(k)
        check_filter(filter_text)
        check_queries(queries)
        request = pb.SearchRequest(
            collection=name,
            queries=encode_matrix(queries),
            k=k,
            ef=ef,
            with_payload=with_payload,
            with_vectors=with_vectors,
            filter=filter_text,
        )

        async def search(shard: ShardConnection) -> tuple[TopK, str]:
            answer = await shard.search(request, timeout)
            try:
                return topk_from_proto(answer, len(queries), with_payload), answer.plan
            except (ValueError, InvalidArgument) as exc:
                raise Internal(f"shard {shard.address} answered search with a bad result: {exc}") from exc

        parts = await self.core._all(search)
        try:
            merged = merge([p for p, _ in parts], k)
        except ValueError as exc:
            raise Internal(f"the shards' search results do not fit together: {exc}") from exc
        plans = "; ".join(f"{s.address}: {plan}" for s, (_, plan) in zip(self.core.shards, parts, strict=True))
        return merged, plans

    async def count(self, name: str, filter_text: str, timeout: float | None) -> int:
        """The number of matching points over all shards."""
        check_name(name)
        request = pb.CountRequest(collection=name, filter=check_filter(filter_text))
        return sum(a.count for a in await self.core._all(lambda s: s.count(request, timeout)))

    async def delete(self, name: str, filter_text: str, has_ids: bool, timeout: float | None) -> int:
        """Delete the matching points on every shard; the number deleted."""
        check_name(name)
        if has_ids:
            raise InvalidArgument("give ids or a filter to delete, not both")
        request = pb.DeleteRequest(collection=name, filter=check_filter(filter_text))
        return sum(a.deleted for a in await self.core._all(lambda s: s.delete(request, timeout)))

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
        """Up to `limit` points after the cursor, shard by shard in topology order, by key within a shard."""
        check_name(name)
        if filter_text:
            check_filter(filter_text)
        limit = limit or DEFAULT_SCROLL
        if not 1 <= limit <= MAX_SCROLL:
            raise InvalidArgument(f"limit must be between 1 and {MAX_SCROLL}, got {limit}")
        version = self.core.topology.version
        position, shard_cursor = decode_cursor(cursor, version, len(self._shards))
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        answers: list[pb.ScrollResponse] = []
        remaining = limit
        while position < len(self._shards) and remaining > 0:
            left = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if left is not None and left <= 0:
                raise DeadlineExceeded("the deadline passed during the scroll")
            request = pb.ScrollRequest(
                collection=name,
                filter=filter_text,
                limit=remaining,
                cursor=shard_cursor,
                with_payload=with_payload,
                with_vectors=with_vectors,
            )
            answer = await self._shards[position].scroll(request, left)
            answers.append(answer)
            remaining -= len(answer.ids.str) or len(answer.ids.u64) // 8
            shard_cursor = answer.next_cursor
            if not shard_cursor:
                position += 1
        next_cursor = encode_cursor(version, position, shard_cursor) if position < len(self._shards) else ""
        return _page(answers, with_payload, with_vectors, next_cursor)

    async def set_payload(
        self, name: str, ids: np.ndarray, set_raw: bytes, unset: Sequence[str], timeout: float | None
    ) -> int:
        """Set and remove payload keys of existing points, one batch per shard; how many points exist."""
        check_name(name)
        check_ids(ids)
        check_payloads([set_raw])
        for path in unset:
            check_path(path, "unset path")
        if not set_raw and not unset:
            raise InvalidArgument("nothing to change: give keys to set or paths to unset")
        groups = self.core.topology.route(ids)
        answers = await self.core._fan_out(
            groups,
            lambda i: self._shards[i].set_payload(
                pb.SetPayloadRequest(collection=name, ids=encode_ids(ids[groups[i]]), set=set_raw, unset=list(unset)),
                timeout,
            ),
        )
        return sum(a.updated for a in answers)


def _page(answers: list[pb.ScrollResponse], with_payload: bool, with_vectors: bool, next_cursor: str) -> Page:
    """The shards' pages as one, in order."""
    parts = [a for a in answers if a.ids.str or a.ids.u64]
    ids = np.concatenate([decode_ids(a.ids) for a in parts]) if parts else np.zeros(0, np.uint64)
    vectors = None
    if with_vectors:
        matrices = [decode_matrix(a.vectors, "scroll vectors") for a in parts]
        vectors = np.concatenate(matrices) if matrices else np.zeros((0, 0), np.float32)
        if len(vectors) != len(ids):
            raise Internal(f"the shards answered scroll with {len(vectors)} vectors for {len(ids)} ids")
    payloads = None
    if with_payload:
        payloads = [p for a in parts for p in (a.payloads or [b""] * (len(a.ids.str) or len(a.ids.u64) // 8))]
    return Page(ids, vectors, payloads, next_cursor)


def page_to_proto(page: Page) -> pb.ScrollResponse:
    """The wire answer of a scroll."""
    msg = pb.ScrollResponse(ids=encode_ids(page.ids), payloads=page.payloads or [], next_cursor=page.next_cursor)
    if page.vectors is not None and len(page.vectors):
        msg.vectors.CopyFrom(encode_matrix(page.vectors))
    return msg
