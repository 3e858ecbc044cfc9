"""A shard's gauges, read at scrape time: per collection points, memory, payload-index entries, snapshot age;
the shard's sequence number and queue depths. Writes and searches pay nothing for them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shoal.shard.core import Shard

log = logging.getLogger("shoal.shard.metrics")

# A scrape waits at most this long for the index worker (behind queued searches and writes).
SCRAPE_TIMEOUT_SECONDS = 5.0


class ShardCollector(Collector):
    """The gauges of every shard of this process (one in production; several in in-process tests)."""

    def __init__(self) -> None:
        self._shards: dict[str, Shard] = {}
        self._lock = threading.Lock()

    def add(self, address: str, shard: Shard) -> None:
        """Report `shard` under the label shard=`address`."""
        with self._lock:
            self._shards[address] = shard

    def remove(self, address: str) -> None:
        """Stop reporting the shard of `address`."""
        with self._lock:
            self._shards.pop(address, None)

    def collect(self) -> Iterator[Metric]:
        """One sample per shard and collection of each gauge."""
        collection = ["shard", "collection"]
        points = GaugeMetricFamily(
            "shoal_collection_points", "Live points of a collection on a shard", labels=collection
        )
        memory = GaugeMetricFamily(
            "shoal_collection_index_memory_bytes", "Bytes the collection's HNSW index holds", labels=collection
        )
        entries = GaugeMetricFamily(
            "shoal_collection_payload_index_entries", "Entries of the collection's payload index", labels=collection
        )
        age = GaugeMetricFamily(
            "shoal_collection_snapshot_age_seconds",
            "Seconds since the collection's index was last snapshotted (or loaded)",
            labels=collection,
        )
        snapshot_seq = GaugeMetricFamily(
            "shoal_collection_snapshot_sequence", "The write sequence the last snapshot holds", labels=collection
        )
        unsnapshotted = GaugeMetricFamily(
            "shoal_collection_unsnapshotted_points",
            "Points changed since the last snapshot (a restart replays them from RocksDB)",
            labels=collection,
        )
        sequence = GaugeMetricFamily(
            "shoal_shard_sequence", "The sequence number of the shard's last written batch", labels=["shard"]
        )
        depth = GaugeMetricFamily(
            "shoal_queue_depth", "Items waiting in a shard's committer or index-worker queue", labels=["shard", "queue"]
        )
        with self._lock:
            shards = list(self._shards.items())
        for address, shard in shards:
            for queue, n in shard.queue_depths().items():
                depth.add_metric([address, queue], n)
            try:
                rows = shard.status(SCRAPE_TIMEOUT_SECONDS)
            except Exception as exc:  # a shard still loading, or a busy worker: its gauges are absent this time
                log.debug("no collection gauges for shard %s: %s", address, exc)
                continue
            sequence.add_metric([address], shard.sequence)
            for row in rows:
                labels = [address, row.name]
                points.add_metric(labels, row.points)
                memory.add_metric(labels, row.memory_bytes)
                entries.add_metric(labels, row.payload_index_entries)
                age.add_metric(labels, row.snapshot_age_seconds)
                snapshot_seq.add_metric(labels, row.snapshot_sequence)
                unsnapshotted.add_metric(labels, row.unsnapshotted)
        yield from (points, memory, entries, age, snapshot_seq, unsnapshotted, sequence, depth)


_collector: ShardCollector | None = None
_registering = threading.Lock()


def collector() -> ShardCollector:
    """The process's one shard collector, registered on first use."""
    global _collector
    with _registering:
        if _collector is None:
            _collector = ShardCollector()
            REGISTRY.register(_collector)
        return _collector
