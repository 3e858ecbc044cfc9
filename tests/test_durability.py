"""One shard process killed at chosen points, its snapshot damaged, its disk filled: no acknowledged write is lost.

Every test drives a real `shoal shard` process over gRPC (no coordinator), kills it where the test-only
SHOAL_CRASHPOINT says or with SIGKILL, restarts it and checks the shard against what was acknowledged:
the same points, byte for byte, an index equal to RocksDB (the Verify RPC), each point found by its vector.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from shoal import _rpc
from shoal._config import CollectionConfig
from shoal._errors import ShoalError, from_rpc_error
from shoal._local import SHARD_ENV, Process, wait_serving
from shoal._wire import decode_ids, decode_matrix, encode_ids, encode_matrix
from shoal.v1 import shard_pb2, shard_pb2_grpc
from shoal.v1 import types_pb2 as pb
from tests.conftest import clustered

pytestmark = pytest.mark.slow  # crashes and restarts its own shard processes

DIM = 16
TIMEOUT = 60.0
CRASH_EXIT = -9  # the crash points SIGKILL the shard process


class ShardProc:
    """One shard process over a data folder, restartable with another environment, with a Shard stub."""

    def __init__(self, data: Path, log: Path | None = None) -> None:
        self.data = data
        self.proc = Process(
            "shard",
            ["shard", "--data", str(data), "--listen", "127.0.0.1:0", "--backup-root", str(data.parent.parent)],
            log or data.parent / f"{data.name}.log",
        )
        self._channel: grpc.Channel | None = None
        self.stub: shard_pb2_grpc.ShardStub

    def start(self, **env: str) -> ShardProc:
        """Start (again, on the same port) and wait until it serves."""
        self.proc.env = {**SHARD_ENV, **env}
        self.proc.start(TIMEOUT)
        self.proc.args[self.proc.args.index("--listen") + 1] = self.proc.address
        wait_serving(self.proc.address, TIMEOUT)
        self._channel = _rpc.channel(self.proc.address)
        self.stub = shard_pb2_grpc.ShardStub(self._channel)
        return self

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def kill(self) -> int | None:
        """SIGKILL."""
        self._close_channel()
        return self.proc.kill()

    def stop(self) -> int | None:
        """SIGTERM and wait for a clean exit; the exit code."""
        self._close_channel()
        return self.proc.stop(TIMEOUT)

    def wait(self) -> int:
        """Wait for the process to end by itself (a crash point); its exit code."""
        self._close_channel()
        assert self.proc.popen is not None
        code = self.proc.popen.wait(TIMEOUT)
        self.proc.kill()
        return code

    def log(self) -> str:
        """Everything the process logged so far."""
        return self.proc.log_path.read_text(errors="replace")

    def call(self, method: str, request: object) -> object:
        """A Shard RPC; failures raise the catalogue's errors."""
        try:
            return getattr(self.stub, method)(request, timeout=TIMEOUT)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc


@pytest.fixture
def shard(tmp_path: Path) -> Iterator[ShardProc]:
    """A shard process (not started yet) that is killed after the test."""
    proc = ShardProc(tmp_path / "shard")
    try:
        yield proc
    finally:
        proc.kill()


Expected = dict[object, tuple[bytes, bytes]]  # id -> (vector bytes, payload) of every acknowledged point


def create(shard: ShardProc) -> None:
    shard.call("CreateCollection", pb.CreateCollectionRequest(config=CollectionConfig("u", DIM).to_proto()))
    config = CollectionConfig("s", DIM, metric="l2", id_type="string")
    shard.call("CreateCollection", pb.CreateCollectionRequest(config=config.to_proto()))


def upsert(shard: ShardProc, expected: dict[str, Expected], start: int, n: int, seed: int) -> None:
    """Upsert ids start..start+n into "u" and "s"; record them once acknowledged."""
    x = clustered(n, DIM, seed=seed)
    payloads = [b'{"n":%d,"seed":%d}' % (i, seed) for i in range(start, start + n)]
    for name, ids in (("u", list(range(start, start + n))), ("s", [f"id-{i}" for i in range(start, start + n)])):
        shard.call(
            "Upsert",
            pb.UpsertRequest(collection=name, ids=encode_ids(ids), vectors=encode_matrix(x), payloads=payloads),
        )
        expected[name].update({i: (x[j].tobytes(), payloads[j]) for j, i in enumerate(ids)})


def delete(shard: ShardProc, expected: dict[str, Expected], numbers: list[int]) -> None:
    """Delete these ids from "u" and "s"; forget them once acknowledged."""
    for name, ids in (("u", numbers), ("s", [f"id-{i}" for i in numbers])):
        shard.call("Delete", pb.DeleteRequest(collection=name, ids=encode_ids(ids)))
        for i in ids:
            expected[name].pop(i, None)


