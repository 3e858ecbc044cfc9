"""Calls from the mover to shard groups: to a group's primary (found in etcd, retried through a failover or a
restart), and to every member of a group (has it applied a topology version?)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from shoal._errors import ShoalError, Unavailable, from_rpc_error
from shoal._meta import MetaStore
from shoal._rpc import member_channel
from shoal._tls import ClusterCredentials
from shoal.v1 import shard_pb2, shard_pb2_grpc

log = logging.getLogger("shoal.coordinator.mover")

T = TypeVar("T")
CALL_TIMEOUT = 30.0  # seconds for one call to a shard
RETRY_FOR = 60.0  # seconds a call to a group's primary is retried through a failover or a restart
RETRY_STEP = 0.3


class GroupCalls:
    """Calls to shard groups' primaries (and members), found in etcd, retried through failovers."""

    def __init__(self, meta: MetaStore, credentials: ClusterCredentials) -> None:
        self.meta, self.credentials = meta, credentials
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, address: str) -> shard_pb2_grpc.ShardStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = member_channel(address, self.credentials)
        return shard_pb2_grpc.ShardStub(channel)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels.values()), return_exceptions=True)

    async def primary(self, group: str, call: Callable[[shard_pb2_grpc.ShardStub, Any], Awaitable[T]]) -> T:
        """`call(stub, metadata)` on the group's primary, again on the next one while the group fails over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_FOR
        while True:
            state = await self.meta.get_group(group)
            address = state.members.get(state.primary) if state.primary else None
            error: ShoalError = Unavailable(f"shard group {group} has no primary")
            if address is not None:
                try:
                    return await call(self.stub(address), self.credentials.metadata)
                except grpc.aio.AioRpcError as exc:
                    error = from_rpc_error(exc)
                    retry = isinstance(error, Unavailable) or "not the primary" in error.message
                    if not retry:
                        raise error from exc
            if loop.time() > deadline:
                raise error
            await asyncio.sleep(RETRY_STEP)

    async def applied(self, group: str, version: int) -> None:
        """Wait until every live member of a group applied topology `version` (or a newer one)."""
        state = await self.meta.get_group(group)
        request = shard_pb2.AwaitTopologyRequest(version=version)
        for address in state.members.values():
            try:
                await self.stub(address).AwaitTopology(
                    request, timeout=CALL_TIMEOUT, metadata=self.credentials.metadata
                )
            except grpc.aio.AioRpcError as exc:
                # A member that does not answer is no reader either: it rejoins at the current version.
                log.warning("member %s of %s did not confirm topology %d: %s", address, group, version, exc.details())

    async def sequence(self, group: str, version: int) -> int:
        """The primary's sequence once it applied topology `version` and every write checked before is durable."""
        request = shard_pb2.AwaitTopologyRequest(version=version)

        async def ask(stub: shard_pb2_grpc.ShardStub, md: Any) -> int:
            return int((await stub.AwaitTopology(request, timeout=CALL_TIMEOUT, metadata=md)).seq)

        return await self.primary(group, ask)
