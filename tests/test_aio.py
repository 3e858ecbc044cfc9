"""The asyncio client against a running cluster: the same answers and errors as the blocking client."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import numpy as np
import pytest

import shoal
from shoal import _rpc
from shoal._local import LocalCluster
from tests.conftest import brute_force, clustered


def test_async_client_round_trip(cluster: LocalCluster, name: str) -> None:
    x, q = clustered(400, 8, seed=5), clustered(30, 8, seed=6)

    async def body() -> None:
        async with shoal.AsyncClient(cluster.address, batch_rows=64) as c:
            info = await c.create_collection(name, dim=8, metric="l2")
            assert info.name == name and name in await c.list_collections()
            payloads = [{"i": i} for i in range(len(x))]
            assert await c.upsert(name, ids=np.arange(len(x)), vectors=x, payloads=payloads) == len(x)  # a stream
            assert await c.upsert(name, ids=[0], vectors=x[:1], payloads=payloads[:1]) == 1  # one unary call
            assert await c.count(name) == len(x) and (await c.describe_collection(name)).count == len(x)
            want, _ = brute_force(x, q, 5, "l2")
            res = await c.search(name, q, k=5, ef=len(x), with_payload=True)
            np.testing.assert_array_equal(res.ids, want)
            assert res[0][0].payload == {"i": int(want[0, 0])}
            points = await c.get(name, ids=[3, 1, 999], with_vectors=True)
            assert [p.id for p in points] == [3, 1] and points[0].payload == {"i": 3}
            assert await c.delete(name, ids=[1, 2]) == 2
            # The filtered side mirrors the blocking client's.
            small = {"i": {"$lt": 10}}
            assert await c.count(name, filter=small) == 8
            hits = await c.search(name, q[:3], k=5, filter=small, with_payload=True)
            assert all(h.payload["i"] < 10 for row in hits for h in row)  # type: ignore[index]
            page = await c.scroll(name, filter=small, limit=5)
            assert len(page.points) == 5 and page.next_cursor is not None
            assert await c.set_payload(name, ids=[3], payload={"i": 1000}) == 1
            assert await c.count(name, filter=small) == 7
            assert await c.delete(name, filter=small) == 7
            with pytest.raises(shoal.InvalidArgument):
                await c.delete(name)
            await c.drop_collection(name)
            with pytest.raises(shoal.NotFound):
                await c.search(name, q[0], k=1)

    asyncio.run(body())


def test_async_search_stream_keeps_order_and_reports_a_bad_batch_last(cluster: LocalCluster, name: str) -> None:
    x = clustered(200, 4, seed=7)

    async def body() -> None:
        async with shoal.AsyncClient(cluster.address) as c:
            await c.create_collection(name, dim=4)
            await c.upsert(name, ids=np.arange(len(x)), vectors=x)
            batches = [x[i : i + 1 + i % 3] for i in range(10)]
            got = [r async for r in c.search_stream(name, batches, k=1, ef=500)]
            assert [r.ids[:, 0].tolist() for r in got] == [list(range(i, i + 1 + i % 3)) for i in range(10)]

            feed: asyncio.Queue[np.ndarray | None] = asyncio.Queue()

            async def queries() -> AsyncIterator[np.ndarray]:
                while (item := await feed.get()) is not None:
                    yield item

            results = c.search_stream(name, queries(), k=1, ef=500)
            for i in (5, 9):  # one question at a time over one stream: ask, await the answer, ask again
                feed.put_nowait(x[i])
                assert (await anext(results)).ids[0, 0] == i
            feed.put_nowait(np.zeros(3, np.float32))  # wrong dimension: answered with an error
            with pytest.raises(shoal.InvalidArgument):
                await anext(results)

            seen = []
            with pytest.raises(shoal.InvalidArgument):
                async for r in c.search_stream(name, [x[:1], np.zeros((0, 4)), x[:1]], k=1):
                    seen.append(r)
            assert len(seen) == 1

    asyncio.run(body())


def test_an_injected_aio_channel_is_used_and_left_open(cluster: LocalCluster, name: str) -> None:
    async def body() -> None:
        channel = _rpc.aio_channel(cluster.address, tls=cluster.tls)
        async with shoal.AsyncClient("the coordinator", channel=channel) as c:
            assert c.address == "the coordinator"
            await c.create_collection(name, dim=3)
            assert await c.upsert(name, ids=[1, 2], vectors=np.eye(3, dtype=np.float32)[:2]) == 2
        again = shoal.AsyncClient("the coordinator", channel=channel)  # the channel outlived the first client
        assert await again.count(name) == 2
        await again.close()
        assert await again.count(name) == 2
        await channel.close()
        own = shoal.AsyncClient(cluster.address)
        await own.close()
        with pytest.raises(Exception, match="Channel is closed"):  # its own channel closed with it
            await own.count(name)

    asyncio.run(body())


def test_both_clients_have_the_same_methods_and_parameters() -> None:
    def surface(cls: type) -> dict[str, list[tuple[str, object, object]]]:
        return {
            n: [(p.name, p.kind, p.default) for p in inspect.signature(getattr(cls, n)).parameters.values()]
            for n in dir(cls)
            if not n.startswith("_")
        }

    assert surface(shoal.Client) == surface(shoal.AsyncClient)
    assert {"search", "search_stream", "upsert", "scroll", "set_payload", "close"} <= set(surface(shoal.Client))
