"""A LangChain vector store over a Shoal collection (`pip install 'shoal[langchain]'`).

store = ShoalVectorStore(client=shoal.Client(), collection_name="docs", embedding=embeddings)
store.add_texts(["..."], metadatas=[{"lang": "en"}])
store.similarity_search("query", k=4, filter={"lang": "en", "year": {"$gte": 2020}})

Each document is a point with a string id, its text under "page_content" and its metadata under "metadata"
in the payload; a filter names metadata fields and is Shoal's filter language (README "Filtered search").
The collection is created (string ids, the embeddings' dimension) on the first write when missing.
The async methods (`aadd_texts`, `asimilarity_search`, ...) await `async_client`, or else an AsyncClient like
`client` (same address, options and credentials) made in the running event loop: no thread per call.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from shoal._aio import AsyncClient
from shoal._client import Client
from shoal._errors import AlreadyExists, NotFound
from shoal._loop_client import LoopClient
from shoal._types import FilterLike, Hit, Point

TEXT_KEY = "page_content"
METADATA_KEY = "metadata"
_LOGICAL = ("$and", "$or", "$not")


def metadata_filter(spec: FilterLike | None) -> FilterLike | None:
    """A filter over document metadata as a Shoal filter over payloads: each field name gains "metadata."."""
    if spec is None:
        return None
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if key in ("$and", "$or"):
            out[key] = [metadata_filter(part) for part in value]
        elif key == "$not":
            out[key] = metadata_filter(value)
        else:
            out[f"{METADATA_KEY}.{key}"] = value
    return out


def _document(point_id: Any, payload: dict[str, Any] | None) -> Document:
    payload = payload or {}
    return Document(page_content=payload.get(TEXT_KEY, ""), metadata=payload.get(METADATA_KEY) or {}, id=point_id)


def _points(
    texts: list[str], metadatas: list[dict[str, Any]] | None, ids: Sequence[str | None] | None
) -> tuple[list[str], list[dict[str, Any]]]:
    """The ids (new ones where none is given) and payloads of texts to store."""
    given = list(ids) if ids is not None else [None] * len(texts)
    point_ids = [i if i else str(uuid.uuid4()) for i in given]
    metas = metadatas or [{} for _ in texts]
    return point_ids, [{TEXT_KEY: t, METADATA_KEY: m or {}} for t, m in zip(texts, metas, strict=True)]


def _mmr(embedding: list[float], hits: list[Hit], k: int, lambda_mult: float) -> list[Document]:
    """k of the hits (with their vectors), chosen for nearness to `embedding` and diversity."""
    if not hits:
        return []
    candidates = [np.asarray(h.vector, dtype=np.float32).tolist() for h in hits]
    chosen = maximal_marginal_relevance(np.asarray(embedding, np.float32), candidates, lambda_mult, k)
    return [_document(hits[i].id, hits[i].payload) for i in chosen]


class ShoalVectorStore(VectorStore):
    """LangChain's `VectorStore` over one Shoal collection, built like LangChain's Qdrant store."""

    def __init__(
        self,
        client: Client,
        collection_name: str,
        embedding: Embeddings,
        *,
        metric: str = "cosine",
        async_client: AsyncClient | None = None,
    ) -> None:
        self.client = client
        self.collection_name = collection_name
        self._embedding = embedding
        self.metric = metric  # used only when the collection is created here
        self._async = LoopClient(client, async_client)

    @property
    def async_client(self) -> AsyncClient:
        """The AsyncClient of the running event loop, which the async methods await."""
        return self._async.get()

    @property
    def embeddings(self) -> Embeddings:
        """The embedding model of queries and texts."""
        return self._embedding

    def _ensure_collection(self, dim: int) -> None:
        if self.client.collection_exists(self.collection_name):
            return
        with contextlib.suppress(AlreadyExists):  # created meanwhile by another writer
            self.client.create_collection(self.collection_name, dim=dim, metric=self.metric, id_type="string")

    async def _aensure_collection(self, dim: int) -> None:
        if await self.async_client.collection_exists(self.collection_name):
            return
        with contextlib.suppress(AlreadyExists):
            await self.async_client.create_collection(
                self.collection_name, dim=dim, metric=self.metric, id_type="string"
            )

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and store texts (replacing documents of the same ids); returns their ids."""
        texts = list(texts)
        if not texts:
            return []
        point_ids, payloads = _points(texts, metadatas, ids)
        vectors = np.asarray(self._embedding.embed_documents(texts), dtype=np.float32)
        self._ensure_collection(vectors.shape[1])
        self.client.upsert(self.collection_name, ids=point_ids, vectors=vectors, payloads=payloads)
        return point_ids

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and store texts (replacing documents of the same ids); returns their ids."""
        texts = list(texts)
        if not texts:
            return []
        point_ids, payloads = _points(texts, metadatas, ids)
        vectors = np.asarray(await self._embedding.aembed_documents(texts), dtype=np.float32)
        await self._aensure_collection(vectors.shape[1])
        await self.async_client.upsert(self.collection_name, ids=point_ids, vectors=vectors, payloads=payloads)
        return point_ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete documents by id (unknown ids are ignored)."""
        if not ids:
            return True
        with contextlib.suppress(NotFound):  # no collection yet: nothing to delete
            self.client.delete(self.collection_name, ids=ids)
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete documents by id (unknown ids are ignored)."""
        if not ids:
            return True
        with contextlib.suppress(NotFound):
            await self.async_client.delete(self.collection_name, ids=ids)
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents with these ids, in that order; unknown ids are left out."""
        if not ids:
            return []
        try:
            points: list[Point] = self.client.get(self.collection_name, ids=list(ids))
        except NotFound:
            return []
        return [_document(p.id, p.payload) for p in points]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents with these ids, in that order; unknown ids are left out."""
        if not ids:
            return []
        try:
            points: list[Point] = await self.async_client.get(self.collection_name, ids=list(ids))
        except NotFound:
            return []
        return [_document(p.id, p.payload) for p in points]

    def _search(
        self, vector: Sequence[float], k: int, filter: FilterLike | None, with_vectors: bool = False
    ) -> list[Hit]:
        try:
            res = self.client.search(
                self.collection_name, list(vector), k=k, filter=metadata_filter(filter), with_vectors=with_vectors
            )
        except NotFound:
            return []
        return res[0]

    async def _asearch(
        self, vector: Sequence[float], k: int, filter: FilterLike | None, with_vectors: bool = False
    ) -> list[Hit]:
        try:
            res = await self.async_client.search(
                self.collection_name, list(vector), k=k, filter=metadata_filter(filter), with_vectors=with_vectors
            )
        except NotFound:
            return []
        return res[0]

    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: FilterLike | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The k nearest documents to a vector with their distances (smaller is nearer)."""
        return [(_document(h.id, h.payload), h.distance) for h in self._search(embedding, k, filter)]

    async def asimilarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: FilterLike | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The k nearest documents to a vector with their distances (smaller is nearer)."""
        return [(_document(h.id, h.payload), h.distance) for h in await self._asearch(embedding, k, filter)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: FilterLike | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The k nearest documents to a query with their distances (smaller is nearer)."""
        return self.similarity_search_with_score_by_vector(self._embedding.embed_query(query), k, filter)

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: FilterLike | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The k nearest documents to a query with their distances (smaller is nearer)."""
        vector = await self._embedding.aembed_query(query)
        return await self.asimilarity_search_with_score_by_vector(vector, k, filter)

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: FilterLike | None = None, **kwargs: Any
    ) -> list[Document]:
        """The k nearest documents to a vector."""
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter)]

    async def asimilarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: FilterLike | None = None, **kwargs: Any
    ) -> list[Document]:
        """The k nearest documents to a vector."""
        return [doc for doc, _ in await self.asimilarity_search_with_score_by_vector(embedding, k, filter)]

    def similarity_search(
        self, query: str, k: int = 4, filter: FilterLike | None = None, **kwargs: Any
    ) -> list[Document]:
        """The k nearest documents to a query (only those whose metadata match `filter`, if given)."""
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: FilterLike | None = None, **kwargs: Any
    ) -> list[Document]:
        """The k nearest documents to a query (only those whose metadata match `filter`, if given)."""
        return [doc for doc, _ in await self.asimilarity_search_with_score(query, k, filter)]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: FilterLike | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """k documents out of the fetch_k nearest, chosen for nearness and diversity (lambda_mult: 1 = nearness)."""
        return _mmr(embedding, self._search(embedding, max(k, fetch_k), filter, with_vectors=True), k, lambda_mult)

    async def amax_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: FilterLike | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """k documents out of the fetch_k nearest, chosen for nearness and diversity (lambda_mult: 1 = nearness)."""
        hits = await self._asearch(embedding, max(k, fetch_k), filter, with_vectors=True)
        return _mmr(embedding, hits, k, lambda_mult)

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: FilterLike | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """k documents out of the fetch_k nearest to a query, chosen for nearness and diversity."""
        vector = self._embedding.embed_query(query)
        return self.max_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, filter)

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: FilterLike | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """k documents out of the fetch_k nearest to a query, chosen for nearness and diversity."""
        vector = await self._embedding.aembed_query(query)
        return await self.amax_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, filter)

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # Shoal's distances are usearch's: cosine and ip 1 - similarity, l2 the squared Euclidean distance.
        if self.metric == "l2":
            return lambda d: 1.0 - math.sqrt(max(d, 0.0)) / math.sqrt(2)
        return lambda d: 1.0 - d

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        client: Client | None = None,
        collection_name: str = "langchain",
        **kwargs: Any,
    ) -> ShoalVectorStore:
        """A store over `collection_name` (created when missing) holding these texts."""
        store = cls(client if client is not None else Client(), collection_name, embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    async def afrom_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        client: Client | None = None,
        collection_name: str = "langchain",
        **kwargs: Any,
    ) -> ShoalVectorStore:
        """A store over `collection_name` (created when missing) holding these texts."""
        store = cls(client if client is not None else Client(), collection_name, embedding, **kwargs)
        await store.aadd_texts(texts, metadatas, ids=ids)
        return store