def verify(shard: ShardProc, name: str) -> shard_pb2.VerifyResponse:
    """The shard's comparison of a collection's index with RocksDB."""
    return shard.call("Verify", shard_pb2.VerifyRequest(collection=name))  # type: ignore[return-value]


def check(shard: ShardProc, expected: dict[str, Expected]) -> None:
    """The shard holds exactly the expected points, its index equals RocksDB, each point finds itself."""
    for name, points in expected.items():
        report = verify(shard, name)
        assert report.consistent, (name, report.stored, report.indexed, report.unmapped)
        assert sorted(decode_ids(report.ids).tolist()) == sorted(points), name
        if not points:
            continue
        ids = list(points)
        got = shard.call(
            "Get", pb.GetRequest(collection=name, ids=encode_ids(ids), with_vectors=True, with_payload=True)
        )
        assert decode_ids(got.ids).tolist() == ids  # type: ignore[attr-defined]
        vectors = decode_matrix(got.vectors)  # type: ignore[attr-defined]
        for i, pid in enumerate(ids):
            assert (vectors[i].tobytes(), got.payloads[i]) == points[pid], (name, pid)  # type: ignore[attr-defined]
        found = shard.call("Search", pb.SearchRequest(collection=name, queries=encode_matrix(vectors), k=1, ef=4096))
        assert decode_ids(found.ids).tolist() == ids, name  # type: ignore[attr-defined]


def fresh() -> dict[str, Expected]:
    return {"u": {}, "s": {}}


def test_snapshots_are_taken_in_the_background_and_a_killed_shard_loads_them(shard: ShardProc) -> None:
    expected = fresh()
    shard.start(SHOAL_SNAPSHOT_CHANGES="100", SHOAL_SNAPSHOT_MIN_INTERVAL="0.05")
    create(shard)
    upsert(shard, expected, 0, 400, seed=13)
    deadline = time.monotonic() + TIMEOUT
    while len(list((shard.data / "index").glob("*/manifest.json"))) < 2:  # on the shard's own schedule
        assert time.monotonic() < deadline, "no snapshot was taken"
        time.sleep(0.02)
    delete(shard, expected, list(range(0, 400, 4)))
    shard.kill()
    shard.start()
    check(shard, expected)
    log = shard.log()
    assert "rebuilt" not in log and log.count("points from the snapshot at sequence") == 2


def test_delete_by_filter_after_a_snapshot_survives_a_kill(shard: ShardProc) -> None:
    expected = fresh()
    shard.start()
    create(shard)
    upsert(shard, expected, 0, 300, seed=17)
    shard.stop()  # a graceful stop snapshots every index
    shard.start()
    for name in ("u", "s"):
        shard.call("Delete", pb.DeleteRequest(collection=name, filter='{"n": {"$lt": 100}}'))
        for i in [i for i in expected[name] if int(str(i).removeprefix("id-")) < 100]:
            expected[name].pop(i)
    shard.kill()
    shard.start()
    check(shard, expected)
    assert "rebuilt" not in shard.log()


def test_crash_after_commit_before_the_index_update_loses_nothing(shard: ShardProc) -> None:
    expected = fresh()
    shard.start()
    create(shard)
    upsert(shard, expected, 0, 200, seed=1)
    shard.call("Snapshot", shard_pb2.SnapshotRequest())
    upsert(shard, expected, 200, 50, seed=2)
    shard.kill()

    shard.start(SHOAL_CRASHPOINT="after-commit")
    x = clustered(30, DIM, seed=3)
    with pytest.raises(ShoalError):  # the process dies before it answers: the outcome is unknown
        shard.call(
            "Upsert", pb.UpsertRequest(collection="u", ids=encode_ids(list(range(300, 330))), vectors=encode_matrix(x))
        )
    assert shard.wait() == CRASH_EXIT
    shard.start()
    # The batch was durable when the process died: the restart must index it (replayed after the snapshot).
    expected["u"].update({i: (x[i - 300].tobytes(), b"") for i in range(300, 330)})
    check(shard, expected)
    assert "changed points re-read from RocksDB" in shard.log()
    shard.kill()

    shard.start(SHOAL_CRASHPOINT="after-commit")
    with pytest.raises(ShoalError):
        shard.call("Delete", pb.DeleteRequest(collection="s", ids=encode_ids([f"id-{i}" for i in range(0, 250, 2)])))
    assert shard.wait() == CRASH_EXIT
    shard.start()
    for i in range(0, 250, 2):  # deleted for good, never back from the snapshot
        del expected["s"][f"id-{i}"]
    check(shard, expected)


