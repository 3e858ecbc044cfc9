"""The asyncio client's search stream: coalescing of tasks, timeouts and cancellation, broken streams, idle close
(no sockets); and through AsyncClient against a running cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest

import shoal
from shoal import _aio_mux
from shoal._aio_mux import AsyncSearchMux
from shoal._errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from shoal._local import LocalCluster
from shoal._server import error_status
from shoal.v1 import types_pb2 as pb
from tests.conftest import brute_force, clustered
from tests.test_mux import answer, asked


class FakeCall:
    """One stream's answers as the test pushes them; cancel() ends them, as gRPC's does."""

    def __init__(self, requests: AsyncIterator[pb.SearchRequest]) -> None:
        self.replies: asyncio.Queue[pb.SearchResponse | BaseException | None] = asyncio.Queue()
        self._sent: asyncio.Queue[pb.SearchRequest | None] = asyncio.Queue()  # None: the requests ended
        self._pump = asyncio.ensure_future(self._draw(requests))  # gRPC draws requests as they come, too

    async def _draw(self, requests: AsyncIterator[pb.SearchRequest]) -> None:
        async for request in requests:
            self._sent.put_nowait(request)
        self._sent.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[pb.SearchResponse]:
        while (item := await self.replies.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> None:
        self.replies.put_nowait(None)

    async def next(self) -> pb.SearchRequest:
        """The next request the client sent; StopAsyncIteration once its requests ended."""
        request = await asyncio.wait_for(self._sent.get(), 10)
        if request is None:
            raise StopAsyncIteration
        return request


class FakeServer:
    """Keeps each stream opened."""

    def __init__(self) -> None:
        self.calls: asyncio.Queue[FakeCall] = asyncio.Queue()

    def open(self, requests: AsyncIterator[pb.SearchRequest]) -> FakeCall:
        call = FakeCall(requests)
        self.calls.put_nowait(call)
        return call

    async def call(self) -> FakeCall:
        return await asyncio.wait_for(self.calls.get(), 10)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def one(value: float = 1.0) -> np.ndarray:
    return np.full((1, 4), value, np.float32)


def test_concurrent_tasks_share_one_message_and_get_their_own_rows() -> None:
    async def test() -> None:
        server = FakeServer()
        mux = AsyncSearchMux(server.open)
        tasks = [asyncio.ensure_future(mux.search(asked(one(i + 1)), 10.0)) for i in range(3)]
        call = await server.call()
        message = await call.next()  # the three were queued in one turn of the loop
        assert message.queries.rows == 3
        call.replies.put_nowait(answer(message))
        results = await asyncio.gather(*tasks)
        assert [r.ids.tolist() for r in results] == [[[(i + 1) * 10, (i + 1) * 10 + 1]] for i in range(3)]
        await mux.close()

    run(test)


def test_a_query_the_server_would_refuse_travels_alone() -> None:
    async def test() -> None:
        server = FakeServer()
        mux = AsyncSearchMux(server.open)
        tasks = [asyncio.ensure_future(mux.search(asked(q), 10.0)) for q in (one(), one(np.nan))]
        call = await server.call()
        first, second = await call.next(), await call.next()
        assert (first.queries.rows, second.queries.rows) == (1, 1)
        for m in (first, second):
            call.replies.put_nowait(answer(m))
        assert len(await asyncio.gather(*tasks)) == 2
        await mux.close()

    run(test)


def test_a_timeout_or_a_cancelled_task_withdraws_the_search_with_a_cancel_message() -> None:
    async def test() -> None:
        server = FakeServer()
        mux = AsyncSearchMux(server.open)
        with pytest.raises(DeadlineExceeded):
            await mux.search(asked(one()), 0.1)
        call = await server.call()
        sent, cancel = await call.next(), await call.next()
        assert cancel.cancel and cancel.request_id == sent.request_id
        call.replies.put_nowait(answer(sent))  # a late answer is ignored

        task = asyncio.ensure_future(mux.search(asked(one()), 10.0))
        sent = await call.next()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cancel = await call.next()
        assert cancel.cancel and cancel.request_id == sent.request_id
        await mux.close()

    run(test)


def test_an_error_answer_fails_only_its_search_and_a_broken_stream_reopens() -> None:
    async def test() -> None:
        server = FakeServer()
        mux = AsyncSearchMux(server.open)
        task = asyncio.ensure_future(mux.search(asked(one()), 10.0))
        call = await server.call()
        m = await call.next()
        error = error_status(NotFound("no collection c"), "/shoal.v1.Shoal/SearchStream")
        call.replies.put_nowait(pb.SearchResponse(request_id=m.request_id, error=error))
        with pytest.raises(NotFound):
            await task

        task = asyncio.ensure_future(mux.search(asked(one()), 10.0))
        await call.next()
        call.replies.put_nowait(RuntimeError("stream gone"))
        with pytest.raises(Unavailable):
            await task

        task = asyncio.ensure_future(mux.search(asked(one()), 10.0))  # the next search opens a new stream
        again = await server.call()
        assert again is not call
        again.replies.put_nowait(answer(await again.next()))
        assert len(await task) == 1
        await mux.close()

    run(test)


def test_an_idle_stream_closes_and_the_next_search_opens_another(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_aio_mux, "IDLE_SECONDS", 0.05)

    async def test() -> None:
        server = FakeServer()
        mux = AsyncSearchMux(server.open)
        task = asyncio.ensure_future(mux.search(asked(one()), 10.0))
        call = await server.call()
        call.replies.put_nowait(answer(await call.next()))
        await task
        with pytest.raises(StopAsyncIteration):  # no search for IDLE_SECONDS: the requests end
            await call.next()
        call.replies.put_nowait(None)  # so the server ends the stream
        first = mux._stream
        assert first is not None
        await first.ended()
        task = asyncio.ensure_future(mux.search(asked(one()), 10.0))
        again = await server.call()
        again.replies.put_nowait(answer(await again.next()))
        await task
        assert mux._stream is not first
        await mux.close()

    run(test)


def test_async_client_searches_of_concurrent_tasks_are_exact_and_errors_stay_their_own(
    cluster: LocalCluster, name: str
) -> None:
    x = clustered(500, 8, seed=5)
    queries = clustered(40, 8, seed=6)

    async def test() -> None:
        async with shoal.AsyncClient(cluster.address) as c:
            await c.create_collection(name, dim=8, metric="l2")
            await c.upsert(name, ids=np.arange(500), vectors=x)

            async def search(q: np.ndarray) -> Any:
                try:
                    return await c.search(name, q, k=5, ef=len(x), with_payload=False)
                except shoal.ShoalError as exc:
                    return exc

            bad = np.ones((1, 3), np.float32)  # wrong dimension, among the others
            found = await asyncio.gather(*(search(q) for q in [*queries[:20], bad, *queries[20:]]))
            assert isinstance(found[20], InvalidArgument)
            hits = [r for i, r in enumerate(found) if i != 20]
            want, _ = brute_force(x, queries, 5, "l2")
            assert [h.ids[0].tolist() for h in hits] == want.tolist()
            with pytest.raises(DeadlineExceeded):
                await c.search(name, queries[:1], k=5, timeout=1e-6)
            await c.drop_collection(name)

    run(test)
