"""`shoal status`: a row per process of the cluster (never failing because one is down), as a table or JSON.

The model is a list of processes, each with optional group and member role, so shard groups with replicas
add rows rather than change the shape.
"""

from __future__ import annotations

import json
from typing import Any

import grpc

from shoal import _rpc
from shoal._tls import TLS, api_key_metadata
from shoal.v1 import shard_pb2_grpc, shoal_pb2_grpc
from shoal.v1 import types_pb2 as pb

STATUS_TIMEOUT = 10.0
SERVING = "SERVING"
UNREACHABLE = "UNREACHABLE"


def _collection(c: pb.CollectionStatus) -> dict[str, Any]:
    return {
        "name": c.name,
        "points": c.points,
        "memory_bytes": c.memory_bytes,
        "payload_index_entries": c.payload_index_entries,
        "snapshot_age_seconds": round(c.snapshot_age_seconds, 3),
        "snapshot_sequence": c.snapshot_sequence,
    }


def _process(p: pb.ProcessStatus) -> dict[str, Any]:
    row: dict[str, Any] = {
        "role": p.role,
        "address": p.address,
        "state": p.state,
        "metrics_address": p.metrics_address or None,
        "group": p.group or None,
        "member_role": p.member_role or None,
        "slots": [p.slot_start, p.slot_end] if p.role == "shard" else None,
        "sequence": p.sequence if p.state == SERVING and p.role == "shard" else None,
        "lag": p.lag if p.member_role == "replica" else None,
        "collections": [_collection(c) for c in p.collections],
        "error": p.error or None,
    }
    return row


def cluster_status(address: str, api_key: str | None = None, tls: TLS | None = None) -> dict[str, Any]:
    """Every process of the cluster behind the coordinator at `address`; the coordinator's row alone when it is down."""
    with _rpc.channel(address, tls) as channel:
        try:
            reply = shoal_pb2_grpc.ShoalStub(channel).GetStatus(
                pb.StatusRequest(), timeout=STATUS_TIMEOUT, metadata=api_key_metadata(api_key)
            )
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return _shard_status(channel, address, api_key)  # a shard's address: its own row
            code = exc.code().name if isinstance(exc, grpc.Call) else "UNAVAILABLE"
            detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            down = pb.ProcessStatus(role="coordinator", address=address, state=UNREACHABLE, error=f"{code}: {detail}")
            return {"coordinator": address, "topology_version": None, "processes": [_process(down)]}
    return {
        "coordinator": address,
        "topology_version": reply.topology_version,
        "processes": [_process(p) for p in reply.processes],
    }


def _shard_status(channel: grpc.Channel, address: str, api_key: str | None) -> dict[str, Any]:
    """The status of the one shard at `address`, when `shoal status` is pointed at a shard."""
    try:
        reply = shard_pb2_grpc.ShardStub(channel).GetStatus(
            pb.StatusRequest(), timeout=STATUS_TIMEOUT, metadata=api_key_metadata(api_key)
        )
    except grpc.RpcError as exc:
        code = exc.code().name if isinstance(exc, grpc.Call) else "UNAVAILABLE"
        detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        reply = pb.ProcessStatus(role="shard", address=address, state=UNREACHABLE, error=f"{code}: {detail}")
    return {"coordinator": None, "topology_version": None, "processes": [_process(reply)]}


def healthy(status: dict[str, Any]) -> bool:
    """Whether every process serves."""
    return all(p["state"] == SERVING for p in status["processes"])


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _collections(p: dict[str, Any]) -> str:
    cells = [
        f"{c['name']} ({c['points']:,}) [{_bytes(c['memory_bytes'])}, snapshot {c['snapshot_age_seconds']:.0f} s ago]"
        for c in p["collections"]
    ]
    return ", ".join(cells) or "-"


def to_table(status: dict[str, Any]) -> str:
    """The status as text: the coordinator's line, then a row per shard with its collections' points and memory."""
    if status["coordinator"] is None:  # a shard's own status
        head, shards = f"shard {status['processes'][0]['address']}", status["processes"]
        return "\n".join([head, *_shard_rows(shards)])
    coordinator, *shards = status["processes"]
    version = status["topology_version"]
    head = f"coordinator {coordinator['address']}: {coordinator['state']}"
    if version is not None:
        head += f", topology version {version}"
    if coordinator["metrics_address"]:
        head += f", metrics on {coordinator['metrics_address']}"
    if coordinator["error"]:
        head += f" ({coordinator['error']})"
    return "\n".join([head, *_shard_rows(shards)])


def _shard_rows(shards: list[dict[str, Any]]) -> list[str]:
    """The header and a row per shard."""
    lines = []
    if shards:
        lines.append(
            f"{'shard':<24} {'role':<8} {'slots':<11} {'health':<12} {'sequence':>9} {'lag':>5}  {'metrics':<22} "
            "collections (points) [index memory, snapshot age]"
        )
    for p in shards:
        slots = f"{p['slots'][0]:>4}-{p['slots'][1] - 1:<6}" if p["slots"] else "-"
        seq = str(p["sequence"]) if p["sequence"] is not None else "-"
        lag = str(p["lag"]) if p["lag"] is not None else "-"
        detail = p["error"] or _collections(p)
        lines.append(
            f"{p['address']:<24} {p['member_role'] or '-':<8} {slots:<11} {p['state']:<12} {seq:>9} {lag:>5}  "
            f"{p['metrics_address'] or '-':<22} {detail}"
        )
    return lines


def to_json(status: dict[str, Any]) -> str:
    """The status as one JSON document."""
    return json.dumps(status, indent=2)
