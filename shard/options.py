"""A shard's settings and their defaults, in one place; read from the environment only at process start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shoal.shard.faults import crashpoint_from_env

MAX_GROUP = 256  # writes per WAL sync; bounds the wait of the first write in a burst

# Index snapshots: a restart replays at most about `changes` points on top of the last snapshot.
SNAPSHOT_CHANGES_ENV = "SHOAL_SNAPSHOT_CHANGES"
SNAPSHOT_MIN_INTERVAL_ENV = "SHOAL_SNAPSHOT_MIN_INTERVAL"
SNAPSHOT_MAX_INTERVAL_ENV = "SHOAL_SNAPSHOT_MAX_INTERVAL"
MIN_FREE_MB_ENV = "SHOAL_MIN_FREE_MB"
COMPACT_SHARE_ENV = "SHOAL_COMPACT_SHARE"
COMPACT_MIN_ENV = "SHOAL_COMPACT_MIN"
OPLOG_KEEP_ENV = "SHOAL_OPLOG_KEEP"
OPLOG_TRIM_ENV = "SHOAL_OPLOG_TRIM_SECONDS"


@dataclass(frozen=True)
class SnapshotPolicy:
    """When a collection's index is snapshotted in the background."""

    # A snapshot costs time proportional to the index, a replay time proportional to the changes since
    # the last snapshot: snapshot once this many points changed, but not more often than min_interval...
    changes: int = 10_000
    min_interval: float = 10.0
    # ...and at least every max_interval seconds while anything changed at all.
    max_interval: float = 120.0

    def due(self, changes: int, since_last: float) -> bool:
        """Whether a collection with `changes` unsnapshotted changes, `since_last` seconds after its last
        snapshot (or the shard's start), should be snapshotted now."""
        if changes <= 0:
            return False
        return (changes >= self.changes and since_last >= self.min_interval) or since_last >= self.max_interval


@dataclass(frozen=True)
class CompactionPolicy:
    """When a collection's index is rebuilt from RocksDB to shed the points usearch only marked as removed."""

    # usearch keeps a removed or replaced point as a tombstone in the graph: searches walk through them
    # (slower) and, past a large share, some live points can no longer be reached. Rebuild once removed
    # points reach this share of all the graph holds (live + removed); above 1, never.
    share: float = 0.25
    # ...and at least this many, so small collections are not rebuilt for a handful of deletes.
    min_removed: int = 10_000

    def due(self, removed: int, live: int) -> bool:
        """Whether an index holding `live` points and `removed` tombstones should be rebuilt now."""
        return removed >= max(self.min_removed, 1) and removed >= self.share * (live + removed)


@dataclass(frozen=True)
class ShardOptions:
    """Everything a shard is configured with besides its data folder."""

    threads: int = 1
    snapshots: SnapshotPolicy = field(default_factory=SnapshotPolicy)
    compaction: CompactionPolicy = field(default_factory=CompactionPolicy)
    # Writes are refused (RESOURCE_EXHAUSTED) while the data disk has less free space than this: RocksDB
    # needs room to flush memtables and compact, and stops for good after a failed WAL append.
    min_free_bytes: int = 256 * 1024 * 1024
    max_group: int = MAX_GROUP  # writes per WAL sync; 1 means one sync per batch (no group commit)
    crashpoint: str | None = None  # test-only: see faults.py
    # Backups are written only under this folder (`--backup-root`); without it the shard refuses them.
    backup_root: Path | None = None
    # A member of a shard group logs every write's plan (the op log) for replicas to catch up from, keeping
    # the last `oplog_keep`; a replica further behind than that copies a snapshot instead.
    oplog: bool = False
    oplog_keep: int = 100_000
    oplog_trim_every: float = 30.0  # seconds between trims of the op log

    @classmethod
    def from_env(cls, threads: int, environ: Mapping[str, str] = os.environ) -> ShardOptions:
        """The options of a shard process: defaults, overridden by SHOAL_* environment variables."""

        def number(name: str, default: float) -> float:
            try:
                return float(environ.get(name, default))
            except ValueError:
                raise SystemExit(f"{name}={environ[name]!r} is not a number") from None

        default = SnapshotPolicy()
        policy = SnapshotPolicy(
            changes=int(number(SNAPSHOT_CHANGES_ENV, default.changes)),
            min_interval=number(SNAPSHOT_MIN_INTERVAL_ENV, default.min_interval),
            max_interval=number(SNAPSHOT_MAX_INTERVAL_ENV, default.max_interval),
        )
        compact = CompactionPolicy(
            share=number(COMPACT_SHARE_ENV, CompactionPolicy.share),
            min_removed=int(number(COMPACT_MIN_ENV, CompactionPolicy.min_removed)),
        )
        min_free = int(number(MIN_FREE_MB_ENV, cls.min_free_bytes / 2**20) * 2**20)
        return cls(
            threads=threads,
            snapshots=policy,
            compaction=compact,
            min_free_bytes=min_free,
            oplog_keep=int(number(OPLOG_KEEP_ENV, cls.oplog_keep)),
            oplog_trim_every=number(OPLOG_TRIM_ENV, cls.oplog_trim_every),
            crashpoint=crashpoint_from_env(environ),
        )
