"""Durability numbers for one shard (in this process, on this machine's cores): a benchmark, not a test.

    python loadtest/bench_durability.py                       # 200,000 x 384 (real MiniLM rows, topped up)
    python loadtest/bench_durability.py --points 20000 --skip-rebuild

1. Restart: open() of a shard holding --points vectors, from its snapshot versus rebuilt from RocksDB
   (the snapshot folder removed), page cache warm.
2. Snapshot pauses: writers (small upserts) and searchers (single queries) run while snapshots are
   forced; the longest call overlapping a snapshot against the longest and p99 call outside them, and
   the index worker's own pause (the fork) as the shard logs it. For comparison, what the alternatives
   would pause: `Index.copy()` and `Index.save()` hold the GIL for their whole run.
3. Durable upsert throughput with group commit (many batches per WAL sync) versus one sync per batch:
   end to end (durable and indexed, into a fresh collection) and the commit path alone (index step
   skipped), with --writers concurrent callers.

Data: the real embeddings of ../shared/data/wordnet-minilm (116,659 rows) topped up to --points with
noisy copies of them; clustered random vectors when that folder is absent. Writes OUT/bench_durability.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shoal._config import CollectionConfig
from shoal.shard.committer import Committer
from shoal.shard.core import Shard
from shoal.shard.index import IndexWorker
from shoal.shard.options import ShardOptions, SnapshotPolicy
from shoal.shard.storage import Storage, pack_keys

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "wordnet-minilm" / "base.npy"
NEVER = SnapshotPolicy(changes=10**12, min_interval=1e9, max_interval=1e9)  # only the forced snapshots


def vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """n unit vectors: real MiniLM rows first, then noisy copies of them (or clustered random ones)."""
    rng = np.random.default_rng(seed)
    if REAL.exists() and dim == 384:
        base = np.load(REAL).astype(np.float32)[:n]
        extra = base[rng.integers(0, len(base), n - len(base))] if n > len(base) else base[:0]
        extra = extra + rng.standard_normal(extra.shape).astype(np.float32) * 0.02
        x = np.concatenate([base, extra])
    else:
        centers = rng.standard_normal((100, dim)).astype(np.float32)
        x = centers[rng.integers(0, 100, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class PauseLog(logging.Handler):
    """Collects the index pauses the snapshotter logs."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses_ms: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"index paused (\d+) ms", record.getMessage())
        if found:
            self.pauses_ms.append(float(found.group(1)))


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def restart(data: Path, x: np.ndarray, threads: int, skip_rebuild: bool, out: dict[str, Any]) -> None:
    options = ShardOptions(threads=threads, snapshots=NEVER)
    if not (data / "rocksdb").exists():
        shard = Shard(data, options=options)
        shard.open()
        shard.create_collection(CollectionConfig("c", x.shape[1]))
        ingest = timed(
            lambda: [
                shard.upsert("c", np.arange(i, min(i + 5000, len(x)), dtype=np.uint64), x[i : i + 5000])
                for i in range(0, len(x), 5000)
            ]
        )
        out["ingest_vectors_per_s"] = len(x) / ingest
        out["close_with_final_snapshot_s"] = timed(shard.close)
        print(
            f"ingest {out['ingest_vectors_per_s']:.0f} vectors/s; graceful close (final snapshot) "
            f"{out['close_with_final_snapshot_s']:.2f} s",
            flush=True,
        )
    snapshot_file = next((data / "index").glob("*-c/snapshot-*.usearch"))
    out["snapshot_mib"] = snapshot_file.stat().st_size / 2**20
    opens = []
    for _ in range(3):
        shard = Shard(data, options=options)
        opens.append(timed(shard.open))
        shard.close()
    out["restart_from_snapshot_s"] = statistics.median(opens)
    print(f"restart from snapshot ({out['snapshot_mib']:.0f} MiB): {opens} s", flush=True)
    if skip_rebuild:
        return
    moved = data.parent / "index-aside"
    shutil.move(data / "index", moved)
    shard = Shard(data, options=options)
    out["restart_rebuild_s"] = timed(shard.open)
    shard.close()
    shutil.rmtree(data / "index", ignore_errors=True)
    shutil.move(moved, data / "index")
    out["rebuild_over_snapshot"] = out["restart_rebuild_s"] / out["restart_from_snapshot_s"]
    print(
        f"rebuild from RocksDB: {out['restart_rebuild_s']:.1f} s "
        f"({out['rebuild_over_snapshot']:.0f}x the restart from snapshot)",
        flush=True,
    )


