"""`shoal backup`: a consistent copy of a running cluster, asked of each shard over gRPC.

    BACKUP/backup.json                         the topology, and what each shard's copy holds
    BACKUP/shard-<i>/rocksdb/                  a RocksDB checkpoint of shard i
    BACKUP/shard-<i>/index/<born>-<name>/      its index snapshots (manifest and file)

Each shard copies itself on its own file system (the Shard service's Backup call), so BACKUP must be a
path every shard can write, inside every shard's `--backup-root`: the same machine for `shoal up`, a shared
volume otherwise. Each shard's copy
is consistent (fresh snapshots, then a checkpoint whose change log covers everything after them) and
holds every write acknowledged before the backup started; shards are copied one after another, so the
copy is not one instant across shards (a write that spans shards may be in one shard's copy only).
Restoring is the shard's side (`shoal.shard.backup`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import grpc

from shoal import _rpc
from shoal._errors import FailedPrecondition, from_rpc_error
from shoal._tls import TLS, api_key_metadata, cluster_metadata
from shoal.v1 import shard_pb2, shard_pb2_grpc, shoal_pb2_grpc
from shoal.v1 import types_pb2 as pb

MANIFEST = "backup.json"
FORMAT = 1
TIMEOUT = 3600.0  # a shard's copy takes as long as snapshotting its indexes
TOPOLOGY_TIMEOUT = 30.0


def _shards(topology: pb.TopologyInfo) -> list[tuple[str, list[list[int]]]]:
    """Each shard's address and slot ranges, in topology order (an address may serve several ranges)."""
    shards: dict[str, list[list[int]]] = {}
    for r in topology.shards:
        shards.setdefault(r.address, []).append([r.slot_start, r.slot_end])
    return list(shards.items())


def backup_cluster(
    address: str,
    target: Path,
    api_key: str | None = None,
    tls: TLS | None = None,
    cluster_secret: bytes | None = None,
) -> dict[str, Any]:
    """Copy every shard of the cluster behind the coordinator at `address` into `target` (a new folder).

    The shards are asked directly, so the caller must be a cluster member: `tls` with a member's certificate,
    or the cluster secret.
    """
    target = target.absolute()
    if target.exists() and any(target.iterdir()):
        raise FailedPrecondition(f"the backup folder {target} is not empty")
    try:
        with _rpc.channel(address, tls) as channel:
            topology = shoal_pb2_grpc.ShoalStub(channel).GetTopology(
                pb.GetTopologyRequest(), timeout=TOPOLOGY_TIMEOUT, metadata=api_key_metadata(api_key)
            )
        target.mkdir(parents=True, exist_ok=True)
        shards = []
        for i, (shard, slots) in enumerate(_shards(topology)):
            with _rpc.channel(shard, tls) as channel:
                copied = shard_pb2_grpc.ShardStub(channel).Backup(
                    shard_pb2.BackupRequest(path=str(target / f"shard-{i}")),
                    timeout=TIMEOUT,
                    metadata=cluster_metadata(cluster_secret),
                )
            shards.append(
                {
                    "address": shard,
                    "slots": slots,
                    "folder": f"shard-{i}",
                    "collections": {c.collection: c.sequence for c in copied.collections},
                }
            )
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from exc
    manifest = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "topology_version": topology.version,
        "shards": shards,
    }
    staged = target / f"{MANIFEST}.tmp"  # the manifest appears last and whole: without it, no backup
    staged.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(staged, target / MANIFEST)
    return manifest
