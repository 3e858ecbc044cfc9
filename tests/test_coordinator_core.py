"""The Coordinator core over fake shards: filtered searches coalesce with their plans, every operation uses the
one fan-out, and a failed shard call becomes a catalogue error in one place."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest

from shoal._errors import DeadlineExceeded, Internal, InvalidArgument, NotFound, ShoalError, Unavailable
from shoal._search import Search, SearchShape
from shoal._wire import decode_ids, encode_counts, encode_ids, encode_matrix
from shoal.coordinator.core import Coordinator
from shoal.coordinator.scroll import decode_cursor, encode_cursor
from shoal.coordinator.shards import shard_error
from shoal.coordinator.topology import Topology
from shoal.v1 import types_pb2 as pb

T = TypeVar("T")
FILTER = '{"group": 1}'


def run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro())


class FakeShard:
    """A shard of points 0..n-1 on its slots; answers every search with its first k ids, and records calls."""

    def __init__(self, address: str, ids: np.ndarray) -> None:
        self.address, self.ids = address, ids
        self.calls: list[tuple[str, Any]] = []

    async def search(self, request: pb.SearchRequest, timeout: float | None) -> pb.SearchResponse:
        self.calls.append(("search", request))
        rows, k = request.queries.rows, request.k
        ids = np.resize(self.ids, (rows, k))
        return pb.SearchResponse(
            k=k,
            ids=encode_ids(ids.ravel()),
            distances=encode_matrix(np.tile(np.arange(k, dtype=np.float32), (rows, 1))),
            counts=encode_counts(np.full(rows, k)),
            plan=f"exact({len(self.ids)})" if request.filter else "",
        )

    async def count(self, request: pb.CountRequest, timeout: float | None) -> pb.CountResponse:
        self.calls.append(("count", request))
        return pb.CountResponse(count=len(self.ids) // (2 if request.filter else 1))

    async def delete(self, request: pb.DeleteRequest, timeout: float | None) -> pb.DeleteResponse:
        self.calls.append(("delete", request))
        return pb.DeleteResponse(deleted=len(decode_ids(request.ids)) if not request.filter else 1)

    async def set_payload(self, request: pb.SetPayloadRequest, timeout: float | None) -> pb.SetPayloadResponse:
        self.calls.append(("set_payload", request))
        return pb.SetPayloadResponse(updated=len(decode_ids(request.ids)))

    async def scroll(self, request: pb.ScrollRequest, timeout: float | None) -> pb.ScrollResponse:
        """Pages of this shard's ids in order; its cursor is the next position."""
        self.calls.append(("scroll", request))
        start = int(request.cursor or 0)
        stop = min(start + request.limit, len(self.ids))
        more = str(stop) if stop < len(self.ids) else ""
        return pb.ScrollResponse(ids=encode_ids(self.ids[start:stop]), next_cursor=more)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected shard call {name}")


def two_shards() -> tuple[Topology, list[FakeShard]]:
    topology = Topology.even(["a:1", "b:1"])
    ids = np.arange(40, dtype=np.uint64)
    groups = topology.route(ids)
    return topology, [FakeShard(address, ids[groups[i]]) for i, address in enumerate(topology.addresses)]


def test_filtered_searches_coalesce_per_filter_and_carry_every_shards_plan() -> None:
    topology, shards = two_shards()

    async def body() -> None:
        core = Coordinator(topology, shards)  # type: ignore[arg-type]
        one, other = SearchShape("c", 3, filter=FILTER), SearchShape("c", 3, filter='{"group": 2}')
        shapes = [one, one, other, one, SearchShape("c", 3)]
        answers = await asyncio.gather(
            *(core.submit_search(Search(s, np.ones((1, 2), np.float32)), 5.0) for s in shapes)
        )
        sent = [request.filter for name, request in shards[0].calls if name == "search"]
        assert sorted(sent) == sorted([FILTER, '{"group": 2}', ""])  # one message per shape, filters never mix
        assert [s.calls[0][1].queries.rows for s in shards] == [3, 3]
        want = f"a:1: exact({len(shards[0].ids)}); b:1: exact({len(shards[1].ids)})"
        assert [plan for _, plan in answers] == [want, want, want, want, ""]
        assert all(result.ids.shape == (1, 3) for result, _ in answers)

    run(body)


