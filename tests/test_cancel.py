"""Abandoned searches stop: a caller that goes away, or whose deadline passes, leaves no work on the shards."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

import shoal
from shoal._local import LocalCluster

DIM = 16
N = 5000
X = np.random.default_rng(3).standard_normal((N, DIM)).astype(np.float32)
ABANDONED = 12  # each takes the shards about 0.8 s here (5,000 exact queries)


@pytest.fixture(scope="module")
def coll(client: shoal.Client) -> Iterator[str]:
    """5,000 points of dimension 16."""
    client.create_collection("cancel", dim=DIM)
    client.upsert("cancel", ids=np.arange(N), vectors=X)
    yield "cancel"
    client.drop_collection("cancel")


@pytest.mark.slow
def test_searches_whose_deadline_passed_are_dropped_by_the_shards(cluster: LocalCluster, coll: str) -> None:
    def abandon() -> None:
        with shoal.Client(cluster.address, timeout=0.3) as impatient, pytest.raises(shoal.DeadlineExceeded):
            impatient.search(coll, X, k=100, ef=4096)  # ef beyond the points: exact, so slow

    threads = [threading.Thread(target=abandon) for _ in range(ABANDONED)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Without cancellation the shards would still owe about ABANDONED x 0.8 s of work, ahead of this search.
    with shoal.Client(cluster.address) as other:
        started = time.perf_counter()
        assert other.search(coll, X[5], k=1)[0][0].id == 5
        waited = time.perf_counter() - started
    assert waited < 3.0, f"a search waited {waited:.1f} s behind abandoned work"
