"""Coalescing concurrent searches: one fan-out carries many, each caller gets exactly its own rows."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import pytest

from shoal._errors import DeadlineExceeded, NotFound, Unavailable
from shoal._results import TopK
from shoal._search import Search, SearchShape
from shoal._wire import encode_counts, encode_ids, encode_matrix
from shoal.coordinator.batcher import Answer, BatchConfig, SearchBatcher
from shoal.coordinator.core import Coordinator
from shoal.coordinator.topology import Topology
from shoal.v1 import types_pb2 as pb
from tests.conftest import brute_force, clustered

T = TypeVar("T")
SHAPE = SearchShape("c", k=3, ef=0, with_payload=False, with_vectors=False)


def run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro())


def answer(queries: np.ndarray, k: int) -> TopK:
    """A result whose ids encode the query: row i holds ids q[i,0]*10 + j, so a mixed-up row shows."""
    ids = (queries[:, :1].astype(np.uint64) * np.uint64(10)) + np.arange(k, dtype=np.uint64)[None, :]
    return TopK(ids, np.zeros((len(queries), k), np.float32), np.full(len(queries), k, np.uint32))


class FakeRun:
    """A fan-out that records its calls and, when gated, waits for the test to release it."""

    def __init__(self, gated: bool = False, error: Exception | None = None) -> None:
        self.calls: list[tuple[SearchShape, np.ndarray, float | None]] = []
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        if not gated:
            self.gate.set()
        self.error = error

    async def __call__(self, search: Search, timeout: float | None) -> Answer:
        self.calls.append((search.shape, search.queries.copy(), timeout))
        self.started.set()
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return answer(search.queries, search.shape.k), f"plan of {len(search.queries)}"


def query(i: int, rows: int = 1, shape: SearchShape = SHAPE) -> Search:
    return Search(shape, np.array([[i + r, 0.0] for r in range(rows)], np.float32))


def test_searches_of_one_turn_share_one_fan_out() -> None:
    async def body() -> None:
        fake = FakeRun()
        batcher = SearchBatcher(fake)
        futures = [batcher.submit(query(i * 10, rows=1 + i % 3), 5.0) for i in range(6)]
        results = await asyncio.gather(*futures)
        assert len(fake.calls) == 1 and batcher.batches == 1
        assert len(fake.calls[0][1]) == sum(1 + i % 3 for i in range(6))
        for i, result in enumerate(results):
            np.testing.assert_array_equal(result[0].ids, answer(query(i * 10, rows=1 + i % 3).queries, 3).ids)

    run(body)


def test_shapes_never_mix() -> None:
    async def body() -> None:
        fake = FakeRun()
        batcher = SearchBatcher(fake)
        other = SearchShape("c", k=3, ef=64, with_payload=False, with_vectors=False)
        a, b = batcher.submit(query(1), None), batcher.submit(query(2, shape=other), None)
        await asyncio.gather(a, b)
        assert sorted(call[0].ef for call in fake.calls) == [0, 64]

    run(body)


def test_searches_wait_for_the_running_fan_out_then_leave_together() -> None:
    async def body() -> None:
        fake = FakeRun(gated=True)
        batcher = SearchBatcher(fake, BatchConfig(max_inflight=1))
        first = batcher.submit(query(1), None)
        await fake.started.wait()
        later = [batcher.submit(query(10 * i), None) for i in range(2, 6)]
        await asyncio.sleep(0)
        assert len(fake.calls) == 1  # the others wait while the first fan-out runs
        fake.gate.set()
        results = await asyncio.gather(first, *later)
        assert [len(call[1]) for call in fake.calls] == [1, 4]
        assert [int(r[0].ids[0, 0]) for r in results] == [10, 200, 300, 400, 500]

    run(body)


def test_batches_stay_within_max_rows_and_big_searches_go_alone() -> None:
    async def body() -> None:
        fake = FakeRun()
        batcher = SearchBatcher(fake, BatchConfig(max_rows=4, max_inflight=8))
        small = [batcher.submit(query(i, rows=3), None) for i in range(3)]
        big = batcher.submit(query(100, rows=9), None)
        await asyncio.gather(*small, big)
        assert sorted(len(call[1]) for call in fake.calls) == [3, 3, 3, 9]

    run(body)


def test_a_failed_fan_out_fails_each_search_it_carried_and_only_those() -> None:
    async def body() -> None:
        fake = FakeRun(error=Unavailable("shard down"))
        batcher = SearchBatcher(fake)
        futures = [batcher.submit(query(i), None) for i in range(3)]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(o, Unavailable) for o in outcomes)
        fake.error = None
        assert int((await batcher.submit(query(7), None))[0].ids[0, 0]) == 70

    run(body)


def test_withdrawn_and_expired_searches_are_not_sent() -> None:
    async def body() -> None:
        fake = FakeRun(gated=True)
        batcher = SearchBatcher(fake, BatchConfig(max_inflight=1))
        first = batcher.submit(query(1), None)
        await fake.started.wait()
        withdrawn = batcher.submit(query(2), None)
        expired = batcher.submit(query(3), 0.0)
        kept = batcher.submit(query(4), 30.0)
        withdrawn.cancel()
        fake.gate.set()
        await first
        assert int((await kept)[0].ids[0, 0]) == 40
        with pytest.raises(DeadlineExceeded):
            await expired
        sent = [int(q[0, 0]) for _, qs, _ in fake.calls for q in qs[:, None]]
        assert sent == [1, 4]
        assert fake.calls[1][2] is not None and 0 < fake.calls[1][2] <= 30.0

    run(body)


def test_the_fan_out_lasts_as_long_as_its_most_patient_search() -> None:
    async def body() -> None:
        fake = FakeRun()
        batcher = SearchBatcher(fake)
        await asyncio.gather(batcher.submit(query(1), 1.0), batcher.submit(query(2), 20.0))
        await asyncio.gather(batcher.submit(query(1), 1.0), batcher.submit(query(2), None))
        assert 1.0 < fake.calls[0][2] <= 20.0  # type: ignore[operator]
        assert fake.calls[1][2] is None

    run(body)


def test_searches_of_later_turns_go_alone_at_light_load_and_idle_lanes_are_forgotten() -> None:
    async def body() -> None:
        fake = FakeRun()
        batcher = SearchBatcher(fake)
        await batcher.submit(query(1), None)
        await batcher.submit(query(2), None)
        assert [len(call[1]) for call in fake.calls] == [1, 1]
        assert not batcher._lanes

    run(body)


class FakeShard:
    """A shard holding some points: exact local top-k over the wire types, counting its searches."""

    def __init__(self, address: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.address, self.ids, self.vectors, self.searches = address, ids, vectors, 0

    async def search(self, request: pb.SearchRequest, timeout: float | None) -> pb.SearchResponse:
        self.searches += 1
        if request.collection != "c":
            raise NotFound("collection 'x' does not exist")
        q = np.frombuffer(request.queries.data, np.float32).reshape(request.queries.rows, request.queries.dim)
        order, d = brute_force(self.vectors, q, request.k, "l2")
        return pb.SearchResponse(
            k=request.k,
            ids=encode_ids(self.ids[order].ravel()),
            distances=encode_matrix(d.astype(np.float32)),
            counts=encode_counts(np.full(len(q), request.k)),
            request_id=request.request_id,
        )

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected shard call {name}")


K5 = SearchShape("c", 5)


def test_coordinator_answers_concurrent_single_queries_exactly_with_one_message_per_shard() -> None:
    x, queries = clustered(300, 8, seed=3), clustered(20, 8, seed=4)
    ids = np.arange(300, dtype=np.uint64)
    topology = Topology.even(["a:1", "b:1"])
    groups = topology.route(ids)
    shards = [FakeShard(a, ids[groups[i]], x[groups[i]]) for i, a in enumerate(topology.addresses)]

    async def body() -> list[Answer]:
        core = Coordinator(topology, shards)  # type: ignore[arg-type]
        return await asyncio.gather(*(core.submit_search(Search(K5, q[None, :]), 10.0) for q in queries))

    results = run(body)
    want, _ = brute_force(x, queries, 5, "l2")
    np.testing.assert_array_equal(np.vstack([r[0].ids for r in results]), want)
    assert [s.searches for s in shards] == [1, 1]


def test_coordinator_without_batching_and_errors_reach_each_caller() -> None:
    shards = [FakeShard("a:1", np.arange(3, dtype=np.uint64), clustered(3, 2))]
    topology = Topology.even(["a:1"])

    async def body() -> None:
        core = Coordinator(topology, shards, batching=None)  # type: ignore[arg-type]
        assert core.batcher is None
        result, _ = await core.submit_search(Search(SearchShape("c", 2), clustered(2, 2, seed=9)), None)
        assert result.ids.shape == (2, 2)
        batched = Coordinator(topology, shards)  # type: ignore[arg-type]
        outcomes = await asyncio.gather(
            *(batched.submit_search(Search(SearchShape("x", 2), clustered(1, 2)), None) for _ in range(3)),
            return_exceptions=True,
        )
        assert all(isinstance(o, NotFound) for o in outcomes)

    run(body)
