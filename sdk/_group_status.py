"""The shard groups as etcd and their members report them: for `shoal status --meta` and `shoal check`.

Server-side imports (etcd client), loaded only by those commands, never by `import shoal`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from shoal._meta import MetaStore
from shoal._rpc import member_channel
from shoal._tls import ClusterCredentials
from shoal.v1 import shard_pb2, shard_pb2_grpc

STATE_TIMEOUT = 2.0
ENDPOINT_FILE = "etcd-endpoint"  # written by `shoal up` into its data folder


@dataclass
class MemberStatus:
    """One member of a group: its address, role, state and sequence (-1: unknown)."""

    member: str
    address: str
    role: str  # primary | replica
    state: str  # in-sync | catching-up | down
    seq: int = -1


@dataclass
class GroupStatus:
    """One shard group: its slot ranges, term and members."""

    group: str
    slots: list[list[int]]
    term: int
    members: list[MemberStatus] = field(default_factory=list)


def endpoint_of(data: Path) -> str:
    """The etcd endpoint of the local cluster whose data folder is `data`."""
    return (data / ENDPOINT_FILE).read_text().strip()


async def _seq(address: str, credentials: ClusterCredentials) -> int:
    try:
        async with member_channel(address, credentials) as channel:
            reply = await shard_pb2_grpc.ShardStub(channel).ReplicaState(
                shard_pb2.ReplicaStateRequest(), timeout=STATE_TIMEOUT, metadata=credentials.metadata
            )
    except grpc.aio.AioRpcError:
        return -1
    return int(reply.seq)


async def groups(
    endpoint: str, cluster: str = "default", credentials: ClusterCredentials | None = None
) -> list[GroupStatus]:
    """Every group of the cluster, each member asked for its sequence (a member that does not answer is down).

    Members are asked as cluster members ask each other: with `credentials` on a secure cluster.
    """
    credentials = credentials or ClusterCredentials()
    async with await MetaStore.connect(endpoint, cluster) as meta:
        topology = await meta.get_topology()
        names = list(dict.fromkeys(r.group for r in topology.ranges))
        states = [await meta.get_group(g) for g in names]
    found: list[GroupStatus] = []
    for name, state in zip(names, states, strict=True):
        slots = [[r.start, r.end] for r in topology.ranges if r.group == name]
        status = GroupStatus(name, slots, state.term)
        members = sorted(set(state.members) | set(state.in_sync))
        seqs = await asyncio.gather(
            *(_seq(state.members[m], credentials) if m in state.members else _none() for m in members)
        )
        for member, seq in zip(members, seqs, strict=True):
            live = member in state.members and seq >= 0
            kind = "in-sync" if member in state.in_sync else "catching-up"
            status.members.append(
                MemberStatus(
                    member,
                    state.members.get(member, "-"),
                    "primary" if member == state.primary else "replica",
                    kind if live else "down",
                    seq,
                )
            )
        found.append(status)
    return found


async def _none() -> int:
    return -1


def groups_json(found: list[GroupStatus]) -> str:
    """The groups as JSON."""
    return json.dumps({"groups": [asdict(g) for g in found]}, indent=2)


def groups_table(found: list[GroupStatus]) -> str:
    """The groups as a table, one row per member."""
    lines = [f"{'group':<6} {'slots':<12} {'term':>4}  {'member':<16} {'address':<22} {'role':<8} {'state':<12} seq"]
    for g in found:
        slots = ",".join(f"{s}-{e - 1}" for s, e in g.slots)
        for m in g.members:
            seq = str(m.seq) if m.seq >= 0 else "-"
            lines.append(
                f"{g.group:<6} {slots:<12} {g.term:>4}  {m.member:<16} {m.address:<22} {m.role:<8} {m.state:<12} {seq}"
            )
    return "\n".join(lines)
