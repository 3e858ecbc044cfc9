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
from shoal._meta_values import GroupState
from shoal._rpc import member_channel
from shoal._tls import ClusterCredentials
from shoal.v1 import shard_pb2, shard_pb2_grpc

STATE_TIMEOUT = 2.0
ENDPOINT_FILE = "etcd-endpoint"  # written by `shoal up` into its data folder


@dataclass
class MemberStatus:
    """One member of a group: its address, role, state, sequence and lag behind its primary (-1: unknown)."""

    member: str
    address: str
    role: str  # primary | replica
    state: str  # in-sync | catching-up | down
    seq: int = -1
    lag: int = -1  # writes behind the primary's sequence (0 for the primary)


@dataclass
class GroupStatus:
    """One shard group: its slot ranges and their count, term, members and the moves it is part of."""

    group: str
    slots: list[list[int]]
    term: int
    members: list[MemberStatus] = field(default_factory=list)
    slot_count: int = 0
    moves: list[dict[str, object]] = field(default_factory=list)  # moves in progress from or to this group


@dataclass
class MetaStatus:
    """What etcd says of the cluster: its endpoints, the topology's version, the groups and moves in progress."""

    etcd: list[str]
    topology_version: int
    groups: list[GroupStatus]
    moves: list[dict[str, object]]
    mover: str | None = None  # who holds the mover lock (None: no mover runs)


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
    """Every group of the cluster, each member asked for its sequence (a member that does not answer is down)."""
    return (await meta_status(endpoint, cluster, credentials)).groups


async def meta_status(
    endpoint: str, cluster: str = "default", credentials: ClusterCredentials | None = None
) -> MetaStatus:
    """The cluster as etcd has it, every member of every group (those owning slots, and those that joined and
    own none yet) asked for its sequence; a member that does not answer is down.

    Members are asked as cluster members ask each other: with `credentials` on a secure cluster.
    """
    credentials = credentials or ClusterCredentials()
    async with await MetaStore.connect(endpoint, cluster) as meta:
        topology = await meta.get_topology()
        states = await meta.get_groups()
        endpoints = await meta.endpoints()
        mover = await meta.mover()
        moves = [{**m.to_json(), "progress": await meta.get_progress(m.id)} for m in topology.moves]
    names = list(dict.fromkeys([*(r.group for r in topology.ranges), *sorted(states)]))
    found: list[GroupStatus] = []
    for name in names:
        state = states.get(name) or GroupState(name)
        slots = [[r.start, r.end] for r in topology.ranges if r.group == name]
        status = GroupStatus(name, slots, state.term, slot_count=sum(e - s for s, e in slots))
        status.moves = [m for m in moves if name in (m["source"], m["target"])]
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
        primary = next((m.seq for m in status.members if m.role == "primary" and m.seq >= 0), -1)
        for m in status.members:
            if primary >= 0 and m.seq >= 0:
                m.lag = max(primary - m.seq, 0)
        found.append(status)
    return MetaStatus(endpoints, topology.version, found, moves, mover)


async def _none() -> int:
    return -1


def groups_json(found: list[GroupStatus]) -> str:
    """The groups as JSON."""
    return json.dumps({"groups": [asdict(g) for g in found]}, indent=2)


def meta_table(status: MetaStatus) -> str:
    """What etcd says as text: the endpoints, the groups' table, a line per move in progress, the mover."""
    lines = [f"etcd {', '.join(status.etcd)}: topology version {status.topology_version}", groups_table(status.groups)]
    for m in status.moves:
        line = f"moving slots {m['start']}-{int(str(m['end'])) - 1} from {m['source']} to {m['target']}: {m['phase']}"
        progress = m.get("progress")
        if isinstance(progress, dict) and "points" in progress:
            line += f", {progress['points']:,} points copied"
        lines.append(line)
    if status.mover:
        lines.append(f"mover: {status.mover}")
    return "\n".join(lines)


def groups_table(found: list[GroupStatus]) -> str:
    """The groups as a table, one row per member."""
    head = f"{'group':<6} {'slots':<12} {'term':>4}  {'member':<16} {'address':<22} {'role':<8} {'state':<12}"
    lines = [f"{head} {'seq':>8} lag"]
    for g in found:
        slots = f"{g.slot_count} " + (",".join(f"{s}-{e - 1}" for s, e in g.slots) or "(none)")
        if not g.members:
            lines.append(f"{g.group:<6} {slots:<12} {g.term:>4}  (no live member)")
        for m in g.members:
            seq = str(m.seq) if m.seq >= 0 else "-"
            lag = str(m.lag) if m.lag >= 0 else "-"
            lines.append(
                f"{g.group:<6} {slots:<12} {g.term:>4}  {m.member:<16} {m.address:<22} {m.role:<8} {m.state:<12}"
                f" {seq:>8} {lag}"
            )
    return "\n".join(lines)
