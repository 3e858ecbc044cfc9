"""Memory stays bounded under callers that ask too much or never read: resident memory read from /proc."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

import shoal
from shoal._local import LocalCluster
from shoal._search import Search, SearchShape
from shoal.v1 import shoal_pb2_grpc

DIM = 16
N = 5000
X = np.random.default_rng(3).standard_normal((N, DIM)).astype(np.float32)
# The coordinator's resident memory may grow by at most this much while a client never reads its answers
# (without backpressure it grew by about 30 MB/s, so by about 300 MB in the 10 s the test runs).
SLOW_READER_GROWTH_MB = 60
# A shard's resident memory may grow by at most this much while it refuses a search whose payloads would make
# an answer of about 800 MB (without a budget it grew by 3 GB here, by 5.5 GB for 10,000 queries in the issue).
PAYLOAD_SEARCH_GROWTH_MB = 400


class Peak:
    """The peak resident memory of some processes, sampled on a thread while in the block."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.before = [rss_mb(p) for p in pids]
        self.peak = list(self.before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = [max(a, rss_mb(p)) for a, p in zip(self.peak, self.pids, strict=True)]

    def growth(self) -> float:
        """The largest growth of any of the processes, in MB."""
        return max(b - a for a, b in zip(self.before, self.peak, strict=True))

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def rss_mb(pid: int) -> float:
    """A process's resident memory in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture(scope="module")
def coll(client: shoal.Client) -> Iterator[str]:
    """5,000 points of dimension 16, as in the issue."""
    client.create_collection("memory", dim=DIM)
    client.upsert("memory", ids=np.arange(N), vectors=X)
    yield "memory"
    client.drop_collection("memory")


@pytest.mark.slow
def test_a_search_stream_that_is_never_read_is_back_pressured(cluster: LocalCluster, coll: str) -> None:
    assert cluster.coordinator is not None and cluster.coordinator.popen is not None
    pid = cluster.coordinator.popen.pid
    request = Search(SearchShape(coll, k=100), X[:10]).to_proto()
    stop = threading.Event()
    sent = 0

    def requests() -> Iterator[object]:
        nonlocal sent
        while not stop.is_set():
            sent += 1
            yield request

    before = rss_mb(pid)
    peak = before
    with grpc.insecure_channel(cluster.address) as channel:
        call = shoal_pb2_grpc.ShoalStub(channel).SearchStream(requests())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            peak = max(peak, rss_mb(pid))
            time.sleep(0.2)
        stop.set()
        call.cancel()
    print(f"coordinator RSS {before:.0f} MB -> peak {peak:.0f} MB; {sent} requests sent")
    assert peak - before < SLOW_READER_GROWTH_MB, (before, peak, sent)
    with shoal.Client(cluster.address) as other:  # and the coordinator still answers
        assert other.search(coll, X[7], k=1)[0][0].id == 7


@pytest.mark.slow
def test_a_search_for_too_many_payloads_is_refused_before_it_fills_the_shards(
    cluster: LocalCluster, client: shoal.Client, name: str
) -> None:
    big = {"blob": "x" * (1 << 20)}
    client.create_collection(name, dim=DIM)
    for lo in range(0, 40, 10):
        client.upsert(name, ids=np.arange(lo, lo + 10), vectors=X[lo : lo + 10], payloads=[big] * 10)
    pids = [p.popen.pid for p in cluster.shard_procs if p.popen is not None]
    with Peak(pids) as peak:
        for _ in range(3):
            with pytest.raises(shoal.ResourceExhausted, match="message limit"):
                client.search(name, X[:40], k=40, with_payload=True)
    print(f"shard RSS {peak.before} MB -> peak {peak.peak} MB")
    assert peak.growth() < PAYLOAD_SEARCH_GROWTH_MB, (peak.before, peak.peak)
