"""`shoal status`: each shard's address, health, collections and point counts, as a table."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shoal import _rpc
from shoal._client import Client
from shoal._errors import from_rpc_error
from shoal._tls import TLS
from shoal.v1 import types_pb2 as pb

_HEALTH_TIMEOUT = 3.0


def health_of(address: str, tls: TLS | None = None) -> str:
    """SERVING, NOT_SERVING, or UNREACHABLE for the process at `address`."""
    with _rpc.channel(address, tls) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=_HEALTH_TIMEOUT
            )
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def cluster_status(address: str, api_key: str | None = None, tls: TLS | None = None) -> str:
    """A table of the cluster behind the coordinator at `address`."""
    with Client(address, timeout=10.0, api_key=api_key, tls=tls or False) as client:
        try:
            topology = client._stub.GetTopology(pb.GetTopologyRequest(), timeout=10.0, metadata=client._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        counts: dict[str, dict[str, int]] = {s.address: {} for s in topology.shards}
        names = client.list_collections()
        for name in names:
            for stats in client.describe_collection(name).shards:
                counts.setdefault(stats.address, {})[name] = stats.count
    lines = [
        f"coordinator {address}: {health_of(address, tls)}, topology version {topology.version}",
        f"{'shard':<24} {'slots':<11} {'health':<12} collections (points)",
    ]
    for s in topology.shards:
        cols = ", ".join(f"{n} ({c:,})" for n, c in sorted(counts[s.address].items())) or "-"
        lines.append(f"{s.address:<24} {s.slot_start:>4}-{s.slot_end - 1:<6} {health_of(s.address, tls):<12} {cols}")
    return "\n".join(lines)
