"""shoal.langchain: LangChain's standard VectorStore suite (sync and async), metadata filters and MMR."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("langchain_core", reason="the langchain extra is not installed: pip install -e '.[dev]'")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_tests.integration_tests.vectorstores import VectorStoreIntegrationTests  # noqa: E402

import shoal  # noqa: E402
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
