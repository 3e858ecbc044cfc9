"""The shard core without gRPC: storage, group commit, index and search against exact numpy answers."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from shoal._config import CollectionConfig
from shoal._errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from shoal._search import Search, SearchShape
from shoal.shard import records
from shoal.shard.collection import Collection
from shoal.shard.committer import Committer
from shoal.shard.core import Shard
from shoal.shard.execute import Verify, Writer
from shoal.shard.faults import CrashPoints
from shoal.shard.index import CHUNK_ROWS, Hits, IndexWorker, VectorIndex
from shoal.shard.options import SnapshotPolicy
from shoal.shard.recovery import manifest_problem, recover
from shoal.shard.search import resolve_hits
from shoal.shard.snapshots import Manifest, SnapshotFiles, write_index
from shoal.shard.storage import CollectionStore, Storage, keys_bytes, pack_key, pack_keys
from shoal.shard.writes import CreateCollection, Upsert
from tests.conftest import brute_force, clustered

DIM = 16


@pytest.fixture
def shard(tmp_path: Path) -> Iterator[Shard]:
    """An open shard with a uint64 collection "u" and a string-id collection "s" (l2)."""
    with Shard(tmp_path, threads=2) as s:
        s.create_collection(CollectionConfig("u", DIM))
        s.create_collection(CollectionConfig("s", DIM, metric="l2", id_type="string"))
        yield s


def payloads(n: int, start: int = 0) -> list[bytes]:
    return [b'{"i":%d}' % i for i in range(start, start + n)]


def test_upsert_then_get_returns_the_exact_bytes_in_request_order(shard: Shard) -> None:
    x = clustered(100, DIM, seed=1)
    assert shard.upsert("u", np.arange(100, dtype=np.uint64), x, payloads(100)) == 100
    points = shard.get("u", [7, 1000, 3, 99])
    assert points.ids.tolist() == [7, 3, 99]
    assert points.vectors is not None and points.vectors.tobytes() == x[[7, 3, 99]].tobytes()
    assert points.payloads is not None and points.payloads.tolist() == [b'{"i":7}', b'{"i":3}', b'{"i":99}']
    bare = shard.get("u", [5], with_vectors=False, with_payload=False)
    assert bare.ids.tolist() == [5] and bare.vectors is None and bare.payloads is None
    assert shard.count("u") == 100


def test_upsert_replaces_an_existing_id(shard: Shard) -> None:
    x = clustered(50, DIM, seed=2)
    shard.upsert("u", np.arange(50, dtype=np.uint64), x, payloads(50))
    new = -x[:1]
    shard.upsert("u", [0], new, [b'{"new":true}'])
    points = shard.get("u", [0])
    assert points.vectors is not None and points.vectors.tobytes() == new.tobytes()
    assert points.payloads is not None and points.payloads.tolist() == [b'{"new":true}']
    assert shard.count("u") == 50
    hit = shard.search("u", new, k=1)
    assert hit.ids[0, 0] == 0 and hit.distances[0, 0] == pytest.approx(0, abs=1e-5)
    shard.upsert("u", [1], x[1:2])  # no payload: the old one goes too
    assert shard.get("u", [1]).payloads.tolist() == [b""]  # type: ignore[union-attr]


def test_deleted_points_never_come_back(shard: Shard) -> None:
    x = clustered(300, DIM, seed=3)
    shard.upsert("u", np.arange(300, dtype=np.uint64), x)
    gone = np.arange(0, 300, 3, dtype=np.uint64)
    assert shard.delete("u", np.append(gone, np.uint64(5000))) == len(gone)
    assert shard.delete("u", gone) == 0
    assert shard.count("u") == 200
    assert shard.get("u", gone).ids.size == 0
    for ef in (0, 4096):  # approximate and exact
        found = shard.search("u", x[gone], k=20, ef=ef)
        assert not np.isin(found.ids, gone[gone > 0]).any()


def test_string_ids_round_trip_replace_search_and_delete(shard: Shard) -> None:
    x = clustered(20, DIM, seed=4)
    names = np.array([f"doc-{i}" for i in range(20)], dtype=object)
    assert shard.upsert("s", names, x, payloads(20)) == 20
    assert shard.upsert("s", ["doc-3", "new"], x[:2]) == 2
    assert shard.count("s") == 21
    points = shard.get("s", ["new", "nope", "doc-3", "doc-4"])
    assert points.ids.tolist() == ["new", "doc-3", "doc-4"]
    assert points.vectors is not None and points.vectors.tobytes() == np.stack([x[1], x[0], x[4]]).tobytes()
    found = shard.search("s", x[4:6], k=25, with_payload=True, with_vectors=True)
    assert found.ids[0, 0] == "doc-4" and found.ids[1, 0] == "doc-5"
    assert found.counts.tolist() == [21, 21] and found.ids[0, 21:].tolist() == ["", "", "", ""]
    assert found.payloads is not None and found.payloads.ravel()[0] == b'{"i":4}' and found.payloads.ravel()[21] == b""
    assert (
        found.vectors is not None
        and found.vectors.shape == (2, 25, DIM)
        and not found.vectors.reshape(50, DIM)[21:25].any()
    )
    assert shard.delete("s", ["doc-3", "nope"]) == 1
    assert "doc-3" not in shard.search("s", x[:1], k=25).ids


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_exact_search_equals_numpy_brute_force(tmp_path: Path, metric: str) -> None:
    x = clustered(1000, DIM, seed=5)
    q = clustered(30, DIM, seed=6)
    with Shard(tmp_path, threads=2) as shard:
        shard.create_collection(CollectionConfig("c", DIM, metric=metric))
        shard.upsert("c", np.arange(1000, dtype=np.uint64), x)
        found = shard.search("c", q, k=10, ef=1000)  # ef covers the index: brute force
        order, dist = brute_force(x, q, 10, metric)
        assert found.ids.tolist() == order.tolist()
        np.testing.assert_allclose(found.distances, dist, rtol=1e-4, atol=1e-4)
        approx = shard.search("c", q, k=10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx.ids, order, strict=True)])
        assert recall > 0.9


def test_search_pads_when_fewer_points_than_k(shard: Shard) -> None:
    x = clustered(3, DIM, seed=7)
    shard.upsert("u", [10, 11, 12], x)
    found = shard.search("u", x[:2], k=5, with_payload=True)
    assert found.counts.tolist() == [3, 3]
    assert found.ids[:, 3:].tolist() == [[0, 0], [0, 0]] and np.isinf(found.distances[:, 3:]).all()
    assert found.payloads is not None and found.payloads.ravel().tolist() == [b""] * 10
    empty = shard.search("s", x[:1], k=2)
    assert empty.counts.tolist() == [0] and empty.ids.tolist() == [["", ""]]


def test_coalesced_searches_answer_each_caller(shard: Shard) -> None:
    x = clustered(500, DIM, seed=8)
    shard.upsert("u", np.arange(500, dtype=np.uint64), x)
    futures = [shard.submit_search(Search(SearchShape("u", 3, 500), x[i : i + 2])) for i in range(0, 100, 2)]
    futures.append(shard.submit_search(Search(SearchShape("u", 7, 500), x[:1])))
    order, _ = brute_force(x, x[:100], 3, "cosine")
    got = np.concatenate([f.result()[0].ids for f in futures[:-1]])
    assert got.tolist() == order.tolist()
    assert futures[-1].result()[0].ids.shape == (1, 7)


def test_restart_keeps_every_point(tmp_path: Path) -> None:
    x = clustered(600, DIM, seed=9)
    with Shard(tmp_path, threads=2) as shard:
        shard.create_collection(CollectionConfig("u", DIM))
        shard.create_collection(CollectionConfig("s", DIM, id_type="string"))
        for start in range(0, 600, 200):
            shard.upsert(
                "u", np.arange(start, start + 200, dtype=np.uint64), x[start : start + 200], payloads(200, start)
            )
        shard.delete("u", np.arange(0, 600, 10, dtype=np.uint64))
        shard.upsert("s", ["a", "b", "c"], x[:3])
        shard.delete("s", ["b"])
        shard.create_collection(CollectionConfig("gone", DIM, id_type="string"))
        shard.upsert("gone", ["a"], x[:1])
        assert shard.search("gone", x[:1], k=1, with_payload=True).ids[0, 0] == "a"
        shard.drop_collection("gone")
        sequence = shard.sequence
    with Shard(tmp_path, threads=2) as shard:
        assert shard.sequence == sequence
        assert shard.list_collections() == ["s", "u"]
        assert shard.count("u") == 540 and shard.count("s") == 2
        live = np.array([i for i in range(600) if i % 10], dtype=np.uint64)
        points = shard.get("u", live)
        assert points.ids.tolist() == live.tolist()
        assert points.vectors is not None and points.vectors.tobytes() == x[live.astype(np.intp)].tobytes()
        assert points.payloads is not None and points.payloads.tolist() == [b'{"i":%d}' % i for i in live]
        assert shard.search("u", x[1:2], k=1, ef=1000).ids[0, 0] == 1
        shard.upsert("s", ["d"], x[3:4])  # a new string id after restart must not reuse a key
        assert shard.get("s", ["a", "c", "d"]).vectors.tobytes() == x[[0, 2, 3]].tobytes()  # type: ignore[union-attr]


NAN = np.array([[np.nan] * DIM, [0.0] * DIM])
BAD: list[tuple[str, Callable[[Shard, np.ndarray], Any], type[Exception]]] = [
    ("unknown collection upsert", lambda s, x: s.upsert("nope", [1], x[:1]), NotFound),
    ("unknown collection search", lambda s, x: s.search("nope", x[:1], k=1), NotFound),
    ("dim mismatch", lambda s, x: s.upsert("u", [1], x[:1, :8]), InvalidArgument),
    ("nan", lambda s, x: s.upsert("u", [1, 2], NAN), InvalidArgument),
    ("inf", lambda s, x: s.upsert("u", [1], np.full((1, DIM), np.inf)), InvalidArgument),
    ("beyond float32", lambda s, x: s.upsert("u", [1], np.full((1, DIM), 1e39)), InvalidArgument),
    ("empty batch", lambda s, x: s.upsert("u", [], np.zeros((0, DIM))), InvalidArgument),
    ("duplicate ids", lambda s, x: s.upsert("u", [1, 1], x[:2]), InvalidArgument),
    ("string id, uint64 collection", lambda s, x: s.upsert("u", ["a"], x[:1]), InvalidArgument),
    ("int id, string collection", lambda s, x: s.upsert("s", [1], x[:1]), InvalidArgument),
    ("payload not json", lambda s, x: s.upsert("u", [1], x[:1], [b"{not json"]), InvalidArgument),
    ("payload not an object", lambda s, x: s.upsert("u", [1], x[:1], [b"[1, 2]"]), InvalidArgument),
    ("payload count", lambda s, x: s.upsert("u", [1, 2], x[:2], [b"{}"]), InvalidArgument),
    ("vector count", lambda s, x: s.upsert("u", [1, 2], x[:1]), InvalidArgument),
    ("reserved id", lambda s, x: s.upsert("u", [2**64 - 1], x[:1]), InvalidArgument),
    ("1-d vectors", lambda s, x: s.upsert("u", [1], x[0]), InvalidArgument),
    ("duplicate delete", lambda s, x: s.delete("u", [1, 1]), InvalidArgument),
    ("empty delete", lambda s, x: s.delete("u", []), InvalidArgument),
    ("k 0", lambda s, x: s.search("u", x[:1], k=0), InvalidArgument),
    ("k too large", lambda s, x: s.search("u", x[:1], k=1025), InvalidArgument),
    ("query dim", lambda s, x: s.search("u", x[:1, :4], k=1), InvalidArgument),
    ("nan query", lambda s, x: s.search("u", NAN[:1], k=1), InvalidArgument),
    ("no queries", lambda s, x: s.search("u", x[:0], k=1), InvalidArgument),
    ("ef too large", lambda s, x: s.search("u", x[:1], k=1, ef=5000), InvalidArgument),
    ("create, other config", lambda s, x: s.create_collection(CollectionConfig("u", DIM + 1)), AlreadyExists),
]


@pytest.mark.parametrize("call, error", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_and_changes_nothing(
    shard: Shard, call: Callable[[Shard, np.ndarray], Any], error: type[Exception]
) -> None:
    x = clustered(10, DIM, seed=10)
    shard.upsert("u", np.arange(5, dtype=np.uint64), x[:5], payloads(5))
    shard.upsert("s", ["a"], x[:1])
    with pytest.raises(error):
        call(shard, x)
    assert shard.count("u") == 5 and shard.count("s") == 1
    assert shard.get("u", [1]).payloads.tolist() == [b'{"i":1}']  # type: ignore[union-attr]
    assert shard.describe("u").config == CollectionConfig("u", DIM)


def test_unknown_collection_error_names_it(shard: Shard) -> None:
    with pytest.raises(NotFound, match="'missing'"):
        shard.count("missing")


def test_create_is_idempotent_and_drop_forgets(shard: Shard) -> None:
    stats, created = shard.create_collection(CollectionConfig("u", DIM))
    assert not created and stats.count == 0
    shard.upsert("u", [1], clustered(1, DIM))
    assert shard.drop_collection("u") and not shard.drop_collection("u")
    with pytest.raises(NotFound):
        shard.get("u", [1])
    _, created = shard.create_collection(CollectionConfig("u", 4))
    assert created and shard.count("u") == 0 and shard.get("u", [1]).ids.size == 0
    assert shard.describe("u").memory_bytes > 0


def test_concurrent_upserts_are_all_durable_and_visible(tmp_path: Path) -> None:
    writers, batches, rows = 8, 10, 50
    x = clustered(writers * batches * rows, DIM, seed=11)
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(core: Shard, w: int) -> None:
        try:
            start.wait()
            for b in range(batches):
                first = (w * batches + b) * rows
                ids = np.arange(first, first + rows, dtype=np.uint64)
                assert core.upsert("c", ids, x[first : first + rows]) == rows
                assert core.get("c", ids[-1:]).ids.tolist() == [first + rows - 1]  # read your writes
        except BaseException as exc:
            errors.append(exc)

    with Shard(tmp_path, threads=2) as core:
        core.create_collection(CollectionConfig("c", DIM))
        threads = [threading.Thread(target=write, args=(core, w)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert core.count("c") == len(x)
        assert (core.search("c", x[::37], k=1, ef=4096).ids[:, 0] == np.arange(0, len(x), 37)).all()
    with Shard(tmp_path, threads=2) as core:
        assert core.count("c") == len(x)


class CountingStorage(Storage):
    """A Storage that counts WAL syncs."""

    syncs = 0

    def flush_wal(self) -> None:
        self.syncs += 1
        super().flush_wal()


def test_group_commit_makes_a_burst_durable_with_one_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = CountingStorage(tmp_path)
    worker = IndexWorker()
    writing: dict[str, Collection] = {}
    committer = Committer(Writer(storage, writing, {}, threads=1), worker)
    worker.start()
    committer.start()
    release = threading.Event()
    entered = threading.Event()
    coll = committer.submit(CreateCollection(CollectionConfig("c", 2))).result()[0]
    store = writing["c"].store
    storage.syncs, created = 0, storage.seq

    def blocking() -> np.ndarray:
        entered.set()
        release.wait()
        return np.zeros(0, np.uint64)

    def write(i: int) -> Upsert:
        return Upsert("c", store.born, np.arange(i + 1, dtype=np.uint64), np.ones((i + 1, 2), np.float32))

    monkeypatch.setattr(store, "stored_keys", blocking)  # a Verify job holds the committer up
    try:
        first = committer.submit(Verify("c", store.born))
        entered.wait()
        burst: list[Future[Any]] = [committer.submit(write(i)) for i in range(20)]
        release.set()
        assert first.result().consistent and coll.count == 0
        assert [f.result() for f in burst] == list(range(1, 21))
        assert storage.syncs == 1 and storage.seq == created + 20
    finally:
        committer.stop()
        worker.stop()
        storage.close()
    with pytest.raises(Unavailable):
        committer.submit(Verify("c", store.born))


def test_hits_of_points_deleted_meanwhile_are_left_out(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    try:
        store = storage.create(CollectionConfig("s", 2, id_type="string"))
        batch = Storage.batch()
        for key, name in ((1, b"a"), (3, b"c")):
            store.put_id(batch, name, pack_key(key))
            store.put_point(batch, pack_key(key), records.pack(np.array([key, 0], "<f4").tobytes(), b'{"k":%d}' % key))
        storage.write(batch)
        distances = np.array([[0.1, 0.2, 0.3], [0.2, np.inf, np.inf]], np.float32)
        hits = Hits(np.array([[1, 2, 3], [2, 0, 0]], np.uint64), distances, np.array([3, 1], np.uint32))
        result = resolve_hits(store, hits, with_payload=True, with_vectors=True)
        assert result.ids.tolist() == [["a", "c", ""], ["", "", ""]]
        assert result.counts.tolist() == [2, 0]
        expected = np.array([[0.1, 0.3, np.inf], [np.inf] * 3], np.float32)
        np.testing.assert_array_equal(result.distances, expected)
        assert result.payloads is not None and result.payloads.ravel().tolist() == [
            b'{"k":1}',
            b'{"k":3}',
            b"",
            b"",
            b"",
            b"",
        ]
        assert result.vectors is not None and result.vectors.reshape(6, 2)[:, 0].tolist() == [1, 3, 0, 0, 0, 0]
    finally:
        storage.close()


# Durability: the change log, snapshots, recovery decisions and fatal errors, without processes.


def test_a_snapshot_plus_the_change_log_equals_rocksdb(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "db")
    files = SnapshotFiles(tmp_path / "index")
    try:
        config = CollectionConfig("c", DIM, metric="l2")
        store = storage.create(config)
        x = clustered(300, DIM, seed=20)

        def write(keys: np.ndarray, vectors: np.ndarray | None) -> None:
            batch = Storage.batch()
            for i, key in enumerate(pack_keys(keys)):
                if vectors is None:
                    store.delete_point(batch, key)
                else:
                    store.put_point(batch, key, vectors[i].tobytes())
            storage.log_change(batch, store, keys_bytes(keys))
            storage.write(batch)

        first = np.arange(1, 201, dtype=np.uint64)
        write(first, x[:200])
        index = VectorIndex(config, 1)
        index.extend(first, x[:200])
        tmp = files.temporary(store, "t")
        size, crc = write_index(index, tmp, CrashPoints())
        manifest = Manifest(
            "c", store.born, storage.seq, f"snapshot-{storage.seq}.usearch", size, crc, 200, dataclasses.asdict(config)
        )
        files.publish(store, tmp, manifest, CrashPoints())
        assert not list(files.folder(store).glob("*.tmp"))
        # After the snapshot: replace some points, add some, delete some (also some of the new ones).
        write(np.arange(150, 251, dtype=np.uint64), -x[150:251])
        write(np.arange(1, 40, dtype=np.uint64), None)
        write(np.array([250], np.uint64), None)
        assert storage.changed_keys(store, manifest.sequence).tolist() == list(range(1, 40)) + list(range(150, 251))

        recovered = recover(store, storage, files, 1)
        assert recovered.snapshot_seq == manifest.sequence and recovered.unsnapshotted == 139
        keys = recovered.index.keys()
        assert keys.tolist() == store.stored_keys().tolist() == list(range(40, 250))
        hits = recovered.index.search(-x[150:250], 1, 4096)  # replaced vectors are the new ones
        assert hits.keys[:, 0].tolist() == list(range(150, 250)) and np.allclose(hits.distances, 0, atol=1e-4)

        storage.trim_log(store, manifest.sequence + 1)  # a later snapshot covers the first change
        assert storage.trimmed(store) == manifest.sequence + 1
        assert recover(store, storage, files, 1).snapshot_seq is None  # the snapshot is too old: rebuilt
    finally:
        storage.close()


def _manifest(**changes: Any) -> Manifest:
    fields: dict[str, Any] = dict(
        collection="c",
        born=3,
        sequence=10,
        file="snapshot-10.usearch",
        size=1,
        crc32=0,
        count=0,
        config=dataclasses.asdict(CollectionConfig("c", DIM)),
    )
    return Manifest(**{**fields, **changes})


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({}, None),
        ({"born": 2}, "earlier collection"),
        ({"collection": "d"}, "earlier collection"),
        ({"config": dataclasses.asdict(CollectionConfig("c", DIM, metric="l2"))}, "another config"),
        ({"sequence": 21}, "ahead of RocksDB"),
        ({"sequence": 4}, "older than the change log"),
        ({"format": 2}, "unknown format"),
    ],
)
def test_which_snapshots_recovery_trusts(changes: dict[str, Any], problem: str | None) -> None:
    store = cast(CollectionStore, SimpleNamespace(name="c", born=3, config=CollectionConfig("c", DIM)))
    found = manifest_problem(_manifest(**changes), store, sequence=20, trimmed=5)
    assert found == problem if problem is None else problem in (found or "")


def test_snapshot_policy() -> None:
    policy = SnapshotPolicy(changes=100, min_interval=10, max_interval=60)
    assert not policy.due(0, 1000)  # nothing changed
    assert not policy.due(100, 5)  # enough changes, too soon
    assert policy.due(100, 10)
    assert not policy.due(99, 59)
    assert policy.due(1, 60)  # a few changes, but long enough


def test_verify_reports_an_index_that_differs_from_rocksdb(shard: Shard) -> None:
    x = clustered(50, DIM, seed=22)
    shard.upsert("s", [f"n{i}" for i in range(50)], x)
    assert shard.verify("s").consistent and sorted(shard.verify("s").ids) == sorted(f"n{i}" for i in range(50))
    coll = shard._collections["s"]
    shard._worker.call(lambda: coll.index.remove(np.array([1, 2], np.uint64))).result()  # damage the index
    report = shard.verify("s")
    assert not report.consistent and report.missing.tolist() == [1, 2] and report.indexed == 48


class FailingSync(Storage):
    """A Storage whose WAL sync fails once `failing` is set."""

    failing = False

    def flush_wal(self) -> None:
        if self.failing:
            raise OSError(5, "Input/output error")
        super().flush_wal()


def test_a_primary_write_queued_before_a_step_down_is_refused_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller's write admitted while the shard was its group's primary, but reached by the committer after it
    stepped down, is refused ("not the primary": the coordinator retries it on the new primary), never made
    durable and acknowledged without replicas; a write of a shard outside any group is unaffected."""
    storage = Storage(tmp_path)
    worker = IndexWorker()
    writing: dict[str, Collection] = {}
    committer = Committer(Writer(storage, writing, {}, 1, True), worker)  # with the op log, as a group member
    worker.start()
    committer.start()
    release, entered = threading.Event(), threading.Event()
    shipped: list[int] = []

    def replicate(seq: int, raw: bytes) -> Future[None]:
        shipped.append(seq)
        done: Future[None] = Future()
        done.set_result(None)
        return done

    try:
        committer.submit(CreateCollection(CollectionConfig("c", 2))).result()
        store = writing["c"].store

        def blocking() -> np.ndarray:
            entered.set()
            release.wait()
            return np.zeros(0, np.uint64)

        def write(i: int) -> Upsert:
            return Upsert("c", store.born, np.array([i], np.uint64), np.ones((1, 2), np.float32))

        committer.replicate = replicate
        assert committer.submit(write(1), via=replicate).result() == 1 and len(shipped) == 1  # as primary
        monkeypatch.setattr(store, "stored_keys", blocking)  # a Verify job holds the committer up
        first = committer.submit(Verify("c", store.born))
        entered.wait()
        late = committer.submit(write(2), via=replicate)  # admitted while primary...
        plain = committer.submit(write(3))
        committer.replicate = None  # ...then the shard stepped down
        before = storage.seq
        release.set()
        first.result()
        with pytest.raises(FailedPrecondition, match="not the primary"):
            late.result()
        assert plain.result() == 1 and storage.seq == before + 1  # only the write outside the primary's term
        assert len(shipped) == 1
    finally:
        committer.stop()
        worker.stop()


