"""End to end through the SDK against a running cluster of a coordinator and two shard processes."""

from __future__ import annotations

import numpy as np
import pytest

import shoal
from shoal import _rpc
from shoal._local import LocalCluster
from tests.conftest import brute_force, clustered


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_exact_search_equals_brute_force(client: shoal.Client, name: str, metric: str) -> None:
    x = clustered(1500, 24, seed=1)
    q = clustered(40, 24, seed=2)
    client.create_collection(name, dim=24, metric=metric)
    assert client.upsert(name, ids=np.arange(len(x)), vectors=x) == len(x)
    res = client.search(name, q, k=10, ef=len(x))
    want_ids, want_d = brute_force(x, q, 10, metric)
    assert res.ids.shape == (40, 10) and res.counts.tolist() == [10] * 40
    np.testing.assert_array_equal(res.ids, want_ids)
    np.testing.assert_allclose(res.distances, want_d, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # loads and searches 100k real embeddings
def test_recall_at_default_settings_on_real_embeddings(
    client: shoal.Client, name: str, wordnet: tuple[np.ndarray, np.ndarray]
) -> None:
    base, queries = wordnet
    x, q = base[:20_000], queries[:200]
    client.create_collection(name, dim=x.shape[1], metric="cosine")
    client.upsert(name, ids=np.arange(len(x)), vectors=x)
    res = client.search(name, q, k=10)
    truth, _ = brute_force(x, q, 10, "cosine")
    recall = np.mean([len(set(res.ids[i]) & set(truth[i])) / 10 for i in range(len(q))])
    assert recall >= 0.95, f"recall@10 {recall:.3f}"


def test_points_spread_over_both_shards(client: shoal.Client, name: str) -> None:
    client.create_collection(name, dim=4)
    client.upsert(name, ids=np.arange(1000), vectors=clustered(1000, 4))
    info = client.describe_collection(name)
    assert info.count == 1000 == client.count(name)
    assert len(info.shards) == 2 and sum(s.count for s in info.shards) == 1000
    assert all(300 < s.count < 700 for s in info.shards) and all(s.memory_bytes > 0 for s in info.shards)
    assert (info.dim, info.config.metric, info.config.precision) == (4, "cosine", "f32")
    assert name in client.list_collections()


def test_get_returns_exact_bytes_and_payloads(client: shoal.Client, name: str) -> None:
    x = np.random.default_rng(3).standard_normal((50, 8)).astype(np.float32)
    payloads = [{"i": i, "lang": "en" if i % 2 else "fr", "tags": ["a", i], "nested": {"f": i / 3}} for i in range(50)]
    payloads[7] = None
    client.create_collection(name, dim=8)
    client.upsert(name, ids=np.arange(50), vectors=x, payloads=payloads)
    points = client.get(name, ids=[9, 7, 1000, 0], with_vectors=True)
    assert [p.id for p in points] == [9, 7, 0]
    for p in points:
        assert p.vector is not None and p.vector.tobytes() == x[p.id].tobytes()
        assert p.payload == payloads[p.id]
    res = client.search(name, x[9], k=1, with_payload=True, with_vectors=True)
    hit = res[0][0]
    assert hit.id == 9 and hit.payload == payloads[9] and hit.vector is not None
    assert hit.vector.tobytes() == x[9].tobytes()


def test_upsert_replaces(client: shoal.Client, name: str) -> None:
    x = clustered(200, 8, seed=4)
    client.create_collection(name, dim=8, metric="l2")
    client.upsert(name, ids=np.arange(200), vectors=x, payloads=[{"v": 1}] * 200)
    y = clustered(10, 8, seed=5) + 100.0
    client.upsert(name, ids=np.arange(10), vectors=y, payloads=[{"v": 2}] * 10)
    assert client.count(name) == 200
    got = client.get(name, ids=np.arange(12), with_vectors=True)
    assert [p.payload for p in got] == [{"v": 2}] * 10 + [{"v": 1}] * 2
    assert all(p.vector is not None and p.vector.tobytes() == y[i].tobytes() for i, p in enumerate(got[:10]))
    res = client.search(name, y, k=1, ef=200)
    assert res.ids[:, 0].tolist() == list(range(10))
    np.testing.assert_allclose(res.distances[:, 0], 0.0, atol=1e-3)


def test_deleted_points_never_come_back(client: shoal.Client, name: str) -> None:
    x = clustered(300, 8, seed=6)
    client.create_collection(name, dim=8)
    client.upsert(name, ids=np.arange(300), vectors=x)
    gone = np.arange(0, 300, 3)
    assert client.delete(name, ids=gone) == len(gone)
    assert client.delete(name, ids=gone[:5]) == 0
    assert client.count(name) == 200
    assert client.get(name, ids=gone) == []
    res = client.search(name, x, k=20, ef=300)
    assert not set(res.ids[res.distances < np.inf].tolist()) & set(gone.tolist())
    kept = np.setdiff1d(np.arange(300), gone)
    want, _ = brute_force(x[kept], x, 20, "cosine")
    np.testing.assert_array_equal(res.ids, kept[want])


def test_string_ids(client: shoal.Client, name: str) -> None:
    x = clustered(100, 6, seed=7)
    ids = [f"doc-{i}-é" for i in range(100)]
    client.create_collection(name, dim=6, id_type="string")
    client.upsert(name, ids=ids, vectors=x, payloads=[{"i": i} for i in range(100)])
    res = client.search(name, x[:5], k=3, ef=100, with_payload=True)
    assert res.ids.dtype == object
    assert res.ids[:, 0].tolist() == ids[:5]
    assert [h.payload for h in (res[i][0] for i in range(5))] == [{"i": i} for i in range(5)]
    assert [p.id for p in client.get(name, ids=["doc-3-é", "nope"])] == ["doc-3-é"]
    assert client.delete(name, ids=["doc-3-é"]) == 1 and client.count(name) == 99
    client.upsert(name, ids=["doc-4-é"], vectors=x[:1])
    assert client.count(name) == 99
    assert client.get(name, ids=["doc-4-é"], with_vectors=True)[0].vector.tobytes() == x[0].tobytes()  # type: ignore[union-attr]


def test_fewer_points_than_k_are_padded(client: shoal.Client, name: str) -> None:
    client.create_collection(name, dim=3)
    client.upsert(name, ids=[1, 2, 3], vectors=np.eye(3))
    res = client.search(name, np.eye(3), k=5)
    assert res.counts.tolist() == [3, 3, 3]
    assert res.ids[:, 0].tolist() == [1, 2, 3]
    assert np.isinf(res.distances[:, 3:]).all() and len(res[0]) == 3


def test_bulk_upload_in_batches_over_the_stream(cluster, name: str, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    x = clustered(5000, 16, seed=8)
    with shoal.Client(cluster.address, batch_rows=700) as small:
        small.create_collection(name, dim=16)
        assert small.upsert(name, ids=np.arange(5000), vectors=x, progress=True) == 5000
        assert small.count(name) == 5000
    assert "upsert " + name + ": 100%" in (err := capsys.readouterr().err) and "5.00k/5.00k" in err


def test_search_stream_pipelines_batches(client: shoal.Client, name: str) -> None:
    x = clustered(500, 8, seed=9)
    client.create_collection(name, dim=8)
    client.upsert(name, ids=np.arange(500), vectors=x)
    batches = [x[i : i + 7] for i in range(0, 70, 7)]
    results = list(client.search_stream(name, batches, k=4, ef=500))
    assert len(results) == 10
    for batch, res in zip(batches, results, strict=True):
        np.testing.assert_array_equal(res.ids, client.search(name, batch, k=4, ef=500).ids)


def test_one_vector_query_and_drop(client: shoal.Client, name: str) -> None:
    client.create_collection(name, dim=3)
    client.upsert(name, ids=[5], vectors=[[1.0, 0.0, 0.0]])
    assert client.search(name, [1.0, 0.0, 0.0], k=1).ids.tolist() == [[5]]
    client.drop_collection(name)
    assert name not in client.list_collections()
    with pytest.raises(shoal.NotFound):
        client.count(name)


def test_an_injected_channel_is_used_and_left_open(client: shoal.Client, cluster: LocalCluster, name: str) -> None:
    with _rpc.channel(cluster.address, cluster.tls) as channel:
        with shoal.Client("the coordinator", channel=channel) as mine:
            assert mine.address == "the coordinator"  # only a name: the calls go over the channel
            mine.create_collection(name, dim=3)
            assert mine.upsert(name, ids=[1, 2], vectors=np.eye(3, dtype=np.float32)[:2]) == 2
        # Closing the client left the caller's channel open: another client still works over it.
        again = shoal.Client("the coordinator", channel=channel)
        assert again.count(name) == 2
        again.close()
        assert again.search(name, np.ones(3), k=1).counts.tolist() == [1]
    # A client's own channel is closed with it.
    own = shoal.Client(cluster.address)
    own.close()
    with pytest.raises(ValueError, match="closed channel"):
        own.count(name)