@pytest.mark.parametrize("point", ["mid-snapshot", "before-rename", "after-rename"])
def test_crash_during_a_snapshot_keeps_the_previous_one(shard: ShardProc, point: str) -> None:
    expected = fresh()
    shard.start()
    create(shard)
    upsert(shard, expected, 0, 300, seed=4)
    shard.call("Snapshot", shard_pb2.SnapshotRequest())
    first = {str(p.relative_to(shard.data)): p.read_bytes() for p in (shard.data / "index").glob("*/*")}
    shard.kill()

    shard.start(SHOAL_CRASHPOINT=point)
    upsert(shard, expected, 300, 100, seed=5)
    delete(shard, expected, list(range(0, 300, 3)))
    with pytest.raises(ShoalError):
        shard.call("Snapshot", shard_pb2.SnapshotRequest())
    assert shard.wait() == CRASH_EXIT
    shard.start()
    check(shard, expected)
    log = shard.log()
    assert "rebuilt its index" not in log  # the old snapshot was good: it was loaded and brought up to date
    assert log.count("changed points re-read from RocksDB") >= 4
    # Nothing unfinished is left: the files on disk are exactly the first snapshot's.
    left = {str(p.relative_to(shard.data)): p.read_bytes() for p in (shard.data / "index").glob("*/*")}
    assert left == first


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 4096)


def _flip_a_bit(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x10]))