def test_a_write_past_the_gate_of_a_primary_that_stepped_down_is_refused(shard: Shard) -> None:
    """Writes are admitted on threads: one that passed a group member's gate before the shard stepped down finds
    no replicate and is refused, not made on this member alone (nor is a move's range delete)."""
    shard.create_collection(CollectionConfig("c", 2))
    ids = np.arange(4, dtype=np.uint64)
    shard.submit_upsert("c", ids, np.ones((4, 2), np.float32), payloads(4)).result()
    shard.gate = lambda: None  # the gate let the write in while the shard was primary...
    shard.set_replicate(None)  # ...and the shard stepped down before the write was queued
    before = shard.sequence
    with pytest.raises(FailedPrecondition, match="not the primary"):
        shard.submit_upsert("c", np.array([9], np.uint64), np.ones((1, 2), np.float32), payloads(1))
    with pytest.raises(FailedPrecondition, match="not the primary"):
        shard.submit_delete("c", ids)
    assert shard.sequence == before and shard.count("c") == 4


def test_a_failed_wal_sync_fails_the_callers_and_is_fatal(tmp_path: Path) -> None:
    storage = FailingSync(tmp_path)
    fatal: list[str] = []
    worker = IndexWorker()
    writing: dict[str, Collection] = {}
    committer = Committer(Writer(storage, writing, {}, threads=1), worker, on_fatal=fatal.append)
    worker.start()
    committer.start()
    try:
        committer.submit(CreateCollection(CollectionConfig("c", 2))).result()
        storage.failing = True
        born = writing["c"].store.born
        with pytest.raises(Unavailable, match="durable"):
            committer.submit(Upsert("c", born, np.array([1], np.uint64), np.ones((1, 2), np.float32))).result()
        assert len(fatal) == 1 and "WAL sync failed" in fatal[0]
        applied = worker.call(lambda: writing["c"].index.count).result()
        assert not applied  # never applied to the index, never retried
    finally:
        committer.stop()
        worker.stop()
        storage.close()


