"""A LlamaIndex vector store over a Shoal collection (`pip install 'shoal[llama-index]'`).

store = ShoalVectorStore(shoal_client=shoal.Client(), collection_name="docs")
index = VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=...)

Each node is a point with its node id as a string id and LlamaIndex's own payload (`node_to_metadata_dict`:
the node's metadata at the top level, the node itself under "_node_content", its "ref_doc_id"), so
metadata filters are filters over payload fields. The collection is created on the first write when missing.
The async methods (`async_add`, `aquery`, ...) await `shoal_async_client`, or else an AsyncClient like
`shoal_client` (same address, options and credentials) made in the running event loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
from pydantic import PrivateAttr

from shoal._aio import AsyncClient
from shoal._client import Client
from shoal._errors import AlreadyExists, InvalidArgument, NotFound
from shoal._loop_client import LoopClient
from shoal._types import FilterLike, Hit

_COMPARE = {
    FilterOperator.NE: "$ne",
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in",
    FilterOperator.NIN: "$nin",
    FilterOperator.ANY: "$in",  # a list field matches when any element does
}


def _condition(f: MetadataFilter) -> FilterLike:
    if f.operator in (FilterOperator.EQ, FilterOperator.CONTAINS):  # a list field contains: one element equals
        return {f.key: f.value}
    if f.operator in _COMPARE:
        return {f.key: {_COMPARE[f.operator]: f.value}}
    if f.operator == FilterOperator.ALL:
        return {"$and": [{f.key: v} for v in f.value]} if isinstance(f.value, list) else {f.key: f.value}
    if f.operator == FilterOperator.IS_EMPTY:
        return {"$not": {f.key: {"$exists": True}}}
    raise InvalidArgument(f"metadata filter operator {f.operator.value!r} is not supported by Shoal")


def shoal_filter(filters: MetadataFilters | None) -> FilterLike | None:
    """LlamaIndex metadata filters as a Shoal filter over the payload."""
    if filters is None or not filters.filters:
        return None
    parts = [shoal_filter(f) if isinstance(f, MetadataFilters) else _condition(f) for f in filters.filters]
    kept = [p for p in parts if p is not None]
    if filters.condition == FilterCondition.OR:
        return {"$or": kept}
    if filters.condition == FilterCondition.NOT:
        return {"$not": {"$and": kept}}
    return {"$and": kept}


class ShoalVectorStore(BasePydanticVectorStore):
    """LlamaIndex's vector store protocol over one Shoal collection; similarities are 1 - cosine distance."""

    stores_text: bool = True
    flat_metadata: bool = False
    collection_name: str
    metric: str = "cosine"  # used only when the collection is created here

    _client: Client = PrivateAttr()
    _async: LoopClient = PrivateAttr()

    def __init__(
        self,
        shoal_client: Client,
        collection_name: str,
        *,
        shoal_async_client: AsyncClient | None = None,
        **kwargs: Any,
    ) -> None:
        # The base's __init__ is pydantic's, which takes this class's fields as keywords.
        super().__init__(**{**kwargs, "collection_name": collection_name})
        self._client = shoal_client
        self._async = LoopClient(shoal_client, shoal_async_client)

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serialises this store under."""
        return "ShoalVectorStore"

    @property
    def client(self) -> Client:
        """The Shoal client."""
        return self._client

    @property
    def aclient(self) -> AsyncClient:
        """The AsyncClient of the running event loop, which the async methods await."""
        return self._async.get()

    def _ensure_collection(self, dim: int) -> None:
        if self._client.collection_exists(self.collection_name):
            return
        with contextlib.suppress(AlreadyExists):  # created meanwhile by another writer
            self._client.create_collection(self.collection_name, dim=dim, metric=self.metric, id_type="string")

    async def _aensure_collection(self, dim: int) -> None:
        if await self.aclient.collection_exists(self.collection_name):
            return
        with contextlib.suppress(AlreadyExists):
            await self.aclient.create_collection(self.collection_name, dim=dim, metric=self.metric, id_type="string")

    def _points(self, nodes: Sequence[BaseNode]) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
        """The ids, vectors and payloads of nodes to store."""
        ids = [n.node_id for n in nodes]
        vectors = np.asarray([n.get_embedding() for n in nodes], dtype=np.float32)
        payloads = [node_to_metadata_dict(n, remove_text=False, flat_metadata=self.flat_metadata) for n in nodes]
        return ids, vectors, payloads

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Store embedded nodes (replacing those of the same ids); returns their ids."""
        if not nodes:
            return []
        ids, vectors, payloads = self._points(nodes)
        self._ensure_collection(vectors.shape[1])
        self._client.upsert(self.collection_name, ids=ids, vectors=vectors, payloads=payloads)
        return ids

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Store embedded nodes (replacing those of the same ids); returns their ids."""
        if not nodes:
            return []
        ids, vectors, payloads = self._points(nodes)
        await self._aensure_collection(vectors.shape[1])
        await self.aclient.upsert(self.collection_name, ids=ids, vectors=vectors, payloads=payloads)
        return ids

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of a source document."""
        with contextlib.suppress(NotFound):  # no collection yet: nothing to delete
            self._client.delete(self.collection_name, filter={"ref_doc_id": ref_doc_id})

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of a source document."""
        with contextlib.suppress(NotFound):
            await self.aclient.delete(self.collection_name, filter={"ref_doc_id": ref_doc_id})

    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None) -> list[BaseNode]:
        """Nodes by id, or all nodes matching `filters`."""
        try:
            if node_ids is not None:
                points = self._client.get(self.collection_name, ids=node_ids)
            else:
                points = list(self._client.scroll_all(self.collection_name, filter=shoal_filter(filters)))
        except NotFound:
            return []
        return [metadata_dict_to_node(p.payload or {}) for p in points]

    async def aget_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        """Nodes by id, or all nodes matching `filters`."""
        try:
            if node_ids is not None:
                points = await self.aclient.get(self.collection_name, ids=node_ids)
            else:
                points = [p async for p in self.aclient.scroll_all(self.collection_name, filter=shoal_filter(filters))]
        except NotFound:
            return []
        return [metadata_dict_to_node(p.payload or {}) for p in points]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The similarity_top_k nearest nodes to the query embedding that match its filters."""
        vector, k, where = _search_args(query)
        try:
            res = self._client.search(self.collection_name, vector, k=k, filter=where)
        except NotFound:
            return _result([])
        return _result(res[0])

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The similarity_top_k nearest nodes to the query embedding that match its filters."""
        vector, k, where = _search_args(query)
        try:
            res = await self.aclient.search(self.collection_name, vector, k=k, filter=where)
        except NotFound:
            return _result([])
        return _result(res[0])


def _search_args(query: VectorStoreQuery) -> tuple[np.ndarray, int, FilterLike | None]:
    """A query's vector, k and filter."""
    if query.query_embedding is None:
        raise InvalidArgument("a Shoal query needs query_embedding")
    return np.asarray(query.query_embedding, dtype=np.float32), query.similarity_top_k, shoal_filter(query.filters)


def _result(hits: list[Hit]) -> VectorStoreQueryResult:
    """Hits as LlamaIndex's query result; similarities are 1 - cosine distance."""
    return VectorStoreQueryResult(
        nodes=[metadata_dict_to_node(h.payload or {}) for h in hits],
        similarities=[1.0 - h.distance for h in hits],
        ids=[str(h.id) for h in hits],
    )