DAMAGE = {
    "truncated": (_truncate, "truncated"),
    "bit-flipped": (_flip_a_bit, "corrupt"),
    "missing": (lambda p: p.unlink(), "missing"),
    "manifest": (lambda p: (p.parent / "manifest.json").write_text("{not json"), "unreadable"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_snapshot_is_never_served(shard: ShardProc, damage: str) -> None:
    expected = fresh()
    shard.start()
    create(shard)
    upsert(shard, expected, 0, 500, seed=6)
    delete(shard, expected, list(range(0, 500, 7)))
    assert shard.stop() == 0  # a graceful stop snapshots every index
    files = sorted((shard.data / "index").glob("*/snapshot-*.usearch"))
    assert len(files) == 2
    hurt, words = DAMAGE[damage]
    for path in files:
        hurt(path)
    shard.start()
    check(shard, expected)
    log = shard.log()
    assert log.count("rebuilt its index") == 2 and words in log, log[-3000:]


def test_graceful_stop_finishes_calls_in_flight_and_restarts_from_snapshots(shard: ShardProc) -> None:
    expected = fresh()
    shard.start()
    create(shard)
    upsert(shard, expected, 0, 100, seed=7)
    acked: dict[int, bytes] = {}
    lock = threading.Lock()
    started = threading.Barrier(4)

    def write(w: int) -> None:
        x = clustered(2000, DIM, seed=10 + w)
        started.wait()
        for b in range(100):
            ids = list(range(10_000 * (w + 1) + 20 * b, 10_000 * (w + 1) + 20 * b + 20))
            try:
                shard.stub.Upsert(
                    pb.UpsertRequest(
                        collection="u", ids=encode_ids(ids), vectors=encode_matrix(x[20 * b : 20 * b + 20])
                    ),
                    timeout=TIMEOUT,
                )
            except grpc.RpcError:
                return  # refused once the shard stops taking calls
            with lock:
                acked.update({i: x[20 * b + j].tobytes() for j, i in enumerate(ids)})

    writers = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    for t in writers:
        t.start()
    started.wait()
    assert shard.proc.popen is not None
    shard.proc.popen.terminate()  # SIGTERM while the writers are busy
    for t in writers:
        t.join()
    assert shard.stop() == 0
    shard.start()
    expected["u"].update({i: (v, b"") for i, v in acked.items()})
    check(shard, expected)
    assert shard.log().count("0 changed points re-read from RocksDB") == 2


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_sigterm_ends_a_shard_busy_with_abandoned_searches_promptly(shard: ShardProc) -> None:
    shard.start()
    create(shard)
    upsert(shard, fresh(), 0, 5000, seed=15)
    queries = encode_matrix(clustered(5000, DIM, seed=16))
    # Twelve searches of 5,000 exact queries each (ef beyond the points): about 10 s of work in one group.
    calls = [
        shard.stub.Search.future(pb.SearchRequest(collection="u", queries=queries, k=100, ef=4096), timeout=TIMEOUT)
        for _ in range(12)
    ]
    assert shard.proc.popen is not None
    pid = shard.proc.popen.pid
    before = cpu_seconds(pid)
    deadline = time.monotonic() + TIMEOUT
    while cpu_seconds(pid) < before + 0.5 and time.monotonic() < deadline:
        threading.Event().wait(0.02)  # until the shard is busy searching
    for call in calls:
        call.cancel()  # every caller leaves
    began = time.monotonic()
    shard.proc.popen.terminate()
    assert shard.proc.popen.wait(TIMEOUT) == 0
    took = time.monotonic() - began
    assert took < 4.0, f"SIGTERM took {took:.1f} s"


@contextlib.contextmanager
def small_disk(path: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of the given size mounted at `path` (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root (CI runs as root)")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    """A file that leaves about `leave_bytes` free on the disk."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    size = st.f_bavail * st.f_frsize - leave_bytes
    with open(filler, "wb") as f:
        f.truncate(0)
        os.posix_fallocate(f.fileno(), 0, max(size, 1))
    return filler


def test_a_full_disk_refuses_writes_and_resumes_when_space_is_back(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", 96) as disk:
        shard = ShardProc(disk / "shard", tmp_path / "shard.log")
        try:
            shard.start(SHOAL_MIN_FREE_MB="16")
            expected = fresh()
            create(shard)
            upsert(shard, expected, 0, 300, seed=8)
            filler = fill(disk, 8 * 2**20)
            with pytest.raises(ShoalError) as failure:
                upsert(shard, expected, 300, 50, seed=9)
            assert failure.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "disk is full" in failure.value.message
            check(shard, expected)  # nothing changed
            # Deletes free space, so they are the one write a full disk still takes.
            delete(shard, expected, [1, 2])
            check(shard, expected)
            filler.unlink()
            upsert(shard, expected, 300, 50, seed=9)
            delete(shard, expected, [3, 4])
            check(shard, expected)
            assert shard.stop() == 0
            shard.start()
            check(shard, expected)
        finally:
            shard.kill()


def test_a_full_disk_still_drops_a_collection_and_the_drop_survives_a_restart(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", 96) as disk:
        shard = ShardProc(disk / "shard", tmp_path / "shard.log")
        try:
            shard.start(SHOAL_MIN_FREE_MB="16")
            expected = fresh()
            create(shard)
            upsert(shard, expected, 0, 300, seed=13)
            filler = fill(disk, 8 * 2**20)
            with pytest.raises(ShoalError) as failure:
                upsert(shard, expected, 300, 50, seed=14)
            assert failure.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            # A drop frees space, so a full disk takes it, and the other collection stays as it was.
            dropped = shard.call("DropCollection", pb.DropCollectionRequest(name="s"))
            assert dropped.dropped  # type: ignore[attr-defined]
            del expected["s"]
            listed = shard.call("ListCollections", pb.ListCollectionsRequest())
            assert list(listed.names) == ["u"]  # type: ignore[attr-defined]
            check(shard, expected)
            assert shard.stop() == 0
            filler.unlink()
            shard.start()
            listed = shard.call("ListCollections", pb.ListCollectionsRequest())
            assert list(listed.names) == ["u"]  # type: ignore[attr-defined]
            check(shard, expected)
        finally:
            shard.kill()


def test_a_failed_rocksdb_write_is_fatal_and_a_restart_recovers(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", 64) as disk:
        shard = ShardProc(disk / "shard", tmp_path / "shard.log")
        try:
            shard.start(SHOAL_MIN_FREE_MB="0")  # no reserve: RocksDB itself runs into the full disk
            expected = fresh()
            create(shard)
            upsert(shard, expected, 0, 300, seed=10)
            filler = fill(disk, 0)
            with pytest.raises(ShoalError) as failure:
                shard.call(
                    "Upsert",
                    pb.UpsertRequest(
                        collection="u",
                        ids=encode_ids(list(range(300, 1300))),
                        vectors=encode_matrix(clustered(1000, DIM, seed=11)),
                    ),
                )
            assert failure.value.code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
            assert shard.wait() == 74  # fatal: RocksDB takes no write after a failed WAL append
            filler.unlink()
            shard.start(SHOAL_MIN_FREE_MB="0")
            check(shard, expected)
            upsert(shard, expected, 300, 10, seed=12)
            check(shard, expected)
        finally:
            shard.kill()


def test_a_backup_folder_must_be_new_and_absolute(shard: ShardProc, tmp_path: Path) -> None:
    shard.start()
    for path, code in (
        ("relative/path", grpc.StatusCode.INVALID_ARGUMENT),
        (str(tmp_path), grpc.StatusCode.FAILED_PRECONDITION),
    ):
        with pytest.raises(ShoalError) as failure:
            shard.call("Backup", shard_pb2.BackupRequest(path=path))
        assert failure.value.code == code