@dataclasses.dataclass
class Part:
    """An index part that returns a value or raises."""

    fn: Callable[[], Any]

    def apply(self) -> Any:
        return self.fn()


def test_a_failed_index_update_after_commit_is_fatal() -> None:
    fatal: list[str] = []
    worker = IndexWorker(on_fatal=fatal.append)
    worker.start()
    try:
        ok: Future[Any] = Future()
        failed: Future[Any] = Future()
        for f in (ok, failed):
            f.set_running_or_notify_cancel()
        worker.apply([(ok, Part(lambda: 1), 7), (failed, Part(lambda: 1 / 0), 8)])
        assert ok.result() == 1
        with pytest.raises(ZeroDivisionError):
            failed.result()
        worker.call(lambda: None).result()
        assert fatal == ["the index update of committed batch 8 failed"] and worker.applied_seq == 8
    finally:
        worker.stop()


def test_rocksdb_write_failures_are_classified_in_one_place() -> None:
    from shoal._errors import ResourceExhausted
    from shoal.shard.storage import classify_write_error

    full, fatal_full = classify_write_error(Exception("IO error: No space left on device: While appending to file"))
    assert isinstance(full, ResourceExhausted) and fatal_full
    io, fatal_io = classify_write_error(Exception("IO error: Input/output error"))
    assert isinstance(io, Unavailable) and "disk" in str(io) and fatal_io
    other, fatal_other = classify_write_error(ValueError("bad batch"))
    assert isinstance(other, Unavailable) and "ValueError" in str(other) and not fatal_other


