"""`shoal check`: compare the members of every shard group, collection by collection (count and digest).

Each live member is asked for all its points (ids, vectors and payloads, in key order, through its
Scroll, at the topology version etcd has); equal counts and equal digests mean identical copies. Members
are compared only at one moment of their group's history: when their sequences differ, or moved while they
were read (writes still arriving, a replica applying its last ones), they are read again, a few times, before
a difference is reported. Server-side imports: loaded only by the command.
"""

from __future__ import annotations

import asyncio
import hashlib

from shoal._config import MAX_SCROLL
from shoal._group_status import MemberStatus, groups
from shoal._meta import MetaStore
from shoal._rpc import member_channel
from shoal._tls import ClusterCredentials
from shoal._wire import decode_ids
from shoal.v1 import shard_pb2, shard_pb2_grpc
from shoal.v1 import types_pb2 as pb

SCROLL_TIMEOUT = 30.0
ATTEMPTS = 5  # reads of a group's members before a difference between moving sequences is reported
SETTLE_PAUSE = 1.0  # seconds between them


async def digest(address: str, collection: str, credentials: ClusterCredentials, version: int = 0) -> tuple[int, str]:
    """A member's point count and the digest of its points of one collection (at topology `version`, 0: any)."""
    h = hashlib.blake2b(digest_size=16)
    count, cursor = 0, ""
    async with member_channel(address, credentials) as channel:
        stub = shard_pb2_grpc.ShardStub(channel)
        while True:
            request = pb.ScrollRequest(
                collection=collection,
                limit=MAX_SCROLL,
                cursor=cursor,
                with_payload=True,
                with_vectors=True,
                topology=version,
            )
            page = await stub.Scroll(request, timeout=SCROLL_TIMEOUT, metadata=credentials.metadata)
            h.update(page.SerializeToString(deterministic=True))
            count += len(decode_ids(page.ids))
            cursor = page.next_cursor
            if not cursor:
                return count, h.hexdigest()


async def check(
    endpoint: str, cluster: str = "default", credentials: ClusterCredentials | None = None
) -> tuple[bool, list[str]]:
    """Whether every group's live members are identical, and one line per group and collection."""
    credentials = credentials or ClusterCredentials()
    async with await MetaStore.connect(endpoint, cluster) as meta:
        names = sorted(c.name for c in await meta.list_collections())
        version = (await meta.get_topology()).version
    lines: list[str] = []
    same = True
    for group in await groups(endpoint, cluster, credentials):
        live = [m for m in group.members if m.state != "down"]
        down = [m.member for m in group.members if m.state == "down"]
        if down:
            lines.append(f"{group.group}: not compared (down): {', '.join(down)}")
        for name in names:
            results = await _settled(live, name, version, credentials)
            if len(set(results.values())) == 1:
                count, _ = next(iter(results.values()))
                lines.append(f"{group.group} {name}: {len(live)} members identical ({count} points)")
                continue
            same = False
            detail = ", ".join(f"{m}: {c} points, digest {d[:16]}" for m, (c, d) in sorted(results.items()))
            lines.append(f"{group.group} {name}: DIFFERENT: {detail}")
    return same, lines


async def _settled(
    live: list[MemberStatus], name: str, version: int, credentials: ClusterCredentials
) -> dict[str, tuple[int, str]]:
    """Each member's count and digest of a collection, read again while their sequences differ or move."""
    for attempt in range(ATTEMPTS):
        before = await asyncio.gather(*(_sequence(m.address, credentials) for m in live), return_exceptions=True)
        found = await asyncio.gather(
            *(digest(m.address, name, credentials, version) for m in live), return_exceptions=True
        )
        after = await asyncio.gather(*(_sequence(m.address, credentials) for m in live), return_exceptions=True)
        results = {
            m.member: (r if not isinstance(r, BaseException) else (-1, repr(r)))
            for m, r in zip(live, found, strict=True)
        }
        settled = len(set(before)) == 1 and before == after
        if len(set(results.values())) == 1 or (settled and not any(c < 0 for c, _ in results.values())):
            return results
        if attempt < ATTEMPTS - 1:
            await asyncio.sleep(SETTLE_PAUSE)
    return results


async def _sequence(address: str, credentials: ClusterCredentials) -> int:
    """A member's write sequence."""
    async with member_channel(address, credentials) as channel:
        stub = shard_pb2_grpc.ShardStub(channel)
        state = await stub.ReplicaState(shard_pb2.ReplicaStateRequest(), timeout=5, metadata=credentials.metadata)
        return int(state.seq)