def pauses(data: Path, x: np.ndarray, threads: int, seconds: float, out: dict[str, Any]) -> None:
    handler = PauseLog()
    logging.getLogger("shoal.shard.snapshots").addHandler(handler)
    logging.getLogger("shoal.shard.snapshots").setLevel(logging.INFO)
    calls: dict[str, list[tuple[float, float]]] = {"write": [], "search": []}
    stop = threading.Event()
    with Shard(data, options=ShardOptions(threads=threads, snapshots=NEVER)) as shard:

        def write(w: int) -> None:
            rng = np.random.default_rng(w)
            while not stop.is_set():
                ids = rng.integers(0, len(x), 10).astype(np.uint64)
                ids = np.unique(ids)
                started = time.perf_counter()
                shard.upsert("c", ids, x[ids.astype(np.intp)])
                calls["write"].append((started, time.perf_counter()))

        def search(s: int) -> None:
            rng = np.random.default_rng(100 + s)
            while not stop.is_set():
                q = x[rng.integers(0, len(x), 1)]
                started = time.perf_counter()
                shard.search("c", q, k=10)
                calls["search"].append((started, time.perf_counter()))

        workers = [threading.Thread(target=write, args=(i,)) for i in range(2)]
        workers += [threading.Thread(target=search, args=(i,)) for i in range(2)]
        for t in workers:
            t.start()
        windows = []
        time.sleep(seconds)  # a baseline without snapshots
        for _ in range(3):
            started = time.perf_counter()
            shard.snapshot()
            windows.append((started, time.perf_counter()))
            time.sleep(seconds)
        stop.set()
        for t in workers:
            t.join()
        logging.getLogger("shoal.shard.snapshots").removeHandler(handler)  # closing snapshots without a fork
        coll = shard._collections["c"]  # noqa: SLF001 - the alternatives, measured on the same index
        gil: dict[str, float] = {}
        for name, fn in (
            ("copy", lambda: coll.index._index.copy()),  # noqa: SLF001
            ("save", lambda: coll.index.save(data / "bench-save.tmp")),
        ):
            gil[name] = gil_hold(lambda fn=fn: shard._worker.call(fn).result())  # noqa: SLF001
        (data / "bench-save.tmp").unlink(missing_ok=True)
    out["snapshot_seconds"] = [round(b - a, 3) for a, b in windows]
    out["index_pause_ms"] = handler.pauses_ms
    for kind, spans in calls.items():
        during = [b - a for a, b in spans if any(a < we and b > ws for ws, we in windows)]
        outside = sorted(b - a for a, b in spans if not any(a < we and b > ws for ws, we in windows))
        out[f"{kind}_max_during_snapshot_ms"] = 1000 * max(during, default=0)
        out[f"{kind}_max_outside_ms"] = 1000 * outside[-1]
        out[f"{kind}_p99_outside_ms"] = 1000 * outside[int(0.99 * (len(outside) - 1))]
        out[f"{kind}_calls"] = len(spans)
    out["alternative_gil_hold_ms"] = {k: 1000 * v for k, v in gil.items()}
    print(
        json.dumps(
            {k: v for k, v in out.items() if "during" in k or "outside" in k or "pause" in k or "alternative" in k},
            indent=1,
        ),
        flush=True,
    )


def gil_hold(fn: Callable[[], Any]) -> float:
    """The longest time another Python thread could not run while fn ran."""
    gaps: list[float] = []
    done = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = threading.Thread(target=tick)
    ticker.start()
    fn()
    done.set()
    ticker.join()
    return max(gaps)