def test_a_coalesced_search_stops_between_calls_once_its_callers_left_or_the_shard_stops() -> None:
    began, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def run(queries: np.ndarray) -> tuple[Hits, str]:
        calls.append(len(queries))
        began.set()
        release.wait()
        return Hits.empty(len(queries), 1), ""

    worker = IndexWorker()
    worker.start()
    try:
        left = worker.search(("g",), run, np.zeros((3 * CHUNK_ROWS, DIM), np.float32))
        assert began.wait(10)
        assert left.cancel()  # still pending while its group runs: the caller may leave
        release.set()
        assert worker.call(lambda: None).result(10) is None
        assert calls == [CHUNK_ROWS]  # the other two calls were never made
        began.clear()
        release.clear()
        running = worker.search(("g",), run, np.zeros((2 * CHUNK_ROWS, DIM), np.float32))
        assert began.wait(10)
        queued = worker.search(("h",), run, np.zeros((1, DIM), np.float32))
        stopping = threading.Thread(target=worker.stop)
        stopping.start()
        while not worker._halting:
            threading.Event().wait(0.01)
        release.set()
        stopping.join(10)
        for future in (running, queued):
            with pytest.raises(Unavailable, match="shutting down"):
                future.result(10)
        assert calls == [CHUNK_ROWS, CHUNK_ROWS]
    finally:
        release.set()
        worker.stop()


def test_every_point_of_a_two_thread_shard_finds_itself(tmp_path: Path) -> None:
    """Points are added on one thread even when the shard searches on two: usearch's add on several threads
    leaves a few points stored but unreachable by any search (usearch issue #735)."""
    x = clustered(20_000, 16, seed=5)
    with Shard(tmp_path, threads=2) as shard:
        shard.create_collection(CollectionConfig("c", 16, metric="l2"))
        for start in range(0, len(x), 2_000):
            ids = np.arange(start, start + 2_000, dtype=np.uint64)
            shard.submit_upsert("c", ids, x[start : start + 2_000], [b""] * 2_000).result()
        first = np.concatenate(
            [shard.search("c", x[i : i + 5_000], k=1, ef=256).ids[:, 0] for i in (0, 5_000, 10_000, 15_000)]
        )
    lost = np.flatnonzero(first != np.arange(len(x)))
    assert not len(lost), f"{len(lost)} points not found by their own vector: {lost[:10]}"
