"""shoal.llama_index end to end: an index over Shoal, retrieval with metadata filters, delete by ref_doc_id."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("llama_index.core", reason="the llama-index extra is not installed: pip install -e '.[dev]'")

from llama_index.core import StorageContext, VectorStoreIndex  # noqa: E402
from llama_index.core.embeddings import BaseEmbedding  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeRelationship, RelatedNodeInfo, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

import shoal  # noqa: E402
from shoal._local import LocalCluster  # noqa: E402
from shoal.llama_index import ShoalVectorStore, shoal_filter  # noqa: E402

_names = itertools.count()


class Letters(BaseEmbedding):
    """A tiny local embedding: how often each letter a-z occurs (no model, no download)."""

    def _embed(self, text: str) -> list[float]:
        counts = np.zeros(26, np.float32)
        for c in text.lower():
            if "a" <= c <= "z":
                counts[ord(c) - 97] += 1
        return (counts / max(float(np.linalg.norm(counts)), 1e-6)).tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed(text)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._embed(query)


@pytest.fixture
def collection(client: shoal.Client) -> Iterator[str]:
    name = f"li{next(_names)}"
    yield name
    if client.collection_exists(name):
        client.drop_collection(name)


def _node(text: str, doc: str, **metadata: object) -> TextNode:
    node = TextNode(text=text, metadata=dict(metadata))
    node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=doc)
    return node


def test_an_index_over_shoal_retrieves_filters_and_deletes_by_document(client: shoal.Client, collection: str) -> None:
    store = ShoalVectorStore(shoal_client=client, collection_name=collection)
    nodes = [
        _node("zebra zoo zigzag", "doc-a", lang="en", year=2021),
        _node("zebras in a zoo", "doc-a", lang="de", year=2019),
        _node("apple banana", "doc-b", lang="en", year=2024),
        _node("banana bread", "doc-c", lang="fr", year=2022),
    ]
    index = VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=Letters()
    )
    assert client.count(collection) == 4 and client.describe_collection(collection).dim == 26

    found = index.as_retriever(similarity_top_k=2).retrieve("zebra zoo")
    assert [n.node.get_content() for n in found] == ["zebra zoo zigzag", "zebras in a zoo"]
    embedded = nodes[0].get_content(metadata_mode=MetadataMode.EMBED)  # LlamaIndex embeds the metadata too
    want = float(np.dot(Letters()._embed("zebra zoo"), Letters()._embed(embedded)))  # the cosine similarity
    assert found[0].node.metadata == {"lang": "en", "year": 2021} and found[0].score == pytest.approx(want, abs=1e-5)

    english_recent = MetadataFilters(
        filters=[MetadataFilter(key="lang", value="en"), MetadataFilter(key="year", value=2022, operator=">=")]
    )
    found = index.as_retriever(similarity_top_k=3, filters=english_recent).retrieve("zebra zoo")
    assert [n.node.get_content() for n in found] == ["apple banana"]

    either = MetadataFilters(
        filters=[MetadataFilter(key="lang", value="fr"), MetadataFilter(key="year", value=2019, operator="<=")],
        condition=FilterCondition.OR,
    )
    found = index.as_retriever(similarity_top_k=4, filters=either).retrieve("banana")
    assert sorted(n.node.get_content() for n in found) == ["banana bread", "zebras in a zoo"]

    store.delete("doc-a")
    assert client.count(collection) == 2
    assert sorted(n.get_content() for n in store.get_nodes()) == ["apple banana", "banana bread"]
    assert [n.get_content() for n in store.get_nodes(node_ids=[nodes[3].node_id])] == ["banana bread"]


def test_async_methods_go_through_an_async_client(cluster: LocalCluster, client: shoal.Client, collection: str) -> None:
    closed = shoal.Client(cluster.address)  # the blocking client is closed: only the async path can answer
    closed.close()
    store = ShoalVectorStore(shoal_client=closed, collection_name=collection)
    nodes = [
        _node("zebra zoo zigzag", "doc-a", lang="en", year=2021),
        _node("zebras in a zoo", "doc-a", lang="de", year=2019),
        _node("apple banana", "doc-b", lang="en", year=2024),
        _node("banana bread", "doc-c", lang="fr", year=2022),
    ]

    async def body() -> None:
        index = VectorStoreIndex(
            [], storage_context=StorageContext.from_defaults(vector_store=store), embed_model=Letters()
        )
        await index.ainsert_nodes(nodes)  # embeds them and awaits store.async_add
        assert await store.aclient.count(collection) == 4

        found = await index.as_retriever(similarity_top_k=2).aretrieve("zebra zoo")
        assert [n.node.get_content() for n in found] == ["zebra zoo zigzag", "zebras in a zoo"]
        assert found[0].node.metadata == {"lang": "en", "year": 2021}
        english_recent = MetadataFilters(
            filters=[MetadataFilter(key="lang", value="en"), MetadataFilter(key="year", value=2022, operator=">=")]
        )
        found = await index.as_retriever(similarity_top_k=3, filters=english_recent).aretrieve("zebra zoo")
        assert [n.node.get_content() for n in found] == ["apple banana"]

        await index.adelete_ref_doc("doc-a")  # awaits store.adelete
        assert await store.aclient.count(collection) == 2
        assert sorted(n.get_content() for n in await store.aget_nodes()) == ["apple banana", "banana bread"]
        assert [n.get_content() for n in await store.aget_nodes(node_ids=[nodes[3].node_id])] == ["banana bread"]
        with pytest.raises(ValueError, match="closed channel"):
            store.get_nodes()  # the sync path really is the closed client

    asyncio.run(body())
    assert client.count(collection) == 2

    async def given() -> None:
        async with shoal.AsyncClient(client.address) as mine:
            own = ShoalVectorStore(shoal_client=client, collection_name=collection, shoal_async_client=mine)
            assert own.aclient is mine and len(await own.aget_nodes()) == 2

    asyncio.run(given())


def test_metadata_filters_map_onto_shoals_language() -> None:
    nested = MetadataFilters(
        filters=[
            MetadataFilter(key="tags", value=["a", "b"], operator=FilterOperator.ANY),
            MetadataFilters(
                filters=[
                    MetadataFilter(key="n", value=1, operator="!="),
                    MetadataFilter(key="x", value=None, operator="is_empty"),
                ],
                condition=FilterCondition.OR,
            ),
        ]
    )
    assert shoal_filter(nested) == {
        "$and": [{"tags": {"$in": ["a", "b"]}}, {"$or": [{"n": {"$ne": 1}}, {"$not": {"x": {"$exists": True}}}]}]
    }
    with pytest.raises(shoal.InvalidArgument, match="text_match"):
        shoal_filter(MetadataFilters(filters=[MetadataFilter(key="t", value="x", operator="text_match")]))