def throughput(root: Path, x: np.ndarray, threads: int, writers: int, rows: int, out: dict[str, Any]) -> None:
    """Both group sizes, interleaved three times (the machine's load drifts); medians and every run."""
    batches = [np.arange(i, i + rows, dtype=np.uint64) for i in range(0, min(len(x), 20_000), rows)]
    runs: dict[str, list[float]] = {}
    for _ in range(3):
        for mode, group in (("group_commit", 256), ("sync_per_batch", 1)):
            runs.setdefault(f"end_to_end_{mode}_vectors_per_s", []).append(
                end_to_end(root / mode, x, threads, writers, batches, group)
            )
            vectors_per_s, per_sync = commit_path(root / mode, x, writers, batches * 5, group)
            runs.setdefault(f"commit_path_{mode}_vectors_per_s", []).append(vectors_per_s)
            runs.setdefault(f"commit_path_{mode}_batches_per_sync", []).append(per_sync)
    for key, values in runs.items():
        out[key] = statistics.median(values)
        out[f"{key}_runs"] = [round(v, 1) for v in values]
    out["throughput_writers"], out["throughput_rows_per_batch"] = writers, rows
    print(json.dumps({k: v for k, v in out.items() if "per_s" in k or "per_sync" in k}, indent=1), flush=True)


def end_to_end(data: Path, x: np.ndarray, threads: int, writers: int, batches: list[np.ndarray], group: int) -> float:
    """Vectors per second acknowledged (durable and indexed) by a shard with this group size."""
    with Shard(data, options=ShardOptions(threads=threads, snapshots=NEVER, max_group=group)) as shard:
        shard.create_collection(CollectionConfig("c", x.shape[1]))
        elapsed = timed(
            lambda: run_writers(writers, batches, lambda ids: shard.upsert("c", ids, x[ids.astype(np.intp)]))
        )
    shutil.rmtree(data)
    return sum(map(len, batches)) / elapsed


def commit_path(data: Path, x: np.ndarray, writers: int, batches: list[np.ndarray], group: int) -> tuple[float, float]:
    """Vectors per second through RocksDB and the committer alone, and batches per WAL sync."""
    storage = CountingStorage(data)
    worker = IndexWorker()
    committer = Committer(storage, worker, max_group=group)
    worker.start()
    committer.start()
    record = x[0].tobytes()

    def commit(ids: np.ndarray) -> None:
        def prepare() -> tuple[Any, Callable[[], None]]:
            batch = Storage.batch()
            for key in pack_keys(ids):
                batch.put(key, record)
            return batch, lambda: None

        committer.submit(prepare).result()

    try:
        elapsed = timed(lambda: run_writers(writers, batches, commit))
    finally:
        committer.stop()
        worker.stop()
        storage.close()
        shutil.rmtree(data)
    return sum(map(len, batches)) / elapsed, len(batches) / storage.syncs


class CountingStorage(Storage):
    """A Storage that counts WAL syncs."""

    syncs = 0

    def flush_wal(self) -> None:
        self.syncs += 1
        super().flush_wal()


def run_writers(writers: int, batches: list[np.ndarray], call: Callable[[np.ndarray], None]) -> None:
    """Call `call` on every batch from `writers` threads at once."""
    pending = iter(batches)
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                ids = next(pending, None)
            if ids is None:
                return
            call(ids)

    threads = [threading.Thread(target=work) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main() -> None:
    """Run the three measurements and write the numbers."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--threads", type=int, default=2, help="usearch threads (the shard's cores)")
    p.add_argument("--writers", type=int, default=8, help="concurrent upsert callers for the throughput")
    p.add_argument("--rows", type=int, default=100, help="vectors per upsert batch for the throughput")
    p.add_argument("--pause-seconds", type=float, default=3.0, help="load between forced snapshots")
    p.add_argument("--data", help="keep the shard here and reuse it on the next run (default: temporary)")
    p.add_argument("--skip-rebuild", action="store_true", help="skip the (slow) rebuild from RocksDB")
    p.add_argument("--out", default=".", help="folder for bench_durability.json")
    args = p.parse_args()
    x = vectors(args.points, args.dim)
    out: dict[str, Any] = {"points": args.points, "dim": args.dim, "threads": args.threads}
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "shard"
        restart(data, x, args.threads, args.skip_rebuild, out)
        pauses(data, x, args.threads, args.pause_seconds, out)
        throughput(Path(tmp), x, args.threads, args.writers, args.rows, out)
    Path(args.out, "bench_durability.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