def test_searches_of_one_shape_but_another_dimension_never_share_a_message() -> None:
    topology, shards = two_shards()

    async def body() -> None:
        core = Coordinator(topology, shards)  # type: ignore[arg-type]
        shape = SearchShape("c", 2)
        await asyncio.gather(
            *(core.submit_search(Search(shape, np.ones((1, dim), np.float32)), None) for dim in (2, 3, 2, 3))
        )
        assert sorted((r.queries.rows, r.queries.dim) for _, r in shards[0].calls) == [(2, 2), (2, 3)]

    run(body)


def test_a_bad_filter_is_refused_before_any_shard_is_asked() -> None:
    topology, shards = two_shards()

    async def body() -> None:
        core = Coordinator(topology, shards)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            core.submit_search(Search(SearchShape("c", 2, filter="{not json"), np.ones((1, 2), np.float32)), None)
        with pytest.raises(InvalidArgument):
            await core.count("c", None, "[]")
        with pytest.raises(InvalidArgument, match="not both"):
            await core.delete("c", np.arange(2, dtype=np.uint64), None, FILTER)
        assert not any(s.calls for s in shards)

    run(body)


def test_count_delete_and_set_payload_fan_out_to_the_shards_that_matter() -> None:
    topology, shards = two_shards()

    async def body() -> None:
        core = Coordinator(topology, shards)  # type: ignore[arg-type]
        assert await core.count("c", None) == 40
        assert await core.count("c", None, FILTER) == sum(len(s.ids) // 2 for s in shards)
        assert await core.delete("c", np.zeros(0, np.uint64), None, FILTER) == (2, {})
        only_first = shards[0].ids[:3]
        assert await core.set_payload("c", only_first, b'{"x": 1}', ["y"], None) == (3, {})
        assert [name for name, _ in shards[1].calls] == ["count", "count", "delete"]
        assert await core.delete("c", only_first, None) == (3, {})
        with pytest.raises(InvalidArgument, match="nothing to change"):
            await core.set_payload("c", only_first, b"", [], None)

    run(body)


def test_scroll_walks_every_shard_in_topology_order_with_its_cursor() -> None:
    topology, shards = two_shards()

    async def body() -> list[int]:
        core = Coordinator(topology, shards)  # type: ignore[arg-type]
        seen: list[int] = []
        cursor = ""
        while True:
            page = await core.scroll("c", "", 7, cursor, False, False, 5.0)
            assert len(page.ids) <= 7
            seen += page.ids.tolist()
            cursor = page.next_cursor
            if not cursor:
                return seen

    assert run(body) == shards[0].ids.tolist() + shards[1].ids.tolist()


def test_scroll_cursors_are_tied_to_their_topology_version() -> None:
    assert decode_cursor(encode_cursor(3, 1, "abc"), 3, 2) == (1, "abc")
    assert decode_cursor("", 3, 2) == (0, "")
    with pytest.raises(InvalidArgument, match="topology version 3"):
        decode_cursor(encode_cursor(3, 1, "abc"), 4, 2)
    for bad in ("not a cursor", encode_cursor(3, 2, "abc"), encode_cursor(3, -1, "")):
        with pytest.raises(InvalidArgument, match="not one this cluster gave out"):
            decode_cursor(bad, 3, 2)


@pytest.mark.parametrize(
    ("code", "kind", "text"),
    [
        (grpc.StatusCode.UNAVAILABLE, Unavailable, "shard s:1 is unavailable: gone"),
        (grpc.StatusCode.CANCELLED, Unavailable, "shard s:1 is unavailable: gone"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded, "shard s:1 did not answer before the deadline"),
        (grpc.StatusCode.NOT_FOUND, NotFound, "gone"),
        (grpc.StatusCode.UNKNOWN, Internal, "shard s:1 failed with UNKNOWN; see the coordinator log"),
        (grpc.StatusCode.UNIMPLEMENTED, Internal, "shard s:1 failed with UNIMPLEMENTED; see the coordinator log"),
    ],
)
def test_a_failed_shard_call_becomes_one_catalogue_error(
    code: grpc.StatusCode, kind: type[ShoalError], text: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, "shoal.coordinator"):
        error = shard_error("s:1", code, "gone")
    assert type(error) is kind and error.message == text and error.code is kind.code
    assert ("gone" in caplog.text) == (kind is Internal)  # off-catalogue details only in the log
