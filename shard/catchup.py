"""Catch-up by snapshot: a member whose next write its primary's op log no longer holds, or whose log has writes
its primary lacks, copies the primary's data.

The primary serves a copy (`serve_copy`: the backup's consistent copy, made in a scratch folder and streamed
in chunks over the member-only `ReadSnapshot`); the member (`copy_from`) stages it (copies.py), swaps it in
by reopening its shard, and from then on is an ordinary member that is behind: its primary's link ships
the writes after the copy's sequence from the op log and adds it to the in-sync set as for any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from shoal._errors import Unavailable
from shoal._rpc import member_channel
from shoal._tls import ClusterCredentials, Metadata
from shoal.shard import copies
from shoal.shard.core import Shard
from shoal.shard.faults import CrashPoints
from shoal.shard.replication import entry_digest
from shoal.v1 import shard_pb2, shard_pb2_grpc

log = logging.getLogger("shoal.shard.catchup")

COPY_TIMEOUT = 3600.0  # seconds a whole copy may take (a large shard over a slow link)


async def serve_copy(shard: Shard) -> AsyncIterator[shard_pb2.SnapshotChunk]:
    """A consistent copy of `shard`'s data in chunks, then the message saying it is whole."""
    folder = copies.scratch(shard.data)
    chunks = copies.read_chunks(folder)  # lazy: reads nothing before the copy is made
    try:
        await asyncio.to_thread(shard.copy_to, folder)
        files = size = 0
        last = ""
        while (item := await asyncio.to_thread(next, chunks, None)) is not None:
            name, data = item
            files, size, last = files + (name != last), size + len(data), name
            yield shard_pb2.SnapshotChunk(path=name, data=data)
        yield shard_pb2.SnapshotChunk(done=True, files=files, size=size)
    finally:
        # The member went away mid-copy: close the file being read; a read still running on its thread (the
        # call was cancelled, the thread was not) leaves the generator to close when it is collected.
        with contextlib.suppress(ValueError):
            chunks.close()
        await asyncio.to_thread(shutil.rmtree, folder, True)


def needs_copy(sequence: int, primary: shard_pb2.ReplicaStateResponse) -> bool:
    """Whether a member at `sequence` is behind what the primary's op log still holds (it needs a copy)."""
    return primary.role == "primary" and sequence + 1 < primary.log_start


async def diverged(
    shard: Shard, stub: shard_pb2_grpc.ShardStub, primary: shard_pb2.ReplicaStateResponse, metadata: Metadata
) -> bool:
    """Whether this member holds writes its primary lacks (it was a primary cut off, or killed, with writes
    that no replica acknowledged): then no op log can bring it back, only a copy."""
    sequence = shard.sequence
    if primary.role != "primary" or sequence == 0:
        return False
    if sequence > primary.seq:
        return True
    mine = await asyncio.to_thread(shard.storage.entries, sequence - 1, 1)
    if not mine or mine[0][0] != sequence:
        return False  # trimmed here: cannot tell (the primary's link compares when it connects)
    call: Any = stub.ReadLog(shard_pb2.ReadLogRequest(after=sequence - 1), timeout=5, metadata=metadata)
    try:
        entry = await call.read()
    finally:
        call.cancel()
    if entry is grpc.aio.EOF or int(entry.seq) != sequence:
        return False  # trimmed there: needs_copy decides
    return entry_digest(entry.plan) != entry_digest(mine[0][1])


async def copy_from(
    shard: Shard, address: str, credentials: ClusterCredentials, crash: CrashPoints, pause: Callable[[], None]
) -> bool:
    """Replace the shard's data with a copy of the primary's at `address` if its op log no longer reaches this
    shard's next write; whether it did. `pause` is called first when it does (replication must stop)."""
    metadata = credentials.metadata
    async with member_channel(address, credentials) as channel:
        stub = shard_pb2_grpc.ShardStub(channel)
        primary = await stub.ReplicaState(shard_pb2.ReplicaStateRequest(), timeout=5, metadata=metadata)
        before = shard.sequence
        if needs_copy(before, primary):
            why = f"behind the op log of the primary at {address} (it starts at {primary.log_start})"
        elif await diverged(shard, stub, primary, metadata):
            why = f"with writes the primary at {address} lacks (it is at {primary.seq})"
        else:
            return False
        log.info("at sequence %d, %s: copying its data", before, why)
        pause()
        started = time.perf_counter()
        download = await asyncio.to_thread(copies.Download, shard.data)
        try:
            request = shard_pb2.ReadSnapshotRequest()
            async for chunk in stub.ReadSnapshot(request, timeout=COPY_TIMEOUT, metadata=metadata):
                if chunk.done:
                    await asyncio.to_thread(download.complete, int(chunk.files), int(chunk.size))
                    break
                await asyncio.to_thread(download.write, chunk.path, chunk.data)
                if chunk.path.startswith("rocksdb/"):  # the index snapshots are in, RocksDB's files begin
                    crash("mid-catchup")
            else:
                raise Unavailable(f"the primary at {address} ended its copy early")
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(download.abandon)
            raise
    await asyncio.to_thread(shard.reload)
    log.info(
        "caught up by snapshot: %d files, %.1f MiB copied from %s in %.2f s; sequence %d -> %d",
        download.files,
        download.size / 2**20,
        address,
        time.perf_counter() - started,
        before,
        shard.sequence,
    )
    return True
