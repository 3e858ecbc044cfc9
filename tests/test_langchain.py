"""shoal.langchain: LangChain's standard VectorStore suite (sync and async), metadata filters and MMR."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("langchain_core", reason="the langchain extra is not installed: pip install -e '.[dev]'")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_tests.integration_tests.vectorstores import VectorStoreIntegrationTests  # noqa: E402

import shoal  # noqa: E402
from shoal._local import LocalCluster  # noqa: E402
from shoal.langchain import ShoalVectorStore, metadata_filter  # noqa: E402

_names = itertools.count()


@pytest.fixture
def collection(client: shoal.Client) -> Iterator[str]:
    name = f"lc{next(_names)}"
    yield name
    if client.collection_exists(name):
        client.drop_collection(name)


class TestShoalStandard(VectorStoreIntegrationTests):
    """The suite every LangChain vector store passes; each test gets an empty store (no collection yet)."""

    @pytest.fixture
    def vectorstore(self, client: shoal.Client, collection: str) -> ShoalVectorStore:  # type: ignore[override]
        return ShoalVectorStore(client=client, collection_name=collection, embedding=self.get_embeddings())


class TestShoalStandardAsyncOverAsyncClient(VectorStoreIntegrationTests):
    """The suite's async half on a store whose blocking client is closed: every call goes through an AsyncClient."""

    @property
    def has_sync(self) -> bool:
        return False

    @pytest.fixture
    def vectorstore(self, cluster: LocalCluster, collection: str) -> ShoalVectorStore:  # type: ignore[override]
        closed = shoal.Client(cluster.address)
        closed.close()
        return ShoalVectorStore(client=closed, collection_name=collection, embedding=self.get_embeddings())


class Axes(Embeddings):
    """A tiny local embedding: a text "x,y" is the vector (x, y)."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [[float(v) for v in t.split(",")] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def test_metadata_filters_map_onto_shoals_language(client: shoal.Client, collection: str) -> None:
    assert metadata_filter({"lang": "en", "$or": [{"year": {"$gte": 2020}}, {"$not": {"tag": "x"}}]}) == {
        "metadata.lang": "en",
        "$or": [{"metadata.year": {"$gte": 2020}}, {"$not": {"metadata.tag": "x"}}],
    }
    store = ShoalVectorStore(client=client, collection_name=collection, embedding=Axes(), metric="l2")
    store.add_texts(
        ["0,0", "1,0", "2,0", "3,0"],
        metadatas=[{"lang": "en", "year": 2019}, {"lang": "de", "year": 2021}, {"lang": "en", "year": 2022}, {}],
        ids=["a", "b", "c", "d"],
    )
    assert client.describe_collection(collection).config.id_type == "string"
    found = store.similarity_search("0,0", k=4, filter={"lang": "en", "year": {"$gt": 2020}})
    assert found == [Document(page_content="2,0", metadata={"lang": "en", "year": 2022}, id="c")]
    scored = store.similarity_search_with_relevance_scores("0,0", k=2)
    assert [d.id for d, _ in scored] == ["a", "b"] and scored[0][1] == pytest.approx(1.0)


def test_max_marginal_relevance_prefers_diverse_documents(client: shoal.Client, collection: str) -> None:
    store = ShoalVectorStore(client=client, collection_name=collection, embedding=Axes())
    angles = [0.0, 0.01, 0.02, 1.5]  # three near duplicates and one far off
    store.add_texts([f"{np.cos(a)},{np.sin(a)}" for a in angles], ids=["p0", "p1", "p2", "far"])
    near = store.similarity_search("1,0", k=2)
    assert [d.id for d in near] == ["p0", "p1"]
    diverse = store.max_marginal_relevance_search("1,0", k=2, fetch_k=4, lambda_mult=0.3)
    assert [d.id for d in diverse] == ["p0", "far"]
    assert store.max_marginal_relevance_search("1,0", k=2, filter={"missing": 1}) == []


def test_async_methods_filter_and_diversify_through_an_async_client(cluster: LocalCluster, collection: str) -> None:
    closed = shoal.Client(cluster.address)  # the blocking client is closed: only the async path can answer
    closed.close()
    angles = [0.0, 0.01, 0.02, 1.5]

    async def body() -> None:
        store = await ShoalVectorStore.afrom_texts(
            [f"{np.cos(a)},{np.sin(a)}" for a in angles],
            Axes(),
            metadatas=[{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}],
            ids=["p0", "p1", "p2", "far"],
            client=closed,
            collection_name=collection,
        )
        assert [d.id for d in await store.asimilarity_search("1,0", k=2)] == ["p0", "p1"]
        found = await store.asimilarity_search("1,0", k=4, filter={"n": {"$gte": 2}})
        assert [d.id for d in found] == ["p2", "far"] and found[1].metadata == {"n": 3}
        scored = await store.asimilarity_search_with_relevance_scores("1,0", k=1)
        assert scored[0][0].id == "p0" and scored[0][1] == pytest.approx(1.0, abs=1e-5)
        diverse = await store.amax_marginal_relevance_search("1,0", k=2, fetch_k=4, lambda_mult=0.3)
        assert [d.id for d in diverse] == ["p0", "far"]
        assert await store.amax_marginal_relevance_search("1,0", k=2, filter={"missing": 1}) == []
        assert [d.id for d in await store.aget_by_ids(["far", "nope", "p1"])] == ["far", "p1"]
        assert await store.adelete(["p0", "p1"])
        assert [d.id for d in await store.asimilarity_search("1,0", k=4)] == ["p2", "far"]
        with pytest.raises(ValueError, match="closed channel"):
            store.similarity_search("1,0", k=1)  # the sync path really is the closed client

    asyncio.run(body())


def test_the_async_client_copies_the_clients_settings_per_event_loop(client: shoal.Client, collection: str) -> None:
    tuned = shoal.Client(client.address, timeout=7.5, batch_rows=64)
    store = ShoalVectorStore(client=tuned, collection_name=collection, embedding=Axes())

    async def twice() -> shoal.AsyncClient:
        first = store.async_client
        assert store.async_client is first and isinstance(first, shoal.AsyncClient)
        assert (first.address, first.timeout, first.batch_rows) == (client.address, 7.5, 64)
        await store.aadd_texts(["1,2"], ids=["a"])
        return first

    one, other = asyncio.run(twice()), asyncio.run(twice())
    assert one is not other  # a grpc.aio channel belongs to its loop: a new loop gets its own client
    tuned.close()
    assert client.count(collection) == 1

    async def given() -> None:
        async with shoal.AsyncClient(client.address) as mine:
            own = ShoalVectorStore(client=client, collection_name=collection, embedding=Axes(), async_client=mine)
            assert own.async_client is mine
            assert [d.id for d in await own.asimilarity_search("1,2", k=1)] == ["a"]

    asyncio.run(given())
