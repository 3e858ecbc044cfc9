"""Filtered search, count, scroll, delete and payload updates through the SDK against a running cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import shoal
from shoal._filter import matches, parse
from shoal._local import LocalCluster
from shoal.v1 import shoal_pb2_grpc
from shoal.v1 import types_pb2 as pb
from tests.conftest import brute_force

N, DIM, K, CLUSTERS = 20_000, 32, 10, 20
RNG = np.random.default_rng(42)
CENTERS = RNG.standard_normal((CLUSTERS, DIM)).astype(np.float32)
CLUSTER = RNG.integers(0, CLUSTERS, N)
X = CENTERS[CLUSTER] + 0.3 * RNG.standard_normal((N, DIM)).astype(np.float32)
RANK = RNG.permutation(N)  # unique, independent of the vectors
PAYLOADS: list[dict[str, Any]] = [
    {
        "rank": int(u),
        "score": u / N,
        "code": f"c{u % 1000}",
        "half": bool(u % 2),
        "cluster": int(c),
        "m": {"k100": int(u % 100), "k10": int(u % 10)},
    }
    for u, c in zip(RANK, CLUSTER, strict=True)
]
QUERY_CLUSTERS = RNG.integers(0, CLUSTERS, 50)
QUERIES = CENTERS[QUERY_CLUSTERS] + 0.3 * RNG.standard_normal((50, DIM)).astype(np.float32)


def _selectivity_filters() -> list[tuple[str, dict[str, Any]]]:
    """For 0.1%, 1%, 10% and 50% of the points: an equality, a range, an $in and an $or filter."""
    out = []
    for share, eq in ((0.001, {"code": "c7"}), (0.01, {"m.k100": 7}), (0.1, {"m.k10": 3}), (0.5, {"half": True})):
        n = int(share * N)
        out += [
            (f"{share:.1%} eq", eq),
            (
                f"{share:.1%} range",
                {"rank": {"$gte": 1000, "$lt": 1000 + n}} if share < 0.5 else {"score": {"$lt": 0.5}},
            ),
            (f"{share:.1%} in", {"code": {"$in": [f"c{i}" for i in range(int(share * 1000))]}}),
            (f"{share:.1%} or", {"$or": [{"rank": {"$lt": n // 2}}, {"score": {"$gte": 1 - n / 2 / N}}]}),
        ]
    return out


FILTERS = _selectivity_filters()


def truth_of(spec: dict[str, Any], payloads: list[dict[str, Any]] = PAYLOADS) -> np.ndarray:
    """The ids whose payload matches, by the reference semantics."""
    node = parse(spec)
    return np.array([i for i, p in enumerate(payloads) if matches(node, p)], dtype=np.int64)


@pytest.fixture(scope="module")
def filt(client: shoal.Client) -> Iterator[str]:
    """A collection of N clustered vectors with generated payloads, read-only for the tests using it."""
    client.create_collection("filt", dim=DIM, metric="cosine")
    client.upsert("filt", ids=np.arange(N), vectors=X, payloads=PAYLOADS)
    yield "filt"
    client.drop_collection("filt")


@pytest.mark.parametrize(("case", "spec"), FILTERS, ids=[c for c, _ in FILTERS])
def test_filtered_search_is_exact_enough_at_every_selectivity(
    client: shoal.Client, filt: str, case: str, spec: dict[str, Any]
) -> None:
    want = truth_of(spec)
    share = float(case.split("%")[0]) / 100
    assert len(want) == pytest.approx(share * N, rel=0.02)
    node = parse(spec)
    res = client.search(filt, QUERIES, k=K, filter=spec, with_payload=True)
    assert res.counts.tolist() == [min(K, len(want))] * len(QUERIES)
    assert all(matches(node, hit.payload) for hits in res for hit in hits)
    order, dist = brute_force(X[want], QUERIES, K, "cosine")
    recall = np.mean([len(set(res.ids[i].tolist()) & set(want[order[i]].tolist())) / K for i in range(len(QUERIES))])
    assert recall >= 0.95, (case, recall, res.plan)
    # One query per call: the planner may choose differently (HNSW costs per query, exact per batch).
    singles = [client.search(filt, QUERIES[i], k=K, filter=spec) for i in range(0, len(QUERIES), 5)]
    assert [r.counts.tolist() for r in singles] == [[min(K, len(want))]] * len(singles)
    recall = np.mean(
        [len(set(r.ids[0].tolist()) & set(want[order[i * 5]].tolist())) / K for i, r in enumerate(singles)]
    )
    assert recall >= 0.95, (case, recall, singles[0].plan)
    assert client.count(filt, filter=spec) == len(want)
    shards = res.plan.split("; ")
    assert len(shards) == 2 and all(": exact(" in s or ": hnsw(" in s for s in shards), res.plan
    if share <= 0.01:
        assert all(": exact(" in s for s in shards), res.plan


def test_scroll_visits_each_match_exactly_once(client: shoal.Client, filt: str) -> None:
    for spec in [None, *(s for _, s in FILTERS[::3])]:
        seen: list[int] = []
        cursor = None
        while True:
            page = client.scroll(filt, filter=spec, limit=997, cursor=cursor, with_payload=spec is not None)
            assert len(page) <= 997
            if spec is not None:
                node = parse(spec)
                assert all(matches(node, p.payload) for p in page)
            seen += [int(p.id) for p in page]
            cursor = page.next_cursor
            if cursor is None:
                break
        want = truth_of(spec) if spec is not None else np.arange(N)
        assert len(seen) == len(set(seen)) and sorted(seen) == want.tolist()
    again = [p.id for p in client.scroll(filt, limit=50)]
    assert again == [p.id for p in client.scroll(filt, limit=50)]  # a stable order
    with_vectors = client.scroll(filt, limit=3, with_vectors=True, with_payload=False)
    assert all(
        p.vector is not None and p.vector.tobytes() == X[p.id].tobytes() and p.payload is None for p in with_vectors
    )


def test_min_k_matches_and_widening_for_an_anticorrelated_filter(client: shoal.Client, filt: str) -> None:
    # Every point but the queries' own cluster matches: their neighbourhoods hold no match at all.
    c = int(QUERY_CLUSTERS[0])
    q = QUERIES[np.equal(QUERY_CLUSTERS, c)]
    spec = {"cluster": {"$ne": c}}
    want = truth_of(spec)
    res = client.search(filt, q, k=K, filter=spec)
    assert res.counts.tolist() == [K] * len(q)
    order, _ = brute_force(X[want], q, K, "cosine")
    recall = np.mean([len(set(res.ids[i].tolist()) & set(want[order[i]].tolist())) / K for i in range(len(q))])
    assert recall >= 0.95, (recall, res.plan)
    few = {"code": "c7"}  # 20 matches, asked for 50
    assert client.search(filt, QUERIES[:3], k=50, filter=few).counts.tolist() == [20] * 3
    none = client.search(filt, QUERIES[:2], k=5, filter={"code": "nope"})
    assert none.counts.tolist() == [0, 0] and "none" in none.plan
    streamed = list(client.search_stream(filt, [QUERIES[:5], QUERIES[5:9]], k=K, filter=few))
    assert [r.counts.tolist() for r in streamed] == [[K] * 5, [K] * 4]
    assert all(set(r.ids.ravel().tolist()) <= set(truth_of(few).tolist()) for r in streamed)


def test_upserts_that_change_a_field_keep_payloads_and_indexes_consistent(client: shoal.Client, name: str) -> None:
    client.create_collection(name, dim=DIM)
    ids = np.arange(1000)
    client.upsert(name, ids=ids, vectors=X[:1000], payloads=[{"color": "red", "n": i} for i in range(1000)])
    client.upsert(name, ids=ids[:500], vectors=X[:500], payloads=[{"color": "blue", "n": -1}] * 500)
    assert client.count(name, filter={"color": "red"}) == 500 == client.count(name, filter={"color": "blue"})
    res = client.search(name, X[:20], k=K, filter={"color": "red"})
    assert (res.ids >= 500).all() and res.counts.tolist() == [K] * 20
    assert client.count(name, filter={"n": {"$lt": 500, "$gte": 0}}) == 0
    # delete(filter) reads the RocksDB index: a stale "red" entry of a blue point would delete it too.
    assert client.delete(name, filter={"color": "red"}) == 500
    assert client.count(name) == 500 and client.count(name, filter={"color": "blue"}) == 500
    assert client.delete(name, filter={"color": "red"}) == 0


def test_set_payload_changes_keys_without_resending_vectors(client: shoal.Client, name: str) -> None:
    client.create_collection(name, dim=DIM)
    client.upsert(
        name,
        ids=np.arange(100),
        vectors=X[:100],
        payloads=[{"lang": "en", "meta": {"src": "web", "year": 2020}} for _ in range(100)],
    )
    assert (
        client.set_payload(name, ids=[1, 2, 3, 10_000], payload={"lang": "de", "new": True}, unset=["meta.year"]) == 3
    )
    got = client.get(name, ids=[1, 4], with_vectors=True)
    assert got[0].payload == {"lang": "de", "meta": {"src": "web"}, "new": True}
    assert got[0].vector is not None and got[0].vector.tobytes() == X[1].tobytes()
    assert got[1].payload == {"lang": "en", "meta": {"src": "web", "year": 2020}}
    assert client.count(name, filter={"lang": "de"}) == 3 and client.count(name, filter={"lang": "en"}) == 97
    assert client.count(name, filter={"meta.year": {"$exists": False}}) == 3
    assert sorted(p.id for p in client.scroll(name, filter={"new": True})) == [1, 2, 3]
    res = client.search(name, X[:5], k=3, filter={"lang": "de"})
    assert set(res.ids.ravel().tolist()) == {1, 2, 3}
    assert client.set_payload(name, ids=[5], unset=["lang"]) == 1
    assert client.count(name, filter={"lang": {"$exists": True}}) == 99
    assert client.delete(name, filter={"lang": "de"}) == 3 and client.count(name) == 97


def test_string_id_collections_filter_too(client: shoal.Client, name: str) -> None:
    client.create_collection(name, dim=DIM, id_type="string")
    names = [f"doc-{i}" for i in range(300)]
    client.upsert(name, ids=names, vectors=X[:300], payloads=[{"i": i, "odd": i % 2 == 1} for i in range(300)])
    res = client.search(name, X[:4], k=5, filter={"odd": True}, with_payload=True)
    assert res.counts.tolist() == [5] * 4
    assert all(
        hit.payload is not None and hit.payload["odd"] and hit.id == f"doc-{hit.payload['i']}"
        for hits in res
        for hit in hits
    )
    page = client.scroll(name, filter={"i": {"$lt": 7}}, limit=5)
    rest = client.scroll(name, filter={"i": {"$lt": 7}}, limit=5, cursor=page.next_cursor)
    assert sorted(p.id for p in [*page, *rest]) == sorted(f"doc-{i}" for i in range(7)) and rest.next_cursor is None
    assert client.set_payload(name, ids=["doc-0", "nope"], payload={"odd": True}) == 1
    assert client.count(name, filter={"odd": True}) == 151
    assert client.delete(name, filter={"odd": True}) == 151
    assert client.count(name) == 149 and client.get(name, ids=["doc-0", "doc-2"])[0].id == "doc-2"


BAD_FILTERS: list[tuple[dict[str, Any], str]] = [
    ({"year": {"$gt": [1]}}, "filter.year.$gt: expected a string, number or boolean"),
    ({"$or": [{"a": 1}, {}]}, "filter.$or[1]: expected a non-empty object"),
    ({"a": {"$near": 1}}, "filter.a.$near: unknown operator"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_FILTERS, ids=[m.split(":")[0] for _, m in BAD_FILTERS])
def test_malformed_filters_are_invalid_argument_and_change_nothing(
    client: shoal.Client, filt: str, cluster: LocalCluster, spec: dict[str, Any], message: str
) -> None:
    for call in (
        lambda: client.search(filt, QUERIES[:1], filter=spec),
        lambda: client.count(filt, filter=spec),
        lambda: client.delete(filt, filter=spec),
        lambda: client.scroll(filt, filter=spec),
    ):
        with pytest.raises(shoal.InvalidArgument, match=message.replace("$", r"\$").replace("[", r"\[")):
            call()
    # The same through a raw stub: the coordinator checks what the SDK would have refused to send.
    raw = json.dumps(spec)
    with grpc.insecure_channel(cluster.address) as channel:
        stub = shoal_pb2_grpc.ShoalStub(channel)
        for method, request in (
            ("Count", pb.CountRequest(collection=filt, filter=raw)),
            ("Delete", pb.DeleteRequest(collection=filt, filter=raw)),
            ("Scroll", pb.ScrollRequest(collection=filt, filter=raw)),
            ("Delete", pb.DeleteRequest(collection=filt, filter="{not json")),
            ("Scroll", pb.ScrollRequest(collection=filt, cursor="bogus")),
            ("SetPayload", pb.SetPayloadRequest(collection=filt, ids=pb.Ids(u64=b"\0" * 8), set=b"[1]")),
        ):
            with pytest.raises(grpc.RpcError) as info:
                getattr(stub, method)(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, info.value.details())
    with pytest.raises(shoal.InvalidArgument, match="not both"):
        client.delete(filt, ids=[1], filter={"a": 1})
    with pytest.raises(shoal.InvalidArgument, match="unset path"):
        client.set_payload(filt, ids=[1], unset=["a..b"])
    with pytest.raises(shoal.InvalidArgument, match="limit must be between"):
        client.scroll(filt, limit=10_001)
    assert client.count(filt) == N and client.count(filt, filter={"half": True}) == N // 2


def test_delete_by_filter_and_payload_updates_survive_a_crash(tmp_path: Path) -> None:
    payloads = [{"k": i % 10, "tag": ["a", "b"] if i % 3 == 0 else ["c"]} for i in range(3000)]
    with LocalCluster(data=tmp_path / "data", shards=2) as own, shoal.Client(own.address) as client:
        client.create_collection("d", dim=DIM)
        client.upsert("d", ids=np.arange(3000), vectors=X[:3000], payloads=payloads)
        assert client.delete("d", filter={"$or": [{"k": 3}, {"tag": "a"}]}) == len(
            truth_of({"$or": [{"k": 3}, {"tag": "a"}]}, payloads)
        )
        client.set_payload("d", ids=[1, 2, 4], payload={"k": 99})
        before = {
            json.dumps(s): client.count("d", filter=s)
            for s in ({"k": 3}, {"tag": "a"}, {"k": 99}, {"tag": "c"}, {"k": {"$ne": 5}})
        }
        remaining = client.count("d")
        for proc in own.shard_procs:
            proc.kill()
            own.restart(proc)
        assert client.count("d") == remaining
        assert {json.dumps(s): client.count("d", filter=s) for s in map(json.loads, before)} == before
        assert before[json.dumps({"k": 3})] == 0 == before[json.dumps({"tag": "a"})]
        assert before[json.dumps({"k": 99})] == 3
        res = client.search("d", X[:10], k=K, filter={"k": {"$ne": 5}}, with_payload=True)
        assert all(hit.payload is not None and hit.payload["k"] not in (3, 5) for hits in res for hit in hits)
