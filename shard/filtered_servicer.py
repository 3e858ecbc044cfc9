"""The Shard service's filtered calls and payload updates: decode, call the core (off the event loop), encode."""

from __future__ import annotations

import asyncio

from shoal._errors import InvalidArgument
from shoal._wire import decode_ids, decode_matrix, encode_ids, encode_matrix
from shoal.shard.core import Shard
from shoal.v1 import types_pb2 as pb


async def search(shard: Shard, request: pb.SearchRequest) -> pb.SearchResponse:
    """A filtered search, with the plan that ran in the answer."""
    from shoal.shard.servicer import encode_search  # that module imports this one

    future = shard.submit_filtered_search(
        request.collection,
        decode_matrix(request.queries, "queries"),
        request.k,
        request.ef,
        request.with_payload,
        request.with_vectors,
        request.filter,
    )
    result, plan = await asyncio.wrap_future(future)
    response = encode_search(result, request.request_id)
    response.plan = plan
    return response


async def count(shard: Shard, request: pb.CountRequest) -> pb.CountResponse:
    """The number of points matching the filter."""
    return pb.CountResponse(count=await asyncio.to_thread(shard.count_filtered, request.collection, request.filter))


async def delete(shard: Shard, request: pb.DeleteRequest) -> pb.DeleteResponse:
    """Delete every point matching the filter."""
    if request.ids.u64 or request.ids.str:
        raise InvalidArgument("give ids or a filter to delete, not both")
    future = await asyncio.to_thread(shard.submit_delete_filter, request.collection, request.filter)
    return pb.DeleteResponse(deleted=await asyncio.wrap_future(future))


async def scroll(shard: Shard, request: pb.ScrollRequest) -> pb.ScrollResponse:
    """One page of this shard's points after the cursor."""
    page = await asyncio.to_thread(
        shard.scroll,
        request.collection,
        request.filter,
        request.limit,
        request.cursor,
        request.with_payload,
        request.with_vectors,
    )
    response = pb.ScrollResponse(ids=encode_ids(page.ids), payloads=page.payloads or [], next_cursor=page.next_cursor)
    if page.vectors is not None:
        response.vectors.CopyFrom(encode_matrix(page.vectors))
    return response


async def set_payload(shard: Shard, request: pb.SetPayloadRequest) -> pb.SetPayloadResponse:
    """Set and remove payload keys of existing points."""
    future = await asyncio.to_thread(
        shard.submit_set_payload, request.collection, decode_ids(request.ids), request.set, list(request.unset)
    )
    return pb.SetPayloadResponse(updated=await asyncio.wrap_future(future))
