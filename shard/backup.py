"""`shoal backup` and `shoal restore`: a consistent copy of a running cluster, and data folders made from one.

    BACKUP/backup.json                         the topology, and what each shard's copy holds
    BACKUP/shard-<i>/rocksdb/                  a RocksDB checkpoint of shard i
    BACKUP/shard-<i>/index/<born>-<name>/      its index snapshots (manifest and file)

Each shard copies itself on its own file system (the Shard service's Backup call), so BACKUP must be a
path every shard can write: the same machine for `shoal up`, a shared volume otherwise. Each shard's copy
is consistent (fresh snapshots, then a checkpoint whose change log covers everything after them) and
holds every write acknowledged before the backup started; shards are copied one after another, so the
copy is not one instant across shards (a write that spans shards may be in one shard's copy only).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import grpc

from shoal import _rpc
from shoal._config import SLOTS
from shoal._errors import FailedPrecondition, InvalidArgument, from_rpc_error
from shoal.v1 import shard_pb2, shard_pb2_grpc, shoal_pb2_grpc
from shoal.v1 import types_pb2 as pb

MANIFEST = "backup.json"
FORMAT = 1
TIMEOUT = 3600.0  # a shard's copy takes as long as snapshotting its indexes


def _shards(topology: pb.TopologyInfo) -> list[tuple[str, list[list[int]]]]:
    """Each shard's address and slot ranges, in topology order (an address may serve several ranges)."""
    shards: dict[str, list[list[int]]] = {}
    for r in topology.shards:
        shards.setdefault(r.address, []).append([r.slot_start, r.slot_end])
    return list(shards.items())


def backup_cluster(address: str, target: Path) -> dict[str, Any]:
    """Copy every shard of the cluster behind the coordinator at `address` into `target` (a new folder)."""
    target = target.absolute()
    if target.exists() and any(target.iterdir()):
        raise FailedPrecondition(f"the backup folder {target} is not empty")
    try:
        with _rpc.channel(address) as channel:
            topology = shoal_pb2_grpc.ShoalStub(channel).GetTopology(pb.GetTopologyRequest(), timeout=30)
        target.mkdir(parents=True, exist_ok=True)
        shards = []
        for i, (shard, slots) in enumerate(_shards(topology)):
            with _rpc.channel(shard) as channel:
                copied = shard_pb2_grpc.ShardStub(channel).Backup(
                    shard_pb2.BackupRequest(path=str(target / f"shard-{i}")), timeout=TIMEOUT
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


def read_backup(backup: Path) -> dict[str, Any]:
    """A finished backup's manifest."""
    try:
        manifest: dict[str, Any] = json.loads((backup / MANIFEST).read_text())
    except FileNotFoundError:
        raise FailedPrecondition(f"{backup} is not a finished backup: it has no {MANIFEST}") from None
    if manifest.get("format") != FORMAT:
        raise FailedPrecondition(f"{backup / MANIFEST} has an unknown format {manifest.get('format')}")
    return manifest


def _empty(data: Path) -> None:
    if data.exists() and any(data.iterdir()):
        raise FailedPrecondition(f"{data} is not empty: restore into a new folder")


def restore_shard(backup: Path, index: int, data: Path) -> None:
    """Make `data` the data folder of shard `index` of the backup (for `shoal shard --data DATA`)."""
    shards = read_backup(backup)["shards"]
    if not 0 <= index < len(shards):
        raise InvalidArgument(f"the backup has shards 0 to {len(shards) - 1}, not {index}")
    _empty(data)
    shutil.copytree(backup / shards[index]["folder"], data, dirs_exist_ok=True)


def restore_local(backup: Path, data: Path) -> int:
    """Make `data` the data folder of a `shoal up` cluster from the backup; the number of shards."""
    shards = read_backup(backup)["shards"]
    n = len(shards)
    for i, shard in enumerate(shards):
        # `shoal up` splits the slots evenly in shard order; another split would send ids to the wrong shard.
        if shard["slots"] != [[i * SLOTS // n, (i + 1) * SLOTS // n]]:
            raise FailedPrecondition(
                f"shard {i} of the backup served slots {shard['slots']}, not the even split `shoal up` uses; "
                "restore each shard with --shard and start the cluster with its topology file"
            )
    _empty(data)
    for i in range(n):
        restore_shard(backup, i, data / f"shard-{i}")
    (data / "cluster.json").write_text(json.dumps({"shards": n}) + "\n")
    return n
