"""One caller cannot hurt the others: answers too large to send are refused for that call alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

import shoal
from shoal._config import MAX_MESSAGE_BYTES
from shoal._local import LocalCluster
from shoal._results import answer_bytes, answer_rows, check_answer_budget

DIM = 16
N = 2000
X = np.random.default_rng(5).standard_normal((N, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def coll(client: shoal.Client) -> Iterator[str]:
    """A small collection the bystander searches."""
    client.create_collection("budgets", dim=DIM)
    client.upsert("budgets", ids=np.arange(N), vectors=X)
    yield "budgets"
    client.drop_collection("budgets")


class Bystander:
    """Another client searching one query at a time (unary and stream) until stopped; records every failure."""

    def __init__(self, address: str, collection: str) -> None:
        self.client = shoal.Client(address)
        self.collection = collection
        self.calls = 0
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            i = (i + 1) % N
            try:
                hits = self.client.search(self.collection, X[i], k=1)[0]
                assert hits[0].id == i
                for result in self.client.search_stream(self.collection, [X[i : i + 1]], k=1):
                    assert result[0][0].id == i
                self.calls += 1
            except BaseException as exc:  # noqa: BLE001  # the test reports whatever went wrong
                self.failures.append(exc)

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.client.close()


def test_the_estimate_counts_ids_distances_payload_framing_and_vectors() -> None:
    assert answer_bytes(10, 5, 16, False, False) - answer_bytes(0, 5, 16, False, False) == 10 * (5 * 12 + 4)
    assert answer_bytes(1, 1, 16, True, True) - answer_bytes(1, 1, 16, False, False) == 2 + 64
    fit = answer_rows(1024, 16, False, False)
    assert (
        answer_bytes(fit, 1024, 16, False, False) <= MAX_MESSAGE_BYTES < answer_bytes(fit + 1, 1024, 16, False, False)
    )
    check_answer_budget(fit, 1024, 16, False, False)
    with pytest.raises(shoal.ResourceExhausted, match=f"at most {fit} queries"):
        check_answer_budget(fit + 1, 1024, 16, False, False)


@pytest.mark.slow
def test_an_answer_over_the_message_limit_is_refused_early_and_hurts_no_one(
    cluster: LocalCluster, client: shoal.Client, coll: str
) -> None:
    queries = np.random.default_rng(1).standard_normal((6000, DIM)).astype(np.float32)
    fit = answer_rows(1024, DIM, False, False)
    with Bystander(cluster.address, coll) as other:
        for _ in range(3):
            with pytest.raises(shoal.ResourceExhausted, match=f"split the call into searches of at most {fit} queries"):
                client.search(coll, queries, k=1024, with_payload=False)
            with pytest.raises(shoal.ResourceExhausted, match="with payloads"):
                client.search(coll, np.repeat(queries, 2, axis=0)[:10_000], k=1024, with_payload=True)
            with pytest.raises(shoal.ResourceExhausted, match="split"):
                list(client.search_stream(coll, [queries], k=1024, with_payload=False))
        # The largest call that fits is answered in full.
        assert len(client.search(coll, queries[:fit], k=1024, with_payload=False)) == fit
    assert other.calls > 0
    assert not other.failures, other.failures[:3]


@pytest.mark.slow
def test_a_shard_answer_too_large_to_send_fails_that_search_alone(
    cluster: LocalCluster, client: shoal.Client, coll: str, name: str
) -> None:
    # 40 points with 1 MiB payloads: 40 queries asking for every one of them make answers of about
    # 800 MiB per shard, which the estimate (no payload is known before the search) lets through.
    big = {"blob": "x" * (1 << 20)}
    client.create_collection(name, dim=DIM)
    for lo in range(0, 40, 10):
        client.upsert(name, ids=np.arange(lo, lo + 10), vectors=X[lo : lo + 10], payloads=[big] * 10)
    with Bystander(cluster.address, coll) as other:
        for _ in range(2):
            with pytest.raises(shoal.ResourceExhausted, match="message limit"):
                client.search(name, X[:40], k=40, with_payload=True)
            with pytest.raises(shoal.ResourceExhausted, match="message limit"):
                list(client.search_stream(name, [X[:40]], k=40, with_payload=True))
    assert other.calls > 0
    assert not other.failures, other.failures[:3]
    # A few hits with their payloads still fit.
    assert client.search(name, X[0], k=3, with_payload=True)[0][0].payload == big


@pytest.mark.slow
def test_scroll_pages_are_bounded_by_bytes_across_all_shards(client: shoal.Client, name: str) -> None:
    # 6 MiB payloads: each shard's page alone stays under the 32 MiB page bound, both together did not
    # fit in one message.
    big = "x" * (6 << 20)
    n = 16
    client.create_collection(name, dim=DIM)
    for i in range(0, n, 4):
        client.upsert(
            name,
            ids=np.arange(i, i + 4),
            vectors=X[i : i + 4],
            payloads=[{"blob": big, "i": j} for j in range(i, i + 4)],
        )
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = client.scroll(name, cursor=cursor, with_payload=True)
        pages += 1
        assert 1 <= len(page.points) <= 6
        for p in page.points:
            assert p.payload is not None and p.payload["blob"] == big and p.payload["i"] == p.id
        seen += [int(p.id) for p in page.points]
        cursor = page.next_cursor
        if not cursor:
            break
    assert sorted(seen) == list(range(n))
    assert pages >= 3
